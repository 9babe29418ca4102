"""Offline video explanation: every frame in, an annotated video of the same length out.

Four threads overlap the work: a reader decodes frames and preprocesses whole batches, an
inference thread (or ``workers`` of them) runs the model ahead, the caller's thread runs the explanation
method (those three in :func:`runtime.engine.engine.explain_stream`), and a writer draws the heatmaps
and encodes them. Queues between them are bounded, so a long video never piles up in memory.

The output keeps the input's frame count, frame size and frame rate. If the input fails
mid-stream, the frames before the failure are still written (a valid, shorter video) and
the failure is raised as :class:`SourceError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from attnmap.runtime.frames.sinks import VideoSink
from attnmap.runtime.core.errors import SourceError
from attnmap.runtime.core.files import write_npz
from attnmap.runtime.draw.overlay import HeatmapOverlay
from attnmap.runtime.engine.threads import BackgroundWorker
from attnmap.runtime.frames.sources import Source, open_source
from attnmap.runtime.engine.engine import check_batching, explain_stream

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
        stage_s: seconds spent per stage: ``inference`` in the inference thread; in the
            caller's thread ``wait`` (for the inference thread), ``explanation`` and
            ``submit`` (waiting for the writer).
    """

    source: str
    out: Path
    frames: int
    fps: float
    size: tuple[int, int]
    elapsed_s: float
    maps: Path | None = None
    stage_s: dict[str, float] = field(default_factory=dict)

    @property
    def throughput_fps(self) -> float:
        """Frames explained and written per second."""
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {"source": self.source, "out": str(self.out), "frames": self.frames, "fps": self.fps,
                "size": list(self.size), "elapsed_s": round(self.elapsed_s, 4),
                "throughput_fps": round(self.throughput_fps, 3),
                "maps": None if self.maps is None else str(self.maps),
                "stage_s": {k: round(v, 4) for k, v in self.stage_s.items()}}


def explain_video(explainer, src: "str | Path | Source", out_path: str | Path, *, method: str = "rollout",
                  options: Mapping[str, Any] | None = None, batch_size: int = 8, fit: str = "crop",
                  colormap: str = "jet", alpha: float = 0.5, blur: float = 0.0, mode: str = "blend",
                  label: bool = True, save_maps: str | Path | None = None,
                  progress: Callable[[VideoProgress], None] | None = None, fps: float | None = None,
                  fourcc: str | None = None, prefetch_depth: int = 2, workers: int = 1) -> VideoReport:
    """Explain every frame of a video and write the annotated video.

    Args:
        explainer: a :class:`runtime.Explainer` (``preprocess``, ``infer``, ``maps`` and ``package``).
        src: a video file, an image-sequence pattern (``frames/img_%04d.png``) or an open
            non-live :class:`~runtime.frames.sources.Source`.
        out_path: the annotated video (``.mp4``, ``.avi`` …), written through a temp file.
        method: explanation method, a key of ``runtime.methods.EXPLAINERS``.
        options: the method's options.
        batch_size: frames per model call.
        fit: ``"crop"``, ``"squash"`` or ``"letterbox"``.
        colormap: OpenCV colour map name.
        alpha: heatmap opacity in ``blend`` mode.
        blur: Gaussian smoothing of the drawn heatmap.
        mode: ``"blend"`` or ``"mask"``.
        label: draw the top-1 label and probability on each frame.
        save_maps: also write the maps to this ``.npz``: ``grids`` (T, gh, gw) float32 in
            [0, 1], ``frame_index`` (T,) int64, ``top1`` (T,) int64, ``prob`` (T,) float32,
            ``fps`` and ``method``.
        progress: called with a :class:`VideoProgress` every ``batch_size`` frames and once at
            the end (in the caller's thread).
        fps: output frame rate override (default: the input's, else 25).
        fourcc: codec override (default by extension: mp4v, MJPG for .avi).
        prefetch_depth: batches the reader may prepare ahead.
        workers: model runs at once (see :func:`runtime.engine.engine.explain_stream`); on a CPU,
            :func:`runtime.model.session.throughput_plan` gives the threads, workers and batch size
            that ``attnmap explain`` uses.

    Returns:
        :class:`VideoReport`.

    Raises:
        SourceError: the input cannot be opened, is live (camera, stream: use ``run_live``
            with ``out``), or fails mid-stream (the frames before are written first).
        AttnmapError: the output cannot be written.
    """
    try:
        check_batching(batch_size, workers)
        HeatmapOverlay(colormap=colormap, alpha=alpha, blur=blur, mode=mode)  # checks the style up front
    except BaseException:
        if isinstance(src, Source):
            src.close()  # handed over by the caller: released on every path
        raise
    source = src if isinstance(src, Source) else open_source(src)
    with source:
        if source.is_live:
            raise SourceError(f"source {source.spec!r} is live ({source.kind}), so it has no end to explain up to; "
                              "use `attnmap live SOURCE --no-show --out FILE.mp4`")
        if source.size is None:
            raise SourceError(f"source {source.spec!r} ({source.kind}) has no fixed frame size; "
                              "expected a video file or an image sequence")
        out_fps = float(fps or source.fps or DEFAULT_FPS)
        sink = VideoSink(out_path, out_fps, source.size, fourcc)
        draw = dict(colormap=colormap, alpha=alpha, blur=blur, mode=mode, label=label)
        writer = BackgroundWorker(lambda exp: sink.write(exp.overlay(**draw)), depth=2 * batch_size,
                                  name="attnmap-video-writer")
        grids: list[np.ndarray] = []
        index: list[int] = []
        top1: list[int] = []
        prob: list[float] = []
        stage = {"wait": 0.0, "inference": 0.0, "explanation": 0.0, "submit": 0.0}
        t_start = time.perf_counter()
        reported = 0
        try:
            for frame, exp, _ in explain_stream(explainer, source, method=method, options=options,
                                             batch_size=batch_size, fit=fit, topk=1,
                                             prefetch_depth=prefetch_depth, workers=workers, timings=stage):
                t0 = time.perf_counter()
                writer.submit(exp)
                stage["submit"] += time.perf_counter() - t0
                grids.append(exp.grid)
                index.append(frame.index)
                top1.append(exp.topk[0].index)
                prob.append(exp.topk[0].prob)
                if progress is not None and len(index) - reported >= batch_size:
                    reported = len(index)
                    progress(VideoProgress(reported, source.frame_count, time.perf_counter() - t_start))
            writer.close()
        except SourceError as exc:
            # Keep what was drawn before the input failed: a valid, shorter video.
            writer.close(raise_errors=False)
            written = sink.frames
            kept = sink.close(commit=True)
            if save_maps is not None and grids:
                _write_maps(save_maps, grids[:written], index[:written], top1[:written], prob[:written],
                            out_fps, method)
            where = f"; the {written} frames before it were written to {str(kept)!r}" if kept else ""
            raise SourceError(f"{str(exc).rstrip('.')}{where}") from None
        except BaseException:
            writer.close(raise_errors=False)
            sink.close(commit=False)
            raise
        sink.close(commit=True)
        if progress is not None and reported != len(index):
            progress(VideoProgress(len(index), source.frame_count, time.perf_counter() - t_start))
        elapsed = time.perf_counter() - t_start
        maps_path = None
        if save_maps is not None:
            maps_path = _write_maps(save_maps, grids, index, top1, prob, out_fps, method)
        return VideoReport(source.spec, Path(out_path), sink.frames, out_fps, source.size, elapsed,
                           maps_path, stage)


def _write_maps(path, grids, index, top1, prob, fps, method) -> Path:
    return write_npz(path, grids=np.asarray(grids, dtype=np.float32), frame_index=np.asarray(index, dtype=np.int64),
                     top1=np.asarray(top1, dtype=np.int64), prob=np.asarray(prob, dtype=np.float32),
                     fps=np.float64(fps), method=np.str_(method))
