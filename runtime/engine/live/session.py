"""One live session: a source explained frame by frame as it happens, for any front to show.

``attnmap live`` (a window and a recorder) and ``attnmap serve`` (browsers over MJPEG) both
drive a :class:`LiveSession`; they differ only in their :class:`LiveView`, where the drawn
frames go and where keys come from.

Real-time rules, in the order they matter:

1. Never explain an old frame. A :class:`~attnmap.runtime.frames.capture.LatestFrameGrabber`
   reads the source in its own thread and keeps only the newest frame; frames the model had no
   time for are dropped and counted, never queued.
2. Spend the model only where it shows: ``every=k`` runs the model on one processed frame in
   k and redraws the last map over the frames in between.
3. Calm the flicker on request: ``smooth=s`` blends each new map into the last one,
   h_t = s * h_(t-1) + (1 - s) * m_t (an exponential moving average over model runs).

Keys (from the view, or returned by ``on_frame``) change the session's :class:`LiveState`;
every change that alters the map bumps its version, and the next frame is explained with a job
rebuilt from it. Frames are drawn by :class:`~attnmap.runtime.draw.annotate.ExplanationAnnotator`,
so with the HUD off a live frame is pixel for pixel what ``Explanation.overlay`` draws.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from attnmap.runtime.core.errors import OptionError, suggest
from attnmap.runtime.core.files import write_image
from attnmap.runtime.draw.annotate import ExplanationAnnotator
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.clock import StageClock
from attnmap.runtime.engine.engine import FrameEngine, Job
from attnmap.runtime.engine.explainer import Explanation
from attnmap.runtime.engine.live.state import LiveState, apply_key, method_options
from attnmap.runtime.methods import resolve_method
from attnmap.runtime.engine.live.stats import STAGES, FrameRecord, LiveFrame, LiveStats
from attnmap.runtime.frames.capture import LatestFrameGrabber
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.methods import METHODS, runs_on

_FPS_WINDOW = 30  # frames the HUD's fps is measured over


def check_smooth(value) -> float:
    """``value`` as the EMA weight of the previous map, a float in [0, 1).

    Raises:
        OptionError: not a number in [0, 1).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= value < 1.0:
        raise OptionError(f"smooth must be a number in [0, 1) (EMA weight of the previous map); got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LiveSettings:
    """How a live session schedules, smooths and labels its frames (checked when built).

    Attributes:
        smooth: EMA weight of the previous map in [0, 1); 0 disables smoothing.
        every: run the model on every k-th processed frame, reusing the last map in between.
        hud: draw the fps, latency and stage timings under the caption.
        snapshot_dir: folder for the ``s`` key's snapshots (PNG).

    Raises:
        OptionError: a value out of range.
    """

    smooth: float = 0.0
    every: int = 1
    hud: bool = True
    snapshot_dir: str | Path = "."

    def __post_init__(self) -> None:
        object.__setattr__(self, "smooth", check_smooth(self.smooth))
        if isinstance(self.every, bool) or not isinstance(self.every, (int, np.integer)) or self.every < 1:
            raise OptionError(f"every must be an integer >= 1 (explain every k-th frame); got {self.every!r}")
        if not isinstance(self.hud, bool):
            raise OptionError(f"hud must be True or False; got {self.hud!r}")


class LiveView(Protocol):
    """Where a session's drawn frames go and its keys come from (a window, a browser page ...).

    Attributes:
        interactive: a person can press keys here (a pause is only honoured where one can
            resume it).
    """

    interactive: bool

    def show(self, drawn: np.ndarray, frame: Frame) -> int:
        """Output one drawn frame (H, W, 3) BGR uint8; return a key code, or -1."""

    def poll(self, wait_ms: int, paused: np.ndarray | None) -> int:
        """Wait up to ``wait_ms`` for a key while there is no new frame; ``paused`` is the frame
        on show while the session is paused (else None). Return a key code, or -1."""


def live_methods(meta, method: str) -> tuple[str, ...]:
    """The methods a live session's ``m`` key cycles through on a model.

    Perturbation methods take hundreds of model runs a frame: they are in the cycle only when
    the session starts with one.

    Raises:
        OptionError: ``method`` cannot run on this model (close names suggested).
    """
    methods = [n for n, m in METHODS.items() if runs_on(n, meta) and (not m.reruns_model or n == method)]
    if method not in methods:
        raise OptionError(f"method {method!r} cannot run on this model; choose from {', '.join(methods)}."
                          + suggest(str(method), methods))
    return tuple(methods)


class LiveSession:
    """A model explaining a live source: scheduling, smoothing, drawing, keys and statistics.

    Args:
        explainer: an :class:`~attnmap.runtime.engine.explainer.Explainer`.
        job: what to compute first (method, options, fit, ``topk`` predictions per explained
            frame); its ``style`` is how frames are drawn (``OverlayStyle()`` when None). The
            keys change it as the session goes.
        settings: :class:`LiveSettings`.
        clock: where stage times go (a new one by default); its time source is the session's.
        on_frame: called with a :class:`~attnmap.runtime.engine.live.stats.LiveFrame` after each
            frame is output; a returned key code is handled like a key press.

    Raises:
        OptionError: the method cannot run on this model, or bad options (checked here, before
            any source is opened).
    """

    def __init__(self, explainer, job: Job | None = None, settings: LiveSettings | None = None, *,
                 clock: StageClock | None = None, on_frame: Callable[[LiveFrame], int | None] | None = None):
        job = job or Job()
        job = dataclasses.replace(job, method=resolve_method(job.method, explainer.meta))
        self.settings = settings or LiveSettings()
        meta = self.meta = explainer.meta
        methods = live_methods(meta, job.method)
        self._engine = FrameEngine(explainer, dataclasses.replace(job, style=None), clock=clock)
        self.clock = self._engine.clock
        self.now = self.clock.now
        self.state = LiveState(method=job.method, options=dict(self._engine.job.options), fit=job.fit,
                               style=job.style or OverlayStyle(), methods=methods, num_layers=meta.num_layers,
                               num_heads=meta.output_heads, fused=meta.head_fusion != "none")
        self.stats = LiveStats(source="", clock=self.clock)
        self.smooth = self.settings.smooth
        self.on_frame = on_frame
        self.stage_ema = {s: 0.0 for s in STAGES}  # seconds, an EMA over frames
        self.last_drawn: np.ndarray | None = None
        self.explanation: Explanation | None = None  # of the last model run
        self.grid: np.ndarray | None = None  # the map drawn (after smoothing)
        self._version = -1  # the state version the map was made at
        self._geom_key = None
        self._engine_version = self.state.version
        self._since_explain = 0
        self._x_buf: np.ndarray | None = None  # the model input, reused frame after frame
        self._annotator = ExplanationAnnotator(self.state.style)
        self._shown: deque = deque(maxlen=_FPS_WINDOW)
        self._note, self._note_until = "", 0.0
        self._base_captured = self._base_dropped = 0  # of sources run before the current one

    # ------------------------------------------------------------------ settings
    @property
    def smooth(self) -> float:
        """EMA weight of the previous map in [0, 1) (checked when set)."""
        return self._smooth

    @smooth.setter
    def smooth(self, value: float) -> None:
        self._smooth = check_smooth(value)

    @property
    def job(self) -> Job:
        """The job the last frame was explained with; the next frame's is rebuilt from the state
        when its version moved (every key or control that alters the map bumps it)."""
        return self._engine.job

    def _current_engine(self) -> FrameEngine:
        if self._engine_version != self.state.version:
            state = self.state
            job = Job(method=state.method, options=method_options(state), fit=state.fit, topk=self._engine.job.topk)
            self._engine = self._engine.with_job(job)
            self._engine_version = state.version
        return self._engine

    def note(self, text: str, seconds: float) -> None:
        """Show ``text`` as the HUD's last line for ``seconds``."""
        self._note, self._note_until = text, self.now() + seconds

    # ------------------------------------------------------------------ statistics
    @property
    def fps(self) -> float:
        """Frames output per second over the last 30."""
        t = self._shown
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    @property
    def latency(self) -> float | None:
        """Capture-to-output latency of the last frame in seconds (None before the first)."""
        return self.stats.records[-1].latency if self.stats.records else None

    def count_source(self, grabber: LatestFrameGrabber) -> None:
        """Fold a stopped grabber's capture counts into the statistics, so that a session run
        over several sources one after the other (a file played in a loop) counts them all."""
        self._base_captured += grabber.captured
        self._base_dropped += grabber.dropped
        self.stats.frames_captured, self.stats.frames_dropped = self._base_captured, self._base_dropped

    # ------------------------------------------------------------------ frames
    def warm_up(self, size: tuple[int, int] | None) -> None:
        """Run one blank frame of ``size`` (w, h) through every stage before the source starts.

        First calls are slow (onnxruntime's first run, OpenCV's colour-map and font set-up:
        together ~100 ms here), and a first frame that slow would be dropped-frame debt. The
        warm-up's stage times are not recorded.
        """
        w, h = size or self.meta.image_size[::-1]
        blank = np.zeros((h, w, 3), np.uint8)
        engine = self._current_engine()
        item = FrameEngine(engine.explainer, engine.job).step(Frame(-1, blank, "warm-up", self.now()))
        if item.error is not None:
            raise item.error
        ex = item.explanation
        self._annotator.annotate(blank, ex.grid, ex.geometry, ex.caption(), hud=self.hud_lines(ex))

    def render(self, frame: Frame) -> tuple[np.ndarray, bool]:
        """Explain ``frame`` when it is due (else reuse the last map) and draw it.

        Due: the first frame, every ``every``-th frame, and any frame after the state changed
        the map or the frame's size or fit changed (a map is never drawn on a frame of another
        geometry). Smoothing blends only maps of the same state and geometry.

        Returns:
            ``(drawn, explained)``: the annotated frame (H, W, 3) BGR uint8, and whether the
            model ran on it.

        Raises:
            Exception: the frame could not be explained (the session stops on it).
        """
        img = frame.image_bgr
        state = self.state
        geom_key = (img.shape[:2], state.fit)
        explained = (self.grid is None or self._version != state.version or geom_key != self._geom_key
                     or self._since_explain >= self.settings.every)
        if explained:
            engine = self._current_engine()
            if self._x_buf is None or self._x_buf.shape[2:] != tuple(self.meta.image_size):
                self._x_buf = np.empty((1, 3, *self.meta.image_size), np.float32)
            item = engine.step(frame, out=self._x_buf)
            if item.error is not None:
                raise item.error
            ex = item.explanation
            grid = ex.grid
            if self.smooth > 0 and self.grid is not None and self._version == state.version \
                    and geom_key == self._geom_key:
                grid = self.smooth * self.grid + (1.0 - self.smooth) * grid
            self.explanation, self.grid, self._geom_key, self._version = ex, grid, geom_key, state.version
            self._since_explain = 0
            for stage in ("preprocess", "inference", "explanation"):
                self._ema(stage, self.clock.last(stage))
            self.stats.frames_explained += 1
        self._since_explain += 1
        with self.clock.stage("overlay"):
            drawn = self.draw(img)
        self._ema("overlay", self.clock.last("overlay"))
        return drawn, explained

    def draw(self, image_bgr: np.ndarray) -> np.ndarray:
        """Draw the current map (and caption, and HUD when on) over ``image_bgr``, a frame of the
        size and fit the map was made for, with the state's style."""
        ex = self.explanation
        if self._annotator.style is not self.state.style:
            self._annotator = ExplanationAnnotator(self.state.style)
        hud = self.hud_lines(ex) if self.settings.hud else ()
        return self._annotator.annotate(image_bgr, self.grid, ex.geometry, ex.caption(), hud=hud)

    def hud_lines(self, ex: Explanation) -> list[str]:
        """The HUD: the lines drawn under the caption (the prediction's line first when the
        style draws no caption), the settings in force, fps, latency and stage timings."""
        state = self.state
        lines = []
        if state.style.label:
            shown = [f"{k}={v}" for k, v in method_options(state).items()
                     if k in ("layer", "start_layer", "head", "head_fusion")]
            lines.append("  ".join([*shown, f"fit={state.fit}"]))  # the caption names the method
        else:
            top = ex.topk[0]
            lines += [f"{top.label} {top.prob:.2f}", state.describe()]
        lat = self.latency
        ms = {s: v * 1e3 for s, v in self.stage_ema.items()}
        lines += [f"{self.fps:.1f} fps  latency {0.0 if lat is None else lat * 1e3:.0f} ms  "
                  f"dropped {self.stats.frames_dropped}",
                  f"pre {ms['preprocess']:.1f}  inf {ms['inference']:.1f}  exp {ms['explanation']:.1f}  "
                  f"draw {ms['overlay']:.1f}  out {ms['output']:.1f} ms"]
        if self._note and self.now() < self._note_until:
            lines.append(self._note)
        return lines

    def process(self, frame: Frame, view: LiveView) -> int:
        """One frame: render it, hand it to ``view``, record its timings, call ``on_frame``.

        Returns:
            The key pressed meanwhile (``on_frame``'s answer wins), or -1.
        """
        started = self.now()
        drawn, explained = self.render(frame)
        with self.clock.stage("output"):
            key = view.show(drawn, frame)
        shown = self.now()
        self._ema("output", self.clock.last("output"))
        self.last_drawn = drawn
        self.stats.frames_processed += 1
        self.stats.records.append(FrameRecord(frame.index, frame.timestamp, started, shown, explained))
        self._shown.append(shown)
        if self.on_frame is not None:
            top = self.explanation.topk[0]
            state = self.state
            returned = self.on_frame(LiveFrame(drawn, frame, self.grid, top.label, top.prob, state.method,
                                               method_options(state), state.fit, state.colormap, explained,
                                               self.stats, self.explanation))
            if returned is not None and returned >= 0:
                key = int(returned)
        return key

    def run(self, grabber: LatestFrameGrabber, view: LiveView, *, max_frames: int | None = None,
            duration: float | None = None) -> str:
        """Take the grabber's newest frames until something ends the run.

        Args:
            grabber: a started grabber (its counts go into the statistics as the run goes).
            view: where frames go and keys come from.
            max_frames: stop after this many processed frames (the session's, in all).
            duration: stop this many seconds after the first frame.

        Returns:
            Why the run ended: ``"end"`` of the source, ``"quit"``, ``"max_frames"`` or
            ``"duration"``.
        """
        self.stats.source = grabber.source.spec
        t_start = None
        while True:
            if duration is not None and t_start is not None and self.now() - t_start >= duration:
                return "duration"
            if self.state.paused:
                if self.handle_key(view.poll(30, self.last_drawn), None, view) == "quit":
                    return "quit"
                continue
            frame = grabber.get(timeout=0.03)
            if frame is None:
                if grabber.finished:
                    return "end"
                if self.handle_key(view.poll(1, None), None, view) == "quit":
                    return "quit"
                continue
            if t_start is None:
                t_start = self.now()
            self.stats.frames_captured = self._base_captured + grabber.captured
            self.stats.frames_dropped = self._base_dropped + grabber.dropped
            key = self.process(frame, view)
            self.stats.duration_s = self.now() - t_start
            if self.handle_key(key, frame, view) == "quit":
                return "quit"
            if max_frames is not None and self.stats.frames_processed >= max_frames:
                return "max_frames"

    # ------------------------------------------------------------------ keys
    def handle_key(self, key: int | None, frame: Frame | None, view: LiveView) -> str | None:
        """Apply one key press: change the state, note it on the HUD, save a snapshot.

        Returns:
            ``"quit"``, ``"snapshot"``, ``"changed"`` or None (no key, or one ignored).
        """
        if key is None or key < 0:
            return None
        if key == ord(" ") and not view.interactive:
            return None  # nothing could resume the pause
        action, note = apply_key(self.state, key)
        if note:
            self.note(note, 2.0)
        if action == "snapshot" and self.last_drawn is not None:
            index = frame.index if frame is not None else self.stats.frames_processed
            path = Path(self.settings.snapshot_dir) / f"attnmap-{time.strftime('%Y%m%d-%H%M%S')}-{index:06d}.png"
            write_image(path, self.last_drawn)
            self.stats.snapshots.append(str(path))
        return action

    def _ema(self, name: str, seconds: float) -> None:
        prev = self.stage_ema[name]
        self.stage_ema[name] = seconds if prev == 0.0 else 0.9 * prev + 0.1 * seconds


__all__ = ["LiveSession", "LiveSettings", "LiveView", "check_smooth", "live_methods"]
