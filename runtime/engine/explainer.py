"""The Python API: ``Explainer(model).explain(images)`` -> per-image :class:`Explanation`.

Example::

    import cv2
    from attnmap import Explainer

    ex = Explainer("deit_tiny.onnx")               # or Explainer() for the shipped default
    r = ex.explain(cv2.imread("dog.jpg"), method="rollout")
    print(r.topk[0].label, r.topk[0].prob)
    cv2.imwrite("dog_rollout.png", r.overlay(colormap="inferno"))

``explain`` runs the frame engine's one batch step
(:meth:`~attnmap.runtime.engine.engine.FrameEngine.explain_batch`), as every front does. The
stages are public too (``preprocess`` -> ``infer`` -> ``maps``), so that video and live
pipelines can overlap decoding with inference and batch frames. ``maps`` runs every kind of
method: attention methods read the outputs' attentions, perturbation methods (``occlusion``,
``rise``) run the logits-only model on perturbed copies of the input ``x``::

    x, _ = ex.preprocess([img])
    maps = ex.maps(ex.infer(x), "rise", x=x, classes=[207], masks=2000)
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence, Union

import numpy as np

from attnmap.runtime.core.errors import ExplainError, ImageError, suggest
from attnmap.runtime.methods import Method, check_options, get_method
from attnmap.runtime.methods.base import softmax
from attnmap.runtime.methods.cost import LIBRARY_BUDGET, Budget
from attnmap.runtime.methods.kinds import explained_classes
from attnmap.runtime.core.meta import ModelMeta
from attnmap.runtime.model.registry import resolve_model
from attnmap.runtime.draw.annotate import ExplanationAnnotator
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.clock import NullClock
from attnmap.runtime.engine.engine import FrameEngine
from attnmap.runtime.engine.job import Job
from attnmap.runtime.engine.parts import in_parts, parts_for
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.image.preprocess import Geometry, check_image, preprocess, read_image
from attnmap.runtime.model.session import OnnxModel, Outputs, physical_cores
from attnmap.runtime.model.tail import TailModel

ImageLike = Union[np.ndarray, str, Path]
_PLAIN = (int, float, str, bool, type(None))  # option values a cached job may be compared on
_DEFAULT_STYLE = OverlayStyle()


class TopK(NamedTuple):
    """One of the top-k predictions."""

    index: int
    label: str
    prob: float


@dataclass(eq=False)
class Explanation:
    """The prediction and explanation map of one image.

    Attributes:
        image: the original BGR uint8 image (H0, W0, 3), not copied.
        probs: (C,) float32 class probabilities.
        topk: the k most probable classes, best first.
        grid: (gh, gw) float32 map over the patch grid, min-max normalised to [0, 1].
        geometry: how the image was mapped into the model input.
        method: the explanation method's name.
        target: the class the map explains (class-specific methods: gradient, perturbation and
            feature methods), else None.
    """

    image: np.ndarray
    probs: np.ndarray
    topk: list[TopK]
    grid: np.ndarray
    geometry: Geometry
    method: str
    target: int | None = None
    label_of_target: str | None = field(default=None, repr=False)

    @cached_property
    def heatmap(self) -> np.ndarray:
        """(H0, W0) float32 map in [0, 1] on the original image's pixels (0 where unseen)."""
        return self.geometry.to_image(self.grid)

    def overlay(self, style: OverlayStyle | None = None, **changes: Any) -> np.ndarray:
        """Render the heatmap over the image.

        Args:
            style: how to draw (:class:`~attnmap.runtime.draw.style.OverlayStyle`); default
                ``OverlayStyle()``.
            **changes: fields of the style to change for this call (``colormap="inferno"``,
                ``alpha``, ``blur``, ``mode``, ``label``), a shorthand for ``style.replace(...)``.

        Returns:
            A new (H0, W0, 3) BGR uint8 image. Pixels outside what the model saw (with the
            ``crop`` fit) are shown dimmed, without colour. The caption goes in the corner
            where the map is coldest.
        """
        style = style if style is not None else _DEFAULT_STYLE
        if changes:
            style = style.replace(**changes)
        return ExplanationAnnotator(style).annotate(self.image, self.grid, self.geometry, self.caption(),
                                                    heatmap=self.heatmap)

    def caption(self) -> list[str]:
        """Text lines describing the prediction (and the explained class)."""
        top = self.topk[0]
        lines = [f"{top.label} {top.prob:.2f}"]
        if self.target is not None:
            lines.append(f"{self.method}: {self.label_of_target} {float(self.probs[self.target]):.2f}")
        else:
            lines.append(self.method)
        return lines


class Explainer:
    """An exported model, ready to predict and explain BGR images.

    Args:
        model: path to an attnmap ``.onnx`` file, a shipped model's name, or None for the
            shipped default (``$ATTNMAP_MODEL`` overrides it).
        provider: ``"auto"`` (the first of CUDA, TensorRT, OpenVINO, CoreML and the CPU that
            onnxruntime offers), or one of them by name (``"cpu"``, ``"cuda"``, ``"tensorrt"``,
            ``"openvino"``, ``"coreml"``); an unavailable one is a ProviderError.
        threads: intra-op threads on CPU (default: physical cores).
        trt_cache: TensorRT's engine cache folder (default ``$ATTNMAP_TRT_CACHE``, else
            ``~/.cache/attnmap/tensorrt``).
        budget: the most work :meth:`explain` takes on per image (model runs, memory at once;
            :class:`~attnmap.runtime.methods.cost.Budget`), checked before any work starts;
            default :data:`~attnmap.runtime.methods.cost.LIBRARY_BUDGET`.
        memory_arena: keep onnxruntime's CPU memory arena, which holds the peak of the
            largest run for the session's life (False: each run's buffers are freed; see
            :func:`~attnmap.runtime.model.session.session_options`).
        provider_options: onnxruntime options for the chosen provider, over attnmap's (OpenVINO's
            ``load_config`` ...; see :func:`~attnmap.runtime.model.providers.provider_options`).

    Attributes:
        map_threads: threads on which :meth:`explain` computes a batch's attention maps, each
            thread a contiguous part of the batch (``threads``, else the physical cores:
            onnxruntime's threads sit idle meanwhile; 1 computes them on the caller's thread).
            Only batches whose attention tensors are large enough are split, never a single
            image: see ``runtime/engine/parts.py``.
    """

    def __init__(self, model: str | Path | None = None, *, provider: str = "auto", threads: int | None = None,
                 trt_cache: str | Path | None = None, budget: Budget | None = None, memory_arena: bool = True,
                 provider_options: Mapping[str, str] | None = None):
        self.model = OnnxModel(resolve_model(model), provider=provider, threads=threads, trt_cache=trt_cache,
                               memory_arena=memory_arena, provider_options=provider_options)
        self.budget = budget or LIBRARY_BUDGET
        self.meta: ModelMeta = self.model.meta
        self.map_threads = int(threads) if threads else physical_cores()
        self._last_engine: tuple[tuple, FrameEngine] | None = None
        self._tail: TailModel | None = None
        self._tail_lock = threading.Lock()

    @property
    def path(self) -> Path:
        """The ONNX file in use."""
        return self.model.path

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider the model runs on (``"CPUExecutionProvider"`` ...;
        ``self.model.provider_short`` gives attnmap's short name)."""
        return self.model.provider

    # ------------------------------------------------------------------ stages
    def preprocess(self, images_bgr: Sequence[np.ndarray], fit: str = "crop",
                   out: np.ndarray | None = None) -> tuple[np.ndarray, list[Geometry]]:
        """BGR uint8 images -> ((B, 3, H, W) float32 input, one Geometry per image)."""
        return preprocess(images_bgr, self.meta, fit=fit, out=out)

    def infer(self, x_nchw: np.ndarray, target: np.ndarray | Sequence[int] | None = None) -> Outputs:
        """Run the model with its attention outputs (and gradients, where exported)."""
        return self.model.run(x_nchw, target=target)

    def infer_plain(self, x_nchw: np.ndarray) -> np.ndarray:
        """(B, C) logits from the same model without attention outputs (benchmark baseline)."""
        return self.model.run_plain(x_nchw)

    def probabilities(self, x_nchw: np.ndarray) -> np.ndarray:
        """(B, C) float32 softmax probabilities from the logits-only graph (the ``forward`` of
        perturbation methods)."""
        return softmax(self.infer_plain(x_nchw))

    def tail_logits(self, tokens: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(b, C) float32 logits of the file's tail graph (last block, norm, head) on weighted
        tokens (b, N, D) and weights (b, N): what ViT-ReciproCAM reruns (a file exported with
        ``--tail``; see ``runtime/model/tail.py``). The tail's session is created on first use."""
        tail = self._tail
        if tail is None:
            with self._tail_lock:
                if self._tail is None:
                    self._tail = TailModel.of(self.model)
                tail = self._tail
        return tail.logits(tokens, weights)

    def maps(self, outputs: Outputs, method: str = "rollout", *, x: np.ndarray | None = None,
             classes: np.ndarray | Sequence[int] | None = None, **options) -> np.ndarray:
        """(B, gh, gw) float32 maps in [0, 1] from one forward pass's outputs.

        What the method reads depends on its kind (``METHODS[method].kind``, see
        :mod:`~attnmap.runtime.methods.kinds`): attention methods read ``outputs.attentions``
        (and ``grads``), feature methods ``outputs.tokens`` and ``outputs.token_grads``, and
        perturbation methods run the logits-only model on perturbed copies of ``x``
        (:meth:`probabilities`, in chunks of the method's ``forward_batch`` option).

        Args:
            outputs: the forward pass of ``x`` (:meth:`infer`).
            method: a key of ``METHODS``.
            x: (B, 3, H, W) float32 the preprocessed input; needed by perturbation methods.
            classes: (B,) the class each perturbation map explains; default
                ``outputs.targets`` (the classes a gradient model ran for), else each image's
                predicted class (argmax of ``outputs.logits``).
            **options: the method's options.

        Raises:
            ExplainError: the outputs lack what the method reads, or a perturbation method
                without ``x`` (or with an ``x`` or ``classes`` whose batch differs).
            MethodOptionError: unknown method or bad options.
        """
        m = get_method(method)
        return self.method_maps(outputs, m, check_options(method, options), x=x, classes=classes)

    def method_maps(self, outputs: Outputs, m: Method, options: Mapping[str, Any], *, x: np.ndarray | None = None,
                    classes: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """:meth:`maps` for a method record whose ``options`` are already checked (a checked
        :class:`~attnmap.runtime.engine.job.Job`'s), so that a batch never re-checks them.

        A batch whose tensors are large enough, of a kind that splits, is computed in
        contiguous parts at once on :attr:`map_threads` threads (never a single image).
        """
        kind, layout = m.kind, self.meta.layout
        parts = 1
        if kind.splits and classes is None:
            parts = parts_for(kind.split_bytes(outputs), len(outputs), self.map_threads)
        if parts == 1:
            rerun = {"tail": self.tail_logits} if getattr(kind, "reruns_tail", False) else {}
            return kind.maps(m, outputs, layout, options, x=x, forward=self.probabilities, classes=classes, **rerun)

        def part(a: int, b: int) -> np.ndarray:
            return kind.maps(m, outputs.slice(a, b), layout, options, x=None if x is None else x[a:b],
                             forward=self.probabilities)

        return np.concatenate(in_parts(part, len(outputs), parts))

    def forward(self, x_nchw: np.ndarray, m: Method, targets: np.ndarray | None = None) -> Outputs:
        """The forward pass of ``x_nchw`` that method ``m`` reads (its kind decides: attention
        and feature methods :meth:`infer`; perturbation methods the same, with ``targets`` set
        to the classes their maps will explain).

        Args:
            x_nchw: (B, 3, H, W) float32 preprocessed input.
            m: the method record.
            targets: (B,) int64 the class each map explains; None for each prediction.
        """
        return m.kind.forward(self.infer, x_nchw, targets, self.meta)

    # ------------------------------------------------------------------ all at once
    def explain(self, images: ImageLike | Sequence[ImageLike], method: str = "rollout", fit: str = "crop",
                topk: int = 5, target: int | str | Sequence[int | str] | None = None,
                **options) -> Explanation | list[Explanation]:
        """Predict and explain one image or a batch.

        The images go through the frame engine's one batch step
        (:meth:`~attnmap.runtime.engine.engine.FrameEngine.explain_batch`), the step every front
        uses; a failed image raises its error.

        Args:
            images: one BGR uint8 image (H, W, 3) as OpenCV reads it, a path, a list of those,
                or a (B, H, W, 3) array. Grey images are accepted and turned into BGR.
            method: a name from ``attnmap.runtime.methods.METHODS`` (``"rollout"``, ``"attention"`` ...).
            fit: ``"crop"`` (the model's eval transform), ``"squash"`` or ``"letterbox"``.
            topk: how many predictions to keep per image.
            target: the class to explain for class-specific methods (gradient, perturbation and
                feature methods): an index, a label name, or one per image; None explains the
                predicted class. Perturbation methods need no gradients for it.
            **options: the method's options (see ``METHODS[method].options``).

        Returns:
            One :class:`Explanation` for a single image, else a list in input order.

        Raises:
            OptionError: a bad ``topk``, ``fit``, method or option (MethodOptionError), or a
                class to explain for a class-agnostic method.
            ExplainError: an unknown class, a method the model cannot run, or a failure while
                explaining.
            ImageError: an image that cannot be read (the first failed image's error).
        """
        batch, single = _as_batch(images)
        targets = None
        if target is not None:
            items = list(target) if isinstance(target, (list, tuple, np.ndarray)) else [target] * len(batch)
            if len(items) != len(batch):
                raise ExplainError(f"target must give one class per image ({len(batch)}); got {len(items)}")
            targets = np.array([resolve_class(self.meta, t) for t in items], dtype=np.int64)
        engine = self._engine_for(method, fit, topk, None if targets is None else int(targets[0]), options)
        frames = [Frame(i, img, "image" if single else f"images[{i}]", 0.0) for i, img in enumerate(batch)]
        done = engine.explain_batch(frames, targets=targets, draw=False)
        for item in done:
            if item.error is not None:
                raise item.error
        return done[0].explanation if single else [item.explanation for item in done]

    def _engine_for(self, method: str, fit: str, topk: int, target: int | None, options: dict) -> FrameEngine:
        """The engine of a checked job for these arguments: the last call's again when they are
        the same (plain values only), so that a loop of calls checks its options once."""
        plain = type(topk) is int and all(type(v) in _PLAIN for v in options.values())
        # the values' types are compared too: True == 1 == 1.0, and the checks tell them apart
        key = (method, fit, topk, target, sorted((k, type(v).__name__, v) for k, v in options.items()),
               self.budget) if plain else None
        last = self._last_engine
        if plain and last is not None and last[0] == key:
            return last[1]
        job = Job(method=method, options=options, fit=fit, topk=topk, target=target, budget=self.budget)
        engine = FrameEngine(self, job.checked(self.meta, model=repr(self.path.name)), clock=NullClock())
        if plain:
            self._last_engine = (key, engine)
        return engine

    def explain_topk(self, image: ImageLike, k: int, method: str, fit: str = "crop",
                     **options) -> list[Explanation]:
        """Class-specific maps of one image for each of its ``k`` most probable classes.

        The frame engine's top classes (``Job(top_classes=k)``), one image at a time.

        Args:
            image: one BGR uint8 image or a path.
            k: how many of the top classes to explain (best first).
            method: a class-specific method (``chefer``, ``grad_rollout``, ``gradsam``, ``product``,
                ``occlusion``, ``rise`` ...).
            fit: as in :meth:`explain`.
            **options: the method's options.

        Returns:
            ``k`` explanations of the same image (fewer when the model has fewer classes),
            the i-th explaining the i-th top class.
        """
        batch, _ = _as_batch(image)
        if len(batch) != 1:
            raise ExplainError(f"explain_topk takes one image; got {len(batch)}")
        job = Job(method=method, options=options, fit=fit, top_classes=k, budget=self.budget)
        job = job.checked(self.meta, model=repr(self.path.name))
        item = FrameEngine(self, job).explain_batch([Frame(0, batch[0], "image", 0.0)], draw=False)[0]
        if item.error is not None:
            raise item.error
        return item.alternatives

    def package(self, images: Sequence[np.ndarray], outputs: Outputs, grids: np.ndarray,
                geoms: Sequence[Geometry], method: str, topk: int = 5) -> list[Explanation]:
        """Bundle one batch's stage outputs into per-image :class:`Explanation` objects."""
        probs = softmax(outputs.logits)
        k = max(1, min(int(topk), probs.shape[1]))
        best = top_indices(probs, k)
        order, top_probs = best.tolist(), probs[np.arange(len(best))[:, None], best].tolist()
        # a class-specific map explains the class the model ran for, else the prediction
        targets = explained_classes(outputs) if get_method(method).class_specific else None
        label = self.meta.label
        results = []
        for i, image in enumerate(images):
            tk = [TopK(c, label(c), p) for c, p in zip(order[i], top_probs[i])]
            tgt = None if targets is None else int(targets[i])
            results.append(Explanation(image, probs[i], tk, grids[i], geoms[i], method, tgt,
                                       None if tgt is None else label(tgt)))
        return results


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """(B, k) column indices of each row's k largest scores, largest first, equal scores by
    index. Partitions before sorting, so a top-1 or top-5 of 1000 classes sorts only k values
    (which of several scores tied at the k-th place gets in is not specified)."""
    if k >= scores.shape[1]:
        return np.argsort(-scores, axis=1, kind="stable")
    rows = np.arange(scores.shape[0])[:, None]
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -scores[rows, part]), axis=1)
    return part[rows, order]


def resolve_class(meta: ModelMeta, spec: int | str) -> int:
    """A class index from an index (``3``, ``"3"``) or a label name (case-insensitive).

    Raises:
        ExplainError: out of range, or an unknown name (with close matches suggested).
    """
    if isinstance(spec, (int, np.integer)) or (isinstance(spec, str) and re.fullmatch(r"-?\d+", spec.strip())):
        idx = int(spec)
        if not 0 <= idx < meta.num_classes:
            raise ExplainError(f"class index {idx} is out of range; the model has {meta.num_classes} classes (0..{meta.num_classes - 1})")
        return idx
    name = str(spec).strip().lower()
    labels = [meta.label(i) for i in range(meta.num_classes)]
    lowered = [s.lower() for s in labels]
    if name in lowered:
        return lowered.index(name)
    raise ExplainError(f"unknown class {spec!r}; give a class index or one of the model's label names."
                       + suggest(name, lowered))


def parse_class_spec(meta: ModelMeta, text: str) -> tuple[int | None, int | None]:
    """Parse a ``--class`` value: an index, a label name, or ``topk:N``.

    Returns:
        ``(target, None)`` for one class, ``(None, N)`` for the top N classes.

    Raises:
        ExplainError: ``topk:N`` with N < 1 or not a number, an index out of range, or an
            unknown label (close matches suggested).
    """
    spec = str(text).strip()
    if spec.lower().startswith("topk:"):
        n = spec.split(":", 1)[1].strip()
        if not re.fullmatch(r"\d+", n) or int(n) < 1:
            raise ExplainError(f"expected topk:N with N >= 1; got {text!r}")
        return None, min(int(n), meta.num_classes)
    return resolve_class(meta, spec), None


def _as_batch(images: ImageLike | Sequence[ImageLike]) -> tuple[list[np.ndarray], bool]:
    if images is None or not isinstance(images, (str, Path, np.ndarray, list, tuple)):
        raise ImageError("images must be a BGR uint8 numpy array (H, W, 3), a path, or a list of those; "
                         f"got {type(images).__name__}")
    if isinstance(images, (str, Path)):
        return [read_image(images)], True
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            if not len(images):
                raise ExplainError(f"no images to explain: got an empty batch of shape {images.shape}")
            return [check_image(img, f"images[{i}]") for i, img in enumerate(images)], False
        return [check_image(images)], True
    batch = []
    for i, img in enumerate(images):
        batch.append(read_image(img) if isinstance(img, (str, Path)) else check_image(img, f"images[{i}]"))
    if not batch:
        raise ExplainError("no images to explain: got an empty sequence")
    return batch, False
