"""Class-specific decomposition without a backward pass (DecompX-style): any class, one forward.

The file's ``class_contributions`` (B, N, C) hold, for every token j entering the LAST block,
its part of every logit: the class token's state is decomposed through that block (attention,
residual and layer scales exactly; norm2, the final norm and the MLP's GELU linearised at the
total as DecompX does, GELU(a)/a per neuron) and projected through the final norm and the head,
so that ``Σ_j class_contributions[:, j, c] + bias_c = logit_c`` (export/decomposition.py).

DecompX (Modarressi et al. 2023) carries a decomposition vector per token through every layer:
"x_i = Σ_k x_{i⇐k}", each part propagated through attention, LayerNorm ("LN(x_i) = Σ_k (x_{i⇐k} −
μ(x_{i⇐k})) ⊙ γ / s(x_i)"), the FFN with the activation linearised ("θ(z) / z" per neuron) and the
classifier, then reads "the contribution of token k to class c" as the projection of x_{cls⇐k}
onto the head's row c. Carrying N decomposition vectors per token through every block costs
N x N x D per block in the graph; here the decomposition is exact (in DecompX's sense) only
through the last block, where it matters most (the head reads the class token). By default the
map is the contributions of the last block's input tokens, read at their patch positions
(``start_layer=-1``); optionally (an earlier ``start_layer``, a ``--decompositions`` file) the
blocks before carry them back to the input patches by GlobEnc's norm-based mixing, rows
renormalised (``runtime/methods/decomposition.py``). The default was chosen by ``attnmap
evaluate`` on DeiT-Tiny's shared photos: the carry-back through all blocks scored positive AUC
15.0 against 10.0 without it (README). A signed contribution keeps its sign (through the
non-negative mixing too); the map is min-max normalised, so its order is the contributions'
order (negative evidence lowest).
"""

from __future__ import annotations

import numpy as np

from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods.base import check_attentions, patch_maps, resolve_index
from attnmap.runtime.methods.decomposition import check_grams, globenc_matrix, mixing_rollout

__all__ = ["decompx", "token_contributions"]


def token_contributions(outputs, classes: np.ndarray) -> np.ndarray:
    """(B, N) float32: each last-block input token's contribution to its image's class.

    Args:
        outputs: the forward pass (``class_contributions`` (B, N, C)), read by attribute.
        classes: (B,) int the class explained per image.

    Raises:
        ExplainError: no contributions in the outputs, or classes out of range.
    """
    c = getattr(outputs, "class_contributions", None)
    if c is None:
        raise ExplainError("these outputs carry no class_contributions; export the model with "
                           "`attnmap export --decompositions` (token-pooled models with a GELU MLP)")
    c = np.asarray(c)
    chosen = np.asarray(classes, dtype=np.int64).reshape(-1)
    if c.ndim != 3 or chosen.shape != (c.shape[0],):
        raise ExplainError(f"class_contributions must be (B, N, C) with one class per image; got shape {c.shape} "
                           f"and classes {chosen.tolist()}")
    if ((chosen < 0) | (chosen >= c.shape[2])).any():
        raise ExplainError(f"classes must lie in [0, {c.shape[2]}); got {chosen.tolist()}")
    return c[np.arange(c.shape[0]), :, chosen].astype(np.float32)


def decompx(outputs, layout: TokenLayout, classes, *, start_layer: int = -1) -> np.ndarray:
    """Token contributions to the class logit, carried back to the patches by GlobEnc's mixing.

    Args:
        outputs: the forward pass (``attentions``, ``class_contributions``, and for a carry-back
            ``mix_grams_ln``).
        layout: token layout.
        classes: (B,) int the class each map explains.
        start_layer: first block of the carry-back (negative counts from the end). The last
            block is always decomposed exactly, so ``start_layer`` = L - 1 (or -1, the default:
            it scored best in ``attnmap evaluate``, README) reads the contributions of the last
            block's input tokens as they are and needs no Grams; an earlier block carries them
            back through the blocks before it, which needs ``mix_grams_ln`` (a
            ``--decompositions`` file).

    Returns:
        (B, gh, gw) float32 in [0, 1].

    Raises:
        ExplainError: no contributions, or a carry-back on a file without the Grams.
    """
    a = check_attentions(outputs.attentions, layout)
    start = resolve_index("start_layer", start_layer, a.shape[1], "layers")
    v = token_contributions(outputs, classes)
    if v.shape[1] != layout.num_tokens:
        raise ExplainError(f"class_contributions has {v.shape[1]} tokens; the layout has {layout.num_tokens}")
    if start < a.shape[1] - 1:
        if getattr(outputs, "mix_grams_ln", None) is None:
            raise ExplainError(f"decompx with start_layer={start_layer} carries the contributions back through the "
                               "earlier blocks, which needs the 'mix_grams_ln' output of a file exported with "
                               "`attnmap export --decompositions`; start_layer=-1 needs only the contributions")
        g = check_grams(outputs.mix_grams_ln, a, "mix_grams_ln", "decompx")
        v = mixing_rollout(lambda l, rows: globenc_matrix(a, g, l, rows), a.shape[1], start, layout, a.shape[0],
                           v=v, last=a.shape[1] - 2)
    return patch_maps(v, layout, "decompx")
