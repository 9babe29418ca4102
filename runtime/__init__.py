"""attnmap runtime: explain exported ViTs with onnxruntime, NumPy and OpenCV only.

This package never imports torch or timm, so it runs on edge devices with neither.
"""

from .api import Explainer, Explanation, TopK
from .errors import (AttnmapError, ExplainError, ExportError, ImageError, MetadataError, ModelError,
                     OptionError, ProviderError, SourceError)
from .meta import ModelMeta, TokenLayout
from .session import OnnxModel, Outputs

__version__ = "0.1.0"

__all__ = [
    "AttnmapError", "ExplainError", "ExportError", "Explainer", "Explanation", "ImageError", "MetadataError",
    "ModelError", "ModelMeta", "OnnxModel", "OptionError", "Outputs", "ProviderError", "SourceError",
    "TokenLayout", "TopK", "__version__",
]
