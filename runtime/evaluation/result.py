"""What an evaluation measured (:class:`Evaluation`): per-image metrics, curves, summaries, merging.

:func:`~attnmap.runtime.evaluation.scoring.evaluate` fills one; the report
(:mod:`attnmap.runtime.fronts.evaluate.report`) prints and plots it; the Ray engine merges the
parts its actors scored with :func:`merge_evaluations`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from attnmap.runtime.core.errors import OptionError
from attnmap.runtime.evaluation.curves import Curves
from attnmap.runtime.evaluation.timing import PLAIN, cost_summary

PERTURBATION = ("positive_auc", "negative_auc", "deletion_auc", "insertion_auc")
LOCALISATION = ("pointing_game", "mass_ratio", "pixel_accuracy", "miou", "ap")
METRICS = PERTURBATION + LOCALISATION
CURVES = ("positive", "negative", "deletion", "insertion")
RANDOM = "random"
# ``to_dict``'s document. Keys added leave it as it is (readers ignore unknown keys); a key removed
# or renamed, or a meaning changed, raises it (the rule of runtime/engine/record.py).
EVALUATION_SCHEMA_VERSION = 1


@dataclass
class Evaluation:
    """What :func:`evaluate` measured.

    Attributes:
        model: the model's name.
        unit: ``"patch"`` or ``"pixel"``.
        baseline: what removed units took.
        per_image: method -> metric -> (images,) values, in image order (localisation metrics
            only where ground truth was given).
        curves: method -> curve name -> list of (points,) curves, one per image.
        fractions: ``{"pn": (10,), "di": (S + 1,)}`` the curves' x values.
        sources: the images' names, in order.
        targets: the class explained for each image, in order.
        failed: ``(source, reason)`` of images that could not be scored.
        timings: with timing: method (and ``"plain"``, plain inference) -> (images,) seconds
            of each scored image's explanation (:mod:`~attnmap.runtime.evaluation.timing`);
            empty without timing.
    """

    model: str
    unit: str
    baseline: str
    per_image: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)
    fractions: dict[str, np.ndarray] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, list[float]] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return len(self.sources)

    @property
    def methods(self) -> list[str]:
        return list(self.per_image)

    def summary(self, seed: int = 0, resamples: int = 1000) -> dict[str, dict[str, dict[str, float] | None]]:
        """method -> metric -> ``{"mean", "ci_low", "ci_high"}`` (95% percentile bootstrap over
        images), or None for a metric that was not measured (localisation without ground truth).

        NaN values (a mass ratio of an all-zero map) are left out of that metric's mean.
        """
        rng = np.random.default_rng(seed)
        out: dict[str, dict[str, dict[str, float] | None]] = {}
        for method, metrics in self.per_image.items():
            out[method] = {}
            for name in METRICS:
                v = np.asarray(metrics.get(name, []), dtype=np.float64)
                v = v[np.isfinite(v)]
                if v.size == 0:
                    out[method][name] = None
                    continue
                boots = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
                out[method][name] = {"mean": round(float(v.mean()), 4),
                                     "ci_low": round(float(np.percentile(boots, 2.5)), 4),
                                     "ci_high": round(float(np.percentile(boots, 97.5)), 4)}
        return out

    def mean_curves(self) -> dict[str, dict[str, list[float]]]:
        """method -> ``{"pn_fractions", "positive", "negative", "di_fractions", "deletion",
        "insertion"}``: each curve averaged over images."""
        out = {}
        for method, curves in self.curves.items():
            if not curves.get("positive"):
                continue
            entry = {"pn_fractions": [round(float(f), 4) for f in self.fractions["pn"]],
                     "di_fractions": [round(float(f), 4) for f in self.fractions["di"]]}
            for name in CURVES:
                entry[name] = [round(float(v), 4) for v in np.mean(curves[name], axis=0)]
            out[method] = entry
        return out

    def cost(self) -> dict[str, dict[str, float]]:
        """method (and ``"plain"``) -> ``{"explain_ms", "cost_x"}``: median explain time per image
        and that over plain inference's median; empty without timing
        (:func:`~attnmap.runtime.evaluation.timing.cost_summary`)."""
        return cost_summary(self.timings)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document ``attnmap evaluate --json`` prints (schema in docs/evaluation.md)."""
        summary, curves, cost = self.summary(), self.mean_curves(), self.cost()
        methods = {}
        for method in self.per_image:
            entry: dict[str, Any] = {}
            for name in METRICS:
                stat = summary[method][name]
                entry[name] = None if stat is None else stat["mean"]
                entry[name + "_ci"] = None if stat is None else [stat["ci_low"], stat["ci_high"]]
            entry["explain_ms"] = cost[method]["explain_ms"] if method in cost else None
            entry["cost_x"] = cost[method]["cost_x"] if method in cost else None
            entry["curves"] = curves.get(method)
            methods[method] = entry
        return {"schema_version": EVALUATION_SCHEMA_VERSION, "model": self.model, "images": self.images,
                "unit": self.unit, "baseline": self.baseline,
                "plain_ms": cost[PLAIN]["explain_ms"] if PLAIN in cost else None,
                "methods": methods, "failed": [{"source": s, "error": e} for s, e in self.failed]}

    def _add(self, source: str, target: int, scores: dict[str, dict[str, float]],
             curves: dict[str, Curves], seconds: dict[str, float] | None = None) -> None:
        self.sources.append(source)
        for name, t in (seconds or {}).items():
            self.timings.setdefault(name, []).append(float(t))
        self.targets.append(target)
        for method, values in scores.items():
            for name, v in values.items():
                self.per_image[method].setdefault(name, []).append(v)
        for method, c in curves.items():
            for name in CURVES:
                self.curves.setdefault(method, {}).setdefault(name, []).append(getattr(c, name))
            self.fractions = {"pn": c.pn_fractions, "di": c.di_fractions}


def merge_evaluations(parts: Sequence[Evaluation]) -> Evaluation:
    """One evaluation of parts scored apart (on several machines), in the order given.

    Every part must come from the same model, unit, baseline and methods (the distributed
    evaluate scores one image per part, on Ray actors, with :func:`evaluate` itself). Timings
    are not merged: parts timed on different machines do not share a baseline (timing is
    refused on Ray).

    Raises:
        OptionError: no parts, or parts that measured different things.
    """
    if not parts:
        raise OptionError("no evaluations to merge")
    first = parts[0]
    out = Evaluation(first.model, first.unit, first.baseline, {m: {} for m in first.per_image})
    for part in parts:
        if (part.model, part.unit, part.baseline, list(part.per_image)) != (out.model, out.unit, out.baseline,
                                                                             list(out.per_image)):
            raise OptionError(f"cannot merge evaluations of different runs: {part.model}/{part.unit}/{part.baseline}"
                              f" {list(part.per_image)} and {out.model}/{out.unit}/{out.baseline} {list(out.per_image)}")
        out.failed.extend(part.failed)
        for i, (source, target) in enumerate(zip(part.sources, part.targets)):
            scores = {m: {k: v[i] for k, v in metrics.items()} for m, metrics in part.per_image.items()}
            curves = {m: Curves(part.fractions["pn"], c["positive"][i], c["negative"][i], part.fractions["di"],
                                c["deletion"][i], c["insertion"][i]) for m, c in part.curves.items()}
            out._add(source, target, scores, curves)
    return out


__all__ = ["EVALUATION_SCHEMA_VERSION", "CURVES", "LOCALISATION", "METRICS", "PERTURBATION", "RANDOM", "Evaluation", "merge_evaluations"]
