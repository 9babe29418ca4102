"""Which onnxruntime execution providers to run on: names, the ``auto`` order, their options.

Chosen from what onnxruntime itself offers (``ort.get_available_providers()``), never from
torch; a provider that is asked for and not there is an error, never a silent fallback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import onnxruntime as ort

from attnmap.runtime.core.errors import ProviderError, suggest

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt", "openvino", "coreml")
ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider", "openvino": "OpenVINOExecutionProvider",
             "coreml": "CoreMLExecutionProvider"}
# What `auto` takes, first available wins. CUDA before TensorRT: TensorRT builds an engine on a
# session's first run (minutes for a ViT) and again for every new batch shape, and whether
# its attention fusion survives attnmap's attention outputs has not been measured here; so it
# is only used when asked for. (Where TensorRT is installed, CUDA is too.)
AUTO_ORDER = ("cuda", "tensorrt", "openvino", "coreml", "cpu")
# Where each accelerator's unsupported nodes run: TensorRT hands them to CUDA, then the CPU.
_CHAINS = {"cpu": ("cpu",), "cuda": ("cuda", "cpu"), "tensorrt": ("tensorrt", "cuda", "cpu"),
           "openvino": ("openvino", "cpu"), "coreml": ("coreml", "cpu")}
_INSTALL = {"cuda": "install onnxruntime-gpu with a matching CUDA",
            "tensorrt": "install onnxruntime-gpu built with TensorRT, and TensorRT itself",
            "openvino": "install onnxruntime-openvino", "coreml": "use the onnxruntime wheel for macOS"}
TRT_CACHE_ENV = "ATTNMAP_TRT_CACHE"


def resolve_providers(provider: str, available: Sequence[str] | None = None) -> list[str]:
    """Turn ``auto|cpu|cuda|tensorrt|openvino|coreml`` into an onnxruntime provider list.

    Args:
        provider: a name of :data:`PROVIDERS`, any case.
        available: onnxruntime's provider names (default ``ort.get_available_providers()``).

    Returns:
        The provider's onnxruntime name first, then where its unsupported nodes run (TensorRT:
        CUDA, then CPU; the others: CPU). ``auto`` takes the first of :data:`AUTO_ORDER` that
        onnxruntime offers.

    Raises:
        ProviderError: an unknown name, or a provider this onnxruntime does not offer (never a
            silent fallback to the CPU); the message names what it offers.
    """
    name = str(provider).lower()
    if name not in PROVIDERS:
        raise ProviderError(f"provider must be one of {', '.join(PROVIDERS)}; got {provider!r}."
                            + suggest(name, PROVIDERS))
    available = list(ort.get_available_providers() if available is None else available)
    if name == "auto":
        name = next(n for n in AUTO_ORDER if ORT_NAMES[n] in available or n == "cpu")
    if ORT_NAMES[name] not in available:
        raise ProviderError(
            f"provider {name!r} is not available in this onnxruntime (no {ORT_NAMES[name]}; it offers "
            f"{', '.join(available)}); {_INSTALL.get(name, 'reinstall onnxruntime')} for {name!r}, or use "
            "the cpu provider")
    return [ORT_NAMES[n] for n in _CHAINS[name] if ORT_NAMES[n] in available or n == "cpu"]


def short_name(provider: str) -> str:
    """The short name of an onnxruntime provider (``"CUDAExecutionProvider"`` -> ``"cuda"``).

    Args:
        provider: an onnxruntime provider name, as a session reports it
            (``session.get_providers()[0]``); a short name is returned as it is.

    Returns:
        ``"cpu"``, ``"cuda"``, ``"tensorrt"``, ``"openvino"`` or ``"coreml"``; a provider
        attnmap does not choose (``"AzureExecutionProvider"``) as its name without the
        ``ExecutionProvider`` suffix, lower-cased (``"azure"``).
    """
    for short, ort_name in ORT_NAMES.items():
        if provider in (ort_name, short):
            return short
    return str(provider).removesuffix("ExecutionProvider").lower()


def provider_options(providers: Sequence[str], trt_cache: str | Path | None = None,
                     first: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """Options for each provider of :func:`resolve_providers`' list.

    TensorRT gets a persistent engine cache (``trt_cache``, else ``$ATTNMAP_TRT_CACHE``, else
    ``~/.cache/attnmap/tensorrt``), so that only the first session per model and batch shape
    pays for the engine build. The others keep onnxruntime's defaults. ``first``: options for
    the chosen provider (the list's first), over attnmap's own, as onnxruntime names them
    (OpenVINO: ``{"load_config": '{"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}'}``).
    """
    out = []
    for name in providers:
        if name == ORT_NAMES["tensorrt"]:
            folder = Path(trt_cache or os.environ.get(TRT_CACHE_ENV) or Path.home() / ".cache/attnmap/tensorrt")
            out.append({"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(folder),
                        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(folder)})
        else:
            out.append({})
    if first and out:
        out[0] = {**out[0], **{str(k): str(v) for k, v in first.items()}}
    return out
