"""Reduced-precision attnmap files (fp16, int8) and the fidelity gate they must pass.

Torch-free: onnx and onnxruntime (its quantiser and its float16 converter) only.

* :mod:`.quantize`: int8 with onnxruntime's quantiser, dynamic or static QDQ.
* :mod:`.fp16`: half-precision compute, float32 at the graph boundary.
* :mod:`.fidelity`: top-1 agreement, probability difference, map correlation and IoU; the gate.
* :mod:`.convert`: convert a file, gate it, write it only when it passes.
"""
