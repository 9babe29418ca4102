"""Writing result files whole or not at all: a temp file in the same folder, then os.replace.

A reader (or a crash) never sees a half-written overlay, video, map or model: the data goes to a
hidden temp file beside the target, which is moved into place only when complete, and removed
on failure. Finished files get the mode a plain ``open()`` would give them (not mkstemp's 0600).
"""

from __future__ import annotations

import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from attnmap.runtime.core.errors import AttnmapError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()


def temp_path(path: str | Path, suffix: str | None = None) -> Path:
    """Create an empty hidden temp file beside ``path`` and return its path.

    Args:
        path: the final file.
        suffix: the temp file's suffix (default ``".tmp"``); keep the real extension where a
            writer picks the format from it (video containers).

    Raises:
        AttnmapError: the folder cannot be created or written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    except OSError as exc:
        raise AttnmapError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    os.close(fd)
    return Path(tmp)


def commit(tmp: str | Path, path: str | Path) -> Path:
    """Move a finished temp file into place, with a new file's usual permissions."""
    os.chmod(tmp, _MODE)
    os.replace(tmp, path)
    return Path(path)


def discard(tmp: str | Path) -> None:
    """Remove a temp file if it is still there."""
    Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path to write; on success it becomes ``path``, on an exception it is removed."""
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        commit(tmp, path)
    finally:
        discard(tmp)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


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
