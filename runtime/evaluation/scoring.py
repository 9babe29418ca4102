"""The scoring loop: how faithful each method's map is, over a set of images.

Every method's map of an image comes from the frame engine's one batch step
(:meth:`~attnmap.runtime.engine.engine.FrameEngine.explain_batch`, one engine per method spec,
each job checked once), as ``attnmap explain`` computes it. Each map is scored
with the four perturbation curves of :mod:`attnmap.runtime.evaluation.curves` (positive /
negative perturbation, deletion / insertion), all maps of an image sharing full batches of
perturbed inputs; where object masks or boxes are known, also with the localisation metrics of
:mod:`attnmap.runtime.evaluation.localisation` (pointing game, mass ratio, Chefer et al.'s
segmentation pixel accuracy, mIoU and AP), on the original image's pixels that the model saw.
A seeded uniform-random map (3 seeds, averaged per image) is always scored beside the methods
so that every number has its floor. Means come with a 95% bootstrap interval over images
(:meth:`~attnmap.runtime.evaluation.result.Evaluation.summary`).

The explained class of an image is its unperturbed top-1, or its label when labels are given
(:class:`~attnmap.runtime.evaluation.truth.GroundTruth`).

:func:`evaluate` scores frames under keyword settings; :func:`score_frames` under a checked
:class:`~attnmap.runtime.evaluation.plan.EvaluationPlan`, and :func:`evaluate_inputs` scores
what :meth:`~attnmap.runtime.evaluation.plan.EvaluationPlan.inputs` found, on this machine.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from attnmap.runtime.core.errors import ExplainError, SourceError
from attnmap.runtime.engine.engine import FrameEngine, Job
from attnmap.runtime.engine.job import ItemResult
from attnmap.runtime.evaluation.curves import Curves, score_maps
from attnmap.runtime.evaluation.localisation import mask_mass_ratio, mask_pointing_game, segmentation_scores
from attnmap.runtime.evaluation.plan import EvaluationInputs, EvaluationPlan
from attnmap.runtime.evaluation.result import CURVES, LOCALISATION, PERTURBATION, RANDOM, Evaluation
from attnmap.runtime.evaluation.timing import PLAIN, Clock, ExplainTimer, call_order
from attnmap.runtime.evaluation.truth import GroundTruth
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.frames.sources import open_files

RANDOM_SEEDS = 3
POINTING_TOLERANCE_PX = 15.0


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
             on_image: Callable[[str], None] | None = None, timing: bool = False) -> Evaluation:
    """Score every method's map on every frame (and a random map beside them).

    The keyword form of :func:`score_frames`: the settings become an
    :class:`~attnmap.runtime.evaluation.plan.EvaluationPlan`, checked before any frame.

    Args:
        explainer: an :class:`~attnmap.runtime.engine.explainer.Explainer`.
        frames: the images, read lazily (frames with ``error`` set are reported as failed).
        methods: method specs, each a name or ``name:option=value:...``
            (:func:`~attnmap.runtime.evaluation.plan.parse_method_spec`); class-specific ones
            need a model exported with gradients. Results are keyed by the spec.
        baseline: what removed units take (``mean``, ``black`` or ``blur``).
        sigma: the blur baseline's sigma in input pixels.
        steps: deletion / insertion steps.
        unit: ``"patch"`` or ``"pixel"``.
        fit: how images enter the model.
        batch_size: perturbed inputs per model run.
        options: per method spec, more options (``{"rollout": {"discard_ratio": 0.9}}``).
        truth: labels (the classes to explain) and object masks or boxes (localisation).
        on_image: called with each image's source when it is done (a progress bar).
        timing: also time each method's explanation beside plain inference
            (:mod:`~attnmap.runtime.evaluation.timing`; ``Evaluation.cost()``).

    Returns:
        :class:`~attnmap.runtime.evaluation.result.Evaluation`.

    Raises:
        OptionError: unknown baseline or unit, no methods, or a bad method / option (before any image).
        ExplainError: a method the model cannot run (a class-specific one without gradients).
    """
    plan = EvaluationPlan(methods=tuple(methods), baseline=baseline, sigma=sigma, steps=steps, unit=unit, fit=fit,
                          batch_size=batch_size, options=options or {}, truth=truth, timing=timing)
    return score_frames(explainer, frames, plan, on_image=on_image)


def score_frames(explainer, frames: Iterable[Frame], plan: EvaluationPlan, *,
                 on_image: Callable[[str], None] | None = None, clock: Clock | None = None) -> Evaluation:
    """Score every method of ``plan`` on every frame, and the random floor beside them.

    An image that cannot be scored (unreadable, no label or mask, a method that fails on it)
    is reported in ``failed`` and the next image is scored.

    Args:
        explainer: an :class:`~attnmap.runtime.engine.explainer.Explainer`.
        frames: the images, read lazily; a frame's ``index`` seeds its random maps.
        plan: what to score; checked here against the explainer's model unless it already is.
        on_image: called with each image's source when it is done.
        clock: with ``plan.timing``, the clock the explanations are timed by (default
            ``time.perf_counter``).

    Returns:
        :class:`~attnmap.runtime.evaluation.result.Evaluation`, with ``timings`` when the plan
        asks for timing (only for the images scored).
    """
    plan = plan.checked(explainer.meta, model=repr(explainer.path.name))
    meta, truth, methods = explainer.meta, plan.truth, plan.specs
    engines = _engines(explainer, plan)
    result = Evaluation(meta.model_name, plan.unit, plan.baseline, {m: {} for m in (*methods, RANDOM)})
    gh, gw = meta.grid_size
    x = np.empty((1, *meta.input_size), np.float32)
    timer = ExplainTimer(clock) if plan.timing else None
    for frame in frames:
        try:
            if frame.error is not None:
                raise frame.error
            label = truth.label_of(frame.source)
            mask = truth.mask_of(frame.source, frame.image_bgr.shape[:2])
            items = _explain_frame(explainer, engines, frame, label, x, timer)
            grids = {m: np.asarray(item.explanation.grid) for m, item in items.items()}
            first = items[methods[0]]
            geometry = first.explanation.geometry
            target = int(first.outputs.logits[0].argmax()) if label is None else int(label)
            rng = np.random.default_rng(frame.index)
            randoms = [rng.random((gh, gw)) for _ in range(RANDOM_SEEDS)]
            curves = score_maps(explainer, x[0], [*grids.values(), *randoms], target, baseline=plan.baseline,
                                sigma=plan.sigma, steps=plan.steps, unit=plan.unit, batch_size=plan.batch_size)
            scores = {m: curves[i].aucs() for i, m in enumerate(methods)}
            rand = [c.aucs() for c in curves[len(methods):]]
            scores[RANDOM] = {k: float(np.mean([r[k] for r in rand])) for k in PERTURBATION}
            kept = dict(zip(methods, curves))
            kept[RANDOM] = _mean_of(curves[len(methods):])
            if mask is not None:
                for m, grid in grids.items():
                    scores[m].update(_localisation(geometry, grid, mask))
                loc = [_localisation(geometry, r.astype(np.float32), mask) for r in randoms]
                scores[RANDOM].update({k: float(np.mean([r[k] for r in loc])) for k in LOCALISATION})
        except Exception as exc:  # noqa: BLE001 - one image that cannot be scored never ends the run
            result.failed.append((frame.source, str(exc) or type(exc).__name__))
        else:
            result._add(frame.source, target, scores, kept, None if timer is None else timer.image)
        if on_image is not None:
            on_image(frame.source)
    return result


def _explain_frame(explainer, engines: dict[str, FrameEngine], frame: Frame, label: int | None, x: np.ndarray,
                   timer: ExplainTimer | None) -> dict[str, ItemResult]:
    """Every method's item of one frame; with a timer, each method and plain inference timed.

    Each method goes through the engine's batch step, which preprocesses the frame into ``x``,
    the input the curves then perturb (the same for every method).
    """

    def run(m: str) -> ItemResult:
        engine = engines[m]
        chosen = [label] if label is not None and engine.job.method_record.class_specific else None
        item = engine.explain_batch([frame], targets=chosen, out=x)[0]
        if not item.ok:
            raise ExplainError(f"method {m!r}: {item.error or type(item.error).__name__}") from item.error
        return item

    if timer is None:
        return {m: run(m) for m in engines}
    # the input the plain baseline runs on, preprocessed as the methods preprocess it (untimed:
    # a deployment without explanations preprocesses too)
    plain_x, _ = explainer.preprocess([frame.image_bgr], fit=next(iter(engines.values())).job.fit)
    items = {}
    calls = {PLAIN: lambda: explainer.infer_plain(plain_x), **{m: (lambda m=m: run(m)) for m in engines}}
    if not timer.warmed:
        for call in calls.values():
            call()
        timer.warmed = True
    timer.start_image()
    for name in call_order(list(calls), frame.index):
        out = timer.time(name, calls[name])
        if name != PLAIN:
            items[name] = out
    return {m: items[m] for m in engines}


def _engines(explainer, plan: EvaluationPlan) -> dict[str, FrameEngine]:
    """One engine per method spec, its job checked once here (top-1 only: the curves need no more)."""
    return {m: FrameEngine(explainer, Job(method=name, options=options, fit=plan.fit, topk=1))
            for m, (name, options) in plan.checked_methods.items()}


def evaluate_inputs(explainer, plan: EvaluationPlan, inputs: EvaluationInputs, *,
                    on_image: Callable[[str], None] | None = None) -> Evaluation:
    """Score the images :meth:`EvaluationPlan.inputs` found, on this machine: the image files
    (decoded one at a time as the loop reaches them), then the synthetic frames with their masks.

    Args:
        explainer: the :class:`~attnmap.runtime.engine.explainer.Explainer` to score with.
        plan: a checked plan (its engine is not looked at: this is the local engine).
        inputs: what to score.
        on_image: called with each image's source when it is done.

    Returns:
        :class:`~attnmap.runtime.evaluation.result.Evaluation` (the inputs' own failures are
        not in it: they were never images).

    Raises:
        SourceError: there is nothing to score.
    """
    if not inputs.total:
        raise SourceError("no images to evaluate")
    plan = plan.checked(explainer.meta, model=repr(explainer.path.name))
    if inputs.masks:
        truth = plan.truth
        plan = dataclasses.replace(plan, truth=dataclasses.replace(truth, masks={**truth.masks, **inputs.masks}))
    if not inputs.images:
        return score_frames(explainer, inputs.synthetic, plan, on_image=on_image)
    with open_files(list(inputs.images), errors="yield") as frames:
        return score_frames(explainer, itertools.chain(frames, inputs.synthetic), plan, on_image=on_image)


__all__ = ["POINTING_TOLERANCE_PX", "RANDOM_SEEDS", "evaluate", "evaluate_inputs", "score_frames"]
