"""Explain every frame of a finite source, batched, with decoding overlapped with inference.

This is the engine under ``attnmap explain SOURCE…`` for folders, globs and videos (open the
expanded image arguments together with :func:`runtime.frames.sources.open_files`), and under
:func:`runtime.fronts.video.explain_video`. Three stages overlap: a reader thread decodes and
preprocesses whole batches (:func:`runtime.engine.threads.prefetch`), an inference thread (or
``workers`` of them, each on its own batch) runs the model on the next batch
(:func:`runtime.engine.threads.run_ahead`), and the caller's thread runs the
explanation method on the last one, so the explanation runs while onnxruntime works on the
next batch rather than between batches (a few percent more frames/s on the 2-core box, where
onnxruntime leaves part of the cores idle at its synchronisation points).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Iterator, Mapping, NamedTuple

from attnmap.runtime.engine.explainer import Explanation
from attnmap.runtime.core.errors import OptionError, SourceError
from attnmap.runtime.engine.threads import prefetch, run_ahead
from attnmap.runtime.model.session import Outputs
from attnmap.runtime.frames.sources import ErrorHandler, Frame, Source, SourceRef, open_source


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


def check_batching(batch_size: int, workers: int) -> None:
    """Raise OptionError unless ``batch_size`` and ``workers`` are integers >= 1."""
    for name, value in (("batch_size", batch_size), ("workers", workers)):
        if int(value) != value or value < 1:
            raise OptionError(f"{name} must be an integer >= 1; got {value}")


def explain_stream(explainer, source: "str | os.PathLike | SourceRef | Source", *, method: str = "rollout",
                   options: Mapping[str, Any] | None = None, batch_size: int = 8, fit: str = "crop",
                   topk: int = 5, on_error: ErrorHandler | None = None, prefetch_depth: int = 2,
                   workers: int = 1, timings: dict[str, float] | None = None) -> Iterator[StreamResult]:
    """Yield a :class:`StreamResult` for every frame of an image, folder, glob, video or sequence.

    Args:
        explainer: a :class:`runtime.Explainer` (``preprocess``, ``infer``, ``maps``, ``package``).
        source: a source spec, parsed ref, or open non-live :class:`~runtime.frames.sources.Source`
            (closed when the iteration ends or is abandoned).
        method: explanation method, a key of ``runtime.methods.EXPLAINERS``.
        options: the method's options.
        batch_size: frames per model call; images of different sizes batch together.
        fit: ``"crop"``, ``"squash"`` or ``"letterbox"``.
        topk: predictions kept per frame.
        on_error: for folders and globs, called as ``on_error(path, error)`` for each
            unreadable file, which is skipped. It runs on the reader thread.
        prefetch_depth: batches the reader may prepare ahead.
        workers: model runs at once, each on its own batch in its own thread. On a CPU, two
            runs on half the cores each (an explainer made with the threads that
            :func:`runtime.model.session.throughput_plan` gives) keep the cores busier than one run on
            all of them (onnxruntime's threads wait at every synchronisation point): on the
            2-core box, DeiT-Tiny video explain at batch 8 went from 69.4 to 75.2 frames/s
            (8 interleaved pairs of runs), and such runs do best on small batches (see
            ``throughput_plan``). Results stay in source order.
        timings: if given, seconds are added to its keys ``wait`` (the caller waiting for
            the inference threads, which wait for the reader), ``inference`` (summed over the
            inference threads) and ``explanation``, as the iteration goes.

    Yields:
        ``(frame, explanation, outputs)`` as :class:`StreamResult`, in source order.

    Raises:
        SourceError: the source cannot be opened, is live (a camera never ends; use
            ``run_live``), or fails while read (after the frames before it were yielded).
        OptionError: ``batch_size`` or ``workers`` < 1.
    """
    check_batching(batch_size, workers)
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

        clock_lock = threading.Lock()  # the inference threads all add to clock["inference"]

        def infer(batch) -> Outputs:
            t0 = time.perf_counter()
            outputs = explainer.infer(batch[1][0])
            with clock_lock:
                clock["inference"] += time.perf_counter() - t0
            return outputs

        inferred = run_ahead(batches, infer, workers=int(workers), name="attnmap-inference")
        try:
            t = time.perf_counter()
            for (frames, (_, geoms)), outputs in inferred:
                t0 = time.perf_counter()
                maps = explainer.maps(outputs, method, **opts)
                results = explainer.package([f.image_bgr for f in frames], outputs, maps, geoms, method, topk)
                clock["wait"] += t0 - t
                clock["explanation"] += time.perf_counter() - t0
                for i, (frame, result) in enumerate(zip(frames, results)):
                    yield StreamResult(frame, result, outputs.select(i))
                t = time.perf_counter()
        finally:
            # Stop the inference thread, which closes the reader on its way out; the reader is
            # closed here too for when the inference thread never started. Both are joined
            # before `with src` closes the source under them.
            inferred.close()
            batches.close()
