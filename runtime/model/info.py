"""What ``attnmap info`` shows about a model file: its metadata, graph and providers, as data."""

from __future__ import annotations

import json
from typing import Any

import onnxruntime as ort

from attnmap.runtime.core.text import megabytes
from attnmap.runtime.model.session import OnnxModel


def describe_model(model: OnnxModel) -> dict[str, Any]:
    """A JSON-able description: path, size, metadata, inputs, outputs, available providers."""
    return {"path": str(model.path), "size_bytes": model.path.stat().st_size,
            "meta": json.loads(model.meta.to_json()),
            "inputs": [{"name": i.name, "shape": i.shape, "type": i.type} for i in model.session.get_inputs()],
            "outputs": model.describe_outputs(),
            "available_providers": ort.get_available_providers()}


def info_rows(model: OnnxModel) -> list[tuple[str, str]]:
    """``(key, value)`` rows for a text table of :func:`describe_model`."""
    d, meta = describe_model(model), model.meta
    labels = ", ".join(meta.label_names[:5]) + (", ..." if len(meta.label_names) > 5 else "")
    rows = [
        ("file", f"{model.path} ({megabytes(d['size_bytes'])})"),
        ("model", meta.model_name),
        ("input", f"{meta.input_size[0]} x {meta.input_size[1]} x {meta.input_size[2]}, mean {_fmt(meta.mean)}, "
                  f"std {_fmt(meta.std)}"),
        ("transform", f"{meta.interpolation} resize, crop_pct {meta.crop_pct:g}, crop_mode {meta.crop_mode}"),
        ("tokens", f"{meta.num_prefix_tokens} prefix ({', '.join(meta.prefix_tokens) or 'none'}) + "
                   f"{meta.grid_size[0]} x {meta.grid_size[1]} patches of {meta.patch_size[0]} x "
                   f"{meta.patch_size[1]} px = {meta.num_tokens}"),
        ("pooling", "class token" if meta.pooling == "token" else "average of patch tokens"),
        ("attention", f"{meta.num_layers} layers x {meta.num_heads} heads"
                      + (f", heads fused in graph ({meta.head_fusion}): one head output"
                         if meta.head_fusion != "none" else "")),
        ("gradients", ("yes (class-specific methods available" + (", Grad-CAM too)" if meta.has_token_grads else
                                                                  "; Grad-CAM needs a re-export)"))
         if meta.has_gradients else "no (export with --gradients for class-specific methods)"),
        ("classes", f"{meta.num_classes}" + (f": {labels}" if labels else "")),
    ]
    rows += [(f"input {i['name']}", f"{i['type']} {i['shape']}") for i in d["inputs"]]
    rows += [(f"output {o['name']}", f"{o['type']} {o['shape']}") for o in d["outputs"]]
    rows += precision_rows(meta)
    rows.append(("exporter", ", ".join(f"{k} {v}" for k, v in meta.exporter.items()) or "unknown"))
    rows.append(("providers", ", ".join(d["available_providers"])))
    return rows


def precision_rows(meta) -> list[tuple[str, str]]:
    """The precision row and, for converted files, the fidelity block (one row per map method)."""
    rows = [("precision", meta.precision + ("" if meta.precision != "fp32" else " (as exported)"))]
    fid = meta.fidelity
    if not fid:
        return rows
    th = fid.get("thresholds", {})
    rows.append(("fidelity", f"vs fp32 on {fid['images']} images ({fid['source']}, batch {fid.get('batch', 1)}): "
                             f"top-1 agreement "
                             f"{fid['top1_agreement']:.3f} (gate >= {th.get('min_top1', 0):g}), max |dp| "
                             f"{fid['max_prob_diff']:.4f}"))
    for name, m in fid.get("maps", {}).items():
        gate = f" (gate >= {th.get('min_rollout_corr', 0):g})" if name == "rollout" else ""
        rows.append((f"  {name}", f"Pearson r {m['pearson_mean']:.4f}{gate}, worst image {m['pearson_min']:.4f}, "
                                  f"top-10% patch IoU {m['iou_top10_mean']:.3f}"))
    return rows


def format_rows(rows: list[tuple[str, str]]) -> str:
    """The rows as an aligned two-column text table."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"
