"""The live overlay loop: camera (or a video played in real time) -> heatmap on screen or file.

Real-time rules, in the order they matter:

1. Never explain an old frame. A :class:`~runtime.frames.capture.LatestFrameGrabber` reads the source
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

import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from attnmap.runtime.frames.capture import LatestFrameGrabber
from attnmap.runtime.frames.sinks import RealTimeRecorder, Window, check_display
from attnmap.runtime.core.errors import OptionError, suggest
from attnmap.runtime.methods import EXPLAINERS, explain as run_method
from attnmap.runtime.core.files import write_image
from attnmap.runtime.fronts.live.state import FITS, KEY_HELP, LiveState, apply_key, check_options, method_options
from attnmap.runtime.fronts.live.stats import STAGES, FrameRecord, LiveFrame, LiveStats
from attnmap.runtime.draw.overlay import COLORMAPS, HeatmapOverlay, LabelOverlay
from attnmap.runtime.frames.sources import Frame, Source, open_source



def run_live(explainer, source: "str | Source" = "0", *, method: str = "rollout",
             options: Mapping[str, Any] | None = None, show: bool = True, out: str | Path | None = None,
             fit: str = "squash", smooth: float = 0.0, every: int = 1, colormap: str = "jet",
             alpha: float = 0.5, blur: float = 0.0, mode: str = "blend", hud: bool = True,
             max_frames: int | None = None, duration: float | None = None, pace: bool | None = None,
             out_fps: float | None = None, snapshot_dir: str | Path = ".", window: str = "attnmap",
             on_frame: Callable[[LiveFrame], int | None] | None = None) -> LiveStats:
    """Explain a live source frame by frame and show (or record) the heatmap as it happens.

    Args:
        explainer: a :class:`runtime.Explainer` (anything with ``meta``, ``preprocess``,
            ``infer`` and ``maps``).
        source: a source spec (``"0"``, ``"cam:1"``, ``"rtsp://…"``, ``"clip.mp4"`` …) or an
            open :class:`~runtime.frames.sources.Source`; it is closed when the loop ends.
        method: explanation method, a key of ``runtime.methods.EXPLAINERS``.
        options: the method's options, e.g. ``{"discard_ratio": 0.9}``.
        show: draw in a window. Without a display this raises :class:`AttnmapError` before
            any window is created (OpenCV's Qt would otherwise abort the process).
        out: also write the annotated stream to this video file (e.g. ``live.mp4``).
        fit: how frames enter the model: ``"squash"`` (whole frame, default), ``"crop"`` or
            ``"letterbox"``.
        smooth: EMA weight of the previous heatmap in [0, 1); 0 disables smoothing.
        every: run the model on every k-th processed frame, reusing the last map in between.
        colormap: OpenCV colour map name (``c`` cycles).
        alpha: heatmap opacity in ``blend`` mode.
        blur: Gaussian smoothing of the drawn heatmap (see ``HeatmapOverlay``).
        mode: ``"blend"`` or ``"mask"``.
        hud: draw the label, method, fps and stage timings on the frame.
        max_frames: stop after this many processed frames.
        duration: stop after this many seconds.
        pace: play non-live sources at their fps (default: yes when the fps is known), so a
            video file behaves like a camera.
        out_fps: frame rate of ``out`` (default: the source's, else 30).
        snapshot_dir: folder for ``s`` snapshots (PNG).
        window: window title.
        on_frame: called with a :class:`LiveFrame` after each frame is drawn (to embed the
            view elsewhere, or to script it); a returned key code is handled like a key
            press, e.g. ``ord("q")`` stops the run.

    Returns:
        :class:`LiveStats`.

    Raises:
        AttnmapError: no display for ``show=True``; OptionError for bad options.
        SourceError: the source cannot be opened, or failed mid-stream (after the loop has
            stopped, the source is released and ``out`` holds what was drawn until then).
    """
    try:
        _check_args(method, fit, smooth, every, colormap, max_frames, duration, out)
        HeatmapOverlay(colormap=colormap, alpha=alpha, blur=blur, mode=mode)  # checks the style
        if show:
            check_display()
        methods = [n for n, m in EXPLAINERS.items() if not m.needs_gradients or explainer.meta.has_gradients]
        if method not in methods:
            raise OptionError(f"method {method!r} cannot run on this model; choose from {', '.join(methods)}."
                              + suggest(method, methods))
        state = LiveState(method=method, options=dict(options or {}), fit=fit, colormap=colormap,
                          methods=tuple(methods), num_layers=explainer.meta.num_layers,
                          num_heads=explainer.meta.output_heads)
        _check_method_options(explainer.meta, method, state.options)
    except BaseException:
        if isinstance(source, Source):
            source.close()  # the caller handed it over; it is released on every path
        raise
    src = source if isinstance(source, Source) else open_source(source)
    stats = LiveStats(source=src.spec)
    grabber = LatestFrameGrabber(src, pace=pace)
    win: Window | None = None
    recorder: RealTimeRecorder | None = None
    try:
        if show:
            win = Window(window)
        if out is not None:
            fps = out_fps or src.fps or 30.0
            recorder = RealTimeRecorder(out, fps, by_index=not src.is_live and src.fps is not None and out_fps is None)
        loop = _Loop(explainer, state, stats, smooth=smooth, every=every, alpha=alpha, blur=blur, mode=mode,
                     hud=hud, win=win, recorder=recorder, on_frame=on_frame, snapshot_dir=Path(snapshot_dir))
        loop.warm_up(src.size)
        grabber.start()
        try:
            stats.ended = loop.run(grabber, max_frames, duration)
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


class _Loop:
    """The per-frame work of :func:`run_live`, with the state it carries between frames."""

    def __init__(self, explainer, state: LiveState, stats: LiveStats, *, smooth: float, every: int,
                 alpha: float, blur: float, mode: str, hud: bool, win: Window | None,
                 recorder: "RealTimeRecorder | None", on_frame, snapshot_dir: Path):
        self.ex, self.state, self.stats = explainer, state, stats
        self.smooth, self.every, self.hud = float(smooth), int(every), hud
        self.alpha, self.blur, self.mode = alpha, blur, mode
        self.win, self.recorder, self.on_frame, self.snapshot_dir = win, recorder, on_frame, snapshot_dir
        self.labeler = LabelOverlay()
        self._overlays: dict[str, HeatmapOverlay] = {}
        self.grid = self.geom = self.top = None
        self.x_buf: np.ndarray | None = None  # the model input, reused frame after frame
        self.geom_key = None
        self.version = -1
        self.since_explain = 0
        self.last_drawn: np.ndarray | None = None
        self.stage_ema = {s: 0.0 for s in STAGES}
        self.fps_times: deque = deque(maxlen=30)
        self.message, self.message_until = "", 0.0
        if win is not None:
            # A reminder of the keys for the first seconds in a window (the full list: KEY_HELP).
            self.message, self.message_until = "keys: m [ ] h c f space s q", time.perf_counter() + 5.0

    def warm_up(self, size: tuple[int, int] | None) -> None:
        """Run one blank frame through every stage before the camera starts.

        First calls are slow (onnxruntime's first run, OpenCV's colour-map and font set-up:
        together ~100 ms here), and a first frame that slow would be dropped-frame debt.
        """
        w, h = size or self.ex.meta.image_size[::-1]
        blank = np.zeros((h, w, 3), np.uint8)
        x, geoms = self.ex.preprocess([blank], fit=self.state.fit)
        outputs = self.ex.infer(x)
        self.grid = self.ex.maps(outputs, self.state.method, **method_options(self.state))[0]
        self.geom, self.top = geoms[0], _top1(outputs.logits[0])
        self._draw(blank)
        self.grid = self.geom = self.top = None

    def run(self, grabber: LatestFrameGrabber, max_frames: int | None, duration: float | None) -> str:
        t_start = None
        while True:
            if duration is not None and t_start is not None and time.perf_counter() - t_start >= duration:
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
                t_start = time.perf_counter()
            key = self._process(frame, grabber)
            self.stats.duration_s = time.perf_counter() - t_start
            if self._handle(key, frame) == "quit":
                return "quit"
            if max_frames is not None and self.stats.frames_processed >= max_frames:
                return "max_frames"

    # ------------------------------------------------------------------ one frame
    def _process(self, frame: Frame, grabber: LatestFrameGrabber) -> int:
        started = time.perf_counter()
        self.stats.frames_captured, self.stats.frames_dropped = grabber.captured, grabber.dropped
        img = frame.image_bgr
        key_geom = (img.shape[:2], self.state.fit)
        explain_now = (self.grid is None or self.version != self.state.version or key_geom != self.geom_key
                       or self.since_explain >= self.every)
        if explain_now:
            t0 = time.perf_counter()
            if self.x_buf is None or self.x_buf.shape[2:] != tuple(self.ex.meta.image_size):
                self.x_buf = np.empty((1, 3, *self.ex.meta.image_size), np.float32)
            x, geoms = self.ex.preprocess([img], fit=self.state.fit, out=self.x_buf)
            t1 = time.perf_counter()
            outputs = self.ex.infer(x)
            t2 = time.perf_counter()
            grid = self.ex.maps(outputs, self.state.method, **method_options(self.state))[0]
            t3 = time.perf_counter()
            if self.smooth > 0 and self.grid is not None and self.version == self.state.version \
                    and key_geom == self.geom_key:
                grid = self.smooth * self.grid + (1.0 - self.smooth) * grid
            self.grid, self.geom, self.geom_key, self.version = grid, geoms[0], key_geom, self.state.version
            self.top = _top1(outputs.logits[0])
            self.since_explain = 0
            self._stage("preprocess", t1 - t0)
            self._stage("inference", t2 - t1)
            self._stage("explanation", t3 - t2)
            self.stats.frames_explained += 1
        self.since_explain += 1
        t4 = time.perf_counter()
        drawn = self._draw(img)
        t5 = time.perf_counter()
        self._stage("overlay", t5 - t4)
        key = -1
        if self.win is not None:
            key = self.win.show(drawn)
        if self.recorder is not None:
            self.recorder.write(drawn, frame)
        shown = time.perf_counter()
        self._stage("output", shown - t5)
        self.last_drawn = drawn
        self.stats.frames_processed += 1
        self.stats.records.append(FrameRecord(frame.index, frame.timestamp, started, shown, explain_now))
        self.fps_times.append(shown)
        if self.on_frame is not None:
            index, prob = self.top
            returned = self.on_frame(LiveFrame(drawn, frame, self.grid, self.ex.meta.label(index), prob,
                                               self.state.method, method_options(self.state), self.state.fit,
                                               self.state.colormap, explain_now, self.stats))
            if returned is not None and returned >= 0:
                key = int(returned)
        return key

    def _draw(self, img: np.ndarray) -> np.ndarray:
        cmap = self.state.colormap
        if cmap not in self._overlays:
            self._overlays[cmap] = HeatmapOverlay(colormap=cmap, alpha=self.alpha, blur=self.blur, mode=self.mode)
        drawn = self._overlays[cmap].annotate(img, self.geom.to_image(self.grid))
        if not self.hud:
            return drawn
        return self.labeler.annotate(drawn, self._hud_lines())

    def _hud_lines(self) -> list[str]:
        index, prob = self.top
        label = self.ex.meta.label(index)
        fps = (len(self.fps_times) - 1) / (self.fps_times[-1] - self.fps_times[0]) if len(self.fps_times) > 1 else 0.0
        lat = self.stats.records[-1].latency * 1e3 if self.stats.records else 0.0
        ms = {s: v * 1e3 for s, v in self.stage_ema.items()}
        lines = [f"{label} {prob:.2f}",
                 f"{self.state.describe()}",
                 f"{fps:.1f} fps  latency {lat:.0f} ms  dropped {self.stats.frames_dropped}",
                 f"pre {ms['preprocess']:.1f}  inf {ms['inference']:.1f}  exp {ms['explanation']:.1f}  "
                 f"draw {ms['overlay']:.1f}  out {ms['output']:.1f} ms"]
        if self.message and time.perf_counter() < self.message_until:
            lines.append(self.message)
        return lines

    def _stage(self, name: str, seconds: float) -> None:
        self.stats.stage_s[name].append(seconds)
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
            self.message, self.message_until = note, time.perf_counter() + 2.0
        if action == "snapshot" and self.last_drawn is not None:
            index = frame.index if frame is not None else self.stats.frames_processed
            path = self.snapshot_dir / f"attnmap-{time.strftime('%Y%m%d-%H%M%S')}-{index:06d}.png"
            write_image(path, self.last_drawn)
            self.stats.snapshots.append(str(path))
        return action


# --------------------------------------------------------------------------- helpers
def _check_args(method, fit, smooth, every, colormap, max_frames, duration, out) -> None:
    if fit not in FITS:
        raise OptionError(f"fit must be one of {', '.join(FITS)}; got {fit!r}" + suggest(str(fit), FITS))
    if not 0.0 <= float(smooth) < 1.0:
        raise OptionError(f"smooth must be in [0, 1) (EMA weight of the previous map); got {smooth}")
    if int(every) != every or every < 1:
        raise OptionError(f"every must be an integer >= 1 (explain every k-th frame); got {every}")
    if colormap not in COLORMAPS:
        raise OptionError(f"colormap must be one of {', '.join(COLORMAPS)}; got {colormap!r}"
                          + suggest(str(colormap), COLORMAPS))
    if max_frames is not None and max_frames < 1:
        raise OptionError(f"max_frames must be >= 1; got {max_frames}")
    if duration is not None and duration <= 0:
        raise OptionError(f"duration must be > 0 seconds; got {duration}")
    if not isinstance(method, str):
        raise OptionError(f"method must be a name such as 'rollout'; got {method!r}")
    if out is not None and not Path(out).suffix:
        raise OptionError(f"out must be a video file such as live.mp4 or live.avi; got {str(out)!r} (no extension)")


def _check_method_options(meta, method: str, options: dict[str, Any]) -> None:
    """Fail before the camera opens, not at the first frame, when an option is wrong.

    Names are checked against the method; values by running the method once on uniform
    attention of the model's shape, which applies every check the method itself makes.
    """
    check_options(method, options)
    n = meta.num_tokens
    uniform = np.full((1, meta.num_layers, meta.output_heads, n, n), 1.0 / n, dtype=np.float32)
    grads = np.zeros_like(uniform) if EXPLAINERS[method].needs_gradients else None
    run_method(method, uniform, meta.layout, grads=grads, **options)


def _top1(logits: np.ndarray) -> tuple[int, float]:
    z = logits.astype(np.float64)
    i = int(np.argmax(z))
    p = float(1.0 / np.exp(z - z[i]).sum())
    return i, p


__all__ = ["FrameRecord", "KEY_HELP", "LiveFrame", "LiveStats", "STAGES", "run_live"]
