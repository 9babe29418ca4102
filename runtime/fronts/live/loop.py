"""The live overlay loop: camera (or a video played in real time) -> heatmap on screen or file.

Real-time rules, in the order they matter:

1. Never explain an old frame. A :class:`~attnmap.runtime.frames.capture.LatestFrameGrabber` reads the source
   in its own thread and keeps only the newest frame; frames the model had no time for are
   dropped and counted, never queued.
2. Spend the model only where it shows: ``every=k`` runs the model on one processed frame in
   k and redraws the last heatmap over the frames in between.
3. Calm the flicker on request: ``smooth=s`` blends each new map into the last one,
   h_t = s * h_(t-1) + (1 - s) * m_t (an exponential moving average over model runs).

Keys in the window (or returned by ``on_frame``): ``m`` method, ``[`` ``]`` layer, ``h`` head
(or head fusion), ``c`` colour map, ``f`` fit mode, space pause, ``s`` snapshot, ``q``/Esc quit.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from attnmap.runtime.core.errors import OptionError, suggest
from attnmap.runtime.core.files import write_image
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.clock import StageClock
from attnmap.runtime.engine.engine import FrameEngine, ItemResult, Job
from attnmap.runtime.frames.capture import LatestFrameGrabber
from attnmap.runtime.frames.frame import Frame, Source
from attnmap.runtime.frames.sinks import RealTimeRecorder, Window, check_display
from attnmap.runtime.frames.sources import open_source
from attnmap.runtime.fronts.live.state import KEY_HELP, LiveState, apply_key, method_options
from attnmap.runtime.fronts.live.stats import STAGES, FrameRecord, LiveFrame, LiveStats
from attnmap.runtime.methods import METHODS, runs_on


@dataclass(frozen=True)
class LiveConfig:
    """How a live run shows, records and stops.

    Attributes:
        show: draw in a window. Without a display this raises before any window is created
            (OpenCV's Qt would otherwise abort the process).
        out: also write the annotated stream to this video file (e.g. ``live.mp4``).
        smooth: EMA weight of the previous heatmap in [0, 1); 0 disables smoothing.
        every: run the model on every k-th processed frame, reusing the last map in between.
        hud: draw the label, method, fps and stage timings on the frame.
        max_frames: stop after this many processed frames.
        duration: stop after this many seconds.
        pace: play non-live sources at their fps (default: yes when the fps is known), so a
            video file behaves like a camera.
        out_fps: frame rate of ``out`` (default: the source's, else 30).
        snapshot_dir: folder for ``s`` snapshots (PNG).
        window: window title.

    Raises:
        OptionError: a value out of range.
    """

    show: bool = True
    out: str | Path | None = None
    smooth: float = 0.0
    every: int = 1
    hud: bool = True
    max_frames: int | None = None
    duration: float | None = None
    pace: bool | None = None
    out_fps: float | None = None
    snapshot_dir: str | Path = "."
    window: str = "attnmap"

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.smooth) < 1.0:
            raise OptionError(f"smooth must be in [0, 1) (EMA weight of the previous map); got {self.smooth}")
        if isinstance(self.every, bool) or int(self.every) != self.every or self.every < 1:
            raise OptionError(f"every must be an integer >= 1 (explain every k-th frame); got {self.every}")
        if self.max_frames is not None and self.max_frames < 1:
            raise OptionError(f"max_frames must be >= 1; got {self.max_frames}")
        if self.duration is not None and not self.duration > 0:
            raise OptionError(f"duration must be > 0 seconds; got {self.duration}")
        if self.out is not None and not Path(self.out).suffix:
            raise OptionError(f"out must be a video file such as live.mp4 or live.avi; got {str(self.out)!r} "
                              "(no extension)")


def run_live(explainer, source: "str | Source" = "0", job: Job | None = None, config: LiveConfig | None = None,
             *, on_frame: Callable[[LiveFrame], int | None] | None = None,
             clock: StageClock | None = None) -> LiveStats:
    """Explain a live source frame by frame and show (or record) the heatmap as it happens.

    Args:
        explainer: a :class:`~attnmap.runtime.engine.explainer.Explainer`.
        source: a source spec (``"0"``, ``"cam:1"``, ``"rtsp://..."``, ``"clip.mp4"`` ...) or an
            open :class:`~attnmap.runtime.frames.frame.Source`; it is closed when the loop ends.
        job: what to compute (method, options, fit; its ``style`` is how frames are drawn,
            ``OverlayStyle()`` when None); the keys change it as the run goes.
        config: how to show, record and stop (:class:`LiveConfig`).
        on_frame: called with a :class:`LiveFrame` after each frame is drawn (to embed the
            view elsewhere, or to script it); a returned key code is handled like a key
            press, e.g. ``ord("q")`` stops the run.
        clock: where stage times go (a new one by default); its time source is the loop's.

    Returns:
        :class:`LiveStats`.

    Raises:
        AttnmapError: no display for ``show=True``; OptionError for bad options.
        SourceError: the source cannot be opened, or failed mid-stream (after the loop has
            stopped, the source is released and ``out`` holds what was drawn until then).
    """
    job = job or Job()
    config = config or LiveConfig()
    try:
        meta = explainer.meta
        # Perturbation methods take hundreds of model runs a frame: the method key cycles through
        # them only when the session started with one.
        methods = [n for n, m in METHODS.items() if runs_on(n, meta) and (not m.reruns_model or n == job.method)]
        if job.method not in methods:
            raise OptionError(f"method {job.method!r} cannot run on this model; choose from {', '.join(methods)}."
                              + suggest(str(job.method), methods))
        style = job.style or OverlayStyle()
        engine = FrameEngine(explainer, dataclasses.replace(job, style=None, topk=1), clock=clock)
        if config.show:
            check_display()
        state = LiveState(method=job.method, options=dict(engine.job.options), fit=job.fit, style=style,
                          methods=tuple(methods), num_layers=meta.num_layers, num_heads=meta.output_heads,
                          fused=meta.head_fusion != "none")
    except BaseException:
        if isinstance(source, Source):
            source.close()  # the caller handed it over; it is released on every path
        raise
    src = source if isinstance(source, Source) else open_source(source)
    stats = LiveStats(source=src.spec, clock=engine.clock)
    grabber = LatestFrameGrabber(src, pace=config.pace)
    win: Window | None = None
    recorder: RealTimeRecorder | None = None
    try:
        if config.show:
            win = Window(config.window)
        if config.out is not None:
            fps = config.out_fps or src.fps or 30.0
            recorder = RealTimeRecorder(config.out, fps,
                                        by_index=not src.is_live and src.fps is not None and config.out_fps is None)
        loop = LiveLoop(engine, state, stats, config, win=win, recorder=recorder, on_frame=on_frame)
        loop.warm_up(src.size)
        grabber.start()
        try:
            stats.ended = loop.run(grabber, config.max_frames, config.duration)
        except KeyboardInterrupt:
            # Ctrl-C is how a headless camera run is stopped: finish the recording, report.
            stats.ended = "interrupted"
    finally:
        grabber.stop()
        stats.frames_captured, stats.frames_dropped = grabber.captured, grabber.dropped
        if win is not None:
            win.close()
        if recorder is not None:
            frames = recorder.frames
            committed = recorder.close()
            stats.out = None if committed is None else str(committed)
            stats.frames_written = frames
    if grabber.error is not None:
        stats.ended = "error"
        raise grabber.error
    return stats


class LiveLoop:
    """The per-frame work of :func:`run_live`, with the state it carries between frames.

    Public so that other fronts can drive the same loop with another "window": ``attnmap
    serve`` (:mod:`attnmap.runtime.fronts.serve.stream`) subclasses it to hand each drawn
    frame to its viewers instead of a screen."""

    def __init__(self, engine: FrameEngine, state: LiveState, stats: LiveStats, config: LiveConfig, *,
                 win: Window | None, recorder: "RealTimeRecorder | None", on_frame):
        self.engine, self.state, self.stats = engine, state, stats
        self.meta = engine.explainer.meta
        self.now = engine.clock.now
        self.smooth, self.every, self.hud = float(config.smooth), int(config.every), config.hud
        self.win, self.recorder, self.on_frame = win, recorder, on_frame
        self.snapshot_dir = Path(config.snapshot_dir)
        self.grid = self.geom = self.top = None
        self.x_buf: np.ndarray | None = None  # the model input, reused frame after frame
        self.geom_key = None
        self.version = -1
        self.engine_version = None
        self.since_explain = 0
        self.last_drawn: np.ndarray | None = None
        self.stage_ema = {s: 0.0 for s in STAGES}
        self.fps_times: deque = deque(maxlen=30)
        self.message, self.message_until = "", 0.0
        if win is not None:
            # A reminder of the keys for the first seconds in a window (the full list: KEY_HELP).
            self.message, self.message_until = "keys: m [ ] h c f space s q", self.now() + 5.0

    def _engine(self) -> FrameEngine:
        """The engine for the state's current method, options and fit (rebuilt when keys change them:
        every such change bumps the state's version)."""
        if self.engine_version != self.state.version:
            job = Job(method=self.state.method, options=method_options(self.state), fit=self.state.fit, topk=1)
            self.engine = self.engine.with_job(job)
            self.engine_version = self.state.version
        return self.engine

    def warm_up(self, size: tuple[int, int] | None) -> None:
        """Run one blank frame through every stage before the camera starts.

        First calls are slow (onnxruntime's first run, OpenCV's colour-map and font set-up:
        together ~100 ms here), and a first frame that slow would be dropped-frame debt. The
        warm-up's stage times are not recorded.
        """
        w, h = size or self.meta.image_size[::-1]
        blank = np.zeros((h, w, 3), np.uint8)
        engine = self._engine()
        warm = FrameEngine(engine.explainer, engine.job)
        item = warm.step(Frame(-1, blank, "warm-up", self.now()))
        if item.error is not None:
            raise item.error
        self.grid, self.geom, self.top = item.explanation.grid, item.explanation.geometry, _top1(item)
        self._draw(blank)
        self.grid = self.geom = self.top = None

    def run(self, grabber: LatestFrameGrabber, max_frames: int | None, duration: float | None) -> str:
        t_start = None
        while True:
            if duration is not None and t_start is not None and self.now() - t_start >= duration:
                return "duration"
            if self.state.paused:
                if self._handle(self._poll(30), None) == "quit":
                    return "quit"
                continue
            frame = grabber.get(timeout=0.03)
            if frame is None:
                if grabber.finished:
                    return "end"
                if self._handle(self._poll(1), None) == "quit":
                    return "quit"
                continue
            if t_start is None:
                t_start = self.now()
            key = self._process(frame, grabber)
            self.stats.duration_s = self.now() - t_start
            if self._handle(key, frame) == "quit":
                return "quit"
            if max_frames is not None and self.stats.frames_processed >= max_frames:
                return "max_frames"

    # ------------------------------------------------------------------ one frame
    def _process(self, frame: Frame, grabber: LatestFrameGrabber) -> int:
        started = self.now()
        self.stats.frames_captured, self.stats.frames_dropped = grabber.captured, grabber.dropped
        img = frame.image_bgr
        key_geom = (img.shape[:2], self.state.fit)
        explain_now = (self.grid is None or self.version != self.state.version or key_geom != self.geom_key
                       or self.since_explain >= self.every)
        if explain_now:
            engine = self._engine()
            if self.x_buf is None or self.x_buf.shape[2:] != tuple(self.meta.image_size):
                self.x_buf = np.empty((1, 3, *self.meta.image_size), np.float32)
            item = engine.step(frame, out=self.x_buf)
            if item.error is not None:
                raise item.error
            grid = item.explanation.grid
            if self.smooth > 0 and self.grid is not None and self.version == self.state.version \
                    and key_geom == self.geom_key:
                grid = self.smooth * self.grid + (1.0 - self.smooth) * grid
            self.grid, self.geom, self.geom_key, self.version = grid, item.explanation.geometry, key_geom, \
                self.state.version
            self.top = _top1(item)
            self.since_explain = 0
            for stage in ("preprocess", "inference", "explanation"):
                self._ema(stage, engine.clock.last(stage))
            self.stats.frames_explained += 1
        self.since_explain += 1
        clock = self.engine.clock
        with clock.stage("overlay"):
            drawn = self._draw(img)
        self._ema("overlay", clock.last("overlay"))
        key = -1
        t5 = self.now()
        if self.win is not None:
            key = self.win.show(drawn)
        if self.recorder is not None:
            self.recorder.write(drawn, frame)
        shown = self.now()
        clock.add("output", shown - t5)
        self._ema("output", shown - t5)
        self.last_drawn = drawn
        self.stats.frames_processed += 1
        self.stats.records.append(FrameRecord(frame.index, frame.timestamp, started, shown, explain_now))
        self.fps_times.append(shown)
        if self.on_frame is not None:
            index, prob = self.top
            returned = self.on_frame(LiveFrame(drawn, frame, self.grid, self.meta.label(index), prob,
                                               self.state.method, method_options(self.state), self.state.fit,
                                               self.state.colormap, explain_now, self.stats))
            if returned is not None and returned >= 0:
                key = int(returned)
        return key

    def _draw(self, img: np.ndarray) -> np.ndarray:
        style = self.state.style
        heat = self.geom.to_image(self.grid)
        drawn = style.heatmap.annotate(img, heat)
        if not self.hud:
            return drawn
        return style.caption.annotate(drawn, self._hud_lines(), heatmap=heat)

    def _hud_lines(self) -> list[str]:
        index, prob = self.top
        label = self.meta.label(index)
        fps = (len(self.fps_times) - 1) / (self.fps_times[-1] - self.fps_times[0]) if len(self.fps_times) > 1 else 0.0
        lat = self.stats.records[-1].latency * 1e3 if self.stats.records else 0.0
        ms = {s: v * 1e3 for s, v in self.stage_ema.items()}
        lines = [f"{label} {prob:.2f}",
                 f"{self.state.describe()}",
                 f"{fps:.1f} fps  latency {lat:.0f} ms  dropped {self.stats.frames_dropped}",
                 f"pre {ms['preprocess']:.1f}  inf {ms['inference']:.1f}  exp {ms['explanation']:.1f}  "
                 f"draw {ms['overlay']:.1f}  out {ms['output']:.1f} ms"]
        if self.message and self.now() < self.message_until:
            lines.append(self.message)
        return lines

    def _ema(self, name: str, seconds: float) -> None:
        prev = self.stage_ema[name]
        self.stage_ema[name] = seconds if prev == 0.0 else 0.9 * prev + 0.1 * seconds

    # ------------------------------------------------------------------ keys
    def _poll(self, wait_ms: int) -> int:
        if self.win is not None:
            if self.state.paused and self.last_drawn is not None:
                return self.win.show(self.last_drawn, wait_ms)
            return self.win.poll(wait_ms)
        if self.state.paused:
            time.sleep(wait_ms / 1000.0)
        return -1

    def _handle(self, key: int, frame: Frame | None) -> str | None:
        if key is None or key < 0:
            return None
        if key == ord(" ") and self.win is None:
            return None  # without a window nothing could resume a pause
        action, note = apply_key(self.state, key)
        if note:
            self.message, self.message_until = note, self.now() + 2.0
        if action == "snapshot" and self.last_drawn is not None:
            index = frame.index if frame is not None else self.stats.frames_processed
            path = self.snapshot_dir / f"attnmap-{time.strftime('%Y%m%d-%H%M%S')}-{index:06d}.png"
            write_image(path, self.last_drawn)
            self.stats.snapshots.append(str(path))
        return action


# --------------------------------------------------------------------------- helpers
def _top1(item: ItemResult) -> tuple[int, float]:
    top = item.explanation.topk[0]
    return top.index, top.prob


__all__ = ["FrameRecord", "KEY_HELP", "LiveConfig", "LiveFrame", "LiveStats", "STAGES", "run_live"]
