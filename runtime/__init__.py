"""attnmap runtime: explain exported ViTs with onnxruntime, NumPy and OpenCV only.

This package never imports torch or timm, so it runs on edge devices with neither.
"""

import os as _os

# onnxruntime owns the cores; NumPy's work here (resampling matrices, rollout's vector-matrix
# products) is small and, on a busy 2-core box, OpenBLAS's worker threads fighting ORT's turned
# a 0.6 ms resize into 80-180 ms. One BLAS thread, unless the user chose otherwise. This only
# takes effect when runtime is imported before NumPy (the CLI always is).
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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
