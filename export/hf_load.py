"""Load a Hugging Face transformers image classifier and its image processor for export.

Sources: a ``save_pretrained`` folder (``config.json``, ``model.safetensors`` or
``pytorch_model.bin``, ``preprocessor_config.json``), or ``hf:ORG/NAME`` on the hub (probed
first, so an unreachable hub fails within seconds instead of after huggingface_hub's retries).
Only the classes in :data:`SUPPORTED` load; any other is refused by name, with the reason.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from attnmap.runtime.core.errors import ExportError

__all__ = ["HF_PREFIX", "SUPPORTED", "WEIGHT_FILES", "is_hf_source", "load_hf"]

HF_PREFIX = "hf:"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")

# class -> (pooling as ModelMeta names it, what feeds the classifier). Prefix kinds: describe_hf.
SUPPORTED: dict[str, tuple[str, str]] = {
    "ViTForImageClassification": ("token", "the class token"),
    "DeiTForImageClassification": ("token", "the class token"),
    "DeiTForImageClassificationWithTeacher": (
        "token", "the mean of two classifiers, on the class token and on the distillation token"),
    "BeitForImageClassification": ("avg", "the layer-normed mean of the patch tokens (use_mean_pooling)"),
    "Dinov2ForImageClassification": ("token", "the class token concatenated with the mean of the patch tokens"),
    "Dinov2WithRegistersForImageClassification": (
        "token", "the class token concatenated with the mean of the patch tokens (registers left out)"),
}
# model_type -> why attnmap cannot explain it the way it explains a ViT
_WHY_NOT = {
    "swin": "its attention runs inside local windows of a hierarchical feature map, not over one token sequence",
    "swinv2": "its attention runs inside local windows of a hierarchical feature map, not over one token sequence",
    "convnext": "it has no attention layers (a CNN)", "convnextv2": "it has no attention layers (a CNN)",
    "resnet": "it has no attention layers (a CNN)", "regnet": "it has no attention layers (a CNN)",
    "levit": "its attention runs on downsampled stages with a convolutional stem, not one token grid",
    "mobilevit": "it mixes convolutions with attention over unfolded patches, not one token sequence",
    "pvt": "its attention keys are spatially reduced, so its maps are not N x N over one sequence",
    "cvt": "its attention uses convolutional projections over stages of different grids",
}


def is_hf_source(name: str) -> bool:
    """True for ``hf:ORG/NAME`` and for an existing directory (a transformers model folder)."""
    return str(name).startswith(HF_PREFIX) or Path(name).is_dir()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _architecture(config: Any, source: str) -> str:
    """The transformers class to build, from ``config.architectures`` or the model type."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    archs = list(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", "?")
    arch = archs[0] if archs else MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(model_type)
    if arch in SUPPORTED:
        return arch
    why = _WHY_NOT.get(model_type)
    if why is None and arch is not None and not arch.endswith("ForImageClassification") \
            and not arch.endswith("WithTeacher"):
        why = "it is not an image classifier (attnmap explains the logits of a classification head)"
    why = why or "attnmap supports only the plain ViT-family classifiers listed here"
    raise ExportError(f"{source}: transformers class {arch or model_type!r} is not supported by attnmap export: "
                      f"{why} (supported: {', '.join(SUPPORTED)})")


def _local_files(path: Path) -> None:
    missing = [n for n in ("config.json", "preprocessor_config.json") if not (path / n).is_file()]
    if not any((path / n).is_file() for n in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES[::2]))
    if missing:
        raise ExportError(f"{path} is not a transformers model folder attnmap can export: it lacks "
                          f"{', '.join(missing)} (write one with model.save_pretrained(DIR) and "
                          "image_processor.save_pretrained(DIR))")


def _hub_location(source: str) -> str:
    from .weights import _probe

    repo = source[len(HF_PREFIX):]
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ExportError(f"{source!r}: expected hf:ORG/NAME, a Hugging Face hub repository")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        started = time.monotonic()
        reason = _probe(endpoint)
        if reason is not None:
            raise ExportError(f"could not reach the Hugging Face hub for {repo} ({reason}, after "
                              f"{time.monotonic() - started:.1f} s); save the model with save_pretrained and pass "
                              "its folder instead (or set HF_HUB_OFFLINE=1 to use the local cache)")
    return repo


def load_hf(source: str, log: Callable[[str], None] = print) -> tuple[nn.Module, Any, str]:
    """Load a transformers image classifier and its image processor, safely.

    Weights: ``model.safetensors``, or ``pytorch_model.bin`` read with
    ``torch.load(weights_only=True)`` (no pickled code runs); ``trust_remote_code`` stays off.
    Every parameter must come from the checkpoint: missing or mis-shaped keys are refused
    rather than left at random values.

    Args:
        source: a model folder, or ``hf:ORG/NAME`` (the hub is probed first, so an unreachable
            hub fails within seconds).
        log: progress messages.

    Returns:
        ``(model, processor, architecture)``: the model in eval mode on the CPU, float32, with
        eager attention; its image processor; its class name.

    Raises:
        ExportError: an incomplete folder, an unreachable hub, an unsupported class, weights that
            do not load or do not cover the model.
    """
    try:
        import transformers
        from transformers import AutoConfig, AutoImageProcessor
    except ImportError as exc:
        raise ExportError(f"{source}: exporting a transformers model needs `transformers` "
                          f"(pip install -e '.[export]'): {exc}") from exc
    local = not source.startswith(HF_PREFIX)
    if local:
        _local_files(Path(source))
        location = str(Path(source))
    else:
        location = _hub_location(source)
    opts = {"local_files_only": local, "trust_remote_code": False}
    try:
        config = AutoConfig.from_pretrained(location, **opts)
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{source}: transformers could not read its config.json: {_first_line(exc)}") from exc
    arch = _architecture(config, source)
    log(f"loading {arch} from {source}")
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per weight file on stderr; the log line above says it
    try:
        model, info = getattr(transformers, arch).from_pretrained(
            location, config=config, attn_implementation="eager", weights_only=True, dtype=torch.float32,
            output_loading_info=True, **opts)
        processor = AutoImageProcessor.from_pretrained(location, **opts)
    except Exception as exc:  # safetensors, pickle, OS and hub errors come in many types
        raise ExportError(f"{source}: transformers could not load the {arch} weights or image processor: "
                          f"{_first_line(exc)}") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    bad = [*info.get("missing_keys", ()), *(str(k[0]) if isinstance(k, tuple) else str(k)
                                            for k in info.get("mismatched_keys", ()))]
    if bad:
        raise ExportError(f"{source}: the checkpoint does not cover the {arch} model: {len(bad)} missing or "
                          f"mis-shaped parameters (e.g. {', '.join(sorted(bad)[:4])}); they would stay random")
    if info.get("unexpected_keys"):
        log(f"note: {len(info['unexpected_keys'])} checkpoint tensors unused by {arch} "
            f"(e.g. {sorted(info['unexpected_keys'])[0]})")
    return model.float().eval(), processor, arch
