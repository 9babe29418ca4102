"""Inference-clean graphs: what every inference runtime accepts, not only onnxruntime's CPU provider.

torch's exporter writes an attnmap gradient file with the training form of some nodes:

* ``LayerNormalization`` with its three outputs (``Y``, ``Mean``, ``InvStdDev``), the last two
  read by the traced backward pass. onnxruntime's CPU provider runs that; OpenVINO's ONNX
  front end refuses it ("LayerNormalization expects 1 output tensor to be used in a model,
  other configurations are used for training").
* axes given as negative numbers (``ArgMax(axis=-1)`` on the logits); OpenVINO cannot
  normalise such an axis where it has lost a tensor's rank.
* ``Dropout`` nodes (an identity in inference) and their ``mask`` outputs.

:func:`inference_graph` rewrites them: a ``LayerNormalization`` keeps its one output ``Y``, and
its ``Mean`` and ``InvStdDev``, where something reads them, are computed beside it by plain
``ReduceMean``/``Sub``/``Mul``/``Add``/``Sqrt``/``Reciprocal`` nodes at the precision its
``stash_type`` names (the same arithmetic the ONNX specification defines them by); negative
axes become the positive ones of the tensor's rank; a ``Dropout`` becomes an ``Identity``; a
``ConstantOfShape`` gets its value written out (float32 zero, the default), which onnxruntime
1.24's fp16 converter otherwise turns into a half tensor its float32 readers refuse.
:func:`inference_problems` lists what would stop an inference runtime, and the export checks
that it lists nothing (``export/to_onnx.py``); :class:`~attnmap.runtime.model.session.OnnxModel`
rewrites an older file the same way before handing it to any provider other than the CPU.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Node types whose ``axis`` attribute (on their first input) becomes the positive axis of its rank.
_AXIS_ATTR_OPS = ("ArgMax", "ArgMin", "Softmax", "LogSoftmax", "Hardmax", "Gather", "GatherElements",
                  "LayerNormalization", "TopK")


def inference_problems(model: onnx.ModelProto) -> list[str]:
    """What in ``model``'s graph an inference runtime may refuse; empty when it is clean.

    Args:
        model: an ONNX model.

    Returns:
        One line per problem, naming the node: a ``LayerNormalization`` with more than one
        output, a ``Dropout`` or ``BatchNormalization`` in its training form, an ``ArgMax`` or
        ``ArgMin`` whose axis is negative.
    """
    problems = []
    for node in model.graph.node:
        outputs = [o for o in node.output if o]
        if node.op_type == "LayerNormalization" and len(outputs) > 1:
            problems.append(f"LayerNormalization {node.name!r} has {len(outputs)} outputs (training form)")
        elif node.op_type == "BatchNormalization" and len(outputs) > 1:
            problems.append(f"BatchNormalization {node.name!r} has {len(outputs)} outputs (training form)")
        elif node.op_type == "Dropout":
            problems.append(f"Dropout {node.name!r} (an identity at inference)")
        elif node.op_type in ("ArgMax", "ArgMin") and _attr(node, "axis", 0) < 0:
            problems.append(f"{node.op_type} {node.name!r} has a negative axis {_attr(node, 'axis', 0)}")
    return problems


def inference_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``model`` in place into its inference form (see the module docstring).

    Args:
        model: an ONNX model (opset 17 or newer where it has LayerNormalization).

    Returns:
        ``model``, whose outputs are the same tensors computed by inference-only nodes.
    """
    if not inference_problems(model) and not _negative_axes(model) and not _implicit_values(model):
        return model
    ranks = _ranks(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    readers = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len([o for o in node.output if o]) > 1:
            nodes.extend(_single_output_layer_norm(node, readers, ranks, opset))
            continue
        if node.op_type == "Dropout":
            if len(node.output) > 1 and node.output[1] in readers:
                nodes.append(node)  # a mask someone reads cannot be dropped; inference_problems names it
                continue
            nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
            continue
        _positive_axis(node, ranks)
        if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float32))))
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _negative_axes(model: onnx.ModelProto) -> bool:
    return any(node.op_type in _AXIS_ATTR_OPS and _attr(node, "axis", 0) < 0 for node in model.graph.node)


def _implicit_values(model: onnx.ModelProto) -> bool:
    return any(node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute)
               for node in model.graph.node)


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every tensor onnx's shape inference can tell."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    # no weights: inference needs their shapes and types only, and a big model stays small
    for init in copy.graph.initializer:
        init.ClearField("raw_data")
        for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            init.ClearField(f)
    inits = {i.name: i for i in model.graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, strict_mode=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        inferred = copy
    ranks = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    ranks.update({name: len(init.dims) for name, init in inits.items()})
    return ranks


def _positive_axis(node: onnx.NodeProto, ranks: dict[str, int]) -> None:
    """``axis=-k`` -> ``axis=rank-k`` where the input's rank is known (in place)."""
    if node.op_type not in _AXIS_ATTR_OPS:
        return
    rank = ranks.get(node.input[0]) if node.input else None
    for a in node.attribute:
        if a.name == "axis" and a.i < 0 and rank:
            a.i += rank


def _single_output_layer_norm(node: onnx.NodeProto, readers: set[str], ranks: dict[str, int], opset: int) -> list[onnx.NodeProto]:
    """``node`` with its output ``Y`` alone, and ``Mean``/``InvStdDev`` recomputed where read.

    The ONNX definition: over the axes from ``axis`` to the last, at ``stash_type``'s precision
    (float32 by default), ``Mean = ReduceMean(X)`` and ``InvStdDev = 1 / sqrt(ReduceMean((X -
    Mean)^2) + epsilon)``, both keeping the reduced axes as 1s.
    """
    x = node.input[0]
    axis = _attr(node, "axis", -1)
    eps = float(_attr(node, "epsilon", 1e-5))
    stash = int(_attr(node, "stash_type", TensorProto.FLOAT))
    rank = ranks.get(x)
    if axis < 0:
        axes = list(range(rank + axis, rank)) if rank else list(range(axis, 0))
    else:
        if rank is None:
            raise ValueError(f"LayerNormalization {node.name!r}: the rank of its input {x!r} is unknown")
        axes = list(range(axis, rank))
    out = list(node.output)
    single = helper.make_node("LayerNormalization", list(node.input), [out[0]], name=node.name)
    single.attribute.extend(node.attribute)
    mean_out = out[1] if len(out) > 1 and out[1] in readers else ""
    inv_out = out[2] if len(out) > 2 and out[2] in readers else ""
    if not mean_out and not inv_out:
        return [single]
    p = f"{node.name or out[0]}/stats"
    made: list[onnx.NodeProto] = [single]
    # always a Cast of its own, even to the type X has: the statistics then read X through one
    # node, and onnxruntime's fp16 converter, which names the casts it inserts before the nodes
    # it keeps in float after their input, does not insert two of the same name
    xs = f"{p}/x"
    made.append(helper.make_node("Cast", [x], [xs], name=xs, to=stash))

    def reduce_mean(src: str, dst: str) -> onnx.NodeProto:
        if opset >= 18:
            return helper.make_node("ReduceMean", [src, axes_name], [dst], name=dst, keepdims=1)
        return helper.make_node("ReduceMean", [src], [dst], name=dst, axes=axes, keepdims=1)

    axes_name = f"{p}/axes"
    if opset >= 18:
        made.append(helper.make_node("Constant", [], [axes_name], name=axes_name,
                                     value=numpy_helper.from_array(np.array(axes, np.int64), axes_name)))
    mean = mean_out or f"{p}/mean"
    made.append(reduce_mean(xs, mean))
    if inv_out:
        eps_name = f"{p}/epsilon"
        eps_value = np.array(eps, dtype=helper.tensor_dtype_to_np_dtype(stash))
        made += [helper.make_node("Constant", [], [eps_name], name=eps_name,
                                  value=numpy_helper.from_array(eps_value, eps_name)),
                 helper.make_node("Sub", [xs, mean], [f"{p}/d"], name=f"{p}/d"),
                 helper.make_node("Mul", [f"{p}/d", f"{p}/d"], [f"{p}/d2"], name=f"{p}/d2"),
                 reduce_mean(f"{p}/d2", f"{p}/var"),
                 helper.make_node("Add", [f"{p}/var", eps_name], [f"{p}/var_eps"], name=f"{p}/var_eps"),
                 helper.make_node("Sqrt", [f"{p}/var_eps"], [f"{p}/std"], name=f"{p}/std"),
                 helper.make_node("Reciprocal", [f"{p}/std"], [inv_out], name=f"{p}/inv_std")]
    return made
