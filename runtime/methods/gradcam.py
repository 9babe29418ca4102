"""Grad-CAM for ViTs: gradient-weighted token features of the last block, on the patch grid.

Selvaraju et al. (2017), "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", eqs. (1) and (2):

    α_k^c = (1/Z) Σ_i ∂y^c / ∂A^k_i          (global-average-pooled gradients)
    L^c   = ReLU(Σ_k α_k^c A^k)

with A^k the k-th channel of a feature map, i running over its Z spatial positions and y^c the
score of class c before the softmax. For a ViT, as pytorch-grad-cam does with a reshape
transform: A is the (B, N, D) token tensor with the prefix tokens (class, distillation,
registers) dropped, the D embedding channels are the channels k and the gh * gw patch tokens are
the positions i, so Z = gh * gw and the map is reshaped to the token grid.

Which tensor. The exporter (``attnmap export --gradients``; export/gradients.py) emits
``tokens``, the OUTPUT of the last block's first LayerNorm (``blocks[-1].norm1``, pytorch-grad-
cam's documented ViT target layer), and ``token_grads``, d logit[target] / d tokens. The last
block's output would not do: a class-token model's head reads the class token alone, so the
gradient at every patch token there is exactly 0.
"""

from __future__ import annotations

import numpy as np

from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods.base import check_layout, grid_maps

__all__ = ["gradcam"]

_REEXPORT = "re-export with `attnmap export --gradients`"


def _check_tokens(name: str, value: np.ndarray | None, layout: TokenLayout) -> np.ndarray:
    """``value`` checked to be a real (B, N, D) array with N == ``layout.num_tokens``, as float32."""
    if value is None:
        raise ExplainError(f"method 'gradcam' needs the token features and their gradients (outputs 'tokens' "
                           f"and 'token_grads'), and {name} is None: the model was exported without them; "
                           f"{_REEXPORT}")
    t = np.asarray(value)
    if t.ndim != 3 or min(t.shape) == 0:
        raise ExplainError(f"{name} must be a non-empty 3-D array (B, N, D); got shape {t.shape}")
    if t.shape[1] != layout.num_tokens:
        raise ExplainError(f"{name} has N={t.shape[1]} tokens but the layout expects {layout.num_tokens} "
                           f"({layout.num_prefix} prefix + {layout.grid[0]}x{layout.grid[1]} patches); "
                           f"got shape {t.shape}")
    if not (np.issubdtype(t.dtype, np.floating) or np.issubdtype(t.dtype, np.integer)):
        raise ExplainError(f"{name} must be real numbers; got dtype {t.dtype}")
    return np.asarray(t, dtype=np.float32)


def gradcam(tokens: np.ndarray | None, token_grads: np.ndarray | None, layout: TokenLayout) -> np.ndarray:
    """Grad-CAM on the patch tokens: ReLU(Σ_k α_k A^k) with α_k = mean over patches of ∂y^c/∂A^k.

    The class c is the one the gradients were taken for (the ``target`` the model ran with, the
    predicted class by default). The map is min-max normalised per image, as pytorch-grad-cam
    scales its CAMs; an all-zero map (no patch with positive evidence) stays all zero.

    Args:
        tokens: (B, N, D) float token features A (prefix tokens first, then the patches in
            row-major grid order), N == ``layout.num_tokens``; not modified.
        token_grads: (B, N, D) float ∂y^c / ∂tokens, same shape.
        layout: token layout (prefix count and grid; the target row is not used).

    Returns:
        (B, gh, gw) float32 in [0, 1].

    Raises:
        ExplainError: ``tokens`` or ``token_grads`` is None (a file exported before attnmap
            emitted them: re-export with ``attnmap export --gradients``), shapes that differ or
            do not match ``layout``, or non-finite values.
    """
    check_layout(layout)
    a = _check_tokens("tokens", tokens, layout)
    g = _check_tokens("token_grads", token_grads, layout)
    if g.shape != a.shape:
        raise ExplainError(f"token_grads must have the shape of tokens {a.shape}; got shape {g.shape}")
    p = layout.num_prefix
    alpha = g[:, p:].mean(axis=1)                                  # (B, D): α_k^c, eq. (1)
    cam = np.matmul(a[:, p:], alpha[:, :, None])[:, :, 0]          # (B, gh*gw): Σ_k α_k A^k
    np.maximum(cam, 0.0, out=cam)                                  # ReLU, eq. (2)
    return grid_maps(cam, layout, "gradcam")
