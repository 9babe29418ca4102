"""Fidelity gate: does a reduced-precision file explain what its fp32 original explains?

The parity gate of an fp32 export (``export/parity.py``) asks for agreement to 1e-4; an int8 or
fp16 file cannot meet that, and what matters is whether its predictions and maps are the same
ones. Over a set of real (or synthetic) images both files are run, and:

* ``top1_agreement``: fraction of images whose top-1 class is the same;
* ``max_prob_diff``: largest |p_fp32 - p_candidate| over every class of every image (softmax);
* per map method the file supports (attention and gradient methods, and Grad-CAM where the
  file has token gradients): the mean and the minimum over images of the Pearson correlation
  of the two maps on the token grid, and the mean IoU of their top-10% patches.

Perturbation methods (occlusion, RISE) are left out: they are functions of the probabilities,
which ``max_prob_diff`` already bounds, and cost hundreds of runs per image; flow is left out
for its cost (an exact max-flow per patch) and its optional SciPy dependency.

The gate (:func:`check_fidelity`) fails below :class:`Thresholds` (defaults: top-1 agreement
>= 0.98, mean rollout correlation >= 0.98).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from attnmap.runtime.core.errors import FidelityError, OptionError
from attnmap.runtime.methods.base import softmax

TOP_FRACTION = 0.10  # the IoU compares each map's top 10% of patches
SKIPPED_METHODS = ("flow",)  # see the module docstring


@dataclass(frozen=True)
class Thresholds:
    """Where the fidelity gate draws the line.

    Attributes:
        min_top1: lowest top-1 agreement accepted, in [0, 1].
        min_rollout_corr: lowest mean Pearson correlation of the rollout maps, in [-1, 1].
        max_prob_diff: largest accepted |p_fp32 - p| (1.0: not gated by default).
    """

    min_top1: float = 0.98
    min_rollout_corr: float = 0.98
    max_prob_diff: float = 1.0

    def __post_init__(self) -> None:
        for name, low, high in (("min_top1", 0.0, 1.0), ("min_rollout_corr", -1.0, 1.0),
                                ("max_prob_diff", 0.0, 1.0)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and low <= value <= high):
                raise OptionError(f"fidelity threshold {name} must be in [{low:g}, {high:g}]; got {value!r}")


@dataclass(frozen=True)
class MapFidelity:
    """How one method's maps agree: Pearson r (mean and worst image) and top-10% patch IoU."""

    pearson_mean: float
    pearson_min: float
    iou_top10_mean: float


@dataclass(frozen=True)
class Fidelity:
    """Fidelity figures of a candidate file against its fp32 reference.

    Attributes:
        images: how many images were compared.
        source: where the images came from (``"calibration"``, ``"synthetic"`` or a source spec).
        top1_agreement: fraction of images with the same top-1 class, in [0, 1].
        max_prob_diff: largest absolute softmax-probability difference.
        maps: method name -> :class:`MapFidelity`.
        thresholds: the thresholds the file passed (stored with the figures).
        batch: images per run of the candidate file (see :func:`measure_fidelity`).
    """

    images: int
    source: str
    top1_agreement: float
    max_prob_diff: float
    maps: Mapping[str, MapFidelity] = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)
    batch: int = 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the form stored in :attr:`ModelMeta.fidelity`)."""
        return asdict(self) | {"maps": {k: asdict(v) for k, v in self.maps.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Fidelity":
        """Read back :meth:`to_dict`'s form.

        Raises:
            FidelityError: a field is missing or of the wrong type.
        """
        try:
            return cls(int(data["images"]), str(data["source"]), float(data["top1_agreement"]),
                       float(data["max_prob_diff"]),
                       {k: MapFidelity(**v) for k, v in dict(data.get("maps", {})).items()},
                       Thresholds(**dict(data.get("thresholds", {}))), int(data.get("batch", 1)))
        except (KeyError, TypeError, ValueError) as exc:
            raise FidelityError(f"fidelity record is malformed ({exc}); expected the fields of Fidelity") from exc

    def summary(self) -> str:
        """One line: images, top-1 agreement, max prob diff, and each method's figures."""
        parts = [f"{self.images} images ({self.source}, batch {self.batch}): top-1 agreement "
                 f"{self.top1_agreement:.3f}, "
                 f"max |dp| {self.max_prob_diff:.4f}"]
        parts += [f"{name} r {m.pearson_mean:.4f} (min {m.pearson_min:.4f}), top-10% IoU {m.iou_top10_mean:.3f}"
                  for name, m in self.maps.items()]
        return "; ".join(parts)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-item Pearson correlation of two map batches.

    Args:
        a, b: (B, ...) maps of the same shape.

    Returns:
        (B,) float64 in [-1, 1]; 1.0 where both maps of an item are constant, 0.0 where just
        one is (a flat map says nothing about where the other one looks).
    """
    x = np.asarray(a, np.float64).reshape(len(a), -1)
    y = np.asarray(b, np.float64).reshape(len(b), -1)
    x = x - x.mean(1, keepdims=True)
    y = y - y.mean(1, keepdims=True)
    sx, sy = np.sqrt((x * x).sum(1)), np.sqrt((y * y).sum(1))
    flat_x, flat_y = sx <= 1e-12, sy <= 1e-12
    r = (x * y).sum(1) / np.where(flat_x | flat_y, 1.0, sx * sy)
    r = np.where(flat_x & flat_y, 1.0, np.where(flat_x | flat_y, 0.0, r))
    return np.clip(r, -1.0, 1.0)


def top_iou(a: np.ndarray, b: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Per-item IoU of the top ``fraction`` of patches of two map batches.

    Args:
        a, b: (B, ...) maps of the same shape, P cells per item.
        fraction: share of the cells in each top set (at least one cell).

    Returns:
        (B,) float64 in [0, 1]. Ties are broken by cell index (a stable sort), the same way in both.
    """
    x = np.asarray(a, np.float64).reshape(len(a), -1)
    y = np.asarray(b, np.float64).reshape(len(b), -1)
    k = max(1, math.ceil(fraction * x.shape[1]))
    out = np.empty(len(x))
    for i in range(len(x)):
        ta = set(np.argsort(-x[i], kind="stable")[:k].tolist())
        tb = set(np.argsort(-y[i], kind="stable")[:k].tolist())
        out[i] = len(ta & tb) / len(ta | tb)
    return out


def map_methods(meta) -> list[str]:
    """The map methods a file's fidelity is measured on (see the module docstring), rollout first."""
    from attnmap.runtime.methods import METHODS, runs_on

    return [name for name, m in METHODS.items()
            if not m.reruns_model and name not in SKIPPED_METHODS and runs_on(name, meta)]


def measure_fidelity(reference, candidate, x_nchw: np.ndarray, *, source: str = "images", batch: int = 1,
                     thresholds: Thresholds | None = None) -> Fidelity:
    """Run both models on the same images and compare predictions and maps.

    Args:
        reference: an :class:`attnmap.Explainer` of the fp32 file (anything with ``meta``,
            ``infer(x, target=None)`` and ``maps(outputs, method)`` does).
        candidate: an Explainer of the reduced-precision file (same model).
        x_nchw: (B, 3, H, W) float32 preprocessed images.
        source: where the images came from, recorded in the result.
        batch: images per run of both files. 1 by default, because a dynamic int8 file's results
            depend a little on the batch: it quantises each activation tensor with one scale over
            the whole batch, so an image's logits and maps shift with its batch partners
            (DeiT-Tiny, 12 photos: maps of an image alone and in a batch of 8 correlate at 0.996,
            and the one photo whose top-2 classes are 0.007 apart flips in some batches of 8:
            top-1 agreement 0.969 over random batches of 8, 1.000 alone). Batch 1 is what a
            live or edge deployment runs, and it makes the figures reproducible; the runtime
            (``OnnxModel.run``) runs a dynamic int8 file one image at a time for the same reason.
        thresholds: recorded with the figures (default :class:`Thresholds`).

    Returns:
        :class:`Fidelity`. Gradient methods explain the reference's top-1 class in both files,
        so that a flipped prediction does not also compare maps of two different classes.
    """
    x = np.asarray(x_nchw, np.float32)
    if x.ndim != 4 or len(x) == 0:
        raise FidelityError(f"fidelity needs a (B, 3, H, W) batch of at least one image; got shape {x.shape}")
    meta = reference.meta
    methods = map_methods(meta)
    agree, max_dp = [], 0.0
    r_all: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    iou_all: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for start in range(0, len(x), batch):
        xb = x[start:start + batch]
        ref = reference.infer(xb)
        cand = candidate.infer(xb) if ref.targets is None else candidate.infer(xb, target=ref.targets)
        p_ref, p_cand = softmax(ref.logits, np.float64), softmax(cand.logits, np.float64)
        agree.append(p_ref.argmax(-1) == p_cand.argmax(-1))
        max_dp = max(max_dp, float(np.abs(p_ref - p_cand).max()))
        for m in methods:
            a, b = reference.maps(ref, m), candidate.maps(cand, m)
            r_all[m].append(pearson(a, b))
            iou_all[m].append(top_iou(a, b))
    maps = {}
    for m in methods:
        r, iou = np.concatenate(r_all[m]), np.concatenate(iou_all[m])
        maps[m] = MapFidelity(round(float(r.mean()), 6), round(float(r.min()), 6), round(float(iou.mean()), 6))
    return Fidelity(len(x), source, round(float(np.concatenate(agree).mean()), 6), round(max_dp, 6), maps,
                    thresholds or Thresholds(), int(batch))


def fidelity_failures(fidelity: Fidelity, thresholds: Thresholds) -> list[str]:
    """What falls below ``thresholds`` (empty when the gate passes)."""
    failures = []
    if not fidelity.top1_agreement >= thresholds.min_top1:
        failures.append(f"top-1 agreement {fidelity.top1_agreement:.3f} < {thresholds.min_top1:g}")
    rollout = fidelity.maps.get("rollout")
    if rollout is not None and not rollout.pearson_mean >= thresholds.min_rollout_corr:
        failures.append(f"mean rollout correlation {rollout.pearson_mean:.4f} < {thresholds.min_rollout_corr:g}")
    if not fidelity.max_prob_diff <= thresholds.max_prob_diff:
        failures.append(f"max probability difference {fidelity.max_prob_diff:.4f} > {thresholds.max_prob_diff:g}")
    return failures


def check_fidelity(fidelity: Fidelity, thresholds: Thresholds, what: str = "the file") -> None:
    """Raise FidelityError naming every figure below ``thresholds``.

    Raises:
        FidelityError: the gate fails; the message holds the figures and how to relax the gate.
    """
    failures = fidelity_failures(fidelity, thresholds)
    if failures:
        raise FidelityError(f"fidelity gate failed for {what} against fp32 on {fidelity.images} images "
                            f"({fidelity.source}): {'; '.join(failures)}; no file written (use another "
                            "precision or calibration images, or relax the thresholds min_top1 / min_rollout_corr)"
                            + (". The synthetic shapes are out of distribution for most models, whose "
                               "predictions there are near ties that flip: give check images "
                               "like the model's own" if fidelity.source.startswith("synthetic") else ""))
