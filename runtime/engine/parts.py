"""A batch's work split into contiguous parts run on several threads at once.

``Explainer.explain`` computes a large batch's attention maps this way. Meanwhile onnxruntime's
intra-op threads sit idle (spinning off), and reading the attention tensors is bound by memory,
not by the core: two cores reading half a batch each read it faster than one core reads it all
(DeiT-Tiny, batch 8, 45 MB of attention probabilities, right after the inference: 3.3-3.4 ms
against 4.0 ms; measured on this project's 2-core VM). Starting and joining a thread costs about
0.2 ms there, and on small tensors the threads mostly wait for each other (the shipped model at
batch 8, 8 MB: 1.40 against 0.78 ms), so a part must hold at least :data:`MIN_PART_BYTES`. A
single image is never split: its map is a chain over the layers. NumPy and OpenCV release the
GIL for the work that counts. Preprocessing in parts was measured too and gains nothing worth a
thread (DeiT-Tiny, 8 images of 224 x 224: 1.26 against 1.34 ms).
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

T = TypeVar("T")

# The least data (bytes of tensors read) a part must hold to be worth a thread of its own.
MIN_PART_BYTES = 8 << 20


def parts_for(nbytes: int, items: int, threads: int) -> int:
    """How many parts to split ``items`` holding ``nbytes`` into on at most ``threads`` threads:
    each part at least one item and :data:`MIN_PART_BYTES`, and 1 (no split) below that."""
    return max(1, min(int(threads), int(items), int(nbytes) // max(1, MIN_PART_BYTES)))


def bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` (at most ``n``) contiguous ``[start, stop)`` ranges covering ``range(n)``,
    sizes differing by at most one, larger ones first."""
    parts = max(1, min(int(parts), n))
    size, extra = divmod(n, parts)
    out, start = [], 0
    for k in range(parts):
        stop = start + size + (1 if k < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def in_parts(fn: Callable[[int, int], T], n: int, parts: int) -> list[T]:
    """``[fn(start, stop) for each part]`` of ``range(n)``, the first part on the caller's
    thread and the others at once, each on a thread of its own started for this call.

    Every part is finished, and its thread ended, before this returns or raises (so nothing
    still reads the caller's arrays afterwards, and no thread is left behind); when parts fail,
    the error of the earliest failing part is raised, as a loop over the parts in order would
    raise it. Starting and joining the threads costs about 0.2 ms on the 2-core VM: worth it
    only for milliseconds of work (see :func:`parts_for`).

    Args:
        fn: computes items ``[start, stop)``.
        n: the number of items.
        parts: how many parts at most (1 runs ``fn(0, n)`` on the caller's thread alone).

    Returns:
        The parts' results in order.
    """
    ranges = bounds(n, parts)
    if len(ranges) == 1:
        return [fn(0, n)]
    results: list = [None] * len(ranges)
    errors: list[BaseException | None] = [None] * len(ranges)

    def run(k: int) -> None:
        try:
            results[k] = fn(*ranges[k])
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread, in order
            errors[k] = exc

    threads = [threading.Thread(target=run, args=(k,), name=f"attnmap-parts-{k}", daemon=True)
               for k in range(1, len(ranges))]
    for thread in threads:
        thread.start()
    try:
        run(0)
    finally:
        for thread in threads:
            thread.join()
    for exc in errors:
        if exc is not None:
            raise exc
    return results
