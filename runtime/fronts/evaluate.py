"""``attnmap evaluate``: how faithful each method's map is, over a set of images.

For every image and method the map is scored with the four perturbation curves of
:mod:`attnmap.runtime.methods.faithfulness` (positive / negative perturbation, deletion /
insertion), always beside a seeded uniform-random map (3 seeds, averaged per image) so that
every number has its floor. Means come with a 95% bootstrap interval over images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from attnmap.runtime.core.errors import OptionError
from attnmap.runtime.engine.engine import FrameEngine, Job
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.methods.faithfulness import BASELINES, curves_of

METRICS = ("positive_auc", "negative_auc", "deletion_auc", "insertion_auc")
RANDOM = "random"
RANDOM_SEEDS = 3


@dataclass
class Evaluation:
    """What :func:`evaluate` measured.

    Attributes:
        model: the model's name.
        images: images scored.
        unit: ``"patch"``.
        baseline: what removed units took.
        per_image: method -> metric -> (images,) values, in image order.
        sources: the images' names, in order.
        failed: ``(source, reason)`` of images that could not be scored.
    """

    model: str
    unit: str
    baseline: str
    per_image: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images(self) -> int:
        return len(self.sources)

    def summary(self, seed: int = 0, resamples: int = 1000) -> dict[str, dict[str, dict[str, float]]]:
        """method -> metric -> ``{"mean", "ci_low", "ci_high"}`` (95% percentile bootstrap over images)."""
        rng = np.random.default_rng(seed)
        out: dict[str, dict[str, dict[str, float]]] = {}
        n = self.images
        picks = rng.integers(0, n, size=(resamples, n)) if n else None
        for method, metrics in self.per_image.items():
            out[method] = {}
            for name, values in metrics.items():
                v = np.asarray(values, dtype=np.float64)
                if v.size == 0:
                    continue
                boots = v[picks].mean(axis=1)
                out[method][name] = {"mean": round(float(v.mean()), 4),
                                     "ci_low": round(float(np.percentile(boots, 2.5)), 4),
                                     "ci_high": round(float(np.percentile(boots, 97.5)), 4)}
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON document ``attnmap evaluate --json`` prints."""
        return {"model": self.model, "images": self.images, "unit": self.unit, "baseline": self.baseline,
                "methods": self.summary(), "failed": [{"source": s, "error": e} for s, e in self.failed]}


def evaluate(explainer, frames: Sequence[Frame], methods: Sequence[str], *, baseline: str = "mean",
             sigma: float = 10.0, steps: int = 16, fit: str = "crop", batch_size: int = 32,
             options: dict[str, dict[str, Any]] | None = None,
             on_image: Callable[[str], None] | None = None) -> Evaluation:
    """Score every method's map on every frame (and a random map beside them).

    Args:
        explainer: an :class:`~attnmap.runtime.engine.explainer.Explainer`.
        frames: the images (frames with ``error`` set are reported as failed).
        methods: method names; class-specific ones need a model exported with ``--gradients``.
        baseline: what removed units take (``mean``, ``black`` or ``blur``).
        sigma: the blur baseline's sigma in input pixels.
        steps: deletion / insertion steps.
        fit: how images enter the model.
        batch_size: perturbed inputs per model run.
        options: per method, its options (``{"rollout": {"discard_ratio": 0.9}}``).
        on_image: called with each image's source when it is done (a progress bar).

    Returns:
        :class:`Evaluation`; the explained class of each image is its unperturbed top-1.

    Raises:
        OptionError: unknown baseline, no methods, or a bad method / option (before any image).
    """
    if baseline not in BASELINES:
        raise OptionError(f"baseline must be one of {', '.join(BASELINES)}; got {baseline!r}")
    if not methods:
        raise OptionError("give at least one method to evaluate")
    options = options or {}
    engines = {m: FrameEngine(explainer, Job(method=m, options=options.get(m, {}), fit=fit, topk=1)) for m in methods}
    if RANDOM in engines:
        raise OptionError(f"{RANDOM!r} is always evaluated; it is not a method name")
    result = Evaluation(explainer.meta.model_name, "patch", baseline,
                        {m: {k: [] for k in METRICS} for m in (*methods, RANDOM)})
    grid = tuple(explainer.meta.grid_size)
    first = next(iter(engines.values()))
    for frame in frames:
        try:
            if frame.error is not None:
                raise frame.error
            # One preprocess and one forward pass serve every method: the explained class is the
            # unperturbed top-1 for all of them, and each method reads the same outputs.
            batch = first.prepare([frame])
            if batch.failed:
                raise batch.failed[0].error
            outputs = first.infer(batch)
            x = batch.x[0]
            scores = {}
            for m, engine in engines.items():
                item = engine.explain(batch, outputs)[0]
                if item.error is not None:
                    raise item.error
                target = item.explanation.topk[0].index
                scores[m] = curves_of(explainer, x, item.explanation.grid, target, baseline=baseline, sigma=sigma,
                                      steps=steps, batch_size=batch_size).aucs()
            rng = np.random.default_rng(frame.index)
            rand = [curves_of(explainer, x, rng.random(grid), target, baseline=baseline, sigma=sigma, steps=steps,
                              batch_size=batch_size).aucs() for _ in range(RANDOM_SEEDS)]
            scores[RANDOM] = {k: float(np.mean([r[k] for r in rand])) for k in METRICS}
        except Exception as exc:  # noqa: BLE001 - one image that cannot be scored never ends the run
            result.failed.append((frame.source, str(exc) or type(exc).__name__))
        else:
            result.sources.append(frame.source)
            for m, aucs in scores.items():
                for k in METRICS:
                    result.per_image[m][k].append(aucs[k])
        if on_image is not None:
            on_image(frame.source)
    return result


def format_evaluation(result: Evaluation) -> str:
    """A methods x metrics text table: mean [95% interval]."""
    s = result.summary()
    head = (f"{result.model}  {result.images} images  unit {result.unit}  baseline {result.baseline}  "
            "(positive, deletion: lower is better; negative, insertion: higher)")
    lines = [head, f"{'method':<14}" + "".join(f"{k:>28}" for k in METRICS)]
    for method, metrics in s.items():
        cells = "".join(f"{metrics[k]['mean']:>10.3f} [{metrics[k]['ci_low']:.3f}, {metrics[k]['ci_high']:.3f}]"
                        .rjust(28) for k in METRICS if k in metrics)
        lines.append(f"{method:<14}{cells}")
    return "\n".join(lines)


__all__ = ["METRICS", "Evaluation", "evaluate", "format_evaluation"]
