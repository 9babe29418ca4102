"""In-memory rewrites of an attnmap ONNX graph, made at load time; the file is never changed.

* :func:`split_stacked_outputs`: the exported graph stacks the per-layer attention tensors into
  one ``attentions`` output ``[B, L, H, N, N]`` (a ``Concat`` over the layers' ``Unsqueeze``).
  That stack is a full copy of every attention probability after the forward pass: for
  DeiT-Tiny 5.6 MB per image, about 0.6 ms of a 15 ms run on the 2-core box. The rewrite makes
  the per-layer tensors graph outputs instead, so that :class:`runtime.model.session.OnnxModel` can
  bind each one straight into its slice of one preallocated ``[L, B, H, N, N]`` array: the
  softmax writes its result where the explanation reads it, and nothing is copied.
* :func:`prune_to_outputs`: drop the nodes no graph output needs (the logits-only baseline).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

STACKED = ("attentions", "attention_grads")


def split_stacked_outputs(model: onnx.ModelProto, names=STACKED) -> dict[str, tuple[str, ...]]:
    """Replace each stacked output by its per-layer tensors, in place.

    A stacked output qualifies when it is made by ``Concat(axis=1)`` of ``Unsqueeze(axes=[1])``
    of one tensor per layer (which is how the exporter writes it), and no other node reads the
    stack or the unsqueezed tensors. Each per-layer tensor becomes a graph output (in the
    stacked output's place, in layer order) with the stacked shape minus its layer axis.

    Args:
        model: the loaded ONNX model; modified only for the outputs that qualify.
        names: which graph outputs to split.

    Returns:
        ``{stacked name: (per-layer tensor names, in layer order)}`` for the outputs split.
    """
    g = model.graph
    producer = {out: node for node in g.node for out in node.output}
    readers: dict[str, int] = {}
    for node in g.node:
        for i in node.input:
            readers[i] = readers.get(i, 0) + 1
    consts = {t.name: t for t in g.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in g.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    outputs = {o.name: o for o in g.output}
    split: dict[str, tuple[str, ...]] = {}
    drop: set[int] = set()
    for name in names:
        cat = producer.get(name)
        if name not in outputs or cat is None or cat.op_type != "Concat" or readers.get(name):
            continue
        if _int_attr(cat, "axis") not in (1, -4):
            continue
        unsq = [producer.get(i) for i in cat.input]
        if not unsq or not all(u is not None and u.op_type == "Unsqueeze" and readers.get(u.output[0]) == 1
                               and _axes(u, consts) == [1] for u in unsq):
            continue
        parts = tuple(u.input[0] for u in unsq)
        if len(set(parts)) != len(parts) or any(q in outputs for q in parts):
            continue
        split[name] = parts
        drop.update(id(n) for n in (cat, *unsq))
    if not split:
        return split
    kept = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(kept)
    new_outputs = []
    for out in g.output:
        if out.name not in split:
            new_outputs.append(out)
            continue
        t = out.type.tensor_type
        dims = [d.dim_param or d.dim_value or None for d in t.shape.dim] if t.HasField("shape") else None
        part_shape = None if dims is None or len(dims) != 5 else [dims[0], *dims[2:]]
        new_outputs.extend(helper.make_tensor_value_info(p, t.elem_type, part_shape) for p in split[out.name])
    del g.output[:]
    g.output.extend(new_outputs)
    return split


def prune_to_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove the nodes that no graph output needs, and inputs (``target``) left unused."""
    needed = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(model.graph.node):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del model.graph.node[:]
    model.graph.node.extend(keep)
    inputs = [i for i in model.graph.input if i.name in needed]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    onnx.checker.check_model(model)
    return model


def _int_attr(node: onnx.NodeProto, name: str) -> int | None:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return None


def _axes(node: onnx.NodeProto, consts: dict) -> list[int] | None:
    """The ``axes`` of an Unsqueeze: an attribute (opset < 13) or a constant second input."""
    for a in node.attribute:
        if a.name == "axes":
            return [int(v) for v in a.ints]
    if len(node.input) > 1 and node.input[1] in consts:
        return [int(v) for v in np.asarray(numpy_helper.to_array(consts[node.input[1]])).reshape(-1)]
    return None
