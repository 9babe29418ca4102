"""ViT-CX (Xie et al., IJCAI 2023, "ViT-CX: Causal Explanation of Vision Transformers").

Masks from the patch embeddings, weighted by their causal impact on the class score:

1. **Masks from embeddings.** The target layer's patch tokens, arranged as a (D, gh, gw) tensor,
   give one feature map per embedding dimension; each is upsampled to the input (bilinear) and
   min-max normalised over its pixels: the D "ViT masks". The target layer is the paper's
   default, the last block's ``norm1`` output, which is exactly the ``tokens`` output of an
   attnmap file exported with ``--gradients`` (the method reads no gradients, only that output).
2. **Mask clustering.** The masks are merged by agglomerative clustering, complete linkage on
   the cosine distance 1 − cos(M_i, M_j), merging while the closest clusters are nearer than
   ``distance_threshold`` (0.1 in the paper); a cluster's mask is the sum of its members,
   min-max normalised again. Implemented here in NumPy (SciPy is not a runtime dependency).
3. **Causal impact with the noise correction.** For each of the K cluster masks M_i, with
   Gaussian noise ε_i ~ N(0, ``noise``²) in the normalised input space (0.1 in the paper),
   ``s_i = f_c(x ⊙ M_i + ε_i ⊙ (1 − M_i)) − f_c(x + ε_i ⊙ (1 − M_i)) + f_c(x)``:
   the score of the masked image, minus what the noise alone does to the class probability.
4. **Pixel coverage bias correction.** ``S(λ) = Σ_i s_i M_i(λ) / Σ_j M_j(λ)``: a pixel that
   many masks cover is not favoured for it (the paper's 1/K factor only rescales).

The map at input resolution is area-averaged over each patch, as RISE's. Choices the paper
leaves open: a constant embedding map (no spatial variation) is no mask and is dropped; pixels
no mask covers score 0; the noise is seeded (``noise_seed``) so the same input gives the same
map. Cost: 2K + 1 model runs per image, K <= D (estimated as 2D + 1 by ``cost.py``).
"""

from __future__ import annotations

import numpy as np

from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods.base import normalize_maps
from attnmap.runtime.methods.kinds import PerturbationKind, explained_classes
from attnmap.runtime.methods.perturbation import (FORWARD_BATCH, Forward, check_forward_batch,
                                                  check_perturbation_inputs, class_probs, pool_to_grid)

# OpenCV resizes at most 128 channels at once (CV_CN_MAX in OpenCV 5; 512 in 4.x)
_RESIZE_CHANNELS = 128


class TokenMasksKind(PerturbationKind):
    """Perturbation methods whose masks come from the token features of the forward pass
    (ViT-CX): they read ``tokens`` (files exported with gradients carry them) and rerun the
    logits-only model on masked inputs."""

    name = "token-masks"
    reads = ("tokens", "input")

    def check_model(self, method, meta, model):
        if not meta.has_token_grads:
            raise ExplainError(f"method {method.name!r} needs the last block's token features, and {model} has "
                               "none; re-export the model with `attnmap export --gradients` (the file then carries "
                               "them as its 'tokens' output)")

    def maps(self, method, outputs, layout, options, *, x=None, forward=None, classes=None) -> np.ndarray:
        if x is None or forward is None:
            raise ExplainError(f"method {method.name!r} runs the model on masked inputs, so it needs the "
                               "(B, 3, H, W) model input: maps(outputs, method, x=x_nchw)")
        tokens = getattr(outputs, "tokens", None)
        if tokens is None:
            raise ExplainError(f"method {method.name!r} needs the token features; these outputs carry none "
                               "(a file exported without --gradients)")
        chosen = explained_classes(outputs) if classes is None else np.asarray(classes).reshape(-1)
        return method.fn(x, forward, chosen, layout, tokens, **options)


TOKEN_MASKS = TokenMasksKind()


def vit_cx(x: np.ndarray, forward: Forward, classes: np.ndarray, layout: TokenLayout, tokens: np.ndarray, *,
           distance_threshold: float = 0.1, noise: float = 0.1, noise_seed: int = 0,
           forward_batch: int = FORWARD_BATCH) -> np.ndarray:
    """ViT-CX maps (Xie et al. 2023; see the module docstring for each step).

    Args:
        x: (B, 3, H, W) float32 the preprocessed input.
        forward: ``forward(x_chunk)`` -> (b, C) float32 softmax probabilities.
        classes: (B,) int64 the class explained per image.
        layout: token layout (prefix count, grid).
        tokens: (B, N, D) float32 the target layer's tokens (prefix tokens first).
        distance_threshold: clusters closer than this cosine distance are merged (0 keeps
            every mask apart, 1 or more merges nearly all).
        noise: standard deviation of the Gaussian noise in the masked-out region, in the
            normalised input's units (0: no noise; the correction term then cancels).
        noise_seed: seed of the noise.
        forward_batch: masked inputs per ``forward`` call.

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    x, classes = check_perturbation_inputs(x, classes, layout, "vit_cx")
    chunk = check_forward_batch(forward_batch)
    t = np.asarray(tokens, dtype=np.float32)
    gh, gw = layout.grid
    if t.ndim != 3 or t.shape[0] != x.shape[0] or t.shape[1] != layout.num_tokens:
        raise ExplainError(f"tokens must be (B={x.shape[0]}, N={layout.num_tokens}, D); got shape {t.shape}")
    if not np.isfinite(t).all():
        raise ExplainError("method 'vit_cx': the tokens contain NaN or inf")
    out = np.empty((x.shape[0], gh, gw), np.float64)
    for b in range(x.shape[0]):
        masks = embedding_masks(t[b, layout.num_prefix:], layout.grid, x.shape[2:])
        merged = cluster_masks(masks, float(distance_threshold))
        scores = causal_scores(x[b], forward, int(classes[b]), merged, noise=float(noise),
                               seed=int(noise_seed), forward_batch=chunk)
        out[b] = pool_to_grid(coverage_corrected(scores, merged)[None], layout.grid)[0]
    return normalize_maps(out.astype(np.float32))


def embedding_masks(patches: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(K, H, W) float32: each embedding dimension of (gh * gw, D) patch tokens as a map on the
    grid, upsampled to ``size`` (OpenCV's bilinear, pixel centres aligned) and min-max normalised;
    dimensions that do not vary over the grid are dropped."""
    import cv2

    gh, gw = grid
    h, w = int(size[0]), int(size[1])
    fmap = patches.reshape(gh, gw, -1)
    keep = np.ptp(fmap.reshape(gh * gw, -1), axis=0) > 0
    fmap = np.ascontiguousarray(fmap[:, :, keep])
    up = [cv2.resize(fmap[:, :, i:i + _RESIZE_CHANNELS], (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
          for i in range(0, fmap.shape[2], _RESIZE_CHANNELS)]
    masks = np.moveaxis(np.concatenate(up, axis=2), 2, 0) if up else np.zeros((0, h, w), np.float32)
    return _minmax(masks)


def _minmax(masks: np.ndarray) -> np.ndarray:
    flat = masks.reshape(len(masks), -1)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return ((flat - lo) / span).reshape(masks.shape).astype(np.float32)


def cluster_masks(masks: np.ndarray, distance_threshold: float) -> np.ndarray:
    """(K', H, W) float32: the masks merged by complete-linkage clustering on cosine distance,
    each cluster the min-max normalised sum of its members, in the order of each cluster's first mask."""
    labels = complete_linkage(cosine_distances(masks.reshape(len(masks), -1)), distance_threshold)
    sums = np.zeros((labels.max() + 1 if len(labels) else 0, *masks.shape[1:]), np.float64)
    np.add.at(sums, labels, masks)
    return _minmax(sums)


def cosine_distances(v: np.ndarray) -> np.ndarray:
    """(n, n) float64 1 − cos(v_i, v_j) of the rows of ``v`` (a zero row: distance 1 to all)."""
    v = np.asarray(v, np.float64)
    norms = np.linalg.norm(v, axis=1)
    unit = v / np.where(norms > 0, norms, 1.0)[:, None]
    return 1.0 - np.clip(unit @ unit.T, -1.0, 1.0)


def complete_linkage(dist: np.ndarray, threshold: float) -> np.ndarray:
    """(n,) int64 flat cluster labels from agglomerative clustering with complete linkage.

    The two closest clusters merge while their distance (the largest pairwise distance between
    their members, Lance-Williams: d(k, i ∪ j) = max(d(k, i), d(k, j))) is below ``threshold``.
    Labels are numbered in the order of each cluster's smallest member.
    """
    n = len(dist)
    d = np.array(dist, dtype=np.float64)
    np.fill_diagonal(d, np.inf)
    alive = np.ones(n, bool)
    owner = np.arange(n)  # each point's cluster representative
    for _ in range(n - 1):
        flat = int(np.argmin(d))
        i, j = divmod(flat, n)
        if not d[i, j] < threshold:
            break
        i, j = min(i, j), max(i, j)
        merged = np.maximum(d[i], d[j])
        d[i, :], d[:, i] = merged, merged
        d[i, i] = np.inf
        d[j, :], d[:, j] = np.inf, np.inf
        alive[j] = False
        owner[owner == j] = i
    _, labels = np.unique(owner, return_inverse=True)
    return labels.astype(np.int64)


def causal_scores(x: np.ndarray, forward: Forward, target: int, masks: np.ndarray, *, noise: float, seed: int,
                  forward_batch: int) -> np.ndarray:
    """(K,) float64 ``s_i = f(x ⊙ M_i + ε_i ⊙ (1 − M_i)) − f(x + ε_i ⊙ (1 − M_i)) + f(x)``.

    Args:
        x: (3, H, W) float32 one preprocessed input.
        forward: the model's probabilities.
        target: the class c whose probability is f.
        masks: (K, H, W) float32 in [0, 1].
        noise: the noise's standard deviation.
        seed: the noise's seed (drawn mask by mask, in order).
        forward_batch: inputs per ``forward`` call (each chunk holds masked and noisy pairs).
    """
    cls = np.array([target], np.int64)
    base = float(class_probs(forward, x[None], cls)[0])
    rng = np.random.default_rng(seed)
    k = len(masks)
    out = np.empty(k, np.float64)
    per = max(1, forward_batch // 2)
    for start in range(0, k, per):
        m = masks[start:start + per, None]
        eps = (rng.standard_normal((len(m), *x.shape)) * noise).astype(np.float32) * (1.0 - m)
        both = np.concatenate([x * m + eps, x + eps])
        p = class_probs(forward, both, np.full(len(both), target, np.int64))
        out[start:start + len(m)] = p[:len(m)] - p[len(m):] + base
    return out


def coverage_corrected(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(H, W) float64 ``Σ_i s_i M_i / Σ_j M_j`` (0 where no mask covers a pixel)."""
    total = np.tensordot(scores, masks.astype(np.float64), axes=1)
    density = masks.sum(axis=0, dtype=np.float64)
    return np.divide(total, density, out=np.zeros_like(total), where=density > 0)


__all__ = ["TOKEN_MASKS", "TokenMasksKind", "causal_scores", "cluster_masks", "complete_linkage", "cosine_distances",
           "coverage_corrected", "embedding_masks", "vit_cx"]
