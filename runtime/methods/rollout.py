"""Attention rollout (Abnar & Zuidema 2020) and its gradient-weighted variant (vit-explain).

Rollout composes the layers' attention, each mixed with the residual connection:

    Â_l = (fused(A_l) + I) with rows renormalised to 1,    R = Â_L · Â_(L-1) · ... · Â_1

(later layers on the left) and reads the target's row of R. Only that row is needed, so it is
computed as L vector-matrix products from the left, v = e_tᵀ Â_L, v ← v Â_l, never as an
N x N matrix chain. Â is never built either: with d = rowsum(F) + 1,

    v Â = (v ⊘ d) F + (v ⊘ d)

so one layer costs a row-sum and a vector-matrix product of the fused matrix F. For the mean
fusion both are taken head by head (mean_h(u A_h) = u mean_h(A_h)), which skips building F;
when the attention rows are probabilities (``layout.stochastic``) rowsum(F) is 1, d is 2, and
the step is the paper's own v (0.5 F + 0.5 I), one pass over the layer's memory instead of
two. The first step starts from the one-hot e_t, so it only reads row t of Â_L.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods.base import (check_attentions, check_bool, check_choice, check_discard_ratio, check_grads,
                   fuse_heads, HEAD_FUSIONS, patch_maps, resolve_index, start_vector)


def attention_rollout(attentions: np.ndarray, layout: TokenLayout, *, grads: np.ndarray | None = None,
                      head_fusion: str = "mean", discard_ratio: float = 0.0, residual: bool = True,
                      start_layer: int = 0) -> np.ndarray:
    """Attention rollout: the target's row of Â_L ··· Â_start over the patch columns.

    Args:
        attentions: (B, L, H, N, N) float attention probabilities; not modified.
        layout: token layout (prefix count, grid, target row; None = mean of all rows).
        grads: ignored (rollout is class-agnostic); accepted so every method shares one call.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over the heads of each layer.
        discard_ratio: in [0, 1); after fusing, zero the lowest ``floor(ratio * N * N)``
            entries of each image's fused matrix (see :func:`discard_lowest`).
        residual: True: Â = (F + I) rows renormalised; False: Â = F rows renormalised (an
            all-zero row stays zero).
        start_layer: first layer of the product (negative counts from the end; -1 = the last
            layer alone).

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    a = check_attentions(attentions, layout)
    check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    ratio = check_discard_ratio(discard_ratio)
    residual = check_bool("residual", residual)
    start = resolve_index("start_layer", start_layer, a.shape[1], "layers")

    if head_fusion == "mean" and ratio == 0.0:
        # Fast path: nothing needs the fused matrix itself, so take the mean head by head.
        last = a.shape[1] - 1
        if layout.target_row is None:
            v = _mean_heads_step(start_vector(layout, a.shape[0]), a[:, last], residual, layout.stochastic)
        else:
            v = _target_row_step(fuse_heads(a[:, last, :, layout.target_row], "mean"), layout.target_row, residual)
        for l in range(last - 1, start - 1, -1):
            v = _mean_heads_step(v, a[:, l], residual, layout.stochastic)
    else:
        v = _rollout_row(lambda l: fuse_heads(a[:, l], head_fusion), a.shape[1], start, layout,
                         a.shape[0], ratio, residual)
    return patch_maps(v, layout, "rollout")


def grad_rollout(attentions: np.ndarray, layout: TokenLayout, *, grads: np.ndarray | None = None,
                 discard_ratio: float = 0.0, residual: bool = True, start_layer: int = 0) -> np.ndarray:
    """Gradient-weighted rollout: rollout of F_l = mean_h(relu(A_l ⊙ G_l)).

    Follows METHODS.md: the clamp is applied per head before the mean. (vit-explain's code
    clamps after the head mean, which lets a negative head cancel a positive one.) Discard
    ratio, residual, renormalisation and product order are those of :func:`attention_rollout`.

    Args:
        attentions: (B, L, H, N, N) float attention probabilities; not modified.
        layout: token layout.
        grads: (B, L, H, N, N) d y_c / d A_l for the explained class; required.
        discard_ratio: in [0, 1), as in :func:`attention_rollout`.
        residual: as in :func:`attention_rollout`.
        start_layer: first layer of the product (negative counts from the end).

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    a = check_attentions(attentions, layout)
    g = check_grads(grads, a, "grad_rollout")
    ratio = check_discard_ratio(discard_ratio)
    residual = check_bool("residual", residual)
    start = resolve_index("start_layer", start_layer, a.shape[1], "layers")

    def fused(l: int) -> np.ndarray:
        w = np.multiply(a[:, l], g[:, l])
        np.maximum(w, 0.0, out=w)
        return fuse_heads(w, "mean")

    v = _rollout_row(fused, a.shape[1], start, layout, a.shape[0], ratio, residual, np.float64)
    return patch_maps(v, layout, "grad_rollout")


def discard_lowest(fused: np.ndarray, ratio: float, target_row: int | None) -> None:
    """Zero, in place, the lowest ``floor(ratio * N * N)`` entries of each image's fused matrix.

    vit-explain's definition, made per image (its code only touches the first image of a
    batch) and deterministic: every entry strictly below the (k+1)-th smallest unprotected
    entry is zeroed. With distinct values that is exactly the k lowest; values tied across
    the cut are all kept rather than split arbitrarily (as ``topk`` does), so a uniform layer
    stays uniform instead of turning into the sort's tie order. Protected entries are never
    discarded and do not count towards k: the target's own entry [t, t], or, when the target
    is the mean of all rows (``target_row`` None), the whole diagonal, since every token then
    plays the part the class token plays.

    Args:
        fused: (B, N, N) float32, C-contiguous; modified in place.
        ratio: discard fraction in [0, 1).
        target_row: the target row, or None.
    """
    b, n, _ = fused.shape
    k = min(int(ratio * n * n), n * n - (n if target_row is None else 1))
    if k <= 0:
        return
    import cv2  # here, not at the top: the CLI imports the methods without loading OpenCV

    flat = fused.reshape(b, n * n)
    # the protected entries as a strided view (the diagonal, or the one entry [t, t]): set and
    # restored by slicing, not by fancy indexing with an index array (a third of the per-layer
    # Python cost of this function at 197 tokens)
    t = target_row
    protected = flat[:, ::n + 1] if t is None else flat[:, t * (n + 1):t * (n + 1) + 1]
    kept = protected.copy()
    protected[...] = np.inf
    # k <= N*N minus the protected entries, so index k exists; it is +inf only when every unprotected
    # entry is to go. Non-negative float32 values (attention probabilities and what rollout
    # fuses from them; +inf included) order exactly as their bits read as int32, and NumPy
    # partitions int32 about three times as fast as float32 (64 against 20 us for one
    # DeiT-Tiny layer): the same k-th value, found on the integer view. A negative value or a
    # NaN (min() is then NaN) takes the float path. -0.0 sorts below +0.0 as an integer; the
    # two are equal as floats, so the cut below is the same either way.
    if flat.min() >= 0.0:
        threshold = np.partition(flat.view(np.int32), k, axis=1)[:, k].view(np.float32)
    else:
        threshold = np.partition(flat, k, axis=1)[:, k]
    for i in range(b):
        # keep x >= t, i.e. x > the largest float below t: OpenCV's to-zero threshold, which
        # does it in one pass (twice as fast as multiplying by a keep-mask, several times
        # boolean-index assignment); exact, as the comparison is the same.
        below = float(np.nextafter(threshold[i], np.float32(-np.inf)))
        cv2.threshold(fused[i], below, 0.0, cv2.THRESH_TOZERO, dst=fused[i])
    protected[...] = kept


def _rollout_row(fused: Callable[[int], np.ndarray], num_layers: int, start: int, layout: TokenLayout,
                 batch: int, ratio: float, residual: bool, dtype: type = np.float32) -> np.ndarray:
    """Target row of Â_(L-1) ··· Â_start, with ``fused(l)`` giving a fresh (B, N, N) F_l.

    ``dtype`` is that of the row vector and the row sums. Gradient rollout needs float64:
    its F are tiny (|A ⊙ G| ~ 1e-4), so Â = (F + I)/d is the identity plus a small part;
    with a mean-row start the signal is a 1e-4 ripple on 1/N, and d = 1 + rowsum(F) holds
    its part of the ripple in the 4th decimal, both of which float32 rounds away. Attention
    probabilities are O(1/N) and float32 keeps them.
    """
    v = start_vector(layout, batch).astype(dtype)
    ones = np.ones(layout.num_tokens, np.float32)
    for l in range(num_layers - 1, start - 1, -1):
        f = fused(l)
        if ratio > 0.0:
            discard_lowest(f, ratio, layout.target_row)
        # float32 row sums as one matrix-vector product (BLAS), several times NumPy's sum
        sums = np.matmul(f, ones) if dtype is np.float32 else f.sum(axis=-1, dtype=dtype)
        v = _step(v, sums, lambda u: np.matmul(u[:, None, :], f)[:, 0], residual)
    return v


def _mean_heads_step(v: np.ndarray, a_l: np.ndarray, residual: bool, stochastic: bool) -> np.ndarray:
    """One rollout step with F = mean over heads of ``a_l`` (B, H, N, N), F never built.

    u F = Σ_h (u / H) A_h is one vector-matrix product of the heads stacked as an (H·N, N)
    matrix with u / H repeated H times: one BLAS call over the layer's memory instead of H
    products and a mean. With ``stochastic`` rows rowsum(F) is 1 and is not computed:
    v Â = 0.5 v F + 0.5 v (v F without the residual).
    """
    b, h, n, _ = a_l.shape
    row_sums = np.float32(1.0) if stochastic else np.matmul(a_l, np.ones(n, dtype=np.float32)).mean(axis=1)
    stacked = a_l.reshape(b, 1, h * n, n)  # a view: each image's heads are one (H, N, N) block

    def vecmat(u: np.ndarray) -> np.ndarray:
        w = np.empty((b, h, n), np.float32)
        np.multiply(u[:, None, :], np.float32(1.0 / h), out=w)
        return np.matmul(w.reshape(b, 1, 1, h * n), stacked)[:, 0, 0]

    return _step(v, row_sums, vecmat, residual)


def _target_row_step(f_t: np.ndarray, t: int, residual: bool) -> np.ndarray:
    """e_tᵀ Â from row t of F alone, ``f_t`` (B, N): that row of Â, (F[t] + e_t) / d_t."""
    sums = f_t.sum(axis=-1, keepdims=True)
    if not residual:
        return f_t / np.where(sums > 0.0, sums, 1.0)
    v = f_t / (sums + 1.0)
    v[:, t] += 1.0 / (sums[:, 0] + 1.0)
    return v


def _step(v: np.ndarray, row_sums: np.ndarray | np.float32, vecmat: Callable[[np.ndarray], np.ndarray],
          residual: bool) -> np.ndarray:
    """v Â for Â = (F + I) or F with rows renormalised, given rowsum(F) and u -> u F.

    Row renormalisation divides row i of Â by its sum d_i, which on the left-hand vector is
    a division of v_i by d_i: v Â = (v ⊘ d) (F + I) = (v ⊘ d) F + (v ⊘ d).
    """
    if residual:
        u = v / (row_sums + 1.0)
        return vecmat(u) + u
    # A zero row of F contributes nothing whatever u_i is; dividing by 1 keeps it finite.
    u = v / np.where(row_sums > 0.0, row_sums, 1.0)
    return vecmat(u)
