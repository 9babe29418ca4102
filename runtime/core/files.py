"""Writing result files whole or not at all: a temp file in the same folder, then os.replace.

A reader (or a crash) never sees a half-written overlay, video, map or model: the data goes to a
hidden temp file beside the target, which is moved into place only when complete, and removed
on failure. Finished files get the mode a plain ``open()`` would give them (not mkstemp's 0600),
without touching the process's umask.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from attnmap.runtime.core.errors import OutputError


def temp_path(path: str | Path, suffix: str | None = None) -> Path:
    """Create an empty hidden temp file beside ``path`` and return its path.

    Args:
        path: the final file.
        suffix: the temp file's suffix (default ``".tmp"``); keep the real extension where a
            writer picks the format from it (video containers).

    Raises:
        OutputError: the folder cannot be created or written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
    for _ in range(100):
        # the pid tells a later run whether the writer is gone (sweep_partials)
        tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix or '.tmp'}"
        try:
            # Mode 0o666 here and the kernel applies the process's umask, as for a plain open():
            # the finished file gets the usual permissions without reading (or flipping) the umask.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
        os.close(fd)
        return tmp
    raise OutputError(f"cannot create a temp file beside {str(path)!r}: 100 names were taken")


def commit(tmp: str | Path, path: str | Path) -> Path:
    """Move a finished temp file into place (it already has a new file's usual permissions)."""
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
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
    """Write ``data`` to ``path`` atomically.

    Raises:
        OutputError: the folder or file cannot be written (disk full, no permission ...).
    """
    with atomic_path(path) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as exc:
            raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
    return Path(path)


def write_image(path: str | Path, image_bgr: np.ndarray) -> Path:
    """Encode a BGR uint8 image by the file's extension (.png, .jpg ...) and write it atomically."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", image_bgr)
    if not ok:
        raise OutputError(f"cannot encode an image as {path.suffix or '.png'!r} for {str(path)!r}")
    return write_bytes(path, buf.tobytes())


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """Write arrays to a compressed ``.npz`` atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write_bytes(path, buf.getvalue())


# .NAME.PID-HEX.partial.EXT (temp_path with a pid), or .NAME.HEX.partial.EXT (before the pid was added)
_PARTIAL = re.compile(r"^\..+\.(?:(\d+)-)?[0-9a-f]{8}\.partial\.[A-Za-z0-9]+$")
STALE_UNOWNED_S = 3600.0  # a partial without a pid counts as abandoned after an hour untouched


def sweep_partials(folder: str | Path) -> list[Path]:
    """Remove the video temp files an interrupted or killed run left in ``folder``.

    Only hidden ``.NAME.PID-HEX.partial.EXT`` files of :func:`temp_path`'s naming whose writing
    process is gone are removed (a run writing into the folder at the same time keeps its
    own); those without a pid (older versions) once untouched for :data:`STALE_UNOWNED_S`.

    Returns:
        The removed files, sorted.
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        m = _PARTIAL.match(name)
        if m is None:
            continue
        path = Path(folder) / name
        try:
            if m.group(1) is not None:
                if _alive(int(m.group(1))):
                    continue
            elif time.time() - path.stat().st_mtime < STALE_UNOWNED_S:
                continue
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would end the process there; keep it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process (EPERM): alive
    return True


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
