"""Handing freed heap memory back to the operating system after a big piece of work.

glibc's malloc keeps what a program frees in its arenas (one per thread that allocated, up
to eight per core) for reuse, and returns it to the system only from the top of each heap. A
server that answers one large request (RISE's thousands of masked inputs, a 40 MP upload)
then looks, by its resident memory, as if it still held that request: the memory is free
inside the process but not given back. ``malloc_trim(0)`` gives back the free pages of every
arena. It costs a few milliseconds on a heap of a few hundred MB, so it runs after big work,
not per frame.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache
from typing import Callable

__all__ = ["release_free_heap"]


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Give the free pages of every malloc arena back to the OS (glibc's ``malloc_trim(0)``).

    Returns:
        True where it ran (Linux with glibc); False where there is no such call (then nothing
        happens: other allocators return memory on their own terms).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
