"""fp16 attnmap files: weights and compute in half precision, float32 kept at the graph boundary.

The conversion is onnxruntime's own (``onnxruntime.transformers.float16``, shipped inside the
onnxruntime wheel; onnxconverter-common is not needed). It inserts ``Cast`` nodes where a
float32 tensor meets a half one, so the file still takes a float32 image and returns float32
logits (and gradients). With ``attn_dtype="fp16"`` the ``attentions`` output stays half: half
the bytes to copy off a GPU; the runtime casts it to float32 before any map is computed
(:class:`attnmap.runtime.model.session.OnnxModel`).

Ops kept in float32 (:data:`FP16_BLOCK`): ``LayerNormalization`` (its variance squares the
activations, and a ViT's outlier channels can square past half's 65504; kept as a precaution,
not measured op by op), and the reductions and exponentials a decomposed normalisation or softmax uses (``ReduceMean``,
``Pow``, ``Sqrt``, ``Exp``); plus onnxruntime's own default block list (ops without half
kernels), and ``ScatterElements`` (a gradient file's one-hot of the target class: onnxruntime's
CPU has no half kernel for its ``reduction="add"``). ``Softmax`` runs in half: its output is in
[0, 1], where fp16 keeps 3 significant digits, and its input is bounded by the scaled scores.
"""

from __future__ import annotations

import onnx

from attnmap.runtime.core.errors import ModelError
from attnmap.runtime.model.graph import sort_nodes

ATTN_DTYPES = ("fp32", "fp16")
FP16_BLOCK = ("LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Exp", "ScatterElements")
# Outputs that carry attention probabilities; only these may be left half (attn_dtype="fp16").
ATTENTION_OUTPUTS = ("attentions",)


def convert_fp16(model: onnx.ModelProto, *, attn_dtype: str = "fp32") -> onnx.ModelProto:
    """Convert an fp32 attnmap graph to fp16 compute, float32 at the boundary.

    Args:
        model: the fp32 graph; not modified (a copy is converted). Its metadata_props carry over.
        attn_dtype: ``"fp32"`` keeps every output float32; ``"fp16"`` leaves ``attentions``
            (B, L, H, N, N) float16.

    Returns:
        The fp16 graph: image input float32 (B, 3, H, W); logits float32 (B, C).

    Raises:
        ModelError: unknown ``attn_dtype``, or onnxruntime's converter failed (cause kept).
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    if attn_dtype not in ATTN_DTYPES:
        raise ModelError(f"attn_dtype must be one of {ATTN_DTYPES}; got {attn_dtype!r}")
    block = list(dict.fromkeys([*DEFAULT_OP_BLOCK_LIST, *FP16_BLOCK]))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _unshare_initializers(copy, set(block))
    names = [i.name for i in copy.graph.input] + [o.name for o in copy.graph.output]
    keep = [n for n in names if not (attn_dtype == "fp16" and n in ATTENTION_OUTPUTS)]
    try:
        out = convert_float_to_float16(copy, keep_io_types=keep, op_block_list=block)
    except (ValueError, RuntimeError, KeyError, onnx.checker.ValidationError) as exc:
        raise ModelError(f"onnxruntime's float16 converter failed: {str(exc).strip()[:300]}") from exc
    return sort_nodes(out)  # the converter appends its casts at the end


def _unshare_initializers(model: onnx.ModelProto, block: set[str]) -> None:
    """Give every kept-float node its own copy of an initializer that other nodes read too.

    torch's exporter deduplicates equal initializers (a random-init model's LayerNorm weights
    are all ones, so every LayerNorm reads one tensor); onnxruntime's converter then inserts
    one ``<name>_cast_to_fp32_node`` per kept-float reader, all with the same name, and the
    file is invalid ("two nodes with same node name"). Copies are small (norm weights).
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, int] = {}
    for node in g.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for node in g.node:
        if node.op_type not in block:
            continue
        for i, name in enumerate(node.input):
            if name in inits and readers[name] > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{node.name or i}"
                g.initializer.append(copy)
                node.input[i] = copy.name
                readers[name] -= 1
