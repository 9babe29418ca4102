"""``attnmap evaluate``: how faithful each method's map is, over a set of images.

For every image one preprocess and one forward pass serve every method. Each map is scored
with the four perturbation curves of :mod:`attnmap.runtime.methods.faithfulness` (positive /
negative perturbation, deletion / insertion), all maps of an image sharing full batches of
perturbed inputs; where object masks or boxes are known, also with the localisation metrics of
:mod:`attnmap.runtime.methods.metrics` (pointing game, mass ratio, Chefer et al.'s segmentation
pixel accuracy, mIoU and AP), on the original image's pixels that the model saw. A seeded
uniform-random map (3 seeds, averaged per image) is always scored beside the methods so that
every number has its floor. Means come with a 95% bootstrap interval over images.

The explained class of an image is its unperturbed top-1, or its label when labels are given
(:class:`~attnmap.runtime.fronts.evaluate.truth.GroundTruth`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from attnmap.runtime.core.errors import ExplainError, MethodOptionError, OptionError
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.fronts.evaluate.truth import GroundTruth
from attnmap.runtime.methods import METHODS, check_method_use, check_options, get_method
from attnmap.runtime.methods.faithfulness import BASELINES, UNITS, Curves, score_maps
from attnmap.runtime.methods.metrics import mask_mass_ratio, mask_pointing_game, segmentation_scores

PERTURBATION = ("positive_auc", "negative_auc", "deletion_auc", "insertion_auc")
LOCALISATION = ("pointing_game", "mass_ratio", "pixel_accuracy", "miou", "ap")
METRICS = PERTURBATION + LOCALISATION
CURVES = ("positive", "negative", "deletion", "insertion")
RANDOM = "random"
RANDOM_SEEDS = 3
POINTING_TOLERANCE_PX = 15.0


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

    def to_dict(self) -> dict[str, Any]:
        """The JSON document ``attnmap evaluate --json`` prints (schema in the README)."""
        summary, curves = self.summary(), self.mean_curves()
        methods = {}
        for method in self.per_image:
            entry: dict[str, Any] = {}
            for name in METRICS:
                stat = summary[method][name]
                entry[name] = None if stat is None else stat["mean"]
                entry[name + "_ci"] = None if stat is None else [stat["ci_low"], stat["ci_high"]]
            entry["curves"] = curves.get(method)
            methods[method] = entry
        return {"model": self.model, "images": self.images, "unit": self.unit, "baseline": self.baseline,
                "methods": methods, "failed": [{"source": s, "error": e} for s, e in self.failed]}

    def _add(self, source: str, target: int, scores: dict[str, dict[str, float]],
             curves: dict[str, Curves]) -> None:
        self.sources.append(source)
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
    evaluate scores one image per part, on Ray actors, with :func:`evaluate` itself).

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


def parse_method_spec(spec: str, meta=None) -> tuple[str, dict[str, Any]]:
    """``"rollout"`` or ``"rollout:discard_ratio=0.9:head_fusion=max"`` -> (method name, options).

    The same method may be evaluated under several option sets side by side, each named by its
    spec (that is how the README's defaults were chosen).

    Raises:
        MethodOptionError: an unknown method or option, a part that is not ``option=value``,
            or a value the option refuses.
    """
    name, *parts = [p.strip() for p in str(spec).split(":")]
    method = get_method(name)
    options: dict[str, Any] = {}
    for part in parts:
        key, eq, text = part.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in method.options:
            takes = ", ".join(method.options) or "no options"
            raise MethodOptionError(f"method spec {spec!r}: {part!r} is not option=value with an option of "
                                    f"{name!r} ({takes})")
        try:
            options[key] = method.options[key].parse(text, owner=f"method {name!r}")
        except OptionError as exc:
            raise MethodOptionError(f"method spec {spec!r}: {exc}") from exc
    return name, options


def _mean_of(curves: Sequence[Curves]) -> Curves:
    """The pointwise mean of curves over the same fractions."""
    first = curves[0]
    mean = {name: np.mean([getattr(c, name) for c in curves], axis=0) for name in CURVES}
    return Curves(first.pn_fractions, mean["positive"], mean["negative"], first.di_fractions,
                  mean["deletion"], mean["insertion"])


def _localisation(geometry, grid: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Localisation metrics of one map on the original pixels the model saw."""
    y0, y1, x0, x1 = geometry.seen_region(grid.shape)
    heat = geometry.to_image(grid)[y0:y1, x0:x1][None]
    seen = mask[y0:y1, x0:x1][None]
    if not seen.any():
        return {name: float("nan") for name in LOCALISATION}
    seg = segmentation_scores(heat, seen)
    return {"pointing_game": float(mask_pointing_game(heat, seen, POINTING_TOLERANCE_PX)[0]),
            "mass_ratio": float(mask_mass_ratio(heat, seen)[0]),
            **{k: float(v[0]) for k, v in seg.items()}}


def evaluate(explainer, frames: Iterable[Frame], methods: Sequence[str], *, baseline: str = "mean",
             sigma: float = 10.0, steps: int = 16, unit: str = "patch", fit: str = "crop", batch_size: int = 32,
             options: dict[str, dict[str, Any]] | None = None, truth: GroundTruth | None = None,
             on_image: Callable[[str], None] | None = None) -> Evaluation:
    """Score every method's map on every frame (and a random map beside them).

    Args:
        explainer: an :class:`~attnmap.runtime.engine.explainer.Explainer`.
        frames: the images, read lazily (frames with ``error`` set are reported as failed).
        methods: method specs, each a name or ``name:option=value:...`` (:func:`parse_method_spec`);
            class-specific ones need a model exported with ``--gradients``. Results are keyed
            by the spec.
        baseline: what removed units take (``mean``, ``black`` or ``blur``).
        sigma: the blur baseline's sigma in input pixels.
        steps: deletion / insertion steps.
        unit: ``"patch"`` or ``"pixel"``.
        fit: how images enter the model.
        batch_size: perturbed inputs per model run.
        options: per method spec, more options (``{"rollout": {"discard_ratio": 0.9}}``).
        truth: labels (the classes to explain) and object masks or boxes (localisation).
        on_image: called with each image's source when it is done (a progress bar).

    Returns:
        :class:`Evaluation`.

    Raises:
        OptionError: unknown baseline or unit, no methods, or a bad method / option (before any image).
        ExplainError: a method the model cannot run (a class-specific one without gradients).
    """
    if baseline not in BASELINES:
        raise OptionError(f"baseline must be one of {', '.join(BASELINES)}; got {baseline!r}")
    if unit not in UNITS:
        raise OptionError(f"unit must be one of {', '.join(UNITS)}; got {unit!r}")
    if not methods:
        raise OptionError("give at least one method to evaluate")
    if RANDOM in methods:
        raise OptionError(f"{RANDOM!r} is always evaluated; it is not a method name")
    meta, options, truth = explainer.meta, options or {}, truth or GroundTruth()
    if len(set(methods)) != len(methods):
        raise OptionError(f"each method spec may be given once; got {', '.join(methods)}")
    names, checked = {}, {}
    for m in methods:
        names[m], given = parse_method_spec(m)
        check_method_use(names[m], meta, model=repr(explainer.path.name))
        checked[m] = check_options(names[m], {**given, **options.get(m, {})}, meta)
    result = Evaluation(meta.model_name, unit, baseline, {m: {} for m in (*methods, RANDOM)})
    gh, gw = meta.grid_size
    for frame in frames:
        try:
            if frame.error is not None:
                raise frame.error
            label = truth.label_of(frame.source)
            mask = truth.mask_of(frame.source, frame.image_bgr.shape[:2])
            x, geoms = explainer.preprocess([frame.image_bgr], fit=fit)
            given = None if label is None or not meta.has_gradients else [label]
            outputs = explainer.infer(x, target=given)
            target = int(outputs.logits[0].argmax()) if label is None else int(label)
            grids = {}
            for m in methods:
                extra = {} if getattr(METHODS[names[m]], "kind", "attention") == "attention" else \
                    {"x": x, "classes": np.array([target], np.int64)}
                try:
                    grids[m] = np.asarray(explainer.maps(outputs, names[m], **extra, **checked[m])[0])
                except Exception as exc:  # noqa: BLE001 - say which method failed on this image
                    raise ExplainError(f"method {m!r}: {exc or type(exc).__name__}") from exc
            rng = np.random.default_rng(frame.index)
            randoms = [rng.random((gh, gw)) for _ in range(RANDOM_SEEDS)]
            curves = score_maps(explainer, x[0], [*grids.values(), *randoms], target, baseline=baseline,
                                sigma=sigma, steps=steps, unit=unit, batch_size=batch_size)
            scores = {m: curves[i].aucs() for i, m in enumerate(methods)}
            rand = [c.aucs() for c in curves[len(methods):]]
            scores[RANDOM] = {k: float(np.mean([r[k] for r in rand])) for k in PERTURBATION}
            kept = dict(zip(methods, curves))
            kept[RANDOM] = _mean_of(curves[len(methods):])
            if mask is not None:
                for m, grid in grids.items():
                    scores[m].update(_localisation(geoms[0], grid, mask))
                loc = [_localisation(geoms[0], r.astype(np.float32), mask) for r in randoms]
                scores[RANDOM].update({k: float(np.mean([r[k] for r in loc])) for k in LOCALISATION})
        except Exception as exc:  # noqa: BLE001 - one image that cannot be scored never ends the run
            result.failed.append((frame.source, str(exc) or type(exc).__name__))
        else:
            result._add(frame.source, target, scores, kept)
        if on_image is not None:
            on_image(frame.source)
    return result


__all__ = ["CURVES", "LOCALISATION", "METRICS", "PERTURBATION", "RANDOM", "Evaluation", "evaluate", "merge_evaluations",
           "parse_method_spec"]
