"""Class-specific methods that weight attention by its gradient G_l = d y_c / d A_l.

All take ``grads`` of the same (B, L, H, N, N) shape as the attentions:

* ``chefer``  (Chefer, Gur & Wolf, ICCV 2021, generic attention explainability):
  R = I; for l = 1..L: Ā_l = mean_h((G_l ⊙ A_l)⁺), R ← R + Ā_l · R; map = target's row of R.
* ``gradsam`` (Barkan et al. 2021): mean over layers and heads of relu(G_l) ⊙ A_l, target's row.
* ``product`` (product rule): per block s_l = mean_h(A_l ⊙ G_l) on the target's row, shifted to
  a minimum of 0, plus eps; map = ∏_l s_l.
"""

from __future__ import annotations

import numpy as np

from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods.base import (check_attentions, check_grads, CONSTANT_RTOL, grid_maps, patch_maps,
                   resolve_index, start_vector, target_rows)


def chefer(attentions: np.ndarray, layout: TokenLayout, *, grads: np.ndarray | None = None,
           start_layer: int = 0) -> np.ndarray:
    """Generic attention explainability (Chefer et al. 2021), target row only.

    "R^{qq} = R^{qq} + Ā · R^{qq}" with Ā = E_h((∇A ⊙ A)⁺) makes R_L = (I + Ā_L) ··· (I + Ā_1),
    later layers on the left, so the target's row is built from the left as
    v = e_tᵀ, v ← v + v Ā_l for l = L .. start: one vector-matrix product per layer and head.
    The identity's own share (e_t, or 1/N everywhere for a mean row) is kept apart from the
    accumulated relevance: on the patch columns it is zero or a constant, and adding a
    constant 1/N to gradient-scale values would only cost float32 precision.

    Args:
        attentions: (B, L, H, N, N) float attention probabilities; not modified.
        layout: token layout (target row None = mean of all rows).
        grads: (B, L, H, N, N) d y_c / d A_l; required.
        start_layer: first layer of the product (negative counts from the end).

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    a = check_attentions(attentions, layout)
    g = check_grads(grads, a, "chefer")
    start = resolve_index("start_layer", start_layer, a.shape[1], "layers")
    s = start_vector(layout, a.shape[0])
    w = np.zeros_like(s)
    for l in range(a.shape[1] - 1, start - 1, -1):
        x = np.multiply(g[:, l], a[:, l])
        np.maximum(x, 0.0, out=x)
        # mean_h(u X_h) = u mean_h(X_h): the head mean is never built as a matrix.
        w = w + np.matmul((s + w)[:, None, None, :], x)[:, :, 0].mean(axis=1)
    return patch_maps(w, layout, "chefer")


def gradsam(attentions: np.ndarray, layout: TokenLayout, *, grads: np.ndarray | None = None,
            start_layer: int = 0) -> np.ndarray:
    """Grad-SAM (Barkan et al. 2021): mean over layers and heads of relu(G_l) ⊙ A_l, target row.

    Args:
        attentions: (B, L, H, N, N) float attention probabilities; not modified.
        layout: token layout (target row None = mean of all rows).
        grads: (B, L, H, N, N) d y_c / d A_l; required.
        start_layer: first layer averaged (negative counts from the end).

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    a = check_attentions(attentions, layout)
    g = check_grads(grads, a, "gradsam")
    start = resolve_index("start_layer", start_layer, a.shape[1], "layers")
    t = layout.target_row
    if t is not None:
        rows = (a[:, start:, :, t] * np.maximum(g[:, start:, :, t], 0.0)).mean(axis=(1, 2))
    else:
        # Every row is needed: go layer by layer so the temporary stays (B, H, N, N).
        rows = np.zeros((a.shape[0], a.shape[-1]), dtype=np.float32)
        for l in range(start, a.shape[1]):
            rows += (a[:, l] * np.maximum(g[:, l], 0.0)).mean(axis=(1, 2))
        rows /= a.shape[1] - start
    return patch_maps(rows, layout, "gradsam")


def product_rule(attentions: np.ndarray, layout: TokenLayout, *, grads: np.ndarray | None = None,
                 eps: float = 0.01, start_layer: int = 0) -> np.ndarray:
    """Product rule: ∏_l (shifted, per-block s_l + eps), with s_l = mean_h(A_l ⊙ G_l)[t, patches].

    Each block's scores are shifted so their minimum is 0 (per image, per block), which keeps
    two negative factors from multiplying into a large positive. They are then divided by the
    block's range, so ``eps`` is relative to each block's scale: gradients are often 1e-6 or
    smaller, and an absolute eps would drown them. Each factor lies in [eps, 1 + eps]. The
    default 0.01 lets a block rank a patch 100x below its best without erasing what the other
    blocks say about it. A block that does not vary (all zero, e.g. no gradient reached it)
    carries no ranking and counts as a factor of 1; when no block varies, the map is the
    blocks' mean score, all ones if positive and all zeros if not (as for a constant map in
    :func:`~attnmap.runtime.methods.base.normalize_maps`). Because a block's scale only rescales the
    product, which is min-max normalised anyway, the range division changes nothing else.
    The product is summed in log space (float64) and exponentiated after subtracting each
    image's maximum, so 12, 24 or more blocks of factors near eps never underflow.

    Args:
        attentions: (B, L, H, N, N) float attention probabilities; not modified.
        layout: token layout (target row None = mean of all rows).
        grads: (B, L, H, N, N) d y_c / d A_l; required.
        eps: floor added to every factor after the shift, relative to the block's range; > 0.
        start_layer: first block of the product (negative counts from the end).

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    a = check_attentions(attentions, layout)
    g = check_grads(grads, a, "product")
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float, np.integer, np.floating)) \
            or not 0.0 < float(eps) < np.inf:
        raise ExplainError(f"eps must be a positive finite number; got {eps!r}")
    start = resolve_index("start_layer", start_layer, a.shape[1], "layers")
    p = layout.num_prefix
    t = layout.target_row
    if t is not None:
        s = (a[:, start:, :, t, p:] * g[:, start:, :, t, p:]).mean(axis=2)
    else:
        s = np.stack([target_rows((a[:, l] * g[:, l]).mean(axis=1), layout)[:, p:]
                      for l in range(start, a.shape[1])], axis=1)
    s = s.astype(np.float64)
    lo = s.min(axis=-1, keepdims=True)
    hi = s.max(axis=-1, keepdims=True)
    spread = hi - lo
    flat = spread <= CONSTANT_RTOL * np.maximum(np.abs(hi), np.abs(lo))
    factors = (s - lo) / np.where(flat, 1.0, spread) + float(eps)
    factors = np.where(flat, 1.0, factors)
    if not np.isfinite(factors).all():
        raise ExplainError("method 'product' produced NaN or inf; the attentions or grads "
                           "contain non-finite values")
    log_map = np.log(factors).sum(axis=1)
    maps = np.exp(log_map - log_map.max(axis=-1, keepdims=True))
    # No block ranks anything: the product is a constant that says nothing about the level
    # of the evidence, so use the blocks' mean score instead, which normalises to all ones
    # when it is positive and to all zeros when there is none (identity attention).
    no_ranking = flat.all(axis=1)[:, 0]
    maps[no_ranking] = s[no_ranking].mean(axis=1)
    return grid_maps(maps, layout, "product")
