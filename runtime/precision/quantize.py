"""int8 attnmap files with onnxruntime's own quantiser (torch-free: onnx + onnxruntime only).

Two modes, both keeping the graph's inputs and outputs float32:

* ``dynamic`` (the default): the weights of every ``MatMul`` with a constant weight (the
  linear layers: qkv, proj, fc1, fc2) are stored as 8-bit integers, one scale and zero point
  per output channel; each run quantises the activations
  on the fly (``DynamicQuantizeLinear`` + ``MatMulInteger``). No calibration data. The
  activation scale is one per tensor, over the whole batch: an image's result would depend a
  little on the images batched with it (see :func:`attnmap.runtime.precision.fidelity.measure_fidelity`),
  so the runtime runs such a file one image at a time (:class:`~attnmap.runtime.model.session.OnnxModel`).
* ``static``: QDQ (``QuantizeLinear``/``DequantizeLinear`` pairs) with activation ranges
  measured on calibration images preprocessed by the runtime's own :func:`preprocess`;
  activations uint8, weights int8, symmetric per channel, in 7 bits (see below).

Static mode runs on the OpenVINO provider too, whose CPU plugin reads the QDQ pairs and runs the
quantised MatMuls in integers itself; it expects signed symmetric weights (what OpenVINO's own
quantiser, NNCF, writes). Measured on the 2-core AVX2 EPYC, the shipped model, 64 synthetic
images against fp32 on the CPU provider (``bench/providers.py``, a loaded machine): static U8U8
per channel passed on the CPU provider (top-1 1.000, rollout r 0.9987) and broke on the OpenVINO
provider (top-1 0.922, rollout r 0.871, worst image 0.37); full 8-bit U8S8 and S8S8 broke on
both (top-1 0.75-0.77, r 0.79-0.81: the saturation below, OpenVINO's kernels included); U8S8
with symmetric 7-bit weights passed on both (CPU: top-1 1.000, r 0.9986; OpenVINO: 0.984,
r 0.9915). 7-bit weights are what NNCF's "overflow fix" writes for CPUs without VNNI.

Dynamic mode stores activations and weights as uint8 (U8U8), not the usual uint8 x int8 (U8S8):
on an x86 CPU without VNNI (AVX2, or AVX-512 before Cascade Lake) onnxruntime's U8S8 kernels
multiply with ``VPMADDUBSW``, whose int16 sum of two products saturates (255 * 127 * 2 >
32767), so a U8S8 file's figures depend on the CPU: one that passed its gate on a VNNI machine
can fail on an AVX2 one. U8U8 widens to int16 before multiplying, exact on every x86 CPU.
Measured on a 2-core AVX2 EPYC (no VNNI): the shipped model's static U8S8 file agreed on top-1
for 62/80 images (rollout r 0.83; the patch ``Conv`` alone does it) where the same file run as
float QDQ (graph optimisations off) agreed on 80/80; static U8U8: 80/80, r 0.9987, kernels
within 0.04 logits of its float QDQ (U8S8: 5.1). DeiT-Tiny's dynamic U8S8 file was 0.28 logits
off its own exact integer arithmetic and flipped a near tie (11/12 photos; exact: 12/12);
dynamic U8U8 per channel: kernels within 2e-6 of exact, 12/12, rollout r 0.9978 (worst 0.9959),
about as fast. 7-bit weights (``reduce_range``) avoid saturation too, at twice the rounding
(DeiT-Tiny dynamic: 11/12; shipped static: float QDQ logits 0.77 from fp32, U8U8's 0.41).

What stays in float, and why (measured on DeiT-Tiny and the 12 shared photos; the table is in
``bench/precision.py``'s output and the README): the attention scores ``q @ k^T`` and
``attn @ v`` (MatMuls between two activations) and the ``Softmax`` that produces the exported
attention are never quantised: an 8-bit post-softmax tensor has 256 levels for values that
mostly sit near 0 (1/197 on average), which is where PTQ4ViT locates ViT's PTQ losses, and the
exported map would be the quantised one. ``LayerNormalization`` and ``Gelu`` stay float too
(their inputs have the large outlier channels of ViTs). Static mode quantises the linear
layers' inputs and weights (``MatMul``, ``Gemm``) and nothing else. The patch embedding's
``Conv`` stays float: quantised, it is what OpenVINO's CPU plugin runs wrong (DeiT-Tiny's static
file, 12 photos, on the OpenVINO provider: top-1 0.25, rollout r 0.40; without the Conv 0.917 and
0.9932 on both providers, matching each other; with it on the CPU provider 1.000 and 0.9904),
and it is about 2% of DeiT-Tiny's multiply-adds.

Measured before the switch to U8U8 (DeiT-Tiny, the 12 shared photos, the 2-core CPU of the
time; ``bench/precision.py --sweep``): dynamic per-tensor U8S8 int8 agrees on top-1 for 12/12 photos with rollout r 0.996 (worst 0.993) and explains about
1.6x faster than fp32 at batch 1; static QDQ flips 1/12 (r 0.992) and is slower than dynamic;
quantising the attention MatMuls too lowers rollout r to 0.993 (dynamic) / 0.986 (static),
Softmax to 0.987, Softmax + LayerNorm to 0.979 with 2/12 top-1 flips. Dynamic is the default.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from attnmap.runtime.core.errors import ModelError, OptionError

INT8_MODES = ("dynamic", "static")
# Node types quantised in each mode (everything else stays float: see the module docstring).
DYNAMIC_OPS = ("MatMul",)
STATIC_OPS = ("MatMul", "Gemm")
DEFAULT_CALIBRATION_IMAGES = 32
# Parts kept in float by default that a measurement may quantise too (bench/precision.py):
# the activation x activation MatMuls (both modes), Softmax, LayerNormalization and the patch
# embedding's Conv (static).
OPTIONAL_INT8 = ("attention_matmul", "softmax", "layernorm", "patch_conv")


class _QuietQuantiser(logging.Filter):
    """Drops the quantiser's advice to run its pre-processing (printed on every call via the
    root logger): its symbolic shape inference and graph fusions gave DeiT-Tiny nothing here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider")


class _Reader:
    """onnxruntime's CalibrationDataReader over a preprocessed batch, one image per read."""

    def __init__(self, input_name: str, x_nchw: np.ndarray):
        self.input_name = input_name
        self._x = np.ascontiguousarray(x_nchw, dtype=np.float32)
        self._it: Iterator[int] = iter(range(len(self._x)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        i = next(self._it, None)
        return None if i is None else {self.input_name: self._x[i:i + 1]}

    def rewind(self) -> None:
        self._it = iter(range(len(self._x)))


def _reader_class():
    from onnxruntime.quantization import CalibrationDataReader

    # CalibrationDataReader is an ABC with get_next; subclassing it late keeps the import
    # of onnxruntime.quantization (slow: it imports onnx's reference tooling) off module load.
    return type("CalibrationReader", (_Reader, CalibrationDataReader), {})


def float_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes whose inputs are both activations (attention scores, attn @ v).

    Args:
        model: the fp32 attnmap graph.

    Returns:
        Node names, in graph order; these stay float in every int8 mode.
    """
    consts = {i.name for i in model.graph.initializer}
    consts.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in consts for i in n.input)]


def quantize_int8(model: onnx.ModelProto, *, mode: str = "dynamic", calibration: np.ndarray | None = None,
                  per_channel: bool = True, exclude: tuple[str, ...] = (),
                  also: tuple[str, ...] = ()) -> onnx.ModelProto:
    """Quantise an fp32 attnmap graph to int8.

    Args:
        model: the fp32 graph (its metadata_props are carried over unchanged).
        mode: ``"dynamic"`` (weights only, activations quantised per run) or ``"static"`` (QDQ
            with ranges calibrated on ``calibration``).
        calibration: ``(B, 3, H, W)`` float32 preprocessed images; needed for ``static``.
        per_channel: one scale and zero point per output channel of each weight (both modes).
        exclude: more node names to keep in float (on top of :func:`float_matmuls`).
        also: parts of :data:`OPTIONAL_INT8` to quantise as well (for measurements; the
            default, none, is what the measurements chose).

    Returns:
        The int8 graph, float32 at its inputs and outputs.

    Raises:
        OptionError: unknown mode or parts, or static mode without calibration images.
        ModelError: onnxruntime's quantiser failed (its exception is the cause).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode not in INT8_MODES:
        raise OptionError(f"int8 mode must be one of {INT8_MODES}; got {mode!r}")
    if mode == "static" and (calibration is None or len(calibration) == 0):
        raise OptionError("static int8 needs calibration images: give calibration (a folder or glob of images)")
    unknown = [a for a in also if a not in OPTIONAL_INT8]
    if unknown:
        raise OptionError(f"unknown int8 parts {unknown}; expected some of {OPTIONAL_INT8}")
    attention = "attention_matmul" in also
    keep = list(dict.fromkeys([*([] if attention else float_matmuls(model)), *exclude]))
    static_ops = [*STATIC_OPS, *(["Conv"] if "patch_conv" in also else []), *(["Softmax"] if "softmax" in also else []),
                  *(["LayerNormalization"] if "layernorm" in also else [])]
    quiet = _QuietQuantiser()
    logging.getLogger().addFilter(quiet)
    with tempfile.TemporaryDirectory(prefix="attnmap-quant-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(_without_value_info(model), str(src))
        try:
            if mode == "dynamic":
                # U8U8 (uint8 weights): no saturation on x86 without VNNI (the module docstring)
                quantize_dynamic(src, dst, op_types_to_quantize=list(DYNAMIC_OPS), per_channel=per_channel,
                                 weight_type=QuantType.QUInt8, nodes_to_exclude=keep,
                                 extra_options={"MatMulConstBOnly": not attention})
            else:
                image = model.graph.input[0].name
                # uint8 activations, signed symmetric 7-bit weights per channel: the QDQ layout
                # OpenVINO's low-precision passes take, and no int16 saturation without VNNI
                # (module docstring)
                quantize_static(src, dst, _reader_class()(image, calibration), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=static_ops, per_channel=per_channel, reduce_range=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                nodes_to_exclude=keep, calibrate_method=CalibrationMethod.MinMax,
                                extra_options={"MatMulConstBOnly": not attention, "ActivationSymmetric": False,
                                               "WeightSymmetric": True})
        # AssertionError: onnxruntime 1.24's quantiser asserts where 1.31's handles the graph
        # (dynamic per-channel int8 of DeiT-Tiny's gradient file: one scale expected per tensor)
        except (ValueError, RuntimeError, KeyError, IndexError, AssertionError, onnx.checker.ValidationError,
                onnx.shape_inference.InferenceError) as exc:
            raise ModelError(f"onnxruntime could not quantise the model ({mode} int8): "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                             ) from exc
        finally:
            logging.getLogger().removeFilter(quiet)
        out = onnx.load(str(dst))
    _copy_props(model, out)
    return out


def _without_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without intermediate shape annotations.

    torch's dynamo exporter annotates initializers in ``value_info`` too, and onnx's strict
    shape inference (which the quantiser runs first) rejects some of those annotations
    ("Inferred shape and existing shape differ"); the quantiser infers every shape again anyway.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    return copy


def _copy_props(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    """The source's metadata_props on ``dst`` (the quantiser keeps them, but not in every version)."""
    props = {p.key: p.value for p in src.metadata_props}
    props.update({p.key: p.value for p in dst.metadata_props})
    onnx.helper.set_model_props(dst, props)
