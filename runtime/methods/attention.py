"""Raw attention (Abnar & Zuidema 2020; DINO): one layer's attention from the target row."""

from __future__ import annotations

import numpy as np

from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods.base import (check_attentions, check_choice, fuse_heads, HEAD_FUSIONS, patch_maps,
                   resolve_index, target_rows)


def raw_attention(attentions: np.ndarray, layout: TokenLayout, *, grads: np.ndarray | None = None,
                  layer: int = -1, head: int | None = None, head_fusion: str = "mean") -> np.ndarray:
    """Attention paid by the target row to each patch in one layer.

    With a class token this is A_layer[t, num_prefix:] (one head, or the heads fused); for a
    class-token-free model (``layout.target_row`` None) it is the mean of all rows of the
    (fused) matrix, the attention the average-pooled output gathers.

    Args:
        attentions: (B, L, H, N, N) float attention probabilities; not modified.
        layout: token layout.
        grads: ignored (class-agnostic); accepted so every method shares one call.
        layer: layer index; negative counts from the end (-1 = last).
        head: one head's index (negative counts from the end), or None to fuse the heads.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"``; used when ``head`` is None.

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    a = check_attentions(attentions, layout)
    check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    l = resolve_index("layer", layer, a.shape[1], "layers")
    a_l = a[:, l]
    if head is not None:
        h = resolve_index("head", head, a.shape[2], "heads")
        return patch_maps(target_rows(a_l[:, h], layout), layout, "attention")
    if layout.target_row is not None:
        # The fused row equals the row of the fused matrix for mean, max and min alike, so
        # only the target row of each head is read.
        return patch_maps(fuse_heads(a_l[:, :, layout.target_row], head_fusion), layout, "attention")
    return patch_maps(target_rows(fuse_heads(a_l, head_fusion), layout), layout, "attention")
