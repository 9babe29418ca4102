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


class DeviceBuffers:
    """Inputs and outputs bound on an accelerator (CUDA, TensorRT), kept from run to run.

    With ``session.run`` onnxruntime copies the input to the device, allocates every output
    there, and copies each back on return. Here the input lives in one device buffer per
    (input, shape), refreshed in place (``OrtValue.update_inplace``), and each output whose
    shape is known up to the batch axis is written into a device buffer kept per (outputs,
    batch); the results then come to the host in one copy per output per batch
    (``OrtValue.numpy()``). Outputs of unknown shape are left to onnxruntime to allocate on
    the device and copied the same way. Nothing is allocated on the device after the first
    batch of a given size.

    Args:
        device: onnxruntime's device name (``"cuda"``; tests use ``"cpu"``, where the same
            calls run without a GPU).
        device_id: the device's index.
        keys: distinct (outputs, batch) keys kept; the least recently used goes first.
    """

    def __init__(self, device: str = "cuda", device_id: int = 0, keys: int = 2):
        self.device, self.device_id, self.keys = device, int(device_id), int(keys)
        self._inputs: dict[tuple, object] = {}
        self._outputs: OrderedDict[tuple, dict[str, object]] = OrderedDict()
        self._lock = threading.Lock()
        self.allocations = 0  # device buffers allocated so far (tests check reuse)

    def run(self, session, names: Sequence[str], feed: dict[str, np.ndarray],
            specs: dict[str, tuple], run=None) -> dict[str, np.ndarray]:
        """Run ``session`` with ``feed`` bound on the device; return the ``names`` outputs on the host.

        Args:
            session: an ``onnxruntime.InferenceSession``.
            names: outputs to fetch.
            feed: input name -> contiguous host array.
            specs: output name -> (shape with the batch axis first, numpy dtype or None).
            run: ``run(session, binding)`` runs the bound session (default
                ``session.run_with_iobinding``); the model turns its failures into ModelErrors.

        Returns:
            Output name -> host array (a fresh copy each run: callers may keep it).
        """
        import onnxruntime as ort

        batch = next(iter(feed.values())).shape[0]
        with self._lock:  # one binding of these buffers at a time
            binding = session.io_binding()
            for name, value in feed.items():
                key = (name, value.shape, value.dtype.str)
                buf = self._inputs.get(key)
                if buf is None:
                    # its own memory: on "cpu", ortvalue_from_numpy would wrap the caller's array,
                    # and the next update_inplace would write into it
                    buf = self._inputs[key] = ort.OrtValue.ortvalue_from_shape_and_type(
                        list(value.shape), value.dtype, self.device, self.device_id)
                    self.allocations += 1
                buf.update_inplace(value)
                binding.bind_ortvalue_input(name, buf)
            outs = self._output_buffers(tuple(names), batch, specs)
            for name in names:
                if name in outs:
                    binding.bind_ortvalue_output(name, outs[name])
                else:
                    binding.bind_output(name, self.device, self.device_id)
            (run or (lambda s, b: s.run_with_iobinding(b)))(session, binding)
            got = binding.get_outputs()
            # numpy() of a device OrtValue is a host copy; of a "cpu" one it is a view of the
            # reused buffer, which the next run would overwrite under a caller's feet.
            return {name: value.numpy() if self.device != "cpu" else value.numpy().copy()
                    for name, value in zip(names, got)}

    def _output_buffers(self, names: tuple[str, ...], batch: int, specs: dict[str, tuple]) -> dict[str, object]:
        import onnxruntime as ort

        key = (names, batch)
        bufs = self._outputs.get(key)
        if bufs is None:
            bufs = {}
            for name in names:
                shape, dtype = specs.get(name, (None, None))
                if dtype is None or not shape or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
                    continue
                bufs[name] = ort.OrtValue.ortvalue_from_shape_and_type([batch, *shape[1:]], dtype, self.device,
                                                                       self.device_id)
                self.allocations += 1
            self._outputs[key] = bufs
            while len(self._outputs) > self.keys:
                self._outputs.popitem(last=False)
        self._outputs.move_to_end(key)
        return bufs
