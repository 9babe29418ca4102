"""The Python API: ``Explainer(model).explain(images)`` -> per-image :class:`Explanation`.

Example::

    import cv2
    from attnmap import Explainer

    ex = Explainer("deit_tiny.onnx")               # or Explainer() for the shipped default
    r = ex.explain(cv2.imread("dog.jpg"), method="rollout")
    print(r.topk[0].label, r.topk[0].prob)
    cv2.imwrite("dog_rollout.png", r.overlay(colormap="inferno"))

The stages are public too (``preprocess`` -> ``infer`` -> ``maps``), so that video and live
pipelines can overlap decoding with inference and batch frames. ``maps`` runs every kind of
method: attention methods read the outputs' attentions, perturbation methods (``occlusion``,
``rise``) run the logits-only model on perturbed copies of the input ``x``::

    x, _ = ex.preprocess([img])
    maps = ex.maps(ex.infer(x), "rise", x=x, classes=[207], masks=2000)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple, Sequence, Union

import numpy as np

from attnmap.runtime.core.errors import ExplainError, ImageError, suggest
from attnmap.runtime.methods import (check_method_use, check_options, explain as run_method, get_method,
                                    run_checked)
from attnmap.runtime.methods.base import softmax
from attnmap.runtime.methods.cost import LIBRARY_BUDGET, Budget, check_budget
from attnmap.runtime.core.meta import ModelMeta
from attnmap.runtime.model.registry import resolve_model
from attnmap.runtime.draw.annotate import ExplanationAnnotator
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.parts import in_parts, parts_for
from attnmap.runtime.image.preprocess import Geometry, check_image, preprocess, read_image
from attnmap.runtime.model.session import OnnxModel, Outputs, physical_cores

ImageLike = Union[np.ndarray, str, Path]
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

    Attributes:
        map_threads: threads on which :meth:`explain` computes a batch's attention maps, each
            thread a contiguous part of the batch (``threads``, else the physical cores:
            onnxruntime's threads sit idle meanwhile; 1 computes them on the caller's thread).
            Only batches whose attention tensors are large enough are split, never a single
            image: see ``runtime/engine/parts.py``.
    """

    def __init__(self, model: str | Path | None = None, *, provider: str = "auto", threads: int | None = None,
                 trt_cache: str | Path | None = None, budget: Budget | None = None):
        self.model = OnnxModel(resolve_model(model), provider=provider, threads=threads, trt_cache=trt_cache)
        self.budget = budget or LIBRARY_BUDGET
        self.meta: ModelMeta = self.model.meta
        self.map_threads = int(threads) if threads else physical_cores()

    @property
    def path(self) -> Path:
        """The ONNX file in use."""
        return self.model.path

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

    def maps(self, outputs: Outputs, method: str = "rollout", *, x: np.ndarray | None = None,
             classes: np.ndarray | Sequence[int] | None = None, **options) -> np.ndarray:
        """(B, gh, gw) float32 maps in [0, 1] from one forward pass's outputs.

        What the method reads depends on its kind (``METHODS[method].kind``): attention
        methods read ``outputs.attentions`` (and ``grads``), feature methods ``outputs.tokens``
        and ``outputs.token_grads``, and perturbation methods run the logits-only model on
        perturbed copies of ``x`` (:meth:`probabilities`, in chunks of the method's
        ``forward_batch`` option).

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
        return self._maps(outputs, get_method(method), x, classes, options)

    def _maps(self, outputs: Outputs, m, x: np.ndarray | None, classes, options: dict,
              checked: bool = False) -> np.ndarray:
        """:meth:`maps` for the method record ``m``; ``checked``: ``options`` already passed
        ``check_options`` (so :meth:`explain` checks them once, not twice)."""
        if m.kind == "perturbation":
            if x is None:
                raise ExplainError(f"method {m.name!r} runs the model on perturbed inputs, so it needs the "
                                   "(B, 3, H, W) model input: maps(outputs, method, x=x_nchw)")
            if np.shape(x)[:1] != (len(outputs),):
                raise ExplainError(f"x must hold the {len(outputs)} inputs of these outputs; got shape {np.shape(x)}")
            chosen = explained_classes(outputs) if classes is None else np.asarray(classes).reshape(-1)
            if chosen.shape != (len(outputs),):
                raise ExplainError(f"classes must give one class per image ({len(outputs)}); got {chosen.tolist()}")
            opts = options if checked else check_options(m.name, options)
            return m.fn(x, self.probabilities, chosen, self.meta.layout, **opts)
        if m.kind == "features":
            opts = options if checked else check_options(m.name, options)
            return m.fn(getattr(outputs, "tokens", None), getattr(outputs, "token_grads", None),
                        self.meta.layout, **opts)
        if outputs.attentions is None:
            raise ExplainError("these outputs carry no attentions; run infer(), not infer_plain(), on a model "
                               "exported with attentions")
        if not checked:
            return run_method(m.name, outputs.attentions, self.meta.layout, grads=outputs.grads, **options)
        return run_checked(m, outputs.attentions, self.meta.layout, outputs.grads, options)

    def _batch_maps(self, outputs: Outputs, m, options: dict) -> np.ndarray:
        """:meth:`_maps` of checked options; a batch whose attention tensors are large enough
        is split into contiguous parts computed at once on :attr:`map_threads` threads."""
        parts = 1
        if m.kind == "attention" and outputs.attentions is not None:
            read = outputs.attentions.nbytes + (0 if outputs.grads is None else outputs.grads.nbytes)
            parts = parts_for(read, len(outputs), self.map_threads)
        if parts == 1:
            return self._maps(outputs, m, None, None, options, checked=True)

        def part(a: int, b: int) -> np.ndarray:
            return self._maps(outputs.slice(a, b), m, None, None, options, checked=True)

        return np.concatenate(in_parts(part, len(outputs), parts))

    # ------------------------------------------------------------------ all at once
    def explain(self, images: ImageLike | Sequence[ImageLike], method: str = "rollout", fit: str = "crop",
                topk: int = 5, target: int | str | Sequence[int | str] | None = None,
                **options) -> Explanation | list[Explanation]:
        """Predict and explain one image or a batch.

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
        """
        batch, single = _as_batch(images)
        if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
            raise ExplainError(f"topk must be an integer >= 1; got {topk!r}")
        m = check_method_use(method, self.meta, class_given=target is not None, model=repr(self.path.name))
        options = check_options(method, options, self.meta)
        check_budget(method, options, self.meta, self.budget)
        targets = None
        if target is not None:
            items = list(target) if isinstance(target, (list, tuple, np.ndarray)) else [target] * len(batch)
            if len(items) != len(batch):
                raise ExplainError(f"target must give one class per image ({len(batch)}); got {len(items)}")
            targets = np.array([resolve_class(self.meta, t) for t in items], dtype=np.int64)
        x, geoms = self.preprocess(batch, fit=fit)
        if m.kind == "perturbation":
            outputs = perturbation_outputs(self, x, targets)
            grids = self._maps(outputs, m, x, None, options, checked=True)
        else:
            outputs = self.infer(x, target=targets)
            grids = self._batch_maps(outputs, m, options)
        results = self.package(batch, outputs, grids, geoms, method, topk)
        return results[0] if single else results

    def explain_topk(self, image: ImageLike, k: int, method: str, fit: str = "crop",
                     **options) -> list[Explanation]:
        """Class-specific maps of one image for each of its ``k`` most probable classes.

        Args:
            image: one BGR uint8 image or a path.
            k: how many of the top classes to explain (best first).
            method: a class-specific method (``chefer``, ``grad_rollout``, ``gradsam``, ``product``,
                ``occlusion``, ``rise`` ...).
            fit: as in :meth:`explain`.
            **options: the method's options.

        Returns:
            ``k`` explanations of the same image, the i-th explaining the i-th top class.
        """
        batch, _ = _as_batch(image)
        if len(batch) != 1:
            raise ExplainError(f"explain_topk takes one image; got {len(batch)}")
        if int(k) < 1:
            raise ExplainError(f"k must be >= 1; got {k}")
        x, _ = self.preprocess(batch, fit=fit)
        probs = softmax(self.infer_plain(x))[0]
        classes = [int(c) for c in np.argsort(-probs)[: min(int(k), probs.shape[0])]]
        return self.explain(batch * len(classes), method=method, fit=fit, target=classes, **options)

    def package(self, images: Sequence[np.ndarray], outputs: Outputs, grids: np.ndarray,
                geoms: Sequence[Geometry], method: str, topk: int = 5) -> list[Explanation]:
        """Bundle one batch's stage outputs into per-image :class:`Explanation` objects."""
        probs = softmax(outputs.logits)
        k = max(1, min(int(topk), probs.shape[1]))
        best = top_indices(probs, k)
        order, top_probs = best.tolist(), probs[np.arange(len(best))[:, None], best].tolist()
        targets = None if outputs.targets is None or not get_method(method).class_specific else outputs.targets
        label = self.meta.label
        results = []
        for i, image in enumerate(images):
            tk = [TopK(c, label(c), p) for c, p in zip(order[i], top_probs[i])]
            tgt = None if targets is None else int(targets[i])
            results.append(Explanation(image, probs[i], tk, grids[i], geoms[i], method, tgt,
                                       None if tgt is None else label(tgt)))
        return results


def perturbation_outputs(explainer, x_nchw: np.ndarray, target: np.ndarray | Sequence[int] | None = None) -> Outputs:
    """The forward pass of ``x_nchw`` for a perturbation method, ``targets`` set to the classes explained.

    The model runs as for any method (attentions included, so the same outputs serve every
    method, e.g. in ``evaluate``); ``target`` goes to the model only where it takes one (a
    gradient model): perturbation methods need no gradients, so a plain model explains a
    chosen class too.

    Args:
        explainer: an :class:`Explainer` (or anything with ``meta`` and ``infer``).
        x_nchw: (B, 3, H, W) float32 preprocessed input.
        target: (B,) class per image; None explains the predicted classes.

    Returns:
        The :class:`~attnmap.runtime.model.session.Outputs` with ``targets`` (B,) int64 the
        classes the maps will explain.
    """
    given = None if target is None else np.asarray(target, dtype=np.int64).reshape(-1)
    outputs = explainer.infer(x_nchw, target=given if explainer.meta.has_gradients else None)
    if given is not None and given.shape != (len(outputs),):
        raise ExplainError(f"target must give one class per image ({len(outputs)}); got {given.tolist()}")
    return dataclasses.replace(outputs, targets=given if given is not None else explained_classes(outputs))


def explained_classes(outputs: Outputs) -> np.ndarray:
    """(B,) int64: ``outputs.targets`` where the model ran for chosen classes, else the argmax of the logits."""
    if outputs.targets is not None:
        return np.asarray(outputs.targets, dtype=np.int64)
    return np.asarray(outputs.logits).argmax(axis=1).astype(np.int64)


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
            return [check_image(img, f"images[{i}]") for i, img in enumerate(images)], False
        return [check_image(images)], True
    batch = []
    for i, img in enumerate(images):
        batch.append(read_image(img) if isinstance(img, (str, Path)) else check_image(img, f"images[{i}]"))
    if not batch:
        raise ExplainError("no images to explain: got an empty sequence")
    return batch, False
