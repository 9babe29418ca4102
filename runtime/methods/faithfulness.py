"""Faithfulness of a map, measured by perturbing the model input and running the model again.

Exact definitions (the pitfalls of public code are in ``../shared/METHODS.md``):

* **Units.** The P patches of the token grid; each covers its ``patch_h x patch_w`` block of the
  model input. Units are ranked by map value, descending, ties broken by index (a stable sort),
  so the ranking of a map with equal values is defined.
* **Removal.** A removed unit takes the baseline's pixels: ``mean`` (0 in the normalised input,
  i.e. the model's mean colour; Chefer et al. 2021), ``black`` (pixel value 0) or ``blur`` (the
  same pixels of a Gaussian-blurred input).
* **Positive / negative perturbation** (Chefer et al., CVPR 2021, Sec. 4). At the fractions
  f = 0, 0.1, ..., 0.9 the k = round(f P) most (positive) or least (negative) relevant units are
  removed and the curve records whether the top-1 prediction still equals the explained class.
  AUC = trapezoid rule of that accuracy over f in [0, 0.9], times 100, as in the authors' code
  (``np.trapz(acc, f) * 100``). Lower positive and higher negative are better.
* **Deletion / insertion** (Petsiuk et al., RISE, BMVC 2018). At f = 0, 1/S, ..., 1 the top
  k = round(f P) units are removed from the input (deletion), or restored onto the input with
  every unit removed (insertion); the curve records the softmax probability of the explained
  class. AUC = trapezoid rule over f in [0, 1]. Lower deletion and higher insertion are better.

Every perturbed input of an image goes through the model in batches (``infer_plain``: the
logits-only graph), so the cost is the forward passes and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from attnmap.runtime.core.errors import OptionError
from attnmap.runtime.core.meta import ModelMeta

BASELINES = ("mean", "black", "blur")
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # NumPy 2 renamed np.trapz
PN_FRACTIONS = np.round(np.arange(10) / 10.0, 10)  # 0, 0.1, ..., 0.9


@dataclass(frozen=True)
class Curves:
    """The four curves of one map (and their fractions).

    Attributes:
        pn_fractions: (10,) fractions of positive / negative perturbation.
        positive: (10,) 1.0 where the top-1 still equals the explained class, else 0.0.
        negative: (10,) the same, removing the least relevant units first.
        di_fractions: (S + 1,) fractions of deletion / insertion.
        deletion: (S + 1,) probability of the explained class as the top units are removed.
        insertion: (S + 1,) the same as they are restored onto the all-removed input.
    """

    pn_fractions: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    di_fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    def aucs(self) -> dict[str, float]:
        """``positive_auc`` and ``negative_auc`` (x 100, over [0, 0.9]); ``deletion_auc`` and
        ``insertion_auc`` (over [0, 1])."""
        return {"positive_auc": float(_trapezoid(self.positive, self.pn_fractions) * 100.0),
                "negative_auc": float(_trapezoid(self.negative, self.pn_fractions) * 100.0),
                "deletion_auc": float(_trapezoid(self.deletion, self.di_fractions)),
                "insertion_auc": float(_trapezoid(self.insertion, self.di_fractions))}


def unit_order(maps: np.ndarray, *, descending: bool = True) -> np.ndarray:
    """(B, P) unit indices of (B, gh, gw) maps, most relevant first (``descending``) or least
    relevant first, equal values by index in both cases (a stable sort)."""
    m = np.asarray(maps, dtype=np.float64)
    flat = m.reshape(m.shape[0], -1)
    return np.argsort(-flat if descending else flat, axis=1, kind="stable")


def baseline_input(x_nchw: np.ndarray, meta: ModelMeta, kind: str = "mean", sigma: float = 10.0) -> np.ndarray:
    """The input every removed unit takes its pixels from, in the model's normalised space.

    Args:
        x_nchw: (B, 3, H, W) float32 normalised input.
        meta: the model's metadata (mean and std of the normalisation).
        kind: ``"mean"`` (zeros: the model's mean colour), ``"black"`` (pixel value 0) or
            ``"blur"`` (the input blurred with a Gaussian of ``sigma`` pixels; normalisation
            is affine per channel, so blurring the normalised input equals normalising the
            blurred image).
        sigma: the blur's standard deviation in input pixels.

    Raises:
        OptionError: unknown kind or a non-positive sigma.
    """
    if kind not in BASELINES:
        raise OptionError(f"baseline must be one of {', '.join(BASELINES)}; got {kind!r}")
    x = np.asarray(x_nchw, dtype=np.float32)
    if kind == "mean":
        return np.zeros_like(x)
    if kind == "black":
        mean = np.asarray(meta.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(meta.std, np.float32).reshape(1, 3, 1, 1)
        return np.broadcast_to(-mean / std, x.shape).astype(np.float32)
    if not sigma > 0:
        raise OptionError(f"blur sigma must be > 0 pixels; got {sigma}")
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[b, c] = cv2.GaussianBlur(x[b, c], (0, 0), float(sigma), borderType=cv2.BORDER_REFLECT)
    return out


def perturbed_inputs(x_chw: np.ndarray, base_chw: np.ndarray, order: np.ndarray, counts: np.ndarray,
                     grid: tuple[int, int], *, restore: bool = False) -> np.ndarray:
    """The inputs with the first ``k`` units of ``order`` removed (or restored), one per ``k``.

    Args:
        x_chw: (3, H, W) the image's input.
        base_chw: (3, H, W) the baseline it takes removed pixels from.
        order: (P,) unit indices, in the order they are removed.
        counts: (n,) how many units each input has removed.
        grid: ``(gh, gw)`` units; H and W must be multiples of them.
        restore: start from the baseline and put the first ``k`` units back (insertion).

    Returns:
        (n, 3, H, W) float32.
    """
    gh, gw = grid
    _, h, w = x_chw.shape
    if h % gh or w % gw:
        raise OptionError(f"the input {h}x{w} is not a whole number of {gh}x{gw} patch units")
    ph, pw = h // gh, w // gw
    rank = np.empty(gh * gw, np.int64)
    rank[order] = np.arange(order.size)  # unit -> its place in the order
    chosen = rank[None, :] < np.asarray(counts)[:, None]  # (n, P): among the first k
    pixels = np.repeat(np.repeat(chosen.reshape(-1, gh, gw), ph, axis=1), pw, axis=2)[:, None]  # (n, 1, H, W)
    keep, fill = (base_chw, x_chw) if restore else (x_chw, base_chw)
    return np.where(pixels, fill[None], keep[None]).astype(np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    return z / z.sum(axis=1, keepdims=True)


def curves_of(explainer, x_chw: np.ndarray, grid_map: np.ndarray, target: int, *, baseline: str = "mean",
              sigma: float = 10.0, steps: int = 16, batch_size: int = 32) -> Curves:
    """The four perturbation curves of one image's map (see the module docstring).

    Args:
        explainer: an :class:`~attnmap.runtime.engine.explainer.Explainer` (``meta``, ``infer_plain``).
        x_chw: (3, H, W) the image's normalised model input.
        grid_map: (gh, gw) the map to score.
        target: the explained class.
        baseline: what removed units take (:data:`BASELINES`).
        sigma: the blur baseline's sigma in input pixels.
        steps: S, the deletion / insertion steps (S + 1 points).
        batch_size: perturbed inputs per model run.

    Returns:
        :class:`Curves`.
    """
    if int(steps) < 1:
        raise OptionError(f"steps must be >= 1; got {steps}")
    meta = explainer.meta
    gh, gw = meta.grid_size
    m = np.asarray(grid_map, dtype=np.float64).reshape(1, gh, gw)
    P = gh * gw
    x = np.asarray(x_chw, dtype=np.float32)
    base = baseline_input(x[None], meta, baseline, sigma)[0]
    di_f = np.arange(int(steps) + 1) / float(steps)
    k_pn = np.rint(PN_FRACTIONS * P).astype(np.int64)
    k_di = np.rint(di_f * P).astype(np.int64)
    most, least = unit_order(m)[0], unit_order(m, descending=False)[0]
    parts = [perturbed_inputs(x, base, most, k_pn, (gh, gw)), perturbed_inputs(x, base, least, k_pn, (gh, gw)),
             perturbed_inputs(x, base, most, k_di, (gh, gw)),
             perturbed_inputs(x, base, most, k_di, (gh, gw), restore=True)]
    sizes = [len(p) for p in parts]
    stack = np.concatenate(parts)
    logits = np.concatenate([explainer.infer_plain(stack[i:i + batch_size]) for i in range(0, len(stack), batch_size)])
    probs = _softmax(logits)
    top1 = logits.argmax(axis=1)
    pos, neg, dele, ins = np.split(np.arange(len(stack)), np.cumsum(sizes)[:-1])
    return Curves(PN_FRACTIONS.copy(), (top1[pos] == target).astype(np.float64),
                  (top1[neg] == target).astype(np.float64), di_f, probs[dele, target], probs[ins, target])
