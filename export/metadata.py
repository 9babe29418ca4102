"""Build the :class:`attnmap.runtime.core.meta.ModelMeta` an export embeds, from the timm model itself."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from attnmap.runtime.core.errors import ExportError
from attnmap.runtime.core.meta import ModelMeta

from .gradients import GRADIENT_INPUTS, GRADIENT_OUTPUTS
from .labels import resolve_labels
from .vit_attn import attention_modules, describe_tokens

__all__ = ["DATA_CONFIG_KEYS", "attnmap_version", "exporter_versions", "resolve_data_config", "build_meta"]

DATA_CONFIG_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


def attnmap_version() -> str:
    """Version of attnmap: the installed distribution's, else the source tree's pyproject."""
    try:
        return importlib.metadata.version("attnmap")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        if pyproject.is_file():
            import tomllib

            with pyproject.open("rb") as fh:
                return str(tomllib.load(fh).get("project", {}).get("version", "unknown"))
        return "unknown"


def exporter_versions(opset: int) -> dict[str, str]:
    """Versions of the tools that write a file: attnmap, torch, timm, onnx and the opset."""
    import onnx
    import timm
    import torch

    return {"attnmap": attnmap_version(), "torch": torch.__version__, "timm": timm.__version__,
            "onnx": onnx.__version__, "opset": str(int(opset))}


def resolve_data_config(model: nn.Module, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The eval preprocessing of ``model``, as timm resolves it, at the model's real input size.

    timm's ``resolve_data_config`` reads ``pretrained_cfg``, which keeps the default
    resolution (e.g. 518 px for DINOv2) when the model was built with an ``img_size``
    override; the size the graph actually takes comes from ``patch_embed.img_size``.

    Args:
        model: a timm ViT-family model.
        overrides: values that win over timm's (keys from :data:`DATA_CONFIG_KEYS`), e.g. the
            mean and std a training script normalised with.

    Returns:
        ``{"input_size": (3, H, W), "mean", "std", "interpolation", "crop_pct", "crop_mode"}``.

    Raises:
        ExportError: an unknown override key, or an ``input_size`` the graph does not take.
    """
    from timm.data import resolve_data_config as timm_resolve

    in_chans = int(model.patch_embed.proj.weight.shape[1]) if hasattr(model.patch_embed, "proj") else 3
    img = tuple(int(v) for v in model.patch_embed.img_size)
    input_size = (in_chans, img[0], img[1])
    config = dict(timm_resolve({"input_size": input_size}, model=model))
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(DATA_CONFIG_KEYS))
    if unknown:
        raise ExportError(f"data_config keys must be among {DATA_CONFIG_KEYS}; got {unknown}")
    if "input_size" in overrides and tuple(overrides["input_size"]) != input_size:
        raise ExportError(f"data_config input_size {tuple(overrides['input_size'])} differs from the "
                          f"model's input {input_size}; rebuild the model with that img_size instead")
    config.update(overrides)
    config["input_size"] = input_size
    return {k: config[k] for k in DATA_CONFIG_KEYS}


def build_meta(model: nn.Module, *, model_name: str, heads: str, labels: str | Path | Sequence[str] | None,
               attentions: bool, opset: int, data_config: Mapping[str, Any] | None = None,
               extra: Mapping[str, Any] | None = None, gradients: bool = False) -> ModelMeta:
    """Describe an export of ``model`` as a :class:`ModelMeta`.

    Args:
        model: the timm ViT-family model being exported.
        model_name: timm name recorded in the file.
        heads: head fusion applied in the graph (``"none"``, ``"mean"``, ``"max"``, ``"min"``).
        labels: labels file, list of names, or None for the defaults (ImageNet names for an
            ImageNet-sized head, else none).
        attentions: whether the graph emits ``attentions``.
        opset: ONNX opset of the written graph.
        data_config: preprocessing overrides (see :func:`resolve_data_config`).
        extra: free-form notes stored in ``ModelMeta.extra``.
        gradients: whether the graph also takes ``target`` and emits ``attention_grads``,
            ``tokens`` and ``token_grads``.

    Returns:
        The validated metadata.

    Raises:
        ExportError: outside the ViT family, no classifier head, bad labels, invalid fields.
    """
    prefix, grid, pooling = describe_tokens(model)
    mods = attention_modules(model)
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if num_classes <= 0:
        raise ExportError(f"{model_name} has no classifier head (num_classes={num_classes}); build it with "
                          "num_classes=N (e.g. model_kwargs={'num_classes': 1000}) so the graph has logits")
    label_names = resolve_labels(labels, num_classes)
    config = resolve_data_config(model, data_config)
    patch = tuple(int(v) for v in model.patch_embed.patch_size)
    try:
        return ModelMeta(
            model_name=model_name,
            input_size=tuple(int(v) for v in config["input_size"]),
            mean=tuple(float(v) for v in config["mean"]),
            std=tuple(float(v) for v in config["std"]),
            interpolation=str(config["interpolation"]),
            crop_pct=float(config["crop_pct"]),
            crop_mode=str(config["crop_mode"]),
            patch_size=patch,
            grid_size=grid,
            prefix_tokens=prefix,
            pooling=pooling,
            num_layers=len(mods),
            num_heads=int(mods[0].num_heads),
            head_fusion=heads,
            num_classes=num_classes,
            label_names=label_names,
            outputs=GRADIENT_OUTPUTS if gradients else ("logits", "attentions") if attentions else ("logits",),
            inputs=GRADIENT_INPUTS if gradients else ("input",),
            exporter=exporter_versions(opset),
            extra=dict(extra or {}),
        )
    except ValueError as exc:
        raise ExportError(f"{model_name}: invalid metadata: {exc}") from exc
