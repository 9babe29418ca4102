"""attnmap's export side (torch + timm): timm ViT-family models to self-describing ONNX files.

Only this package imports torch and timm; ``runtime/`` never imports it.
"""

from .labels import default_labels, read_labels, resolve_labels
from .parity import check_parity
from .to_onnx import ExportReport, export_module, export_onnx
from .vit_attn import ViTWithAttention, describe_tokens
from .weights import load_checkpoint, read_state_dict

__all__ = [
    "ExportReport", "export_onnx", "export_module", "check_parity", "ViTWithAttention", "describe_tokens",
    "load_checkpoint", "read_state_dict", "read_labels", "default_labels", "resolve_labels",
]
