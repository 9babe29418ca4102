"""One evaluation's settings, checked once against the model: :class:`EvaluationPlan`.

Every way into an evaluation (:func:`~attnmap.runtime.evaluation.scoring.evaluate`, the
``attnmap evaluate`` command, the Ray engine's actors) goes through :meth:`EvaluationPlan.checked`,
which parses the method specs, checks each against the model, checks the scoring settings and
reads the ground-truth files, all before any image. :meth:`EvaluationPlan.inputs` then turns
SOURCE arguments (files, folders, globs, manifests) and the synthetic count into the images to
score, with a reason for each argument that names none.

    >>> plan = EvaluationPlan(methods=("rollout", "rollout:discard_ratio=0.9"), unit="pixel")
    >>> plan = plan.checked(explainer.meta)
    >>> inputs = plan.inputs(["photos/"])
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from attnmap.runtime.core.errors import MethodOptionError, OptionError
from attnmap.runtime.evaluation.curves import BASELINES, UNITS
from attnmap.runtime.evaluation.result import RANDOM
from attnmap.runtime.evaluation.truth import GroundTruth, mask_folder, read_boxes, read_labels, synthetic_frames
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.frames.manifest import list_images, plan_with_manifests
from attnmap.runtime.image.preprocess import FITS
from attnmap.runtime.methods import METHODS, check_method_use, check_options, get_method, runs_on

ENGINES = ("local", "ray")
ALL = "all"


def parse_method_spec(spec: str) -> tuple[str, dict[str, Any]]:
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


def _whole(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise OptionError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


@dataclass(frozen=True)
class EvaluationInputs:
    """The images one evaluation scores, as :meth:`EvaluationPlan.inputs` found them.

    Attributes:
        images: image paths, in order (each image's position seeds its random floor).
        synthetic: frames of the shapes dataset, scored after the images.
        masks: source -> (H, W) bool object mask of each synthetic frame.
        failures: ``(argument, reason)`` for each SOURCE argument that names no still image
            (missing, an unreadable manifest, a video); these are not scored.
    """

    images: tuple[str, ...] = ()
    synthetic: tuple[Frame, ...] = ()
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)
    failures: tuple[tuple[str, str], ...] = ()

    @property
    def total(self) -> int:
        """How many images will be scored."""
        return len(self.images) + len(self.synthetic)


@dataclass(frozen=True)
class EvaluationPlan:
    """What to score and how; :meth:`checked` checks it once against the model.

    Attributes:
        methods: method specs, each a name or ``name:option=value:...``
            (:func:`parse_method_spec`); ``("all",)`` for every method the model can run. Results
            are keyed by the spec; a random map is always scored beside them.
        baseline: what removed units take: ``mean``, ``black`` or ``blur``.
        sigma: the blur baseline's sigma in input pixels.
        steps: deletion / insertion steps.
        unit: ``"patch"`` or ``"pixel"``.
        fit: how images enter the model: ``crop``, ``squash`` or ``letterbox``.
        batch_size: perturbed inputs per model run.
        options: per method spec, more options (``{"rollout": {"discard_ratio": 0.9}}``).
        labels: a ``source,class`` CSV: explain each image's listed class, not its top-1.
        masks: a folder of object masks named like the images (localisation metrics).
        boxes: a ``source,x0,y0,x1,y1`` CSV of object boxes (localisation metrics).
        synthetic: also score this many images of the shapes dataset, with their exact masks.
        engine: ``"local"`` (this machine) or ``"ray"`` (Ray Data; still image files only).
        truth: ground truth given as objects (the Python API); the files above add to it.
        timing: also time each method's explanation of every image beside plain inference, on
            this machine (:mod:`~attnmap.runtime.evaluation.timing`); the local engine only.
        checked_methods: after :meth:`checked`: spec -> (method name, checked options).
        synthetic_size: after :meth:`checked`: the side of the synthetic images (the model's).
    """

    methods: Sequence[str] = ("rollout", "attention")
    baseline: str = "mean"
    sigma: float = 10.0
    steps: int = 16
    unit: str = "patch"
    fit: str = "crop"
    batch_size: int = 32
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    labels: str | os.PathLike | None = None
    masks: str | os.PathLike | None = None
    boxes: str | os.PathLike | None = None
    synthetic: int | None = None
    engine: str = "local"
    truth: GroundTruth | None = None
    timing: bool = False
    checked_methods: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None
    synthetic_size: int | None = None

    @property
    def is_checked(self) -> bool:
        return self.checked_methods is not None

    @property
    def specs(self) -> list[str]:
        """The method specs scored, in order (after :meth:`checked`: ``all`` expanded)."""
        return list(self.checked_methods) if self.checked_methods is not None else list(self.methods)

    def checked(self, meta, *, model: str = "this model") -> "EvaluationPlan":
        """This plan with every setting checked against the model ``meta``, the method specs
        parsed (``all`` expanded), their options converted, and the truth files read.

        Args:
            meta: the model's :class:`~attnmap.runtime.core.meta.ModelMeta`.
            model: how messages name the model (``"'deit.onnx'"``).

        Raises:
            OptionError: an unknown baseline, unit, fit or engine, steps, sigma or batch size
                out of range, no methods, a repeated spec, ``random`` among them, synthetic
                images or timing on the Ray engine; MethodOptionError for a bad spec or option.
            ExplainError: a method the model cannot run (a class-specific one without gradients).
            InputError: an unreadable or malformed labels, boxes or masks argument.
        """
        if self.is_checked:
            return self
        if self.baseline not in BASELINES:
            raise OptionError(f"baseline must be one of {', '.join(BASELINES)}; got {self.baseline!r}")
        if self.unit not in UNITS:
            raise OptionError(f"unit must be one of {', '.join(UNITS)}; got {self.unit!r}")
        if self.fit not in FITS:
            raise OptionError(f"fit must be one of {', '.join(FITS)}; got {self.fit!r}")
        if self.engine not in ENGINES:
            raise OptionError(f"engine must be one of {', '.join(ENGINES)}; got {self.engine!r}")
        steps, batch_size = _whole(self.steps, "steps", 1), _whole(self.batch_size, "batch_size", 1)
        if not float(self.sigma) > 0:
            raise OptionError(f"sigma must be > 0 pixels; got {self.sigma}")
        if self.synthetic is not None:
            _whole(self.synthetic, "synthetic", 1)
            if self.engine == "ray":
                raise OptionError("synthetic images are scored on the local engine; give the Ray engine image files")
        if self.timing and self.engine == "ray":
            # Ray's actors run on other cores or machines, each beside other work: their times
            # would not compare with one plain-inference baseline
            raise OptionError("timing measures every method on this machine; it needs the local engine, not Ray")
        methods = [str(m).strip() for m in ([self.methods] if isinstance(self.methods, str) else self.methods)]
        methods = [m for m in methods if m]
        if methods == [ALL]:
            methods = [n for n in METHODS if runs_on(n, meta)]
        if not methods:
            raise OptionError("give at least one method to evaluate")
        if RANDOM in methods:
            raise OptionError(f"{RANDOM!r} is always evaluated; it is not a method name")
        if len(set(methods)) != len(methods):
            raise OptionError(f"each method spec may be given once; got {', '.join(methods)}")
        checked = {}
        for spec in methods:
            name, given = parse_method_spec(spec)
            check_method_use(name, meta, model=model)
            checked[spec] = (name, check_options(name, {**given, **self.options.get(spec, {})}, meta))
        truth = self.truth or GroundTruth()
        truth = dataclasses.replace(
            truth, labels={**truth.labels, **(read_labels(self.labels, meta) if self.labels else {})},
            boxes={**truth.boxes, **(read_boxes(self.boxes) if self.boxes else {})},
            mask_dir=mask_folder(self.masks) if self.masks else truth.mask_dir, masks=dict(truth.masks))
        return dataclasses.replace(self, methods=tuple(methods), steps=steps, batch_size=batch_size,
                                   sigma=float(self.sigma), truth=truth, checked_methods=checked,
                                   synthetic_size=max(meta.input_size[1:]))

    def inputs(self, sources: Sequence[str | os.PathLike] = (),
               on_skip: Callable[[str, str], None] | None = None) -> EvaluationInputs:
        """The images this plan scores: SOURCE arguments listed as its engine lists them, and
        the synthetic images.

        A local run takes what ``attnmap explain`` would (manifests expanded, folders and globs
        listed) and keeps the still images; the Ray engine lists still images without looking
        at a manifest's rows (a missing row fails on its worker).

        Args:
            sources: image files, folders, globs and ``.csv`` / ``.parquet`` manifests.
            on_skip: called as ``on_skip(spec, why)`` where a folder's or glob's listing leaves
                files out (other extensions; videos).

        Returns:
            :class:`EvaluationInputs`; arguments that name no still image are among its failures.

        Raises:
            OptionError: the plan is not checked, or neither sources nor synthetic images were given.
        """
        if not self.is_checked:
            raise OptionError("check the plan against the model first: plan.checked(meta)")
        if not sources and self.synthetic is None:
            raise OptionError("give images to evaluate (sources) or a number of synthetic images")
        failures: list[tuple[str, str]] = []
        if self.engine == "ray":
            images, missing = list_images(sources, **({"on_skip": on_skip} if on_skip is not None else {}))
        else:
            listing = {"on_skip": on_skip} if on_skip is not None else {}
            refs, missing = plan_with_manifests(sources, **listing) if sources else ([], [])
            images = [r.target for r in refs if r.kind == "image"]
            failures += [(r.spec, f"evaluate takes still images; {r.spec!r} is a {r.kind}")
                         for r in refs if r.kind != "image"]
        failures = [(spec, str(exc)) for spec, exc in missing] + failures
        frames, masks = synthetic_frames(self.synthetic, self.synthetic_size) if self.synthetic else ([], {})
        return EvaluationInputs(tuple(images), tuple(frames), masks, tuple(failures))


__all__ = ["ALL", "ENGINES", "EvaluationInputs", "EvaluationPlan", "parse_method_spec"]
