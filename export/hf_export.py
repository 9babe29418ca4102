"""Export a Hugging Face transformers ViT classifier: metadata from its own configs, then the graph.

The file is the one a timm export writes: ``input`` -> ``logits``, ``attentions`` (and, with
gradients, ``target`` -> ``attention_grads``, ``tokens``, ``token_grads``; with norms,
``head_norms``), with the same
:class:`attnmap.runtime.core.meta.ModelMeta`, filled from ``config.json`` (patch size, layers,
heads, prefix tokens, ``id2label``) and ``preprocessor_config.json`` (input size, resize and crop
rule, interpolation, rescale factor, mean and std; see :mod:`export.hf_meta`). The runtime reads
it unchanged. The parity gate compares onnxruntime with transformers itself (eager attention,
``output_attentions=True``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from attnmap.runtime.core.errors import ExportError
from attnmap.runtime.core.meta import ModelMeta

from .forward_outputs import check_forward_options
from .gradients import GRADIENT_INPUTS, GRADIENT_OUTPUTS, check_gradient_options
from .hf import HFWithAttention, describe_hf, patch_grid
from .hf_load import HF_PREFIX, load_hf
from .hf_meta import processor_data_config
from .hf_norms import HFWithNorms
from .labels import resolve_labels
from .metadata import exporter_versions

__all__ = ["build_hf_meta", "export_hf", "hf_model_name"]


def hf_model_name(source: str) -> str:
    """The name a transformers export records: ``hf:ORG/NAME`` as given, a folder by its name."""
    return source if source.startswith(HF_PREFIX) else Path(source).resolve().name


def build_hf_meta(model: nn.Module, processor: Any, *, model_name: str, heads: str,
                  labels: str | Path | Sequence[str] | None, attentions: bool, gradients: bool,
                  opset: int = 0, extra: dict | None = None) -> ModelMeta:
    """Describe an export of a transformers classifier as a :class:`ModelMeta`.

    Args:
        model: a supported transformers classifier (:data:`export.hf_load.SUPPORTED`).
        processor: its image processor.
        model_name: name recorded in the file.
        heads: head fusion in the graph.
        labels: labels file or names overriding ``config.id2label``; None keeps ``id2label``.
        attentions: whether the graph emits ``attentions``.
        gradients: whether it also takes ``target`` and emits the gradient outputs.
        opset: ONNX opset (filled in after tracing).
        extra: notes merged into ``ModelMeta.extra``.

    Returns:
        The validated metadata; ``extra`` records the architecture, what the classifier reads
        (``pooling``), the processor's own settings and the transformers version.

    Raises:
        ExportError: a preprocessing the runtime cannot reproduce, an input size the model does
            not take, labels that do not fit the head, invalid fields.
    """
    import transformers

    cfg, arch = model.config, type(model).__name__
    prefix, pooling, note = describe_hf(model)
    data = processor_data_config(processor, model_name)
    grid = patch_grid(model, data["input_size"][1:])
    num_classes = int(cfg.num_labels)
    id2label = {int(k): str(v) for k, v in (cfg.id2label or {}).items()}
    names = labels if labels is not None else [id2label.get(i, f"class_{i}") for i in range(num_classes)]
    patch = cfg.patch_size if isinstance(cfg.patch_size, (list, tuple)) else (cfg.patch_size, cfg.patch_size)
    try:
        return ModelMeta(
            model_name=model_name,
            input_size=data["input_size"],
            mean=data["mean"],
            std=data["std"],
            interpolation=data["interpolation"],
            crop_pct=data["crop_pct"],
            crop_mode=data["crop_mode"],
            patch_size=(int(patch[0]), int(patch[1])),
            grid_size=grid,
            prefix_tokens=prefix,
            pooling=pooling,
            num_layers=int(cfg.num_hidden_layers),
            num_heads=int(cfg.num_attention_heads),
            head_fusion=heads,
            num_classes=num_classes,
            label_names=resolve_labels(names, num_classes),
            outputs=GRADIENT_OUTPUTS if gradients else ("logits", "attentions") if attentions else ("logits",),
            inputs=GRADIENT_INPUTS if gradients else ("input",),
            exporter={**exporter_versions(opset), "transformers": transformers.__version__},
            extra={"architecture": arch, "model_type": str(cfg.model_type), "pooling": note,
                   "image_processor": data["processor"], **dict(extra or {})},
        )
    except ValueError as exc:
        raise ExportError(f"{model_name}: invalid metadata: {exc}") from exc


def export_hf(source: str, out: str | Path, *, heads: str = "none",
              labels: str | Path | Sequence[str] | None = None, attentions: bool = True,
              opset: int | None = None, atol: float = 1e-4, gradients: bool = False, norms: bool = False,
              log: Callable[[str], None] = print) -> Any:
    """Load a transformers classifier (folder or ``hf:ORG/NAME``) and export it.

    Args:
        source: a ``save_pretrained`` folder or ``hf:ORG/NAME``.
        out: path of the ``.onnx`` file.
        heads: ``"none"``, ``"mean"``, ``"max"`` or ``"min"``.
        labels: class names overriding ``config.id2label``.
        attentions: False exports the logits only.
        opset: ONNX opset; None uses the exporter's default.
        atol: logits tolerance of the parity gate (scaled by the logit magnitude).
        gradients: also emit the gradient outputs (see :func:`export.to_onnx.export_module`).
        norms: also emit ``head_norms`` float32 ``[B, L, N, H+1]`` for the forward-only
            ``head-norm`` map (see :mod:`export.hf_norms`); needs ``heads="none"`` and
            attentions, without gradients.
        log: progress lines and parity figures.

    Returns:
        :class:`export.to_onnx.ExportReport`; ``meta.extra["weights"]`` says where the weights
        came from.

    Raises:
        ExportError: see :func:`export.hf_load.load_hf`, :func:`build_hf_meta`, and a failed
            trace or parity check (then no file is written).
    """
    from .to_onnx import _check_heads, _check_module, export_wrapped

    started = time.perf_counter()
    _check_heads(heads)
    if gradients:
        check_gradient_options(heads, attentions)
    check_forward_options(heads, attentions, gradients, False, norms=norms)
    model, processor, arch = load_hf(source, log)
    name = hf_model_name(source)
    _check_module(model, name)
    meta = build_hf_meta(model, processor, model_name=name, heads=heads, labels=labels, attentions=attentions,
                         gradients=gradients, opset=opset or 0, extra={"weights": f"transformers:{name}"})
    if norms:
        with HFWithNorms(model, image_size=meta.image_size) as wrapper:
            meta = meta.replace(outputs=wrapper.output_names)
            return export_wrapped(wrapper, meta, out, opset=opset, atol=atol, log=log, started=started)
    with HFWithAttention(model, heads=heads, attentions=attentions, image_size=meta.image_size) as wrapper:
        return export_wrapped(wrapper, meta, out, opset=opset, atol=atol, log=log, started=started)
