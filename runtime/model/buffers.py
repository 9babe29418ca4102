"""Output buffers that outlive one onnxruntime run, so the next run writes into warm memory.

``session.run`` makes onnxruntime allocate every output afresh. For the attention outputs that
is a lot of memory per call (DeiT-Tiny: 12 x 3 x 197 x 197 float32 = 5.6 MB per image, 45 MB
at batch 8), so each run first faults in new pages and then writes them, and the explanation
that reads them next starts from cold cache lines. Binding the outputs (``io_binding``) to
buffers kept from one run to the next removes both costs: on the 2-core CPU box that alone
saved DeiT-Tiny about 0.15 ms per image at batch 1 and 0.3 ms per frame at batch 8; with the
per-layer outputs of runtime/graph.py bound into one buffer it also removes the stack copy.

A buffer is only handed out again once nothing outside the pool refers to it any more: every
NumPy view of a buffer (``outputs.attentions[0]``, ``Outputs.select``) holds a reference to it,
so while a caller keeps any result of an earlier run, that run's buffers are left alone and
the next run gets other ones. Results are never overwritten behind a caller's back.

The pool does not care what an output is: Grad-CAM's ``tokens`` and ``token_grads``
((B, N, D) float32, in files exported with gradients) are bound like the logits, one whole
buffer each; a file without them simply has no such buffers.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np

# References to a pooled set (the tuple) or buffer when nobody outside holds it: the pool's
# list (for the tuple) or tuple (for an array), and sys.getrefcount's own argument.
# tests/test_session_buffers.py pins this down: reuse happens, and a kept result survives.
_POOL_REFS = 2


class BufferPool:
    """Sets of output arrays, keyed by what they are for, reused when no caller holds them.

    Args:
        per_key: sets kept per key. 5 covers the stream pipeline (runtime/stream.py) with
            two model runs at once (measured; with one run at a time it uses 3: the caller
            holds one batch's results while the next one waits for it and the model runs on a
            third). A set is only allocated when every kept one is in use, so this bounds
            what is kept, not what is used.
        keys: distinct keys kept (e.g. batch sizes); the least recently used goes first.
    """

    def __init__(self, per_key: int = 5, keys: int = 2):
        self.per_key, self.keys = int(per_key), int(keys)
        self._sets: OrderedDict[tuple, list[tuple[np.ndarray, ...]]] = OrderedDict()
        self._lock = threading.Lock()
        self.allocations = 0  # sets allocated so far (for tests and curiosity)

    def acquire(self, key: tuple, specs: Sequence[tuple[tuple[int, ...], np.dtype]]) -> tuple[np.ndarray, ...]:
        """A set of arrays of the given (shape, dtype) specs that no caller currently holds.

        The caller must keep a reference to the returned tuple (or its arrays) for as long as
        it uses them; that reference is what keeps another thread from taking them.
        """
        with self._lock:
            pooled = self._sets.get(key)
            if pooled is None:
                pooled = self._sets[key] = []
                while len(self._sets) > self.keys:
                    self._sets.popitem(last=False)
            self._sets.move_to_end(key)
            for arrays in pooled:
                # +1 for the loop variables: `arrays` here, `a` in the generator. A caller that
                # holds the tuple (between acquire and binding) or any array or view is seen.
                if sys.getrefcount(arrays) <= _POOL_REFS + 1 and \
                        all(sys.getrefcount(a) <= _POOL_REFS + 1 for a in arrays):
                    return arrays
            arrays = tuple(np.empty(shape, dtype) for shape, dtype in specs)
            self.allocations += 1
            if len(pooled) < self.per_key:
                pooled.append(arrays)
            return arrays

    def clear(self) -> None:
        """Drop every pooled set (arrays callers still hold stay valid: they are theirs now)."""
        with self._lock:
            self._sets.clear()
