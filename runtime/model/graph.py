"""Load-time work on an attnmap ONNX graph; the file is never changed.

* :func:`read_model`: the file as an ONNX proto, or a ModelError saying it is not one.
* :func:`check_against_graph`: the metadata must describe the graph it rides in (outputs,
  inputs, classes, layers, heads, tokens, input size), or the file is refused at load.
* :func:`split_stacked_outputs`: the exported graph stacks the per-layer attention tensors into
  one ``attentions`` output ``[B, L, H, N, N]`` (a ``Concat`` over the layers' ``Unsqueeze``).
  That stack is a full copy of every attention probability after the forward pass: for
  DeiT-Tiny 5.6 MB per image, about 0.6 ms of a 15 ms run on the 2-core box. The rewrite makes
  the per-layer tensors graph outputs instead, so that :class:`attnmap.runtime.model.session.OnnxModel` can
  bind each one straight into its slice of one preallocated ``[L, B, H, N, N]`` array: the
  softmax writes its result where the explanation reads it, and nothing is copied.
* :func:`prune_to_outputs`: drop the nodes no graph output needs (the logits-only baseline).
* :func:`sort_nodes`: topological node order (for converted files, see runtime/precision/fp16.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from attnmap.runtime.core.errors import GraphMismatchError, ModelError
from attnmap.runtime.core.meta import NORMS_OUTPUT, ModelMeta
from attnmap.runtime.image.header import describe_media

STACKED = ("attentions", "attention_grads")
TOKEN_OUTPUTS = ("tokens", "token_grads", "tail_input")  # each (B, N, D), one D
IMAGE_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")


def read_model(path: str | Path) -> onnx.ModelProto:
    """The file as an ONNX proto (one parse; the caller reuses it).

    Args:
        path: the ``.onnx`` file, which exists.

    Raises:
        ModelError: ``path`` is empty, does not parse as an ONNX protobuf, or holds no graph
            (protobuf reads many byte strings as a message of unknown fields).
    """
    path = Path(path)
    where = f"cannot load model {str(path)!r}: not an ONNX model"
    if path.stat().st_size == 0:
        raise ModelError(f"{where} (the file is empty)")
    media = _media_kind(path)
    if media is not None:
        raise ModelError(f"cannot load model {str(path)!r}: {path.name!r} is {media}, not an ONNX model; "
                         "expected an .onnx file written by `attnmap export`")
    try:
        proto = onnx.load(str(path))
    except (DecodeError, OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelError(f"{where} ({first_line(exc)})") from exc
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise ModelError(f"{where} (it parses as a protobuf message but holds no ONNX graph)")
    return proto


def _media_kind(path: Path) -> str | None:
    """``"a JPEG image"`` when the file is a picture or video given where a model belongs, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    return describe_media(head)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, at most 300 characters."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def check_against_graph(meta: ModelMeta, inputs: Sequence[Any], outputs: Sequence[Any], path: str | Path) -> None:
    """Refuse a file whose metadata does not describe its graph.

    Shapes come from onnxruntime's session descriptions (``session.get_inputs()`` and
    ``OnnxModel.describe_outputs()``), which hold the shapes onnxruntime inferred from the
    nodes, not only what the file declares; a quantised or fp16 file goes through the same
    check. A dimension that is not an int (a symbolic batch, an unknown size) is not checked,
    and neither is a tensor whose rank is unknown (onnxruntime reports its shape as ``[]``).

    Args:
        meta: the file's metadata.
        inputs: graph inputs, each a mapping or an object with ``name``, ``shape`` (a list of
            int | str | None) and ``type`` (``"tensor(float)"`` ...).
        outputs: graph outputs in the same form, stacked outputs as ``[B, L, H, N, N]``.
        path: the file, named in the message.

    Raises:
        GraphMismatchError: (a MetadataError) naming the file and every mismatch found.
    """
    ins = dict(_spec(i) for i in inputs)
    outs = dict(_spec(o) for o in outputs)
    problems: list[str] = []
    for name in meta.outputs:
        if name not in outs:
            what = (" (the metadata says the model has gradients, but the graph has no gradient output)"
                    if name == "attention_grads" else "")
            problems.append(f"the metadata names output {name!r} but the graph has outputs {list(outs)}{what}")
    for name in meta.inputs:
        if name not in ins:
            problems.append(f"the metadata names input {name!r} but the graph has inputs {list(ins)}")
    unnamed = [n for n in ins if n not in meta.inputs]
    if unnamed:
        problems.append(f"the graph takes inputs {unnamed} that the metadata does not name "
                        f"(it names {list(meta.inputs)})")
    image = meta.inputs[0]
    if image in ins:
        shape, kind = ins[image]
        if kind is not None and kind not in IMAGE_TYPES:
            problems.append(f"input {image!r} is {kind}; attnmap feeds it preprocessed float images")
        size = f"the metadata's input_size is {'x'.join(map(str, meta.input_size))}"
        problems += _dims(f"input {image!r}", shape, [(axis, "", want, size) for axis, want in
                                                     zip("CHW", meta.input_size)])
    if "target" in meta.inputs and "target" in ins:
        problems += _dims("input 'target'", ins["target"][0], [])
    if "logits" in outs:
        labels = f" and {len(meta.label_names)} label_names" if meta.label_names else ""
        problems += _dims("logits output", outs["logits"][0],
                          [("", "classes", meta.num_classes,
                            f"the metadata has num_classes {meta.num_classes}{labels}")])
    prefix = meta.num_prefix_tokens
    tokens = (f"the metadata's grid {meta.grid_size[0]}x{meta.grid_size[1]} + {prefix} prefix "
              f"token{'' if prefix == 1 else 's'} gives {meta.num_tokens}")
    layers = f"the metadata has num_layers {meta.num_layers}"
    heads = (f"the metadata's num_heads {meta.num_heads} with head_fusion {meta.head_fusion!r} "
             f"gives {meta.output_heads}")
    for name in STACKED:
        if name in outs and name in meta.outputs:
            problems += _dims(f"{name} output", outs[name][0],
                              [("L", "layers", meta.num_layers, layers), ("H", "heads", meta.output_heads, heads),
                               ("N", "tokens", meta.num_tokens, tokens), ("N", "tokens", meta.num_tokens, tokens)])
    if NORMS_OUTPUT in outs and NORMS_OUTPUT in meta.outputs:
        problems += _dims(f"{NORMS_OUTPUT} output", outs[NORMS_OUTPUT][0],
                          [("L", "layers", meta.num_layers, layers), ("N", "tokens", meta.num_tokens, tokens),
                           ("", "norms", meta.num_heads + 1,
                            f"the metadata's num_heads {meta.num_heads} gives {meta.num_heads + 1} (the heads and the "
                            "block input)")])
    problems += _token_dims(meta, outs, tokens)
    if problems:
        raise GraphMismatchError(f"{str(path)}: the attnmap metadata does not match the ONNX graph: "
                                 + "; ".join(dict.fromkeys(problems)))


def _token_dims(meta: ModelMeta, outs: Mapping[str, tuple], tokens: str) -> list[str]:
    """Mismatches of the ``tokens``, ``token_grads`` and ``tail_input`` outputs (B, N, D): their
    rank, N against the metadata's tokens, and the same channel count D in all (the metadata does
    not store D)."""
    problems, widths = [], {}
    for name in (n for n in TOKEN_OUTPUTS if n in outs and n in meta.outputs):
        shape = outs[name][0]
        if not shape:  # unknown rank
            continue
        if len(shape) != 3:
            problems.append(f"{name} output has rank {len(shape)} (shape {list(shape)}) but must be rank 3 "
                            "(batch, N, D)")
            continue
        if isinstance(shape[1], int) and shape[1] != meta.num_tokens:
            problems.append(f"{name} output has N={shape[1]} tokens but {tokens}")
        if isinstance(shape[2], int):
            widths[name] = shape[2]
    if len(set(widths.values())) > 1:
        problems.append(f"the token outputs must have the same channels D; got {widths}")
    return problems


def _spec(arg: Any) -> tuple[str, tuple[list | None, str | None]]:
    """``(name, (shape, type))`` of an onnxruntime NodeArg or a ``describe_outputs`` dict."""
    if isinstance(arg, Mapping):
        return arg["name"], (arg.get("shape"), arg.get("type"))
    return arg.name, (getattr(arg, "shape", None), getattr(arg, "type", None))


def _dims(what: str, shape: list | None, want: list[tuple[str, str, int, str]]) -> list[str]:
    """Mismatches of ``shape`` (batch first) against ``want``: one ``(axis, noun, size, why)``
    per dim after the batch, e.g. ``("N", "tokens", 26, "the metadata's grid ... gives 26")``."""
    if not shape:  # onnxruntime reports an unknown rank as []
        return []
    if len(shape) != len(want) + 1:
        axes = ", ".join(["batch", *(a or n for a, n, _, _ in want)])
        return [f"{what} has rank {len(shape)} (shape {list(shape)}) but must be rank {len(want) + 1} ({axes})"]
    found = []
    for dim, (axis, noun, size, why) in zip(shape[1:], want):
        if isinstance(dim, int) and dim != size:
            got = " ".join(p for p in (f"{axis}={dim}" if axis else str(dim), noun) if p)
            found.append(f"{what} has {got} but {why}")
    return found


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


def logits_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with ``logits`` its only output and the nodes that only fed the others removed:
    what a file exported without attentions runs (modified in place and returned)."""
    keep = [o for o in model.graph.output if o.name == "logits"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    return prune_to_outputs(model)


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


def sort_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Put the graph's nodes in topological order, in place (ONNX requires it).

    onnxruntime's float16 converter appends the ``Cast`` nodes it inserts at the end of the
    node list; onnxruntime sorts a graph itself when it loads it, but ``onnx.checker`` (and so
    :func:`prune_to_outputs`) refuses such a file. Nodes already in order keep their order.

    Raises:
        ModelError: the graph has a cycle or reads a tensor nothing produces.
    """
    g = model.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        left = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                left.append(node)
        if len(left) == len(pending):
            missing = sorted({i for n in left for i in n.input if i not in ready})[:3]
            raise ModelError(f"the graph cannot be ordered: nodes read {missing}, which nothing produces")
        pending = left
    if [id(n) for n in ordered] != [id(n) for n in g.node]:
        copies = [onnx.NodeProto() for _ in ordered]
        for c, n in zip(copies, ordered):
            c.CopyFrom(n)
        del g.node[:]
        g.node.extend(copies)
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
