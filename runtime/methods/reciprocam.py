"""ViT-ReciproCAM (Byun & Lee 2023): class scores of the tail on spatially masked token copies.

The paper ("ViT-ReciproCAM: Gradient and Attention-Free Visual Explanations for Vision
Transformer", arXiv 2310.02588) explains a ViT without gradients or attentions: it "utilizes
token masking and generated new layer outputs from the target layer's input to exploit the
correlation between activated tokens and network predictions for target classes". For every
patch position k of the gh x gw grid one copy of the target layer's tokens is made in which only
a 3 x 3 neighbourhood of k survives, weighted by a Gaussian kernel (Recipro-CAM's
``[[1/16, 1/8, 1/16], [1/8, 1/4, 1/8], [1/16, 1/8, 1/16]]``, centred on k, cut at the grid's
border and not renormalised there), the class token kept; the N_p = gh·gw copies run, batched,
through the rest of the network, and the class-c score of copy k is the map at k:

    F^k = [F_cls, M^k ⊙ F_patches],    S_c(k) = f_c(g(F^k)),    then min-max normalised,

with g the end of the network and f_c the class-c output.

Choices (where the paper leaves them open, or where openvino-xai's ``ViTReciproCAM``, the
authors' implementation in OpenVINO's XAI toolkit, fixes them; attnmap follows it):

* **Where.** The tokens entering the last block (openvino-xai's default target: the residual
  ``Add`` in front of the last block, ``k=1`` with ``final_norm=True``). The mask weights scale
  a token on that block's skip path and at its first LayerNorm's output, so the LayerNorm
  normalises the unmasked token (as openvino-xai's graph does; masking before the LayerNorm
  would leave a kept token's normalised value unchanged by its weight and turn a removed one
  into the LayerNorm's bias). The tail graph of the file (``attnmap export --tail``, see
  ``export/tail.py``) takes the tokens and these weights.
* **Score.** ``score="logit"``: the class logit, as openvino-xai reads the head's output of a
  transformer (it does not search for a softmax there); ``"probability"`` takes the softmax.
* **Prefix tokens.** Every prefix token (class, distillation, registers) is kept with weight 1
  in every copy; openvino-xai keeps the class token (``cls_token=True``) and reads the
  patches from index 1, which fits one prefix token.
* **Kernel.** ``gaussian=True`` (openvino-xai's ``use_gaussian``); False keeps token k alone
  with weight 1.

The copies are built ``forward_batch`` at a time (never all N_p at once: 196 copies of
DeiT-Tiny's 197 x 192 tokens are 30 MB), image after image; the tail is about 1/L of the model
(plus the head), so a map costs about N_p / L model runs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods.base import check_layout, normalize_maps, softmax
from attnmap.runtime.methods.perturbation import check_forward_batch

# tail(tokens (b, N, D) float32, weights (b, N) float32) -> (b, C) float32 logits
Tail = Callable[[np.ndarray, np.ndarray], np.ndarray]
SCORES = ("logit", "probability")
GAUSSIAN_3X3 = np.array([[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]], np.float32)
FORWARD_BATCH = 49  # a quarter of DeiT-Tiny's 196 copies: 7.4 MB of tokens a run


def mosaic_weights(layout: TokenLayout, gaussian: bool = True) -> np.ndarray:
    """(N_p, N) float32: row k is the weight of every token in the copy for patch k.

    Prefix tokens have weight 1 in every row; patch p has ``G[p - k + 1]`` (the 3 x 3 kernel
    centred on k) when p lies in k's 3 x 3 neighbourhood, else 0. Without ``gaussian`` row k
    keeps patch k alone, with weight 1.
    """
    check_layout(layout)
    gh, gw = layout.grid
    prefix = layout.num_prefix
    w = np.zeros((gh * gw, prefix + gh * gw), np.float32)
    w[:, :prefix] = 1.0
    patches = w[:, prefix:].reshape(gh, gw, gh, gw)  # (k_row, k_col, p_row, p_col), a view
    kernel = GAUSSIAN_3X3 if gaussian else np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            value = kernel[dy + 1, dx + 1]
            if value == 0:
                continue
            ky = np.arange(max(0, -dy), min(gh, gh - dy))
            kx = np.arange(max(0, -dx), min(gw, gw - dx))
            patches[ky[:, None], kx[None, :], ky[:, None] + dy, kx[None, :] + dx] = value
    return w


def reciprocam(tail_input: np.ndarray, tail: Tail, classes: np.ndarray, layout: TokenLayout, *,
               gaussian: bool = True, score: str = "logit", forward_batch: int = FORWARD_BATCH) -> np.ndarray:
    """ViT-ReciproCAM maps: the class score of the tail on one masked copy per patch.

    Args:
        tail_input: (B, N, D) float32 tokens entering the last block (prefix tokens first).
        tail: ``tail(tokens, weights)`` -> (b, C) float32 logits of the last block, final norm
            and head on tokens (b, N, D) weighted by (b, N) (see ``runtime/model/tail.py``).
        classes: (B,) int64 the class explained per image.
        layout: token layout (prefix count and grid).
        gaussian: weight the 3 x 3 neighbourhood of each patch by the Gaussian kernel; False
            keeps the patch alone.
        score: ``"logit"`` (as openvino-xai) or ``"probability"`` (softmax of the tail's logits).
        forward_batch: masked copies per tail run (does not change the result).

    Returns:
        (B, gh, gw) float32 in [0, 1]: ``S_c(k)`` min-max normalised per map.

    Raises:
        ExplainError: shapes that do not fit the layout, non-finite tokens, bad classes or options.
    """
    check_layout(layout)
    t = np.asarray(tail_input)
    n = layout.num_tokens
    if t.ndim != 3 or t.shape[0] < 1 or t.shape[1] != n:
        raise ExplainError(f"reciprocam needs tail_input (B, {n}, D) for the layout's {n} tokens; got shape {t.shape}")
    t = np.asarray(t, dtype=np.float32)
    if not np.isfinite(t).all():
        raise ExplainError("reciprocam: tail_input contains NaN or inf")
    c = np.asarray(classes)
    if c.shape != (t.shape[0],) or not np.issubdtype(c.dtype, np.integer) or (c < 0).any():
        raise ExplainError(f"reciprocam needs one class index >= 0 per image ({t.shape[0]}); got {c.tolist()!r}")
    if score not in SCORES:
        raise ExplainError(f"score must be one of {SCORES}; got {score!r}")
    chunk = check_forward_batch(forward_batch)
    weights = mosaic_weights(layout, bool(gaussian))
    copies = weights.shape[0]
    b = t.shape[0]
    out = np.empty((b, copies), np.float64)
    total = b * copies
    # (image, copy) pairs in order, forward_batch at a time: a run may hold copies of two images
    for start in range(0, total, chunk):
        idx = np.arange(start, min(start + chunk, total))
        img, k = idx // copies, idx % copies
        logits = np.asarray(tail(t[img], weights[k]))
        if logits.ndim != 2 or logits.shape[0] != len(idx):
            raise ExplainError(f"the tail must return (b, C) logits for {len(idx)} copies; got shape {logits.shape}")
        if c.max() >= logits.shape[1]:
            raise ExplainError(f"class index {int(c.max())} is out of range for {logits.shape[1]} classes")
        values = softmax(logits, np.float64) if score == "probability" else logits.astype(np.float64)
        out[img, k] = values[np.arange(len(idx)), c[img]]
    if not np.isfinite(out).all():
        raise ExplainError("reciprocam: the tail returned NaN or inf")
    return normalize_maps(out.reshape(t.shape[0], *layout.grid))
