"""attnmap's export side (torch + timm, transformers optional): ViTs to self-describing ONNX files.

timm ViT-family models, and Hugging Face transformers ViT classifiers (:mod:`.hf_export`).

Only this package imports torch and timm; ``runtime/`` never imports it.
"""

from .labels import default_labels, read_labels, resolve_labels
from .parity import check_parity
from .to_onnx import ExportReport, export_module, export_onnx, export_wrapped
from .vit_attn import ViTWithAttention, describe_tokens
from .weights import load_checkpoint, read_state_dict

__all__ = [
    "ExportReport", "export_onnx", "export_module", "export_wrapped", "check_parity", "ViTWithAttention",
    "describe_tokens", "load_checkpoint", "read_state_dict", "read_labels", "default_labels", "resolve_labels",
]
