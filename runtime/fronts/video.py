"""Offline video explanation: every frame in, an annotated video of the same length out.

A front on the frame engine (:class:`~attnmap.runtime.engine.engine.FrameEngine`): the engine
reads, preprocesses, infers, explains and draws; the :class:`VideoFileSink` here encodes each
drawn frame in the engine's finisher thread. Queues between the engine's threads are bounded,
so a long video never piles up in memory.

The output keeps the input's frame count, frame size and frame rate. If the input fails
mid-stream, the frames before the failure are still written (a valid, shorter video) and
the failure is raised as :class:`SourceError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from attnmap.runtime.core.errors import SourceError
from attnmap.runtime.core.files import write_npz
from attnmap.runtime.core.text import plural
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.engine import FrameEngine, ItemResult
from attnmap.runtime.frames.sinks import VideoSink
from attnmap.runtime.frames.sources import Source, open_source

DEFAULT_FPS = 25.0  # for inputs that do not say (image sequences)


@dataclass(frozen=True)
class VideoProgress:
    """Progress of :func:`explain_video`, passed to its ``progress`` callback as frames are done.

    Attributes:
        done: frames explained so far.
        total: frames in the input, or None when the container does not say.
        elapsed_s: seconds since the first frame was read.
    """

    done: int
    total: int | None
    elapsed_s: float

    @property
    def fps(self) -> float:
        """Frames explained per second so far."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Estimated seconds left, or None when the total is unknown."""
        if self.total is None or self.done == 0:
            return None
        return max(0.0, (self.total - self.done) / max(self.fps, 1e-9))

    def bar(self, width: int = 24) -> str:
        """One progress line: ``[#####.......]  42%  126/300 frames  65.3 frames/s  2 s left``,
        or ``126 frames  65.3 frames/s`` when the total is unknown.

        Args:
            width: characters inside the brackets (>= 1).
        """
        if self.total is None or self.total <= 0:
            return f"{self.done} frames  {self.fps:.1f} frames/s"
        frac = min(1.0, self.done / self.total)
        filled = int(frac * width)
        eta = self.eta_s
        left = f"  {eta:.0f} s left" if eta is not None else ""
        return (f"[{'#' * filled}{'.' * (width - filled)}] {100 * frac:3.0f}%  {self.done}/{self.total} frames  "
                f"{self.fps:.1f} frames/s{left}")


@dataclass
class VideoReport:
    """What :func:`explain_video` wrote.

    Attributes:
        source: the input spec.
        out: the annotated video.
        frames: frames written (equals the input's frame count).
        fps: frame rate of the output (the input's).
        size: ``(width, height)`` of the output (the input's).
        elapsed_s: wall time from the first read to the closed output.
        maps: the ``.npz`` of per-frame maps, if requested.
        stage_s: seconds spent per stage of the engine's clock (summed over its threads).
        failed: ``(frame index, reason)`` of frames that could not be explained; they were
            written as plain input frames.
        codec: the codec the video was written with (a FourCC such as ``mp4v`` or ``VP80``).
        codec_note: why the file may not play in a browser, when that is so ("" otherwise).
    """

    source: str
    out: Path
    frames: int
    fps: float
    size: tuple[int, int]
    elapsed_s: float
    maps: Path | None = None
    stage_s: dict[str, float] = field(default_factory=dict)
    failed: list[tuple[int, str]] = field(default_factory=list)
    codec: str = ""
    codec_note: str = ""

    @property
    def throughput_fps(self) -> float:
        """Frames explained and written per second."""
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {"source": self.source, "out": str(self.out), "frames": self.frames, "fps": self.fps,
                "size": list(self.size), "elapsed_s": round(self.elapsed_s, 4),
                "throughput_fps": round(self.throughput_fps, 3),
                "maps": None if self.maps is None else str(self.maps), "codec": self.codec,
                "codec_note": self.codec_note,
                "failed": [{"index": i, "error": e} for i, e in self.failed],
                "stage_s": {k: round(v, 4) for k, v in self.stage_s.items()}}


class VideoFileSink:
    """The engine's sink for a video: each finished item's overlay becomes one output frame.

    A frame that could not be explained or drawn is written as the plain input frame (so the
    output keeps the input's length and timing) and counted in :attr:`failed`.

    Args:
        out: the annotated video, written through a temp file.
        fps: output frame rate.
        size: ``(width, height)`` of the frames.
        maps: also collect per-frame grids, top-1 and probability for an ``.npz``.
        grid: the model's patch grid ``(gh, gw)`` (the shape of an empty map collection).
    """

    def __init__(self, out: str | Path, fps: float, size: tuple[int, int], *, maps: bool,
                 grid: tuple[int, int] = (0, 0)):
        self.video = VideoSink(out, fps, size)
        self.grid = tuple(grid)
        self.collect = maps
        self.grids: list[np.ndarray] = []
        self.index: list[int] = []
        self.top1: list[int] = []
        self.prob: list[float] = []
        self.failed: list[tuple[int, str]] = []  # (index, reason): never the item, which holds pooled buffers

    def write(self, item: ItemResult) -> None:
        if item.ok:
            self.video.write(item.drawn)
            if self.collect:
                exp = item.explanation
                self.grids.append(exp.grid)
                self.index.append(item.index)
                self.top1.append(exp.topk[0].index)
                self.prob.append(exp.topk[0].prob)
            return
        self.failed.append((item.index, item.reason()))
        if item.frame is not None and item.frame.image_bgr is not None:
            self.video.write(item.frame.image_bgr)

    def write_maps(self, path: str | Path, fps: float, method: str) -> Path:
        """Write the collected maps as ``.npz`` (see :func:`explain_video`)."""
        grids = np.asarray(self.grids, dtype=np.float32) if self.grids else np.zeros((0, *self.grid), np.float32)
        return write_npz(path, grids=grids,
                         frame_index=np.asarray(self.index, dtype=np.int64),
                         top1=np.asarray(self.top1, dtype=np.int64), prob=np.asarray(self.prob, dtype=np.float32),
                         fps=np.float64(fps), method=np.str_(method))


def explain_video(engine: FrameEngine, src: "str | Path | Source", out_path: str | Path, *,
                  save_maps: str | Path | None = None, progress: Callable[[VideoProgress], None] | None = None,
                  fps: float | None = None) -> VideoReport:
    """Explain every frame of a video (or image sequence) into an annotated video.

    Args:
        engine: the frame engine: its explainer, job (method, options, fit; the job's style
            draws each frame, ``OverlayStyle()`` when it has none), batch size and workers.
        src: a video file or image sequence spec, or an open non-live source (closed here).
        out_path: the annotated video (``.mp4``, ``.avi`` ...), written through a temp file.
        save_maps: also write the maps to this ``.npz``: ``grids`` (T, gh, gw) float32 in
            [0, 1], ``frame_index`` (T,) int64, ``top1`` (T,) int64, ``prob`` (T,) float32,
            ``fps`` and ``method``.
        progress: called with a :class:`VideoProgress` every ``batch_size`` frames and once at
            the end (in the caller's thread).
        fps: output frame rate override (default: the input's, else 25).

    Returns:
        :class:`VideoReport`.

    Raises:
        SourceError: the input cannot be opened, is live (camera, stream: use ``run_live``
            with an output file), or fails mid-stream (the frames before are written first).
        AttnmapError: the output cannot be written.
        KeyboardInterrupt: Ctrl-C (or SIGTERM under
            :func:`~attnmap.runtime.fronts.interrupt.terminate_as_interrupt`): the engine's
            threads are stopped and the temp file removed before it propagates.
    """
    if engine.job.style is None:
        engine = engine.with_job(dataclasses.replace(engine.job, style=OverlayStyle()))
    source = src if isinstance(src, Source) else open_source(src)
    with source:
        if source.is_live:
            raise SourceError(f"source {source.spec!r} is live ({source.kind}), so it has no end to explain up to; "
                              "use `attnmap live SOURCE --no-show --out FILE.mp4`")
        if source.size is None:
            raise SourceError(f"source {source.spec!r} ({source.kind}) has no fixed frame size; "
                              "expected a video file or an image sequence")
        out_fps = float(fps or source.fps or DEFAULT_FPS)
        sink = VideoFileSink(out_path, out_fps, source.size, maps=save_maps is not None,
                             grid=tuple(engine.explainer.meta.grid_size))
        clock = engine.clock
        t_start = clock.now()
        done = reported = 0
        items = engine.run(source, sink=sink)
        try:
            for _ in items:
                done += 1
                if progress is not None and done - reported >= engine.batch_size:
                    reported = done
                    progress(VideoProgress(done, source.frame_count, clock.now() - t_start))
        except SourceError as exc:
            # Keep what was drawn before the input failed: a valid, shorter video.
            written = sink.video.frames
            kept = sink.video.close(commit=True)
            if save_maps is not None and sink.grids:
                sink.write_maps(save_maps, out_fps, engine.job.method)
            where = f"; the {plural(written, 'frame')} before it were written to {str(kept)!r}" if kept else ""
            raise SourceError(f"{str(exc).rstrip('.')}{where}") from exc
        except BaseException:
            # Ctrl-C, SIGTERM (see fronts/interrupt.py) or a failure: stop the engine first (its
            # finisher thread writes into the sink), then remove the temp file; nothing is kept.
            items.close()
            sink.video.close(commit=False)
            raise
        if done == 0:
            sink.video.close(commit=False)
            raise SourceError(f"video {source.spec!r} holds no frames that can be decoded")
        sink.video.close(commit=True)
        if progress is not None and reported != done:
            progress(VideoProgress(done, source.frame_count, clock.now() - t_start))
        elapsed = clock.now() - t_start
        maps_path = sink.write_maps(save_maps, out_fps, engine.job.method) if save_maps is not None else None
        return VideoReport(source.spec, Path(out_path), sink.video.frames, out_fps, source.size, elapsed,
                           maps_path, clock.totals(), failed=list(sink.failed),
                           codec=sink.video.codec, codec_note=sink.video.note or "")
