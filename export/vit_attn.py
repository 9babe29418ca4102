"""Capture the softmax attention probabilities of a timm ViT-family model.

:class:`ViTWithAttention` wraps an unmodified timm model and returns ``(logits, attentions)``
with ``attentions`` shaped ``[B, L, H, N, N]``: block ``l``'s probabilities
``softmax(q kᵀ / sqrt(d) + bias)`` for every head, stacked across blocks.

How they are captured: every supported timm attention module runs, when its ``fused_attn``
flag is off, ``attn = softmax(...)``, then ``attn = self.attn_drop(attn)``, then ``attn @ v``.
``attn_drop`` is an identity in eval mode, so a forward hook on it sees exactly the tensor the
block multiplies with ``v``. The wrapper turns ``fused_attn`` off (timm reads it at forward time;
``F.scaled_dot_product_attention`` never exposes the probabilities) and registers the hooks;
:meth:`ViTWithAttention.close` (or leaving its ``with`` block) restores the flags and removes the
hooks, so the wrapped model is left as it was found. timm's parameter names are untouched, so
``load_state_dict(strict=True)`` keeps working on the wrapped model.

Hook point for gradients: :meth:`ViTWithAttention.set_deltas` makes each block use
``probs_l + delta_l`` instead of ``probs_l``. With zero deltas nothing changes numerically, and
``d y / d delta_l`` equals ``d y / d probs_l``, the attention gradient that class-specific methods
(Chefer et al. 2021, Grad-SAM) need.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import nn

from attnmap.runtime.core.errors import ExportError
from attnmap.runtime.core.meta import EXPORT_HEAD_FUSIONS, POOLINGS

__all__ = ["ViTWithAttention", "describe_tokens", "attention_modules", "supported_attention_types"]


def supported_attention_types() -> tuple[type, ...]:
    """Attention classes whose forward is ``softmax -> attn_drop -> @ v`` over one sequence.

    Returns:
        The timm classes (plain ViT/DeiT/DINOv2 ``Attention``, ``AttentionRope``, EVA's
        ``EvaAttention`` and BEiT's ``Attention``) whose probabilities the hooks capture.
    """
    from timm.layers.attention import Attention, AttentionRope
    from timm.models.beit import Attention as BeitAttention
    from timm.models.eva import EvaAttention

    return (Attention, AttentionRope, EvaAttention, BeitAttention)


def _model_label(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture") if isinstance(cfg, dict) else None
    return f"{name} ({type(model).__name__})" if name else type(model).__name__


def _why_outside_family(model: nn.Module) -> str:
    """One-line reason a model has no single-sequence softmax attention to capture."""
    names = [type(m).__name__ for m in model.modules()]
    if any("Window" in n or "Swin" in n for n in names) or "Swin" in type(model).__name__:
        return ("its attention runs inside local windows of a hierarchical feature map "
                "(Swin-style), not over one token sequence")
    if not any("attn" in n.lower() or "attention" in n.lower() for n in names):
        return "it has no attention layers (a CNN or MLP model)"
    return "it lacks the ViT layout (model.patch_embed with a grid_size, and model.blocks)"


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Return each block's attention module, in block order.

    Args:
        model: a timm ViT-family model (``VisionTransformer``, ``VisionTransformerDistilled``,
            ``Eva``, ``Beit``).

    Returns:
        One attention module per block (length L).

    Raises:
        ExportError: the model is outside the family (no ``blocks``/``patch_embed``, a block
            without a supported single-sequence softmax attention).
    """
    label = _model_label(model)
    blocks = getattr(model, "blocks", None)
    patch_embed = getattr(model, "patch_embed", None)
    if not isinstance(blocks, nn.Module) or getattr(patch_embed, "grid_size", None) is None:
        raise ExportError(f"{label} is outside the ViT family attnmap exports: {_why_outside_family(model)}")
    supported = supported_attention_types()
    mods = []
    for i, block in enumerate(blocks.children()):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, supported) or not isinstance(getattr(attn, "attn_drop", None), nn.Dropout):
            kind = type(attn).__name__ if attn is not None else "no 'attn' module"
            raise ExportError(
                f"{label} is outside the ViT family attnmap exports: block {i} ({type(block).__name__}) "
                f"has {kind}, not one softmax attention over the token sequence "
                f"(supported: {', '.join(t.__module__.split('.')[-1] + '.' + t.__name__ for t in supported)})")
        mods.append(attn)
    if not mods:
        raise ExportError(f"{label} has no transformer blocks (model.blocks is empty)")
    return mods


def describe_tokens(model: nn.Module) -> tuple[tuple[str, ...], tuple[int, int], str]:
    """Describe the token sequence of a timm ViT-family model.

    Prefix kinds follow the order in which timm concatenates the tokens in ``_pos_embed``:
    class token first, then the distillation token (distilled DeiT) or the register tokens.

    Args:
        model: a timm ViT-family model.

    Returns:
        ``(prefix_kinds, grid, pooling)``: the kinds (``"class"``, ``"distillation"``,
        ``"register"``) of the tokens before the patches, in sequence order; the patch grid
        ``(rows, cols)`` from ``patch_embed.grid_size``; and ``"token"`` or ``"avg"``.

    Raises:
        ExportError: the model is outside the family, or pools with anything other than the
            class token or a mean over the patch tokens (e.g. ``'map'`` attention pooling).
    """
    attention_modules(model)  # raises outside the family
    label = _model_label(model)
    kinds: list[str] = []
    if getattr(model, "cls_token", None) is not None:
        kinds.append("class")
    if getattr(model, "dist_token", None) is not None:
        kinds.append("distillation")
    reg = getattr(model, "reg_token", None)
    if reg is not None:
        kinds.extend(["register"] * int(reg.shape[1]))
    declared = int(getattr(model, "num_prefix_tokens", len(kinds)))
    if declared != len(kinds):
        raise ExportError(
            f"{label}: found prefix tokens {kinds} but the model declares num_prefix_tokens={declared}; "
            "its token layout is not one attnmap understands")

    pool = getattr(model, "global_pool", None)
    if getattr(model, "attn_pool", None) is not None or pool not in POOLINGS:
        raise ExportError(
            f"{label}: pooling {pool!r} is not supported; attnmap explains models that pool with the "
            "class token ('token') or the mean of the patch tokens ('avg')")
    if pool == "avg" and getattr(model, "pool_include_prefix", False):
        raise ExportError(f"{label}: 'avg' pooling that includes the prefix tokens is not supported")
    if pool == "token" and (not kinds or kinds[0] != "class"):
        raise ExportError(f"{label}: 'token' pooling needs a class token first; prefix tokens are {kinds}")

    rows, cols = (int(v) for v in model.patch_embed.grid_size)
    return tuple(kinds), (rows, cols), str(pool)


def _fuse_heads(p: torch.Tensor, how: str) -> torch.Tensor:
    """Fuse the heads of one layer's (B, H, N, N) probabilities into (B, 1, N, N).

    The mean is one matrix product, (1/H, ..., 1/H) @ (H, N*N) per image: onnxruntime's CPU
    ReduceMean over the middle axis took about 80 us per DeiT-Tiny layer, and per-head
    element-wise ops cost as much again in thread-pool dispatches. Max and min stay
    element-wise (Max, Min over the heads).
    """
    b, h, n, _ = p.shape
    if how == "mean":
        weights = torch.full((1, h), 1.0 / h, dtype=p.dtype, device=p.device)
        return torch.matmul(weights, p.reshape(b, h, n * n)).reshape(b, 1, n, n)
    heads = p.unbind(1)
    fused = functools.reduce(torch.maximum if how == "max" else torch.minimum, heads)
    return fused.unsqueeze(1)


class ViTWithAttention(nn.Module):
    """A timm ViT that also returns its per-block attention probabilities.

    Args:
        model: a timm ViT-family model; it is used as is (same parameters, same names).
        heads: ``"none"`` keeps every head; ``"mean"``, ``"max"`` or ``"min"`` fuses them over
            the head axis (H becomes 1).
        attentions: when False, ``forward`` returns the logits only (the same model, no hooks).

    Use it as a context manager, or call :meth:`close`, to undo the changes made to ``model``
    (the ``fused_attn`` flags and the hooks).
    """

    def __init__(self, model: nn.Module, heads: str = "none", attentions: bool = True) -> None:
        super().__init__()
        if heads not in EXPORT_HEAD_FUSIONS:
            raise ExportError(f"heads must be one of {EXPORT_HEAD_FUSIONS}; got {heads!r}")
        mods = attention_modules(model)
        self.model = model
        # A fresh nn.Module starts in training mode; mirror the model's mode instead, so
        # exporters do not warn and the wrapper never flips the model's own mode.
        self.training = model.training
        self.heads = heads
        self.attentions = bool(attentions)
        self.num_layers = len(mods)
        self.num_heads = int(mods[0].num_heads)
        self._captured: list[torch.Tensor] = []
        self._capturing = False
        self._deltas: list[torch.Tensor | None] | None = None
        # timm reads `fused_attn` at forward time; with it on, SDPA hides the probabilities.
        # The exporter also needs the explicit softmax path in the baseline (attentions=False)
        # so that both files compute the same thing.
        self._saved_flags = [(m, m.fused_attn) for m in mods]
        for m in mods:
            m.fused_attn = False
        self._handles = []
        if self.attentions:
            for i, m in enumerate(mods):
                self._handles.append(m.attn_drop.register_forward_hook(functools.partial(self._hook, i)))

    # ------------------------------------------------------------------ capture
    def _hook(self, index: int, module: nn.Module, inputs: tuple, output: torch.Tensor):
        # Outside ViTWithAttention.forward the hooks do nothing, so calling the bare model
        # while it is wrapped behaves exactly as before.
        if not self._capturing:
            return None
        delta = self._deltas[index] if self._deltas is not None else None
        if delta is not None:
            output = output + delta
        self._captured.append(output)
        return output

    def set_deltas(self, deltas: Sequence[torch.Tensor | None] | None) -> None:
        """Make block ``l`` use ``probs_l + deltas[l]`` (the hook point for attention gradients).

        Args:
            deltas: one tensor per block, broadcastable to ``[B, H, N, N]`` float32 (None for a
                block leaves it unchanged), or None to remove all deltas.

        Raises:
            ExportError: the number of deltas differs from the number of blocks.
        """
        if deltas is not None and len(deltas) != self.num_layers:
            raise ExportError(f"set_deltas needs {self.num_layers} tensors (one per block); got {len(deltas)}")
        self._deltas = list(deltas) if deltas is not None else None

    def forward(self, x: torch.Tensor):
        """Run the model and collect its attention probabilities.

        Args:
            x: images, float32 ``[B, 3, H, W]``, normalised as the model expects.

        Returns:
            ``(logits, attentions)``: float32 ``[B, C]`` and ``[B, L, H, N, N]`` (``H == 1`` when
            heads are fused); only ``logits`` when the wrapper was built with ``attentions=False``.
        """
        if not self.attentions:
            return self.model(x)
        self._captured = []
        self._capturing = True
        try:
            logits = self.model(x)
        finally:
            self._capturing = False
        probs, self._captured = self._captured, []
        if len(probs) != self.num_layers:
            raise ExportError(
                f"captured {len(probs)} attention maps from {self.num_layers} blocks; "
                "the model's forward does not run each block's attention exactly once")
        # Heads are fused layer by layer, before the stack: each layer's (B, H, N, N) is still
        # in cache when it is reduced, the stack copies H times less, and the graph keeps the
        # Concat-of-Unsqueeze form that the runtime splits into per-layer outputs
        # (runtime/graph.py).
        if self.heads != "none":
            probs = [_fuse_heads(p, self.heads) for p in probs]
        attn = torch.stack(probs, dim=1)
        return logits, attn

    # ------------------------------------------------------------------ undo
    def close(self) -> None:
        """Remove the hooks and restore every attention module's ``fused_attn`` flag."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for module, flag in self._saved_flags:
            module.fused_attn = flag
        self._saved_flags = []

    def __enter__(self) -> "ViTWithAttention":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
