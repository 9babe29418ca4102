"""Hugging Face transformers ViTs as attnmap exports: loading, the architectures, attention capture.

``attnmap export DIR`` (a ``save_pretrained`` folder: ``config.json``, ``model.safetensors`` or
``pytorch_model.bin``, ``preprocessor_config.json``) and ``attnmap export hf:ORG/NAME`` take a
transformers image classifier as it is. Supported: :data:`SUPPORTED` (ViT, DeiT with and without
the teacher head, BEiT, DINOv2 and DINOv2 with registers); any other class is refused by name.

How the probabilities are captured. Every supported attention module computes
``attention_interface(module, q, k, v, mask, ...)``, where the interface is looked up by
``config._attn_implementation`` in transformers' ``AttentionInterface`` registry.
:class:`HFWithAttention` registers one more implementation, :data:`CAPTURE`, that calls the
model's own ``eager_attention_forward`` (``softmax(q kᵀ · scale + mask)``, BEiT's relative
position bias arriving as the mask) and hands the probabilities to the wrapper. For the
gradient export it adds ``delta_l @ v`` to the output, which is ``(probs + delta_l) @ v``
with the model's own product left untouched, so ``d y / d delta_l = d y / d probs_l``, the
hook point :class:`export.gradients.AttentionGradients` differentiates (with a zero delta the
numbers do not change). The wrapper switches the model's ``_attn_implementation`` to
:data:`CAPTURE` and back on :meth:`HFWithAttention.close`. The parity gate's reference,
:meth:`HFWithAttention.reference`, is transformers itself: the model with
``attn_implementation="eager"`` called with ``output_attentions=True``.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Sequence

import torch
from torch import nn

from attnmap.runtime.core.errors import ExportError

from .gradients import AttentionGradients, check_gradient_options
from .hf_load import SUPPORTED
from .vit_attn import _fuse_heads

__all__ = ["CAPTURE", "HFWithAttention",
           "HFAttentionGradients", "describe_hf", "patch_grid"]

CAPTURE = "attnmap_capture"


# ---------------------------------------------------------------------------------- the model
def _attention_class(model: nn.Module) -> type:
    recorded = getattr(model, "_can_record_outputs", None) or {}
    target = recorded.get("attentions")
    target = getattr(target, "target_class", target)
    if not isinstance(target, type):
        raise ExportError(f"{type(model).__name__} does not declare its attention module "
                          "(_can_record_outputs['attentions']); this transformers version is not supported")
    return target


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    cls = _attention_class(model)
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, cls)]
    if len(mods) != int(model.config.num_hidden_layers):
        raise ExportError(f"{type(model).__name__}: found {len(mods)} {cls.__name__} modules for "
                          f"{model.config.num_hidden_layers} layers")
    return mods


def describe_hf(model: nn.Module) -> tuple[tuple[str, ...], str, str]:
    """Token layout and pooling of a supported transformers classifier.

    Returns:
        ``(prefix_kinds, pooling, note)``: prefix kinds in sequence order (class token, then
        the distillation token or the register tokens), ``"token"`` or ``"avg"`` as
        ModelMeta names it, and a sentence saying exactly what the classifier reads.

    Raises:
        ExportError: a class outside :data:`SUPPORTED`.
    """
    arch, cfg = type(model).__name__, model.config
    if arch not in SUPPORTED:
        raise ExportError(f"transformers class {arch} is not supported (supported: {', '.join(SUPPORTED)})")
    kinds: tuple[str, ...] = ("class",)
    if arch.startswith("DeiT"):
        kinds = ("class", "distillation")
    elif arch.startswith("Dinov2WithRegisters"):
        kinds = ("class",) + ("register",) * int(cfg.num_register_tokens)
    pooling, note = SUPPORTED[arch]
    if arch.startswith("Beit") and not cfg.use_mean_pooling:
        pooling, note = "token", "the class token (use_mean_pooling=False)"
    return kinds, pooling, note


def _eager_of(module: nn.Module) -> Callable:
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise ExportError(f"{type(module).__name__}: its module has no eager_attention_forward to capture")
    return fn


def _capture_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """The :data:`CAPTURE` attention implementation: the model's eager attention, observed."""
    out, probs = _eager_of(module)(module, query, key, value, attention_mask, **kwargs)
    record = getattr(module, "_attnmap_record", None)
    if record is not None:
        out = record(probs, value, out)
    return out, probs


@functools.lru_cache(maxsize=1)
def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(CAPTURE, _capture_attention)


class HFWithAttention(nn.Module):
    """A transformers classifier that also returns its per-layer attention probabilities.

    The counterpart of :class:`export.vit_attn.ViTWithAttention` (same ``forward``,
    ``set_deltas``, ``close`` and attributes), so the exporter and parity gate treat both alike.

    Args:
        model: a supported transformers classifier (:data:`SUPPORTED`), eval mode, float32.
        heads: ``"none"``, or ``"mean"``, ``"max"``, ``"min"`` to fuse the heads (H becomes 1).
        attentions: when False, ``forward`` returns the logits only.
        image_size: ``(H, W)`` of the input it will get; None: the config's ``image_size``.
    """

    def __init__(self, model: nn.Module, heads: str = "none", attentions: bool = True,
                 image_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        prefix, _, _ = describe_hf(model)
        self.grid = patch_grid(model, image_size)
        self.num_tokens = len(prefix) + self.grid[0] * self.grid[1]
        _register()
        mods = _attention_modules(model)
        self.model = model
        self.training = model.training
        self.heads, self.attentions = heads, bool(attentions)
        self.num_layers = len(mods)
        self.num_heads = int(model.config.num_attention_heads)
        self._captured: list[torch.Tensor] = []
        self._capturing = False
        self._deltas: list[torch.Tensor | None] | None = None
        self._block_name = mods[-1][0].rsplit(".", 1)[0]
        configs = {id(m.config): m.config for _, m in mods} | {id(model.config): model.config}
        self._saved = [(c, c._attn_implementation) for c in configs.values()]
        for c, _ in self._saved:
            c._attn_implementation = CAPTURE
        self._mods = [m for _, m in mods]
        for i, m in enumerate(self._mods):
            m._attnmap_record = functools.partial(self._record, i)
        # BEiT's relative position bias caches its index per window size (an lru_cache on the
        # method). The gradient trace (make_fx, symbolic shapes) hands it SymInts, which cannot
        # be hashed, and a cached index made during a trace is a fake tensor that later eager
        # calls would get back. So, while wrapped, the window size is given as plain ints (it is
        # fixed by the input size) and the index is built uncached; close() undoes both.
        self._patched = [m for m in model.modules() if type(m).__name__ == "BeitRelativePositionBias"]
        for m in self._patched:
            m.forward = functools.partial(_static_window, type(m).forward.__get__(m))
            uncached = getattr(type(m).generate_relative_position_index, "__wrapped__", None)
            if uncached is not None:
                m.generate_relative_position_index = uncached  # a staticmethod: no self

    def _record(self, index: int, probs: torch.Tensor, value: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if not self._capturing:
            return out
        delta = self._deltas[index] if self._deltas is not None else None
        if delta is not None:  # (probs + delta) @ v, leaving the model's own product as it is
            out = out + torch.matmul(delta, value).transpose(1, 2)
        self._captured.append(probs)
        return out

    def set_deltas(self, deltas: Sequence[torch.Tensor | None] | None) -> None:
        """Make layer ``l`` use ``probs_l + deltas[l]`` (see :meth:`ViTWithAttention.set_deltas`)."""
        if deltas is not None and len(deltas) != self.num_layers:
            raise ExportError(f"set_deltas needs {self.num_layers} tensors (one per layer); got {len(deltas)}")
        self._deltas = list(deltas) if deltas is not None else None

    def _stack(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(probs) != self.num_layers:
            raise ExportError(f"captured {len(probs)} attention maps from {self.num_layers} layers")
        if self.heads != "none":
            probs = [_fuse_heads(p, self.heads) for p in probs]
        return torch.stack(list(probs), dim=1)

    def forward(self, x: torch.Tensor):
        """``x`` float32 ``[B, 3, H, W]`` -> ``(logits [B, C], attentions [B, L, H, N, N])``
        (logits only when built with ``attentions=False``)."""
        if not self.attentions:
            return self.model(pixel_values=x).logits
        self._captured, self._capturing = [], True
        try:
            logits = self.model(pixel_values=x).logits
        finally:
            self._capturing = False
        probs, self._captured = self._captured, []
        return logits, self._stack(probs)

    @torch.no_grad()
    def reference(self, x: torch.Tensor):
        """The same outputs from transformers itself: eager attention, ``output_attentions=True``."""
        for c, _ in self._saved:
            c._attn_implementation = "eager"
        try:
            out = self.model(pixel_values=x, output_attentions=self.attentions)
        finally:
            for c, _ in self._saved:
                c._attn_implementation = CAPTURE
        return (out.logits, self._stack(out.attentions)) if self.attentions else out.logits

    def token_layer(self) -> nn.Module:
        """The last layer's pre-attention LayerNorm, whose output Grad-CAM reads (``tokens``)."""
        block = self.model.get_submodule(self._block_name)
        norm = getattr(block, "layernorm_before", None) or getattr(block, "norm1", None)
        if not isinstance(norm, nn.Module):
            raise ExportError(f"{type(self.model).__name__}: the last layer ({type(block).__name__}) has no "
                              "layernorm_before/norm1 for Grad-CAM's token features")
        return norm

    def gradient_module(self) -> "HFAttentionGradients":
        """The ``(input, target) -> gradients`` module of :mod:`export.gradients` for this model."""
        return HFAttentionGradients(self)

    def close(self) -> None:
        """Restore the attention implementation and drop the capture hooks."""
        for m in self._patched:
            m.__dict__.pop("forward", None)
            m.__dict__.pop("generate_relative_position_index", None)
        self._patched = []
        for m in self._mods:
            m.__dict__.pop("_attnmap_record", None)
        self._mods = []
        for c, impl in self._saved:
            c._attn_implementation = impl
        self._saved = []

    def __enter__(self) -> "HFWithAttention":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _static_window(forward: Callable, window_size, interpolate_pos_encoding: bool = False, dim_size=None):
    """BEiT's relative position bias with the window size and sequence length as plain ints."""
    return forward((int(window_size[0]), int(window_size[1])), interpolate_pos_encoding,
                   dim_size=None if dim_size is None else int(dim_size))


class HFAttentionGradients(AttentionGradients):
    """:class:`export.gradients.AttentionGradients` over a :class:`HFWithAttention`.

    Same outputs; ``tokens`` is the last layer's pre-attention LayerNorm output
    (``layernorm_before``, DINOv2's ``norm1``), the tensor timm models give from ``norm1``.
    """

    def __init__(self, wrapper: HFWithAttention) -> None:
        nn.Module.__init__(self)
        check_gradient_options(wrapper.heads, wrapper.attentions)
        self.wrapper = wrapper
        self.training = wrapper.training
        self.num_tokens = wrapper.num_tokens
        self._token_layer = [wrapper.token_layer()]


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def patch_grid(model: nn.Module, image_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(rows, cols)`` of the patch grid for an ``image_size`` input (default: the config's).

    Raises:
        ExportError: the size is not a whole number of patches, or differs from the config's
            for a model that cannot interpolate its position embeddings (all but DINOv2).
    """
    cfg, arch = model.config, type(model).__name__
    native, patch = _pair(cfg.image_size), _pair(cfg.patch_size)
    size = _pair(image_size) if image_size is not None else native
    if size[0] % patch[0] or size[1] % patch[1]:
        raise ExportError(f"{arch}: input {size[0]}x{size[1]} is not a whole number of {patch[0]}x{patch[1]} patches")
    if size != native and not arch.startswith("Dinov2"):
        raise ExportError(f"{arch} was built for {native[0]}x{native[1]} inputs but its image processor makes "
                          f"{size[0]}x{size[1]}; only DINOv2 interpolates its position embeddings to other sizes")
    return size[0] // patch[0], size[1] // patch[1]
