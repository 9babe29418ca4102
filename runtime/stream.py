"""Explain every frame of a finite source, batched, with decoding overlapped with inference.

This is the engine under ``attnmap explain SOURCE…`` for folders, globs and videos (open the
expanded image arguments together with :func:`runtime.sources.open_files`), and under
:func:`runtime.video.explain_video`: a reader thread decodes and preprocesses whole batches
(see :func:`runtime.pipeline.prefetch`) while the caller's thread runs the model and the
explanation method on the previous batch.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator, Mapping, NamedTuple

from .api import Explanation
from .errors import OptionError, SourceError
from .pipeline import prefetch
from .session import Outputs
from .sources import ErrorHandler, Frame, Source, SourceRef, open_source


class StreamResult(NamedTuple):
    """One explained frame of :func:`explain_stream` (unpacks as ``frame, explanation, outputs``).

    Attributes:
        frame: the source frame (its ``source`` names the file for folders and globs).
        explanation: prediction and map, drawn with ``explanation.overlay()``.
        outputs: this frame's model outputs with a batch axis of 1 (views into the batch's
            arrays), for extra views such as per-layer tiles.
    """

    frame: Frame
    explanation: Explanation
    outputs: Outputs


def explain_stream(explainer, source: "str | os.PathLike | SourceRef | Source", *, method: str = "rollout",
                   options: Mapping[str, Any] | None = None, batch_size: int = 8, fit: str = "crop",
                   topk: int = 5, on_error: ErrorHandler | None = None, prefetch_depth: int = 2,
                   timings: dict[str, float] | None = None) -> Iterator[StreamResult]:
    """Yield a :class:`StreamResult` for every frame of an image, folder, glob, video or sequence.

    Args:
        explainer: a :class:`runtime.Explainer` (``preprocess``, ``infer``, ``maps``, ``package``).
        source: a source spec, parsed ref, or open non-live :class:`~runtime.sources.Source`
            (closed when the iteration ends or is abandoned).
        method: explanation method, a key of ``runtime.explain.EXPLAINERS``.
        options: the method's options.
        batch_size: frames per model call; images of different sizes batch together.
        fit: ``"crop"``, ``"squash"`` or ``"letterbox"``.
        topk: predictions kept per frame.
        on_error: for folders and globs, called as ``on_error(path, error)`` for each
            unreadable file, which is skipped. It runs on the reader thread.
        prefetch_depth: batches the reader may prepare ahead.
        timings: if given, seconds are added to its keys ``wait`` (waiting for the reader),
            ``inference`` and ``explanation``, as the iteration goes.

    Yields:
        ``(frame, explanation, outputs)`` as :class:`StreamResult`, in source order.

    Raises:
        SourceError: the source cannot be opened, is live (a camera never ends; use
            ``run_live``), or fails while read (after the frames before it were yielded).
        OptionError: ``batch_size`` < 1.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise OptionError(f"batch_size must be an integer >= 1; got {batch_size}")
    opts = dict(options or {})
    src = source if isinstance(source, Source) else open_source(source, on_error=on_error)
    with src:
        if src.is_live:
            raise SourceError(f"source {src.spec!r} is live ({src.kind}), so it has no end to explain up to; "
                              "use `attnmap live SOURCE --no-show --out FILE.mp4`")

        def prepare(frames: list[Frame]):
            return explainer.preprocess([f.image_bgr for f in frames], fit=fit)

        batches = prefetch(src, int(batch_size), prepare, depth=prefetch_depth, name="attnmap-reader")
        clock = {"wait": 0.0, "inference": 0.0, "explanation": 0.0} if timings is None else timings
        for key in ("wait", "inference", "explanation"):
            clock.setdefault(key, 0.0)
        try:
            t = time.perf_counter()
            for frames, (x, geoms) in batches:
                t0 = time.perf_counter()
                outputs = explainer.infer(x)
                t1 = time.perf_counter()
                maps = explainer.maps(outputs, method, **opts)
                results = explainer.package([f.image_bgr for f in frames], outputs, maps, geoms, method, topk)
                t2 = time.perf_counter()
                clock["wait"] += t0 - t
                clock["inference"] += t1 - t0
                clock["explanation"] += t2 - t1
                for i, (frame, result) in enumerate(zip(frames, results)):
                    yield StreamResult(frame, result, outputs.select(i))
                t = time.perf_counter()
        finally:
            # Stop and join the reader before the source is closed under it.
            batches.close()
