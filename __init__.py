"""attnmap: see what a Vision Transformer looks at.

The public Python API, imported lazily so that ``import attnmap`` (and ``attnmap --help``)
does not load onnxruntime, OpenCV or NumPy until something is used::

    from attnmap import Explainer, OverlayStyle
    ex = Explainer("deit_tiny.onnx")
    result = ex.explain(image_bgr)                  # an Explanation
    drawn = result.overlay(OverlayStyle(colormap="inferno"))

The repository's folders are this package's parts: ``attnmap.runtime`` (``runtime/``: numpy,
onnxruntime and OpenCV only, never torch), ``attnmap.export`` (``export/``: torch and timm, the
workstation side) and ``attnmap.cli`` (``cli.py``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

# public name -> module that defines it
_EXPORTS = {
    "Explainer": "attnmap.runtime.engine.explainer",
    "Explanation": "attnmap.runtime.engine.explainer",
    "TopK": "attnmap.runtime.engine.explainer",
    "FrameEngine": "attnmap.runtime.engine.engine",
    "ItemResult": "attnmap.runtime.engine.job",
    "Job": "attnmap.runtime.engine.job",
    "StageClock": "attnmap.runtime.engine.clock",
    "OverlayStyle": "attnmap.runtime.draw.style",
    "METHODS": "attnmap.runtime.methods",
    "ModelMeta": "attnmap.runtime.core.meta",
    "TokenLayout": "attnmap.runtime.core.meta",
    "OnnxModel": "attnmap.runtime.model.session",
    "Outputs": "attnmap.runtime.model.session",
    "AttnmapError": "attnmap.runtime.core.errors",
    "ExplainError": "attnmap.runtime.core.errors",
    "ExportError": "attnmap.runtime.core.errors",
    "ImageError": "attnmap.runtime.core.errors",
    "MetadataError": "attnmap.runtime.core.errors",
    "ModelError": "attnmap.runtime.core.errors",
    "OptionError": "attnmap.runtime.core.errors",
    "ProviderError": "attnmap.runtime.core.errors",
    "OutputError": "attnmap.runtime.core.errors",
    "DisplayError": "attnmap.runtime.core.errors",
    "InputError": "attnmap.runtime.core.errors",
    "GraphMismatchError": "attnmap.runtime.core.errors",
    "MethodOptionError": "attnmap.runtime.core.errors",
    "SourceError": "attnmap.runtime.core.errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'attnmap' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
