"""The ``head_norms`` output for Hugging Face transformers classifiers (see :mod:`export.norms`).

The same output as a timm export with ``norms=True``: per layer ``l``, token ``j`` and head ``h``

    head_norms[b, l, j, h] = ||γ1 ⊙ (v^h_j W_O^h)||   (h < H),    head_norms[b, l, j, H] = ||x_j||
    float32 [B, L, N, H+1]

with ``v^h_j`` the head's value vector the layer computes (``v_proj`` of the pre-attention
LayerNorm's output, the ``value`` its attention function receives), ``W_O^h`` the rows of the
attention's output projection (``o_proj``) that head h feeds, γ1 the layer scale (DINOv2's
``layer_scale1.lambda1``, BEiT's ``lambda_1`` when it has one) or 1, and ``x_j`` the hidden state
entering the layer (the input of ``layernorm_before`` / ``norm1``). As for timm, ``v W_O^h`` is
never formed: the norms are ``||v^h_j F_h||`` with the d×d factors of
:func:`export.norms.norm_factors`.

The values come from :class:`export.hf.HFWithAttention`'s capture (the ``value`` argument of the
attention function, so nothing is recomputed) and ``x`` from a forward hook on the layer's first
LayerNorm. Only the pre-LN layers of :data:`export.hf_load.SUPPORTED` are taken, each checked
for a plain Linear value and output projection.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from attnmap.runtime.core.errors import ExportError
from attnmap.runtime.core.meta import NORMS_OUTPUT

from .hf import HFWithAttention, _attention_modules
from .norms import norm_factors

__all__ = ["HFWithNorms", "hf_norm_parts"]

# The transformers layers that normalise before the attention (x + γ1 ⊙ attn(norm(x))); a layer
# class outside this list may be post-LN and is refused rather than guessed at.
PRE_LN_LAYERS = ("ViTLayer", "DeiTLayer", "BeitLayer", "Dinov2Layer", "Dinov2WithRegistersLayer")


def _layer_scale(layer: nn.Module) -> torch.Tensor | None:
    """γ1 of the attention branch: DINOv2's ``layer_scale1.lambda1``, BEiT's ``lambda_1``, else None."""
    scale = getattr(layer, "layer_scale1", None)
    if scale is not None:
        gamma = getattr(scale, "lambda1", None)
        if not isinstance(gamma, torch.Tensor):
            raise ExportError(f"{type(layer).__name__}: layer_scale1 has no lambda1 vector")
        return gamma
    gamma = getattr(layer, "lambda_1", None)  # BEiT: a Parameter, or the float 1.0 without layer scale
    return gamma if isinstance(gamma, torch.Tensor) else None


def _projections(layer: nn.Module, attn: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The value Linear and the output Linear of one layer's attention."""
    value = getattr(attn, "v_proj", None)
    output = getattr(attn, "o_proj", None)
    if value is None and output is None:  # the older layout: self-attention `value`, output `dense`
        value = getattr(attn, "value", None)
        output = getattr(getattr(getattr(layer, "attention", None), "output", None), "dense", None)
    if not isinstance(value, nn.Linear) or not isinstance(output, nn.Linear):
        raise ExportError(f"{type(attn).__name__}: the value path is not a Linear value projection and a Linear "
                          "output projection (v_proj, o_proj); cannot compute head_norms")
    return value, output


def hf_norm_parts(model: nn.Module) -> list[dict]:
    """Per layer what ``head_norms`` needs: ``layer``, ``norm``, ``value``, ``output``, ``gamma``.

    Args:
        model: a supported transformers classifier (:data:`export.hf_load.SUPPORTED`).

    Returns:
        One dict per layer, in order.

    Raises:
        ExportError: a layer that is not a known pre-LN layer, has no LayerNorm before its
            attention, or whose value path is not linear (see :func:`_projections`), or projections
            that do not split into the config's heads.
    """
    heads = int(model.config.num_attention_heads)
    parts = []
    for name, attn in _attention_modules(model):
        layer = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else None
        kind = type(layer).__name__
        if kind not in PRE_LN_LAYERS:
            raise ExportError(f"{type(model).__name__}: layer {kind} is not one of the pre-LN layers head_norms "
                              f"supports ({', '.join(PRE_LN_LAYERS)})")
        norm = getattr(layer, "layernorm_before", None) or getattr(layer, "norm1", None)
        if not isinstance(norm, nn.LayerNorm):
            raise ExportError(f"{kind}: no LayerNorm before the attention (layernorm_before/norm1); "
                              "head_norms needs a pre-LN layer")
        value, output = _projections(layer, attn)
        if value.out_features != output.in_features or output.in_features % heads:
            raise ExportError(f"{kind}: value projection width {value.out_features} and output projection input "
                              f"{output.in_features} do not split into {heads} heads")
        parts.append({"layer": layer, "norm": norm, "value": value, "output": output, "gamma": _layer_scale(layer)})
    return parts


class HFWithNorms(HFWithAttention):
    """A transformers classifier that returns ``(logits, attentions, head_norms)``.

    Args:
        model: a supported transformers classifier, eval mode, float32.
        image_size: ``(H, W)`` of the input it will get; None: the config's ``image_size``.

    Raises:
        ExportError: see :func:`hf_norm_parts` (raised before anything is patched).
    """

    def __init__(self, model: nn.Module, image_size: tuple[int, int] | None = None) -> None:
        parts = hf_norm_parts(model)
        super().__init__(model, heads="none", attentions=True, image_size=image_size)
        self.output_names = ("logits", "attentions", NORMS_OUTPUT)
        factors = [norm_factors(p["output"], p["gamma"], self.num_heads) for p in parts]
        # A constant of the graph, not a parameter of the model.
        self.register_buffer("factors", torch.cat(factors), persistent=False)  # [L*H, d, d]
        self._streams: list[torch.Tensor | None] = [None] * self.num_layers
        self._values: list[torch.Tensor | None] = [None] * self.num_layers
        self._handles = [p["norm"].register_forward_hook(functools.partial(self._norm_hook, i))
                         for i, p in enumerate(parts)]

    def _norm_hook(self, index: int, module: nn.Module, inputs: tuple, output: torch.Tensor):
        if self._capturing:
            self._streams[index] = inputs[0]
        return None

    def _record(self, index: int, probs: torch.Tensor, value: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self._capturing:
            self._values[index] = value  # [B, H, N, d], the values this layer's attention multiplies
        return super()._record(index, probs, value, out)

    def forward(self, x: torch.Tensor):
        """``x`` float32 ``[B, 3, H, W]`` -> ``(logits [B, C], attentions [B, L, H, N, N],
        head_norms [B, L, N, H+1])``."""
        self._streams = [None] * self.num_layers
        self._values = [None] * self.num_layers
        logits, attentions = super().forward(x)
        streams, values = self._streams, self._values
        self._streams, self._values = [None] * self.num_layers, [None] * self.num_layers
        if any(s is None for s in streams) or any(v is None for v in values):
            raise ExportError(f"captured the inputs or values of only some of the {self.num_layers} layers")
        layers, heads, n = self.num_layers, self.num_heads, streams[0].shape[1]
        # As export.norms.ViTWithNorms: one product and one sum of squares for every layer.
        y = torch.matmul(torch.cat(values, dim=1), self.factors)  # [B, L*H, N, d]: ||y|| = ||w^h_j||
        head_sq = (y * y).sum(dim=-1).reshape(-1, layers, heads, n)
        stream = torch.cat(streams, dim=1)  # [B, L*N, D]
        stream_sq = (stream * stream).sum(dim=-1).reshape(-1, layers, 1, n)
        return logits, attentions, torch.sqrt(torch.cat([head_sq, stream_sq], dim=2).transpose(2, 3))

    @torch.no_grad()
    def reference(self, x: torch.Tensor):
        """Logits and attentions from transformers itself (eager attention), ``head_norms`` from torch."""
        logits, attentions = super().reference(x)
        return logits, attentions, self(x)[2]

    def close(self) -> None:
        """Drop the LayerNorm hooks, then restore what :class:`HFWithAttention` changed."""
        for h in getattr(self, "_handles", []):
            h.remove()
        self._handles = []
        super().close()
