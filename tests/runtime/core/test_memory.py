"""release_free_heap gives memory that was freed but kept in malloc's heap back to the OS."""

from __future__ import annotations

import ctypes.util
import sys
from pathlib import Path

import pytest

from attnmap.runtime.core.memory import release_free_heap

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/proc/self/status").is_file()
                           or "musl" in (ctypes.util.find_library("c") or ""), reason="glibc's malloc_trim on Linux")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


@glibc
def test_freed_heap_memory_is_given_back():
    # 160 MB in 64 KB blocks (below malloc's mmap threshold: they live in the heap), written so
    # that their pages are resident; the last block stays, so the free ones are not at the top
    # of the heap, where free() alone would give them back
    blocks = [bytearray(b"\1" * (64 * 1024)) for _ in range(2560)]
    keep = bytearray(b"\1" * (64 * 1024))
    held = _rss_mib()
    del blocks
    freed = _rss_mib()
    assert release_free_heap() is True
    trimmed = _rss_mib()
    assert held - freed < 40  # free() kept most of it ...
    assert freed - trimmed > 100  # ... and malloc_trim gave it back
    del keep
