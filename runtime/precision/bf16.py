"""bf16 attnmap files: weights and compute in bfloat16 with float32 islands, and where they can run.

bfloat16 keeps float32's 8 exponent bits and 7 of its 23 mantissa bits: no overflow (unlike
fp16's 65504), but about 2-3 significant digits. CPUs with ``avx512_bf16`` or ``amx_bf16``
multiply bf16 and accumulate in float32 (``VDPBF16PS``, AMX ``TDPBF16PS``), which is where the
speed is.

:func:`convert_bf16` rewrites an fp32 graph: every node whose op takes bf16 at the file's opset
(the ONNX schema says which) computes in bf16, weights stored bf16, except the float32
*islands* (:data:`ISLANDS`):

* ``softmax``: ``Softmax`` (and the ``Exp`` / ``ReduceMax`` of a decomposed one): the attention
  probabilities the maps are made of. In bf16 a probability of 0.0051 and one of 0.0052 are
  the same number, and rollout multiplies twelve such matrices.
* ``layernorm``: ``LayerNormalization`` (and ``ReduceMean``, ``Pow``, ``Sqrt`` of a decomposed
  one): its variance of a ViT's outlier channels.
* ``outputs``: the nodes that produce the graph outputs (the head's ``Gemm``, the gradients'
  last op) and the data movement between them and the output (the ``Unsqueeze`` / ``Concat``
  stacking the attentions), so no output is ever rounded to bf16.

Casts go where a float32 tensor meets a bf16 node and back; the image input and every output
stay float32. Which islands are needed is measured by ``bench/tune.py`` (``--bf16-islands``).

Where a bf16 file runs is probed, not assumed: :func:`bf16_support` asks each provider present
to run a one-node bf16 ``MatMul`` (onnxruntime 1.31's x86 CPU provider has no such kernel, and
onnxruntime-openvino 1.24 hands the node back to it on this AVX2 CPU), and reads the CPU's bf16
flags from ``/proc/cpuinfo`` (OpenVINO's own bf16, an inference precision hint on an fp32 file,
computes bf16 only where ``avx512_bf16`` or ``amx_bf16`` is present, silently float32 elsewhere;
its ``precision`` option takes only FP32 and ACCURACY on a CPU). The fidelity of a bf16 conversion is measured
anyway, on any machine, with :func:`emulate_bf16`: the same graph in float32 with every bf16
tensor rounded to bf16 (round to nearest even) where the bf16 graph stores it, i.e. bf16
storage with float32 accumulation, as those CPU instructions compute. It measures numerics,
never speed (the rounding casts make it slower than fp32).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from attnmap.runtime.core.errors import ModelError, ProviderError
from attnmap.runtime.model.graph import sort_nodes

ISLANDS = ("softmax", "layernorm", "outputs")
ISLAND_OPS = {"softmax": ("Softmax", "Exp", "ReduceMax"),
              "layernorm": ("LayerNormalization", "ReduceMean", "Pow", "Sqrt")}
# Ops that only move or reshape data: an output's producer chain through these stays float32.
MOVE_OPS = ("Concat", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Identity", "Slice", "Gather", "Split",
            "Flatten", "Expand")
# Never bf16: integer logic and ops whose float input is an index-like value or a one-hot.
NEVER_BF16 = ("Cast", "Shape", "Size", "ArgMax", "ArgMin", "ScatterElements", "ScatterND", "ConstantOfShape",
              "Constant", "Range", "Less", "Greater", "Equal", "Not", "And", "Or")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_BF16 = "tensor(bfloat16)"


class PrecisionUnavailable(ProviderError):
    """No provider on this machine can run a precision (bf16 on a CPU without bf16 instructions)."""


# ---------------------------------------------------------------------------- conversion
def convert_bf16(model: onnx.ModelProto, *, islands: Sequence[str] = ISLANDS) -> onnx.ModelProto:
    """Convert an fp32 attnmap graph to bf16 compute with float32 islands, float32 at the boundary.

    Args:
        model: the fp32 graph; not modified (a copy is converted). Its metadata_props carry over.
        islands: which of :data:`ISLANDS` stay float32 (all by default).

    Returns:
        The bf16 graph: image input float32 (B, 3, H, W); every output float32. A bf16 copy of a
        tensor ``t`` is named ``t__bf16``; a weight read only by bf16 nodes is stored bf16 only.

    Raises:
        ModelError: an unknown island, or a graph the conversion cannot type (cause kept).
    """
    unknown = [i for i in islands if i not in ISLANDS]
    if unknown:
        raise ModelError(f"bf16 islands must be among {ISLANDS}; got {unknown[0]!r}")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        typed = onnx.shape_inference.infer_shapes(copy)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise ModelError(f"cannot type the graph for a bf16 conversion: {str(exc).strip()[:300]}") from exc
    g = copy.graph
    types = _elem_types(typed.graph)
    opset = next((o.version for o in copy.opset_import if o.domain in ("", "ai.onnx")), 13)
    keep_ops = {op for name in islands if name in ISLAND_OPS for op in ISLAND_OPS[name]}
    keep_nodes = _output_chain(g) if "outputs" in islands else set()
    inits = {t.name: t for t in g.initializer}
    bf16_nodes = [i for i, n in enumerate(g.node)
                  if n.domain in ("", "ai.onnx") and n.op_type not in NEVER_BF16 and n.op_type not in keep_ops
                  and i not in keep_nodes and _takes_bf16(n.op_type, opset)
                  and any(types.get(x) == TensorProto.FLOAT for x in n.input if x)]
    bf16_set = set(bf16_nodes)
    new_nodes: list[onnx.NodeProto] = []
    to_bf16: dict[str, str] = {}   # float32 tensor -> its bf16 copy
    to_fp32: dict[str, str] = {}   # bf16 tensor -> the float32 tensor of the original name
    produced_bf16: set[str] = set()  # original names now produced in bf16 (as name__bf16)
    new_inits: list[onnx.TensorProto] = []

    def bf16_of(name: str) -> str:
        if name in produced_bf16:
            return name + "__bf16"
        if name not in to_bf16:
            to_bf16[name] = f"{name}__bf16"
            if name in inits:
                values = numpy_helper.to_array(inits[name]).astype(np.float32)
                new_inits.append(_bf16_tensor(values, to_bf16[name]))
            else:
                new_nodes.append(helper.make_node("Cast", [name], [to_bf16[name]], to=TensorProto.BFLOAT16,
                                                  name=f"{name}__cast_bf16"))
        return to_bf16[name]

    def fp32_of(name: str) -> str:
        if name in produced_bf16 and name not in to_fp32:
            to_fp32[name] = name
            new_nodes.append(helper.make_node("Cast", [name + "__bf16"], [name], to=TensorProto.FLOAT,
                                              name=f"{name}__cast_fp32"))
        return name

    for i, node in enumerate(g.node):
        if i in bf16_set:
            for k, x in enumerate(node.input):
                if x and types.get(x) == TensorProto.FLOAT:
                    node.input[k] = bf16_of(x)
            for k, y in enumerate(node.output):
                if y and types.get(y) == TensorProto.FLOAT:
                    produced_bf16.add(y)
                    node.output[k] = y + "__bf16"
        else:
            for k, x in enumerate(node.input):
                if x in produced_bf16:
                    node.input[k] = fp32_of(x)
        new_nodes.append(node)
    for out in g.output:
        if out.name in produced_bf16:
            fp32_of(out.name)
    # a weight no float32 node reads any more is dropped (only its bf16 copy is stored)
    still_read = {x for n in new_nodes for x in n.input}
    kept = [t for t in g.initializer if t.name in still_read]
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]  # stale types; onnxruntime infers its own
    return sort_nodes(copy)


def _elem_types(g: onnx.GraphProto) -> dict[str, int]:
    types = {t.name: t.data_type for t in g.initializer}
    for v in [*g.input, *g.output, *g.value_info]:
        if v.type.HasField("tensor_type"):
            types[v.name] = v.type.tensor_type.elem_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


@lru_cache(maxsize=None)
def _takes_bf16(op: str, opset: int) -> bool:
    """Whether ``op`` at ``opset`` allows bf16 for its first input's type (the ONNX schema)."""
    try:
        schema = onnx.defs.get_schema(op, opset)
    except onnx.defs.SchemaError:
        return False
    if not schema.inputs:
        return False
    first = schema.inputs[0].type_str
    for c in schema.type_constraints:
        if c.type_param_str == first:
            return _BF16 in c.allowed_type_strs
    return first == _BF16


def _output_chain(g: onnx.GraphProto) -> set[int]:
    """Indices of the nodes producing the graph outputs, and of the data movement feeding them."""
    producer = {y: i for i, n in enumerate(g.node) for y in n.output}
    keep, todo = set(), [o.name for o in g.output]
    while todo:
        i = producer.get(todo.pop())
        if i is None or i in keep:
            continue
        keep.add(i)
        if g.node[i].op_type in MOVE_OPS:  # only data movement passes the chain on
            todo.extend(x for x in g.node[i].input if x)
    return keep


def _bf16_tensor(values: np.ndarray, name: str) -> onnx.TensorProto:
    """A BFLOAT16 initializer of float32 ``values``, rounded to nearest even."""
    bits = round_to_bf16(values).view(np.uint32) >> 16
    return helper.make_tensor(name, TensorProto.BFLOAT16, values.shape, bits.astype(np.uint16).tobytes(), raw=True)


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bf16 (ties to even), returned as float32.

    Args:
        x: any float array (NaN and infinity pass through).

    Returns:
        float32 array of ``x``'s shape whose low 16 bits are zero.
    """
    a = np.ascontiguousarray(x, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    out = rounded.view(np.float32)
    return np.where(np.isfinite(a), out, a).astype(np.float32)


# ---------------------------------------------------------------------------- emulation
def emulate_bf16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float32 twin of a :func:`convert_bf16` graph, rounding where the bf16 graph stores bf16.

    Every bf16 weight becomes the float32 value it holds; every bf16 tensor a node computes is
    rounded to bf16 (a ``Cast`` to bf16 and back, which onnxruntime's CPU provider runs) and
    carried as float32, so each bf16 node computes in float32 on bf16-rounded inputs: bf16
    storage with float32 accumulation.

    Args:
        model: a graph from :func:`convert_bf16`; not modified.

    Returns:
        A float32 graph any onnxruntime runs, with the same inputs, outputs and metadata.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    g = copy.graph
    inits = []
    for t in g.initializer:
        if t.data_type == TensorProto.BFLOAT16:
            inits.append(numpy_helper.from_array(_bf16_values(t), t.name))
        else:
            inits.append(t)
    del g.initializer[:]
    g.initializer.extend(inits)
    nodes = []
    for node in g.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None
        if to == TensorProto.BFLOAT16:
            nodes.extend(_round_nodes(node.input[0], node.output[0], node.name or node.output[0]))
        elif node.op_type == "Cast" and any(x.endswith("__bf16") for x in node.input):
            nodes.append(helper.make_node("Identity", list(node.input), list(node.output), name=node.name))
        else:
            outs = [y for y in node.output if y.endswith("__bf16")]
            for k, y in enumerate(node.output):
                if y in outs:
                    node.output[k] = y + "__exact"
            nodes.append(node)
            for y in outs:
                nodes.extend(_round_nodes(y + "__exact", y, y))
    del g.node[:]
    g.node.extend(nodes)
    return copy


def _round_nodes(src: str, dst: str, name: str) -> list[onnx.NodeProto]:
    """float32 ``src`` rounded to bf16 into float32 ``dst``: a Cast to bf16 and one back."""
    mid = f"{dst}__rounded"
    return [helper.make_node("Cast", [src], [mid], to=TensorProto.BFLOAT16, name=f"{name}__to_bf16"),
            helper.make_node("Cast", [mid], [dst], to=TensorProto.FLOAT, name=f"{name}__from_bf16")]


def _bf16_values(t: onnx.TensorProto) -> np.ndarray:
    """float32 values of a BFLOAT16 initializer."""
    if t.raw_data:
        bits = np.frombuffer(t.raw_data, dtype=np.uint16)
    else:
        bits = np.asarray(t.int32_data, dtype=np.uint32).astype(np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32).reshape(tuple(t.dims))


# ---------------------------------------------------------------------------- where bf16 runs
@dataclass(frozen=True)
class Bf16Support:
    """Which providers here can compute in bf16, and why the others cannot.

    Attributes:
        cpu_flags: the bf16 flags of :data:`BF16_FLAGS` the CPU has (``/proc/cpuinfo``).
        runners: attnmap provider names that run a bf16 file's compute in bf16 here.
        why_not: provider name -> one clause saying why it cannot.
    """

    cpu_flags: tuple[str, ...]
    runners: tuple[str, ...]
    why_not: dict[str, str] = field(default_factory=dict)

    @property
    def missing_flags(self) -> tuple[str, ...]:
        return tuple(f for f in BF16_FLAGS if f not in self.cpu_flags)

    def line(self, hint: bool = True) -> str:
        """One line: where bf16 runs, or why it runs nowhere here (``hint``: and what to use instead)."""
        if self.runners:
            return f"bf16 runs here on: {', '.join(self.runners)}"
        flags = (f"the CPU lacks {' and '.join(self.missing_flags)}" if self.missing_flags
                 else f"the CPU has {', '.join(self.cpu_flags)}")
        return (f"bf16 cannot run on this machine: {flags}; "
                + "; ".join(f"{p}: {why}" for p, why in self.why_not.items())
                + (" (use fp16 or int8, or tune the model to find what is fast here)" if hint else ""))


def cpu_flags(path: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The CPU's flags (the first processor's ``flags`` line); empty where it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return tuple(value.split())
    except OSError:
        pass
    return ()


def bf16_support(flags: Iterable[str] | None = None, available: Sequence[str] | None = None) -> Bf16Support:
    """Probe where a bf16 file runs on this machine.

    Each provider onnxruntime offers is asked to run a one-node bf16 ``MatMul``: only one that
    does counts (onnxruntime's x86 CPU provider has no such kernel; onnxruntime-openvino 1.24
    hands the node back to the CPU provider on an AVX2 CPU). The CPU's bf16 flags are reported
    beside: OpenVINO's own bf16 (its inference precision hint on an fp32 file) computes bf16 only
    where ``avx512_bf16`` or ``amx_bf16`` is present, and silently float32 elsewhere.

    Args:
        flags: CPU flags (default: :func:`cpu_flags`).
        available: onnxruntime's provider names (default ``ort.get_available_providers()``).

    Returns:
        :class:`Bf16Support`.
    """
    import onnxruntime as ort

    have = set(cpu_flags() if flags is None else flags)
    present = tuple(f for f in BF16_FLAGS if f in have)
    available = list(ort.get_available_providers() if available is None else available)
    runners, why = [], {}
    for short, ort_name in (("cpu", "CPUExecutionProvider"), ("openvino", "OpenVINOExecutionProvider"),
                            ("cuda", "CUDAExecutionProvider")):
        if ort_name not in available:
            if short == "openvino":
                why[short] = "not installed (onnxruntime-openvino)"
            continue
        error = _probe_bf16(ort_name)
        if error is None:
            runners.append(short)
            continue
        why[short] = f"onnxruntime {ort.__version__}'s {short} provider {error}"
        if short == "openvino" and not present:
            why[short] += " (and OpenVINO's own bf16 computes float32 on a CPU without avx512_bf16 or amx_bf16)"
    return Bf16Support(present, tuple(runners), why)


@lru_cache(maxsize=None)
def _probe_bf16(provider: str) -> str | None:
    """None if ``provider`` (an onnxruntime name) runs a bf16 MatMul, else what it said (one clause)."""
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    nodes = [helper.make_node("Cast", ["x"], ["b"], to=TensorProto.BFLOAT16),
             helper.make_node("MatMul", ["b", "b"], ["p"]),
             helper.make_node("Cast", ["p"], ["y"], to=TensorProto.FLOAT)]
    probe = helper.make_model(helper.make_graph(nodes, "bf16_probe", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the refusal is the answer, not an error to log
    try:
        session = ort.InferenceSession(probe.SerializeToString(), sess_options=options, providers=[provider])
        session.run(None, {"x": np.eye(2, dtype=np.float32)})
    except Exception as exc:  # noqa: BLE001 - any refusal means "cannot"; the text says which
        text = str(exc)
        if "NOT_IMPLEMENTED" not in text:
            return f"refused a bf16 MatMul ({text.strip().splitlines()[0][:120] if text.strip() else type(exc).__name__})"
        return ("has no bf16 MatMul kernel" if provider == "CPUExecutionProvider" else
                "left a bf16 MatMul to the CPU provider, which has no kernel for it")
    return None
