"""What the frame engine computes (:class:`Job`), what it hands out per frame (:class:`ItemResult`),
and where finished items go (:class:`Sink`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol

import numpy as np

from attnmap.runtime.core.errors import AttnmapError, MethodOptionError, OptionError
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.image.preprocess import FITS
from attnmap.runtime.methods import AUTO, Method, check_method_use, check_options, resolve_method
from attnmap.runtime.methods.cost import Budget, check_budget
from attnmap.runtime.model.session import Outputs

if TYPE_CHECKING:  # the explainer builds jobs, so it imports this module
    from attnmap.runtime.engine.explainer import Explanation


@dataclass(frozen=True)
class Job:
    """What the engine computes for every frame.

    Attributes:
        method: an explanation method, a key of :data:`~attnmap.runtime.methods.METHODS`, or
            ``"auto"`` (the default): the most faithful live method the model's file can run
            (:func:`~attnmap.runtime.methods.default_method`), resolved when the job is checked.
        options: the method's options (checked against its specs and the model).
        fit: how frames enter the model: ``"crop"``, ``"squash"`` or ``"letterbox"``.
        topk: predictions kept per frame.
        target: for class-specific methods (gradient, perturbation and feature methods; see
            ``Method.class_specific``), the class every frame is explained for (an index);
            None explains each frame's predicted class.
        top_classes: for class-specific methods, explain each frame's N most probable classes
            (N explanations per item: ``ItemResult.alternatives``); None for one map.
        style: draw each explained frame with this style (``ItemResult.drawn``); None draws
            nothing.
        budget: the most work one frame may take (:class:`~attnmap.runtime.methods.cost.Budget`),
            checked with the options; None: the library's default.
    """

    method: str = AUTO
    options: Mapping[str, Any] = field(default_factory=dict)
    fit: str = "crop"
    topk: int = 5
    target: int | None = None
    top_classes: int | None = None
    style: OverlayStyle | None = None
    budget: Budget | None = None

    def checked(self, meta, *, model: str = "this model") -> "Job":
        """This job with its options converted and checked against the model ``meta``.

        A job is checked once: the checked job remembers the ``meta`` it was checked against,
        and checking it again against the same ``meta`` returns it as it is (an engine built
        from a checked job re-checks nothing; ``dataclasses.replace`` makes an unchecked job).

        Args:
            meta: the model's :class:`~attnmap.runtime.core.meta.ModelMeta`.
            model: how messages name the model (``"'deit.onnx'"``).

        Raises:
            OptionError: an unknown fit or method, bad options (MethodOptionError), options
                that ask for more work than the budget (WorkLimitError), a target
                or top classes for a class-agnostic method, a method that needs gradients on a
                model without them, or a class index out of range.
        """
        if self.__dict__.get("_checked_for") is meta:
            return self
        method = resolve_method(self.method, meta)
        if self.fit not in FITS:
            raise OptionError(f"fit must be one of {', '.join(FITS)}; got {self.fit!r}")
        if isinstance(self.topk, bool) or not isinstance(self.topk, (int, np.integer)) or self.topk < 1:
            raise OptionError(f"topk must be an integer >= 1; got {self.topk!r}")
        m = check_method_use(method, meta, class_given=self.target is not None or self.top_classes is not None,
                             model=model)
        if self.target is not None and self.top_classes is not None:
            raise OptionError("give a target class or a number of top classes, not both")
        if self.target is not None and not 0 <= int(self.target) < meta.num_classes:
            raise OptionError(f"class index {self.target} is out of range; the model has {meta.num_classes} classes")
        if self.top_classes is not None and not 1 <= int(self.top_classes):
            raise OptionError(f"top_classes must be >= 1; got {self.top_classes}")
        if self.style is not None and not isinstance(self.style, OverlayStyle):
            raise OptionError(f"style must be an OverlayStyle; got {type(self.style).__name__}")
        try:
            options = check_options(method, self.options, meta)
        except MethodOptionError as exc:
            if self.method != AUTO:
                raise
            raise MethodOptionError(f"{exc} (method 'auto' is {method!r} for this model; name the method whose "
                                    "options you set)") from exc
        check_budget(method, options, meta, self.budget)
        job = dataclasses.replace(self, method=method, options=options)
        object.__setattr__(job, "_checked_for", meta)  # frozen: the mark is set once, here
        object.__setattr__(job, "_method", m)
        return job

    @property
    def method_record(self) -> Method:
        """The registered :class:`~attnmap.runtime.methods.base.Method` of a checked job."""
        m = self.__dict__.get("_method")
        if m is None:
            raise OptionError("this job is not checked yet: use Job.checked(meta) first")
        return m


@dataclass(eq=False)
class ItemResult:
    """One input frame after the engine: its explanation, or why it has none.

    Attributes:
        source: where it came from (a file path, or the source spec of a video frame).
        index: the frame's index in its source.
        frame: the decoded frame (None when decoding failed).
        explanation: prediction and map (None on failure).
        outputs: this item's model outputs with a batch axis of 1 (views into the batch).
        alternatives: with ``Job.top_classes``, one explanation per class, best first.
        drawn: the overlay (BGR uint8 at the frame's size) when the job has a style.
        error: why this item failed (an attnmap error, or an unexpected exception), else None.
        extra: what a sink recorded about the item (written file paths ...).
    """

    source: str
    index: int
    frame: Frame | None = None
    explanation: Explanation | None = None
    outputs: Outputs | None = None
    alternatives: list[Explanation] = field(default_factory=list)
    drawn: np.ndarray | None = None
    error: BaseException | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the item was explained (and drawn and written, where asked)."""
        return self.error is None

    def reason(self) -> str:
        """The error as one line (an unexpected exception says its type)."""
        if self.error is None:
            return ""
        text = str(self.error).strip().splitlines()[0] if str(self.error).strip() else ""
        if isinstance(self.error, AttnmapError):
            return text or type(self.error).__name__
        return f"{type(self.error).__name__}: {text}" if text else type(self.error).__name__


class Sink(Protocol):
    """Where finished items go (a folder of overlays, a video file ...).

    ``write`` is called once per item, in order, in the engine's finisher thread; it may set
    ``item.error`` (this item could not be written) or raise (the whole run must stop: the
    output video cannot be written). It is never called concurrently.
    """

    def write(self, item: ItemResult) -> None: ...
