"""Writing result files whole or not at all: temp file in the same folder, then os.replace."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from .errors import AttnmapError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp's 0600 is too strict


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (a reader never sees a half-written file)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise AttnmapError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_image(path: str | Path, image_bgr: np.ndarray) -> Path:
    """Encode a BGR uint8 image by the file's extension (.png, .jpg ...) and write it atomically."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", image_bgr)
    if not ok:
        raise AttnmapError(f"cannot encode an image as {path.suffix or '.png'!r} for {str(path)!r}")
    return write_bytes(path, buf.tobytes())


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """Write arrays to a compressed ``.npz`` atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write_bytes(path, buf.getvalue())
