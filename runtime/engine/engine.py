"""The one frame engine: frames in -> preprocess -> inference -> maps -> predictions -> draw -> sink.

Every front drives this engine through one of three doors, which all run the same stages:
:meth:`FrameEngine.explain_batch` (one batch of frames now, on the caller's thread: the
Python API's :meth:`~attnmap.runtime.engine.explainer.Explainer.explain`, the benchmark, the
Ray actors, the HTTP API), :meth:`FrameEngine.step` (one frame: the live view), and
:meth:`FrameEngine.run` (a whole finite source, batched and threaded: offline explain of
images, folders and videos). What to compute is one :class:`Job`, checked once when the engine
is built; every stage is timed on one :class:`~attnmap.runtime.engine.clock.StageClock`; every
frame comes out as an :class:`ItemResult` holding its explanation or its error.

A batch never dies of one item: a file that cannot be decoded, an image the preprocessing
refuses, a failure while explaining or drawing one frame becomes that item's ``error``, and
the run goes on. Only failures of the whole source (a video that breaks mid-stream) or of the
sink (the output video cannot be written) end a run, after the items before them.

What the inference and explanation stages do depends on the method's kind
(:mod:`~attnmap.runtime.methods.kinds`): perturbation methods (``occlusion``, ``rise``), for
instance, need no attentions and no gradients: their forward pass records the class each frame
is explained for (the job's target, its top classes, or its prediction) as the outputs'
``targets``, and their maps run perturbed copies of the batch's input through the logits-only
model.

Threads in :meth:`run`: a reader decodes and preprocesses whole batches ahead
(:func:`~attnmap.runtime.engine.threads.prefetch`), ``workers`` inference threads run the model
ahead (:func:`~attnmap.runtime.engine.threads.run_ahead`), the caller's thread computes the maps
and predictions, and, when there is drawing or a sink, a finisher thread draws and writes. On a
CPU, two single-threaded model runs at once keep the cores busier than one run on both
(onnxruntime's threads idle at each synchronisation point); see
:func:`~attnmap.runtime.model.plan.throughput_plan` and the README's performance section.
"""

from __future__ import annotations

import os
import queue
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from attnmap.runtime.core.errors import MethodOptionError, OptionError, SourceError
from attnmap.runtime.engine.clock import StageClock
from attnmap.runtime.engine.job import ItemResult, Job, Sink
from attnmap.runtime.engine.threads import BackgroundWorker, prefetch, run_ahead
from attnmap.runtime.frames.frame import Frame, Source, SourceRef
from attnmap.runtime.frames.sources import open_source
from attnmap.runtime.model.session import Outputs

__all__ = ["FrameEngine", "ItemResult", "Job", "Sink", "check_batching"]


@dataclass
class _Batch:
    """A prepared batch: the frames that passed preprocessing, their input and geometries, the
    failed items, and (optionally) one class per frame to explain."""

    frames: list[Frame]
    x: np.ndarray | None
    geoms: list
    failed: list[ItemResult]
    targets: np.ndarray | None = None


class FrameEngine:
    """Runs a :class:`Job` over frames with an :class:`~attnmap.runtime.engine.explainer.Explainer`.

    Args:
        explainer: the model and its stages (``preprocess``, ``forward``, ``infer_plain``,
            ``method_maps``, ``package``, ``meta``): an
            :class:`~attnmap.runtime.engine.explainer.Explainer`.
        job: what to compute; checked against the model here, once (a job already checked
            against this model is taken as it is).
        batch_size: frames per model run in :meth:`run`.
        workers: model runs at once in :meth:`run`, each on its own batch in its own thread
            (see :func:`~attnmap.runtime.model.plan.throughput_plan`).
        prefetch_depth: batches the reader may prepare ahead in :meth:`run`.
        clock: where stage times go (a new :class:`StageClock` by default).

    Raises:
        OptionError: bad job (see :meth:`Job.checked`), ``batch_size`` or ``workers`` < 1.
    """

    def __init__(self, explainer, job: Job | None = None, *, batch_size: int = 1, workers: int = 1,
                 prefetch_depth: int = 2, clock: StageClock | None = None):
        check_batching(batch_size, workers)
        self.explainer = explainer
        path = getattr(explainer, "path", None)
        self.job = (job or Job()).checked(explainer.meta, model=repr(path.name) if path is not None else "this model")
        self._method = self.job.method_record
        self.batch_size, self.workers = int(batch_size), int(workers)
        self.prefetch_depth = max(1, int(prefetch_depth))
        self.clock = clock if clock is not None else StageClock()

    def with_job(self, job: Job) -> "FrameEngine":
        """An engine with another job, sharing this one's explainer, batching and clock."""
        return FrameEngine(self.explainer, job, batch_size=self.batch_size, workers=self.workers,
                           prefetch_depth=self.prefetch_depth, clock=self.clock)

    # ------------------------------------------------------------------ the batch step
    def explain_batch(self, frames: Sequence[Frame], *, targets: Sequence[int] | np.ndarray | None = None,
                      draw: bool = True, out: np.ndarray | None = None) -> list[ItemResult]:
        """Explain one batch of frames now, on the caller's thread: the engine's one batch step.

        Preprocess -> inference -> maps and predictions -> (with the job's style) drawing, each
        stage timed on :attr:`clock`. One bad item never ends the batch: a frame that arrived
        failed, one the preprocessing refuses, a failure while explaining or drawing it
        becomes that item's ``error``; a model failure fails the items of the batch.

        Args:
            frames: the frames, any number (one model run for all of them).
            targets: one class index per frame to explain (class-specific methods), instead of
                the job's ``target``; the indices must be in range (no check here).
            draw: draw each explained item when the job has a style (``ItemResult.drawn``).
            out: a (len(frames), 3, H, W) float32 buffer to preprocess into.

        Returns:
            One :class:`ItemResult` per frame, in the order of ``frames``.

        Raises:
            OptionError: ``targets`` that do not give one class per frame, or (a
                MethodOptionError) targets for a class-agnostic method.
        """
        given = None
        if targets is not None:
            if not self._method.class_specific:
                raise MethodOptionError(f"method {self._method.name!r} is class-agnostic, so targets do not apply")
            given = np.asarray(targets, dtype=np.int64).reshape(-1)
            if given.shape != (len(frames),):
                raise OptionError(f"targets must give one class per frame ({len(frames)}); got {given.tolist()}")
        batch = self._prepare(frames, out=out, targets=given)
        try:
            outputs = self._infer(batch)
        except Exception as exc:  # noqa: BLE001 - the model failed on this batch: its items fail
            items = batch.failed + [ItemResult(f.source, f.index, f, error=exc) for f in batch.frames]
        else:
            items = self._explain_items(batch, outputs)
        if len(items) > 1:
            order = {id(f): i for i, f in enumerate(frames)}
            items.sort(key=lambda r: order[id(r.frame)])
        if draw and self.job.style is not None:
            for item in items:
                self.draw(item)
        return items

    def step(self, frame: Frame, out: np.ndarray | None = None) -> ItemResult:
        """Explain (and draw, with a style) one frame now: :meth:`explain_batch` of one frame.

        Args:
            frame: the frame.
            out: a (1, 3, H, W) float32 buffer to preprocess into (the live loop reuses one).

        Returns:
            The frame's :class:`ItemResult`; a failure is its ``error``, never raised.
        """
        return self.explain_batch([frame], out=out)[0]

    def draw(self, item: ItemResult) -> ItemResult:
        """Draw an explained item with the job's style (``item.drawn``); a failure fails the item."""
        style = self.job.style
        if style is None or not item.ok:
            return item
        with self.clock.stage("overlay"):
            try:
                if item.alternatives:
                    item.drawn = np.hstack([e.overlay(style) for e in item.alternatives])
                else:
                    item.drawn = item.explanation.overlay(style)
            except Exception as exc:  # noqa: BLE001 - one bad item never ends the run
                item.error = exc
        return item

    # ------------------------------------------------------------------ stages
    def _prepare(self, frames: Sequence[Frame], out: np.ndarray | None = None,
                 targets: np.ndarray | None = None) -> _Batch:
        """Preprocess a batch; frames that fail (or arrived failed) become failed items."""
        with self.clock.stage("preprocess"):
            failed = [ItemResult(f.source, f.index, f, error=f.error) for f in frames if f.error is not None]
            good = [f for f in frames if f.error is None]
            if targets is not None and failed:
                targets = np.array([t for f, t in zip(frames, targets) if f.error is None], dtype=np.int64)
            if not good:
                return _Batch([], None, [], failed)
            try:
                x, geoms = self.explainer.preprocess([f.image_bgr for f in good], fit=self.job.fit, out=out)
                return _Batch(good, x, list(geoms), failed, targets)
            except Exception:  # noqa: BLE001 - isolate the item that failed, below
                pass
            kept, xs, geoms, kept_targets = [], [], [], []
            for i, f in enumerate(good):
                try:
                    x1, g1 = self.explainer.preprocess([f.image_bgr], fit=self.job.fit)
                except Exception as exc:  # noqa: BLE001 - one bad item never ends the batch
                    failed.append(ItemResult(f.source, f.index, f, error=exc))
                    continue
                kept.append(f)
                xs.append(x1)
                geoms.extend(g1)
                if targets is not None:
                    kept_targets.append(targets[i])
            return _Batch(kept, np.concatenate(xs) if xs else None, geoms, failed,
                          None if targets is None else np.array(kept_targets, dtype=np.int64))

    def _infer(self, batch: _Batch) -> Outputs | None:
        """Run the model on a prepared batch as the method's kind needs it (None for an empty batch)."""
        if batch.x is None:
            return None
        with self.clock.stage("inference"):
            job, ex = self.job, self.explainer
            if job.top_classes is not None:
                logits = ex.infer_plain(batch.x)
                k = min(int(job.top_classes), logits.shape[1])
                classes = np.argsort(-logits, axis=1, kind="stable")[:, :k].reshape(-1)
                return ex.forward(np.repeat(batch.x, k, axis=0), self._method, classes)
            targets = batch.targets
            if targets is None and job.target is not None:
                targets = np.full(len(batch.frames), int(job.target), np.int64)
            return ex.forward(batch.x, self._method, targets)

    def _explain_items(self, batch: _Batch, outputs: Outputs | None) -> list[ItemResult]:
        """Maps and predictions of a batch, one :class:`ItemResult` per frame (failed ones first)."""
        items = list(batch.failed)
        if outputs is None:
            return items
        with self.clock.stage("explanation"):
            k = len(outputs) // max(1, len(batch.frames))
            try:
                items += self._explain_all(batch, outputs, k)
            except Exception:  # noqa: BLE001 - isolate the item that failed
                for i, frame in enumerate(batch.frames):
                    one = _Batch([frame], batch.x[i:i + 1], [batch.geoms[i]], [])
                    try:
                        items += self._explain_all(one, outputs.slice(i * k, (i + 1) * k), k)
                    except Exception as exc:  # noqa: BLE001
                        items.append(ItemResult(frame.source, frame.index, frame, error=exc))
        return items

    def _explain_all(self, batch: _Batch, outputs: Outputs, k: int) -> list[ItemResult]:
        job, ex, m = self.job, self.explainer, self._method
        # the frames' inputs (which some kinds read), repeated as the outputs are when each frame
        # has k classes
        x = batch.x if k == 1 else np.repeat(batch.x, k, axis=0)
        grids = ex.method_maps(outputs, m, job.options, x=x)
        images = [f.image_bgr for f in batch.frames for _ in range(k)]
        geoms = [g for g in batch.geoms for _ in range(k)]
        results = ex.package(images, outputs, grids, geoms, job.method, job.topk)
        items = []
        for i, frame in enumerate(batch.frames):
            group = results[i * k:(i + 1) * k]
            items.append(ItemResult(frame.source, frame.index, frame, group[0], outputs.select(i * k),
                                    alternatives=group if job.top_classes is not None else []))
        return items

    # ------------------------------------------------------------------ drivers
    def _infer_or_error(self, prepared: tuple[list[Frame], _Batch]) -> Outputs | Exception | None:
        """:meth:`_infer` in an inference thread; a failure is returned, to fail that batch's items."""
        try:
            return self._infer(prepared[1])
        except Exception as exc:  # noqa: BLE001 - one batch's failure never ends the run
            return exc

    def run(self, source: "str | os.PathLike | SourceRef | Source | Sequence[Frame]",
            sink: Sink | None = None) -> Iterator[ItemResult]:
        """Explain every frame of a finite source, in order, batched and overlapped.

        Args:
            source: a source spec, parsed ref, open non-live source (closed at the end), or a
                list of frames. Unreadable files of a folder or file list come out as failed
                items, in their place.
            sink: where finished items go, written in order in a finisher thread (with
                drawing, when the job has a style).

        Yields:
            One :class:`ItemResult` per input frame, in source order, once it is explained,
            drawn and written.

        Raises:
            SourceError: the source cannot be opened, is live (use the live front), or fails
                while read (after the items before the failure were yielded and written).
            AttnmapError: the sink failed (after the items before it were yielded).
        """
        src = _open(source)
        with src:
            if getattr(src, "is_live", False):
                raise SourceError(f"source {src.spec!r} is live ({src.kind}), so it has no end to explain up to; "
                                  "use `attnmap live SOURCE --no-show --out FILE.mp4`")
            batches = prefetch(_timed_frames(src, self.clock), self.batch_size, self._prepare,
                               depth=self.prefetch_depth, name="attnmap-reader")
            inferred = run_ahead(batches, self._infer_or_error, workers=self.workers, name="attnmap-inference")
            finisher = _Finisher(self, sink) if (sink is not None or self.job.style is not None) else None
            try:
                for (_, batch), outputs in inferred:
                    if isinstance(outputs, Exception):
                        # The model failed on this batch: each of its frames fails, the run goes on.
                        failed = [ItemResult(f.source, f.index, f, error=outputs) for f in batch.frames]
                        items = sorted(batch.failed + failed, key=lambda r: r.index)
                    else:
                        items = sorted(self._explain_items(batch, outputs), key=lambda r: r.index)
                    if finisher is None:
                        yield from items
                        continue
                    for item in items:
                        finisher.submit(item)
                    yield from finisher.done()
                if finisher is not None:
                    finisher.close()
                    yield from finisher.done()
            except BaseException:
                if finisher is not None:
                    finisher.abort()
                raise
            finally:
                inferred.close()
                batches.close()


def check_batching(batch_size: int, workers: int) -> None:
    """Raise OptionError unless ``batch_size`` and ``workers`` are integers >= 1."""
    for name, value in (("batch_size", batch_size), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise OptionError(f"{name} must be an integer >= 1; got {value!r}")


# --------------------------------------------------------------------------- helpers
class _Frames(Source):
    """A list of frames as a source."""

    def __init__(self, frames: Sequence[Frame]):
        super().__init__(SourceRef("files", f"{len(frames)} frames", ""))
        self._frames = list(frames)
        self.frame_count = len(self._frames)

    def __iter__(self) -> Iterator[Frame]:
        yield from self._frames


def _open(source) -> Source:
    if isinstance(source, Source):
        return source
    if isinstance(source, (list, tuple)):
        return _Frames(source)
    return open_source(source, errors="yield")


def _timed_frames(src: Source, clock: StageClock) -> Iterator[Frame]:
    """The source's frames, the time spent reading each on the clock's ``decode`` stage."""
    it = iter(src)
    while True:
        t0 = clock.now()
        try:
            frame = next(it)
        except StopIteration:
            return
        clock.add("decode", clock.now() - t0)
        yield frame


class _Finisher:
    """Draws and writes items in order in one thread; finished items are collected for the caller."""

    def __init__(self, engine: FrameEngine, sink: Sink | None):
        self._engine, self._sink = engine, sink
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._worker = BackgroundWorker(self._finish, depth=2 * engine.batch_size * engine.workers + 2,
                                        name="attnmap-finisher")

    def _finish(self, item: ItemResult) -> None:
        self._engine.draw(item)
        if self._sink is not None:
            with self._engine.clock.stage("output"):
                self._sink.write(item)
        self._done.put(item)

    def submit(self, item: ItemResult) -> None:
        self._worker.submit(item)

    def done(self) -> Iterator[ItemResult]:
        while True:
            try:
                yield self._done.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        self._worker.close()

    def abort(self) -> None:
        self._worker.close(raise_errors=False)
