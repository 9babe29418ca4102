"""Faithfulness of a map, measured by perturbing the model input and running the model again.

Exact definitions (the pitfalls of public code are in ``../shared/METHODS.md``):

* **Units.** ``patch``: the P patches of the token grid, each covering its ``patch_h x patch_w``
  block of the model input. ``pixel``: the P = H x W pixels of the model input, scored by the
  map resized to the input with bilinear interpolation (pixel centres aligned,
  :func:`~attnmap.runtime.image.resample.resize_maps`). Units are ranked by score, descending,
  ties broken by index (a stable sort), so the ranking of a map with equal values is defined.
* **Removal.** A removed unit takes the baseline's pixels
  (:func:`~attnmap.runtime.methods.baselines.baseline_input`): ``mean`` (0 in the normalised input,
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

Every perturbed input of an image, for all its maps together, goes through the model in full
batches (``infer_plain``: the logits-only graph), built batch by batch so memory stays at one
batch of inputs; the cost is the forward passes and little else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnmap.runtime.core.errors import OptionError
from attnmap.runtime.image.resample import resize_maps
from attnmap.runtime.methods.base import softmax
from attnmap.runtime.methods.baselines import BASELINES, baseline_input

UNITS = ("patch", "pixel")
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


def unit_scores(grid_map: np.ndarray, unit: str, input_size: tuple[int, int]) -> np.ndarray:
    """The map as scores of the units: the (gh, gw) grid itself, or resized to the (H, W) input.

    Raises:
        OptionError: unknown unit.
    """
    if unit not in UNITS:
        raise OptionError(f"unit must be one of {', '.join(UNITS)}; got {unit!r}")
    m = np.asarray(grid_map, dtype=np.float64)
    if unit == "patch":
        return m
    return resize_maps(m[None].astype(np.float32), input_size)[0].astype(np.float64)


@dataclass(frozen=True)
class _Series:
    """One curve's perturbed inputs: the first ``counts[i]`` units of ``order`` removed (or restored)."""

    order: np.ndarray
    counts: np.ndarray
    restore: bool


def _series_of(scores: np.ndarray, steps: int) -> list[_Series]:
    P = scores.size
    most, least = unit_order(scores[None])[0], unit_order(scores[None], descending=False)[0]
    k_pn = np.rint(PN_FRACTIONS * P).astype(np.int64)
    k_di = np.rint(np.arange(steps + 1) / float(steps) * P).astype(np.int64)
    return [_Series(most, k_pn, False), _Series(least, k_pn, False), _Series(most, k_di, False),
            _Series(most, k_di, True)]


def score_maps(explainer, x_chw: np.ndarray, grid_maps: list[np.ndarray], target: int, *, baseline: str = "mean",
               sigma: float = 10.0, steps: int = 16, unit: str = "patch", batch_size: int = 32) -> list[Curves]:
    """The four perturbation curves of each of one image's maps (see the module docstring).

    All maps' perturbed inputs share the model runs: they are cut into full batches of
    ``batch_size`` across maps and curves, each batch built just before it runs.

    Args:
        explainer: an :class:`~attnmap.runtime.engine.explainer.Explainer` (``meta``, ``infer_plain``).
        x_chw: (3, H, W) the image's normalised model input.
        grid_maps: (gh, gw) maps to score.
        target: the explained class.
        baseline: what removed units take (:data:`BASELINES`).
        sigma: the blur baseline's sigma in input pixels.
        steps: S, the deletion / insertion steps (S + 1 points).
        unit: ``"patch"`` or ``"pixel"`` (:data:`UNITS`).
        batch_size: perturbed inputs per model run.

    Returns:
        One :class:`Curves` per map, in order.
    """
    if int(steps) < 1:
        raise OptionError(f"steps must be >= 1; got {steps}")
    if int(batch_size) < 1:
        raise OptionError(f"batch_size must be >= 1; got {batch_size}")
    meta = explainer.meta
    x = np.asarray(x_chw, dtype=np.float32)
    size = (x.shape[1], x.shape[2])
    gh, gw = meta.grid_size
    grid = (gh, gw) if unit == "patch" else size
    base = baseline_input(x[None], meta, baseline, sigma)[0]
    series = []
    for m in grid_maps:
        scores = unit_scores(np.asarray(m).reshape(gh, gw), unit, size)
        series += _series_of(scores, int(steps))
    # Row r of the whole stack is step rows[r][1] of series rows[r][0].
    rows = [(s, i) for s, ser in enumerate(series) for i in range(ser.counts.size)]
    probs = np.empty(len(rows))
    top1 = np.empty(len(rows), np.int64)
    for lo in range(0, len(rows), int(batch_size)):
        chunk = rows[lo:lo + int(batch_size)]
        parts, start = [], 0
        while start < len(chunk):
            s = chunk[start][0]
            stop = start
            while stop < len(chunk) and chunk[stop][0] == s:
                stop += 1
            ser = series[s]
            picks = ser.counts[[i for _, i in chunk[start:stop]]]
            parts.append(perturbed_inputs(x, base, ser.order, picks, grid, restore=ser.restore))
            start = stop
        logits = explainer.infer_plain(np.concatenate(parts))
        probs[lo:lo + len(chunk)] = softmax(logits, np.float64)[:, target]
        top1[lo:lo + len(chunk)] = logits.argmax(axis=1)
    out, at = [], 0
    di_f = np.arange(int(steps) + 1) / float(steps)
    for _ in grid_maps:
        n_pn, n_di = PN_FRACTIONS.size, di_f.size
        pos = slice(at, at + n_pn)
        neg = slice(at + n_pn, at + 2 * n_pn)
        dele = slice(at + 2 * n_pn, at + 2 * n_pn + n_di)
        ins = slice(at + 2 * n_pn + n_di, at + 2 * n_pn + 2 * n_di)
        out.append(Curves(PN_FRACTIONS.copy(), (top1[pos] == target).astype(np.float64),
                          (top1[neg] == target).astype(np.float64), di_f, probs[dele], probs[ins]))
        at = ins.stop
    return out


def curves_of(explainer, x_chw: np.ndarray, grid_map: np.ndarray, target: int, **kwargs) -> Curves:
    """The four perturbation curves of one map: :func:`score_maps` of that map alone."""
    return score_maps(explainer, x_chw, [grid_map], target, **kwargs)[0]


__all__ = ["BASELINES", "PN_FRACTIONS", "UNITS", "Curves", "baseline_input", "curves_of", "perturbed_inputs",
           "score_maps", "unit_order", "unit_scores"]
