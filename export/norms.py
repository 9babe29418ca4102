"""The ``head_norms`` output: per block and token the norm of each head's value-output vector.

Kobayashi et al. 2020 ("Attention is Not Only a Weight") weigh each attention edge by the size
of what it moves: "we propose the norm of the transformed input vector ||α_ij f(x_j)|| as the
weight of edge j → i". Per head, ``||α^h_ij w^h_j|| = α^h_ij ||w^h_j||`` since α ≥ 0, so the map
needs only one norm per block, token and head beside the attentions. In the notation of
:mod:`export.decomposition` (``z = norm1(x)``, ``u^h_j = (z_j W_V^h + b_V^h) W_O^h``,
``w^h_j = γ1 ⊙ u^h_j``, γ1 the layer scale or 1), a file exported with ``norms=True`` emits

    head_norms[b, l, j, h] = ||w^h_j||   (h < H),    head_norms[b, l, j, H] = ||x_j||
    float32 [B, L, N, H+1]

(the square roots of the diagonal of ``mix_grams``), for the runtime's forward-only
``head-norm`` map.

Cost: ``u`` is never formed. ``||w^h_j||² = v^h_j (W_O^h Γ1² W_O^hᵀ) v^hᵀ_j`` is a quadratic
form of the head's d-dim value vector ``v^h_j = z_j W_V^h + b_V^h``, which the block computes
anyway (read from its qkv output, :class:`export.decomposition.ViTWithBlockInputs`). With the
QR decomposition ``(W_O^h Γ1)ᵀ = Q_h R_h`` (Q_h [D, d] with orthonormal columns),
``W_O^h Γ1 = R_hᵀ Q_hᵀ`` and ``||v W_O^h Γ1|| = ||v R_hᵀ||``: the graph multiplies the values by
the d×d factors ``R_hᵀ`` (N·H·d² = N·D²/H MACs per block, against the N·D² of one output
projection) and sums squares. The factors are computed once, in float64, when the wrapper is
built.
"""

from __future__ import annotations

import torch
from torch import nn

from attnmap.runtime.core.errors import ExportError
from attnmap.runtime.core.meta import NORMS_OUTPUT

from .decomposition import CONTRIBUTION_OUTPUT, ViTWithBlockInputs, layer_scale

__all__ = ["NORMS_OUTPUT", "ViTWithNorms", "norm_factors"]


def norm_factors(proj: nn.Linear, gamma: torch.Tensor | None, heads: int) -> torch.Tensor:
    """Per head the d×d factor F_h with ``||v F_h|| = ||v W_O^h Γ1||`` for every row vector v.

    Args:
        proj: the attention's output projection (``weight`` float32 ``[D, A]``, A = H·d).
        gamma: the layer scale γ1 ``[D]``, or None.
        heads: H.

    Returns:
        float32 ``[H, d, d]``: ``F_h = R_hᵀ`` from ``(W_O^h Γ1)ᵀ = Q_h R_h``, computed in float64.
    """
    with torch.no_grad():
        w_o = proj.weight.detach().to(torch.float64)  # [D, A]: u = v @ w_o.T
        if gamma is not None:
            w_o = w_o * gamma.detach().to(torch.float64)[:, None]  # rows scaled: (v W_O) ⊙ γ
        per_head = w_o.reshape(w_o.shape[0], heads, -1).permute(1, 0, 2)  # [H, D, d] = (W_O^h Γ1)ᵀ
        r = torch.linalg.qr(per_head, mode="reduced").R  # [H, d, d]
        return r.transpose(1, 2).contiguous().to(torch.float32)


class ViTWithNorms(ViTWithBlockInputs):
    """A timm ViT that returns ``(logits, attentions, head_norms[, class_contributions])`` (see
    the module docstring and :func:`export.decomposition.class_contributions`).

    Args:
        model: a timm ViT-family model with pre-LN blocks (see
            :func:`export.decomposition.block_parts`).
        contributions: also emit ``class_contributions`` float32 ``[B, N, C]``.

    Raises:
        ExportError: a block outside the decomposable layout (post-norm, RMSNorm, a normalised
            or gated value path), a head dimension that does not divide the projection, or
            contributions asked for a model they do not apply to.
    """

    def __init__(self, model: nn.Module, contributions: bool = False) -> None:
        super().__init__(model, contributions=contributions)
        self.output_names = ("logits", "attentions", NORMS_OUTPUT) + (
            (CONTRIBUTION_OUTPUT,) if self.contributions else ())
        factors = []
        for p in self._parts[0]:
            proj = p["proj"]
            if not isinstance(proj, nn.Linear) or proj.weight.shape[1] % self.num_heads:
                self.close()
                raise ExportError(f"{type(p['attn']).__name__}: the output projection is not one Linear over "
                                  f"{self.num_heads} heads; cannot split it per head")
            factors.append(norm_factors(proj, layer_scale(p["block"], 1), self.num_heads))
        # A constant of the graph, not a parameter of the model (its state_dict is unchanged).
        self.register_buffer("factors", torch.cat(factors), persistent=False)  # [L*H, d, d]

    def _head_values(self, index: int, z: torch.Tensor) -> torch.Tensor:
        """``[B, H, N, d]`` the values block ``index`` used.

        From a fused qkv output with the very operations timm's ``Attention`` applies to it
        (reshape, permute, unbind), so that onnxruntime's common-subexpression elimination
        can merge them with the block's own and the values cost nothing.
        """
        qkv = self._qkv[index]
        if qkv is not None:
            b, n, _ = qkv.shape
            return qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)[2]
        v = self._values(index, z)
        return v.reshape(v.shape[0], v.shape[1], self.num_heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor):
        """Run the model.

        Args:
            x: images, float32 ``[B, 3, H, W]``, normalised as the model expects.

        Returns:
            ``(logits, attentions, head_norms[, class_contributions])``: float32 ``[B, C]``,
            ``[B, L, H, N, N]``, ``[B, L, N, H+1]`` and ``[B, N, C]``.
        """
        logits, attentions, inputs, values = self._capture(x, self._head_values)
        layers, heads = self.num_layers, self.num_heads
        n = inputs[0][0].shape[1]
        # Every block's values in one product, and every sum of squares in one Mul and one
        # ReduceSum, with a single Sqrt at the end: a handful of graph nodes for the whole model
        # instead of a few per block (at DeiT-Tiny's size the dispatch of a node costs more than
        # its arithmetic), and Mul + ReduceSum rather than ReduceL2, which onnxruntime runs at
        # half the speed.
        y = torch.matmul(torch.cat(values, dim=1), self.factors)  # [B, L*H, N, d]: ||y|| = ||w^h_j||
        head_sq = (y * y).sum(dim=-1).reshape(-1, layers, heads, n)
        streams = torch.cat([stream for stream, _ in inputs], dim=1)  # [B, L*N, D]
        stream_sq = (streams * streams).sum(dim=-1).reshape(-1, layers, 1, n)
        out = (logits, attentions, torch.sqrt(torch.cat([head_sq, stream_sq], dim=2).transpose(2, 3)))
        if self.contributions:
            out += (self._class_contributions(inputs, self._head_outputs(layers - 1, values[-1])),)
        return out
