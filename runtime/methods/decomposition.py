"""Norm-based decompositions, forward only: attention norm, GlobEnc (and the mixing they share).

Each block's attention sub-layer of a pre-LN ViT splits exactly into token terms
(``../shared/METHODS.md``, notation of ``export/decomposition.py``):

    x'_i = Σ_j T_i(x_j) + γ1 ⊙ b_O,    T_i(x_j) = Σ_h α^h_ij w^h_j + δ_ij x_i,    w^h_j = γ1 ⊙ u^h_j

with ``u^h_j = (z_j W_V^h + b_V^h) W_O^h`` and x the residual stream entering the block. The file
emits, per block and token, the Gram matrix G_j of ``[w^1_j .. w^H_j, x_j]`` (``mix_grams``) and
the same for the vectors passed through norm2's linearised LayerNorm (``mix_grams_ln``), so every
norm below is a quadratic form in the attention weights, evaluated for all i, j in O(N² H²):

    ||Σ_h α^h_ij w^h_j||² = Σ_h Σ_g α^h_ij α^g_ij G_j[h, g]
    ||T_i(x_j)||²        = Σ_h Σ_g α^h_ij α^g_ij G_j[h, g] + δ_ij (2 Σ_h α^h_ii G_i[h, H] + G_i[H, H])

Methods (each mixing matrix M_l has its rows renormalised to 1 and is rolled out as attention
rollout does, later blocks on the left, the target's row read):

* ``attn-norm`` (Kobayashi et al. 2020, "Attention is Not Only a Weight"): "||Σ_j α_ij f(x_j)||
  ... we propose the norm of the transformed input vector ||α_ij f(x_j)|| as the weight of edge
  j → i", with ``f(x_j) = (x_j W_V + b_V) W_O`` per head and the heads summed (the sub-layer's
  multi-head output is Σ_h). The residual option adds the residual as METHODS.md writes it,
  ``M[i, j] = ||γ1 ⊙ Σ_h α^h_ij u^h_j|| + δ_ij ||x_i||`` (the issue's prototype, done with the
  residual stream x, not the LN1 output).
* ``head-norm`` (Kobayashi et al. 2020's norms taken head by head): the paper's edge weight
  for one head, ``||α^h_ij f^h(x_j)|| = α^h_ij ||f^h(x_j)||`` (α ≥ 0), summed over the heads,
  ``M[i, j] = Σ_h α^h_ij ||w^h_j|| + δ_ij ||x_i||``. By the triangle inequality it bounds
  attn-norm's ``||Σ_h α^h_ij w^h_j||`` from above, equal where the heads' vectors at j point
  the same way; what it gains is cost: it needs only the H + 1 norms per token (``head_norms``,
  ``attnmap export --norms``, or the diagonal of ``mix_grams``), and v M never builds M:
  ``v M = Σ_h (v A_h) ⊙ n_h + v ⊙ r`` and rowsum(M) = ``Σ_h A_h n_h + r``, two passes over the
  attentions per block (rollout makes one).
* ``globenc`` (Modarressi et al. 2022, after Kobayashi et al. 2021's "N_ResLN"): the norm of each
  token's whole term through the LayerNorm that reads the sum, linearised with the total's
  statistics: ``M[i, j] = ||g_i(T_i(x_j))||`` with ``g_i(y) = γ2 ⊙ (y − mean(y)) / σ(x'_i)``;
  "LN(Σ_k y_k) = Σ_k γ ⊙ (y_k − mean(y_k)) / σ(Σ y) + β" (the bias terms belong to no token and
  are left out, as GlobEnc does). The residual enters with its own attention term at j = i,
  ``T_i(x_i) = Σ_h α^h_ii w^h_i + x_i`` (the exact decomposition, not the sum of two norms).

Choice for a pre-LN ViT (the papers study post-LN encoders, where the LayerNorm after the
residual sum is the block's output): the residual stream of a pre-LN block is never normalised
itself; the first LayerNorm that reads the sum x' is the block's ``norm2``, whose output is what
the MLP (the rest of the block, which GlobEnc leaves out as it does the FFN) sees. So ``g`` is
norm2 linearised at x'_i. Its σ(x'_i) scales row i as a whole and cancels in the row
renormalisation; the file therefore emits only the centred, γ2-scaled Gram.

Prefix tokens (class, distillation, registers) are tokens like the patches inside the mixing:
they receive and pass on contributions, and the map reads the patch columns of the target row
(the class token's row, or the mean of all rows for a class-token-free model), as rollout does.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods.base import check_attentions, check_bool, patch_maps, resolve_index, start_vector

__all__ = ["attn_norm", "head_norm", "globenc", "check_grams", "head_norms_of", "norm_squares", "mixing_rollout"]


def check_grams(grams: np.ndarray | None, a: np.ndarray, name: str, method: str) -> np.ndarray:
    """``grams`` (B, L, N, H+1, H+1) checked against the attentions ``a`` (B, L, H, N, N)."""
    if grams is None:
        raise ExplainError(f"method {method!r} needs the {name!r} output; export the model with "
                           "`attnmap export --decompositions`")
    g = np.asarray(grams)
    b, l, h, n, _ = a.shape
    if g.shape != (b, l, n, h + 1, h + 1):
        raise ExplainError(f"{name} must be (B, L, N, H+1, H+1) = {(b, l, n, h + 1, h + 1)} for attentions of "
                           f"shape {a.shape}; got {g.shape}")
    return g if g.dtype == np.float32 else g.astype(np.float32)


def norm_squares(a_l: np.ndarray, g_l: np.ndarray, residual: bool, rows: slice | None = None) -> np.ndarray:
    """(B, n, N) squared norms ||Σ_h α^h_ij w^h_j (+ δ_ij x_i)||² of one block's token terms.

    Args:
        a_l: (B, H, N, N) the block's attention probabilities.
        g_l: (B, N, H+1, H+1) Grams of ``[w^1_j .. w^H_j, x_j]`` (in whichever metric).
        residual: add the residual x_i to its own attention term (j = i), inside the norm.
        rows: only these rows i (default all).

    Returns:
        (B, n, N) float32, n the number of rows.
    """
    rows = slice(None) if rows is None else rows
    a = a_l[:, :, rows]
    b, h, n, m = a.shape
    # coef[b, h, g, j] = G_j[h, g], doubled off the diagonal (the sum runs over h < g): contiguous
    # along j, so every product below is one pass over an (n, N) matrix
    coef = np.ascontiguousarray(g_l[:, :, :h, :h].transpose(0, 2, 3, 1))
    coef *= np.float32(2.0)
    q = np.empty((b, n, m), np.float32)
    t = np.empty_like(q)
    s = np.empty_like(q)
    for i in range(h):
        np.multiply(a[:, i], coef[:, None, i, i] * np.float32(0.5), out=t)
        for k in range(i + 1, h):
            np.multiply(a[:, k], coef[:, None, i, k], out=s)
            t += s
        t *= a[:, i]
        if i == 0:
            q[...] = t
        else:
            q += t
    if residual:
        start, stop, step = rows.indices(m)
        idx = np.arange(start, stop, step)
        # 2 Σ_h α^h_ii G_i[h, H] + G_i[H, H] on the diagonal entries (i, i) of the rows kept
        diag_a = a_l[:, :, idx, idx]  # (B, H, n)
        g_i = g_l[:, idx]  # (B, n, H+1, H+1)
        cross = np.einsum("bhn,bnh->bn", diag_a, g_i[:, :, :h, h])
        q[:, np.arange(len(idx)), idx] += 2.0 * cross + g_i[:, :, h, h]
    np.maximum(q, 0.0, out=q)  # a quadratic form of a Gram is >= 0; rounding may dip below
    return q


def mixing_rollout(matrix: Callable[[int, slice | None], np.ndarray], num_layers: int, start: int,
                   layout: TokenLayout, batch: int, v: np.ndarray | None = None,
                   last: int | None = None) -> np.ndarray:
    """Row vector ``v M̂_last ··· M̂_start`` with M̂ the row-renormalised ``matrix(l, rows)``.

    Args:
        matrix: ``matrix(l, rows)`` -> (B, n, N) non-negative mixing matrix of block l (only
            ``rows`` when given).
        num_layers: L; start: first block of the product.
        layout: token layout (target row).
        batch: B.
        v: (B, N) starting vector; default the target's one-hot (or mean) row, and then the
            first block computes only the target's row.
        last: last block of the product (default L - 1).

    Returns:
        (B, N) float32.
    """
    last = num_layers - 1 if last is None else last
    if v is None and layout.target_row is not None and last >= start:
        t = layout.target_row
        row = matrix(last, slice(t, t + 1))[:, 0]
        sums = row.sum(axis=-1, keepdims=True)
        v = row / np.where(sums > 0.0, sums, 1.0)
        last -= 1
    elif v is None:
        v = start_vector(layout, batch)
    for l in range(last, start - 1, -1):
        m = matrix(l, None)
        sums = m.sum(axis=-1)
        u = v / np.where(sums > 0.0, sums, 1.0)  # row i of M̂ is row i of M over its sum
        v = np.matmul(u[:, None, :], m)[:, 0]
    return v.astype(np.float32, copy=False)


def attn_norm(outputs, layout: TokenLayout, classes=None, *, residual: bool = True,
              start_layer: int = 0) -> np.ndarray:
    """Attention norm (Kobayashi et al. 2020), rolled out: edge weight ||γ1 ⊙ Σ_h α^h_ij u^h_j||.

    Args:
        outputs: the forward pass (``attentions`` (B, L, H, N, N), ``mix_grams``
            (B, L, N, H+1, H+1)), read by attribute.
        layout: token layout.
        classes: ignored (class-agnostic).
        residual: add ``||x_i||`` (the residual stream's norm) on the diagonal (METHODS.md).
        start_layer: first block of the product (negative counts from the end).

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    a = check_attentions(outputs.attentions, layout)
    g = check_grams(getattr(outputs, "mix_grams", None), a, "mix_grams", "attn-norm")
    residual = check_bool("residual", residual)
    start = resolve_index("start_layer", start_layer, a.shape[1], "layers")

    def matrix(l: int, rows: slice | None) -> np.ndarray:
        m = np.sqrt(norm_squares(a[:, l], g[:, l], False, rows))
        if residual:
            n = m.shape[-1]
            idx = np.arange(n)[rows if rows is not None else slice(None)]
            m[:, np.arange(len(idx)), idx] += np.sqrt(np.maximum(g[:, l][:, idx, -1, -1], 0.0))
        return m

    return patch_maps(mixing_rollout(matrix, a.shape[1], start, layout, a.shape[0]), layout, "attn-norm")


def head_norms_of(outputs, a: np.ndarray, method: str) -> np.ndarray:
    """(B, L, N, H+1) float32 norms ``[||w^1_j|| .. ||w^H_j||, ||x_j||]`` of each block and token.

    From the ``head_norms`` output (``attnmap export --norms``), else the square root of the
    diagonal of ``mix_grams`` (a ``--decompositions`` file), checked against the attentions ``a``.
    """
    norms = getattr(outputs, "head_norms", None)
    if norms is None:
        grams = getattr(outputs, "mix_grams", None)
        if grams is None:
            raise ExplainError(f"method {method!r} needs the 'head_norms' output; export the model with "
                               "`attnmap export --norms` (or --decompositions)")
        diagonal = np.diagonal(check_grams(grams, a, "mix_grams", method), axis1=-2, axis2=-1)
        return np.sqrt(np.maximum(diagonal, 0.0)).astype(np.float32)
    norms = np.asarray(norms)
    b, l, h, n, _ = a.shape
    if norms.shape != (b, l, n, h + 1):
        raise ExplainError(f"head_norms must be (B, L, N, H+1) = {(b, l, n, h + 1)} for attentions of shape "
                           f"{a.shape}; got {norms.shape}")
    return norms.astype(np.float32, copy=False)


def head_norm(outputs, layout: TokenLayout, classes=None, *, residual: bool = True,
              start_layer: int = 0) -> np.ndarray:
    """Kobayashi et al. 2020's norms head by head, rolled out: edges ``Σ_h α^h_ij ||w^h_j||``.

    "we propose the norm of the transformed input vector ||α_ij f(x_j)|| as the weight of edge
    j → i" (Kobayashi et al. 2020), taken for each head h (``f^h(x_j) = w^h_j``, the head's value
    vector through its rows of W_O and the layer scale) and summed over the heads; the residual
    adds ``||x_i||`` on the diagonal as attn-norm does. Row i of the mixing matrix is
    renormalised by ``d_i = Σ_h Σ_j α^h_ij ||w^h_j|| + ||x_i||`` and the product is rolled out
    from the target row, later blocks on the left, as :func:`attn_norm` does, without building
    the matrix (module docstring).

    Args:
        outputs: the forward pass (``attentions`` (B, L, H, N, N) and ``head_norms``
            (B, L, N, H+1), or ``mix_grams``), read by attribute.
        layout: token layout.
        classes: ignored (class-agnostic).
        residual: add ``||x_i||`` (the residual stream's norm) on the diagonal.
        start_layer: first block of the product (negative counts from the end).

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    a = check_attentions(outputs.attentions, layout)
    norms = head_norms_of(outputs, a, "head-norm")
    residual = check_bool("residual", residual)
    start = resolve_index("start_layer", start_layer, a.shape[1], "layers")
    b, num_layers, h, n, _ = a.shape
    layers = slice(start, num_layers)
    heads = np.ascontiguousarray(norms[:, layers, :, :h].transpose(0, 1, 3, 2))  # (B, L', H, N): n_h[j]
    own = norms[:, layers, :, h] if residual else np.zeros((b, num_layers - start, n), np.float32)  # ||x_i||
    # every block's row sums d_i = Σ_h (A_h n_h)_i + r_i at once: one batched matrix-vector call
    sums = np.matmul(a[:, layers], heads[..., None])[..., 0].sum(axis=2) + own
    sums[sums <= 0.0] = 1.0  # an all-zero row of M stays zero whatever it is divided by
    last = num_layers - 1 - start
    t = layout.target_row
    if t is not None:
        # the first step from the one-hot e_t reads only row t of each head: (Σ_h A_h[t] n_h + e_t r_t) / d_t
        v = np.einsum("bhj,bhj->bj", a[:, num_layers - 1, :, t], heads[:, last])
        v[:, t] += own[:, last, t]
        v /= sums[:, last, t:t + 1]
    else:
        u = start_vector(layout, b).astype(np.float32) / sums[:, last]
        v = np.einsum("bhj,bhj->bj", np.matmul(u[:, None, None, :], a[:, num_layers - 1])[:, :, 0], heads[:, last])
        v += u * own[:, last]
    for k in range(last - 1, -1, -1):
        u = v / sums[:, k]
        moved = np.matmul(u[:, None, None, :], a[:, start + k])[:, :, 0]  # (B, H, N): u A_h
        moved *= heads[:, k]
        v = moved.sum(axis=1)
        v += u * own[:, k]
    return patch_maps(v, layout, "head-norm")


def globenc(outputs, layout: TokenLayout, classes=None, *, start_layer: int = 0) -> np.ndarray:
    """GlobEnc (Modarressi et al. 2022) for a pre-LN ViT: ||g_i(T_i(x_j))||, rolled out.

    Args:
        outputs: the forward pass (``attentions``, ``mix_grams_ln``), read by attribute.
        layout: token layout.
        classes: ignored (class-agnostic).
        start_layer: first block of the product (negative counts from the end).

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    a = check_attentions(outputs.attentions, layout)
    g = check_grams(getattr(outputs, "mix_grams_ln", None), a, "mix_grams_ln", "globenc")
    start = resolve_index("start_layer", start_layer, a.shape[1], "layers")
    v = mixing_rollout(lambda l, rows: globenc_matrix(a, g, l, rows), a.shape[1], start, layout, a.shape[0])
    return patch_maps(v, layout, "globenc")


def globenc_matrix(a: np.ndarray, g: np.ndarray, l: int, rows: slice | None = None) -> np.ndarray:
    """(B, n, N) GlobEnc's un-normalised mixing matrix of block l (σ(x'_i) left out: it cancels)."""
    return np.sqrt(norm_squares(a[:, l], g[:, l], True, rows))
