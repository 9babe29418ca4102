"""Weights for an export: local checkpoints (strict), the timm hub, or random init.

Local files: ``.safetensors``; ``.pth`` / ``.pt`` / ``.bin`` read with
``torch.load(weights_only=True)`` (no pickled code runs), unwrapping the usual containers
(``{"model": sd}``, ``{"state_dict": sd}``, ``{"model_ema": sd}``) and a DDP ``module.`` prefix;
``.npz`` JAX/Flax ViT checkpoints through timm's own converter (``model.load_pretrained``).
State dicts load strictly. When they do not fit as they are, timm's ``checkpoint_filter_fn`` for
the model's architecture is tried once (it maps original DeiT/DINOv2/EVA/BEiT key names and
resizes position embeddings to an ``img_size`` override), and the load must then be strict too.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import torch
from torch import nn

from attnmap.runtime.core.errors import ExportError

__all__ = ["CHECKPOINT_SUFFIXES", "read_state_dict", "checkpoint_num_classes", "load_checkpoint",
           "load_state_dict_strict", "create_pretrained", "hub_endpoint", "head_classes"]

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
_CONTAINER_KEYS = ("state_dict", "model", "model_ema", "state_dict_ema", "module")
HUB_PROBE_TIMEOUT_S = 3.0


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"checkpoint {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ExportError(f"checkpoint {path} has an unsupported extension {suffix or '(none)'!r}; "
                          f"expected one of {CHECKPOINT_SUFFIXES}")
    return path


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensor mapping inside a training checkpoint container."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if not isinstance(obj, Mapping):
            raise ExportError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise ExportError(f"checkpoint {path} is a dict with keys {sorted(map(str, obj))[:6]} but no "
                              f"tensor state dict (looked under {_CONTAINER_KEYS})")
        obj = inner
    else:
        raise ExportError(f"checkpoint {path}: no tensor state dict found within 3 levels of nesting")
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state dict.

    Args:
        path: ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` file.

    Returns:
        Parameter name -> tensor (CPU).

    Raises:
        ExportError: missing file, unsupported or unreadable format, no state dict inside.
    """
    path = _check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        raise ExportError(f"checkpoint {path} is a JAX .npz; load it with load_checkpoint(model, path)")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for corrupt or foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"checkpoint {path} cannot be read as {suffix} ({first})") from exc
    return _unwrap(obj, path)


def checkpoint_num_classes(path: str | Path) -> int | None:
    """Number of classes of the classifier head stored in a checkpoint, if it has one.

    Args:
        path: a checkpoint file (any supported format).

    Returns:
        Rows of ``head.weight`` (or the JAX ``head/bias`` length), or None without a head.
    """
    path = _check_file(path)
    if path.suffix.lower() == ".npz":
        import numpy as np

        with np.load(str(path)) as npz:
            key = next((k for k in npz.files if k.endswith("head/bias")), None)
            return int(npz[key].shape[-1]) if key is not None else None
    return head_classes(read_state_dict(path))


def head_classes(sd: Mapping[str, torch.Tensor]) -> int | None:
    """Rows of the classifier ``head.weight`` in a state dict, or None without a head.

    Args:
        sd: parameter name -> tensor.

    Returns:
        The number of classes the checkpoint's head predicts, or None.
    """
    head = sd.get("head.weight")
    return int(head.shape[0]) if head is not None and head.ndim == 2 else None


def _mismatch(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape))
    return missing, unexpected, shapes


def _describe(missing: list[str], unexpected: list[str], shapes: list[str], n: int = 4) -> str:
    parts = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
            parts.append(f"{len(keys)} {title}: {', '.join(keys[:n])}{more}")
    return "; ".join(parts)


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str,
                           log: Callable[[str], None] = print) -> None:
    """Load ``sd`` into ``model`` strictly, trying timm's checkpoint filter once if needed.

    Args:
        model: the timm model to fill.
        sd: parameter name -> tensor.
        source: what ``sd`` came from, for messages (e.g. the file name).
        log: receives one line when timm's converter was needed.

    Raises:
        ExportError: keys or shapes still do not match; lists a few of each.
    """
    problems = _mismatch(model, sd)
    if any(problems):
        filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        converted = None
        if filter_fn is not None:
            try:
                converted = filter_fn(dict(sd), model)
            except (KeyError, IndexError, RuntimeError, ValueError, TypeError, AttributeError):
                converted = None
        if converted is not None and not any(_mismatch(model, converted)):
            log(f"checkpoint {source}: converted with timm's {type(model).__module__}.checkpoint_filter_fn")
            sd = converted
        else:
            raise ExportError(f"checkpoint {source} does not fit {type(model).__name__} "
                              f"(strict load): {_describe(*problems)}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"checkpoint {source} does not fit {type(model).__name__}: "
                          f"{str(exc).splitlines()[0]}") from exc


def _load_npz(model: nn.Module, path: Path) -> None:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer) or not hasattr(model, "load_pretrained"):
        raise ExportError(f"checkpoint {path} is a JAX .npz, which timm loads into VisionTransformer "
                          f"models only; got {type(model).__name__}")
    import numpy as np

    with np.load(str(path)) as npz:
        keys = set(npz.files)
    head = getattr(model, "head", None)
    # timm's converter skips a head whose size differs without saying so; strictness means
    # refusing that instead of exporting a random classifier.
    if isinstance(head, nn.Linear):
        bias_key = next((k for k in keys if k.endswith("head/bias")), None)
        if bias_key is None:
            raise ExportError(f"checkpoint {path} has no classifier head (head/bias) for the model's "
                              f"{head.out_features}-class head")
        with np.load(str(path)) as npz:
            n = int(npz[bias_key].shape[-1])
        if n != head.out_features:
            raise ExportError(f"checkpoint {path} has a {n}-class head; the model has {head.out_features} classes")
    try:
        model.load_pretrained(str(path))
    except KeyError as exc:
        raise ExportError(f"checkpoint {path} lacks {exc} for {type(model).__name__}") from exc
    except (RuntimeError, ValueError) as exc:
        raise ExportError(f"checkpoint {path} does not fit {type(model).__name__}: "
                          f"{str(exc).splitlines()[0]}") from exc


def load_checkpoint(model: nn.Module, path: str | Path, log: Callable[[str], None] = print) -> None:
    """Fill ``model`` from a local checkpoint file, strictly.

    Args:
        model: the timm model (already built with the matching architecture and sizes).
        path: ``.safetensors``, ``.pth``/``.pt``/``.bin`` or ``.npz`` (JAX ViT) file.
        log: progress messages.

    Raises:
        ExportError: missing file, unsupported extension, unreadable file, key or shape mismatch.
    """
    path = _check_file(path)
    if path.suffix.lower() == ".npz":
        _load_npz(model, path)
    else:
        load_state_dict_strict(model, read_state_dict(path), path.name, log)
    log(f"loaded weights from {path}")


def hub_endpoint(model_name: str) -> str:
    """URL of the server timm would download ``model_name``'s pretrained weights from.

    Args:
        model_name: timm name, with or without a pretrained tag.

    Returns:
        The Hugging Face endpoint (``$HF_ENDPOINT`` or ``https://huggingface.co``) for hub
        weights, else the weights' own URL.

    Raises:
        ExportError: timm knows no pretrained weights for this name.
    """
    import timm.models

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except RuntimeError as exc:
        raise ExportError(f"{model_name}: {exc}") from exc
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ExportError(f"timm has no pretrained weights for {model_name}; pass a checkpoint file instead")
    if cfg.hf_hub_id:
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return cfg.url


def _probe(url: str) -> str | None:
    """Try a TCP connection to the host (or the HTTPS proxy); None when it answers, else why not."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy if proxy else url)
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    if not host:
        return f"cannot parse a host from {url!r}"
    try:
        with socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


def create_pretrained(model_name: str, kwargs: Mapping[str, Any], log: Callable[[str], None] = print) -> nn.Module:
    """Build a timm model with its pretrained weights from the hub.

    The hub is probed first with a short TCP connection, because an unreachable hub makes
    huggingface_hub retry for most of a minute before failing. ``HF_HUB_OFFLINE=1`` skips the
    probe and lets timm use its local cache.

    Args:
        model_name: timm name, with or without a pretrained tag.
        kwargs: extra ``timm.create_model`` keyword arguments (``img_size``, ``num_classes`` ...).
        log: progress messages.

    Returns:
        The model in eval mode.

    Raises:
        ExportError: the hub cannot be reached, or the download or load fails.
    """
    import timm

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not offline:
        endpoint = hub_endpoint(model_name)
        started = time.monotonic()
        reason = _probe(endpoint)
        if reason is not None:
            raise ExportError(
                f"could not reach the model hub for {model_name}'s pretrained weights ({reason}, after "
                f"{time.monotonic() - started:.1f} s); pass --checkpoint FILE with local weights instead "
                "(or set HF_HUB_OFFLINE=1 to use timm's cache)")
    log(f"downloading pretrained weights for {model_name}")
    try:
        model = timm.create_model(model_name, pretrained=True, **dict(kwargs))
    except Exception as exc:  # hub, HTTP and file errors come in many types; all mean "no weights"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"could not load pretrained weights for {model_name} ({first}); "
                          "give a checkpoint file with local weights instead") from exc
    return model.eval()
