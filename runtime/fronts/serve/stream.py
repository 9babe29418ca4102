"""The one inference loop behind ``attnmap serve`` and the broadcaster its viewers read.

The loop is the live view's (:mod:`attnmap.runtime.fronts.live.loop`: frame engine, latest-frame
capture, smoothing, HUD) run in one producer thread, with the browser in the place of the
window: :class:`_PageWindow` receives every drawn frame, JPEG-encodes it once and hands the
bytes to the :class:`Broadcaster`. The page's controls change the same :class:`LiveState` the
live window's keys change (:mod:`attnmap.runtime.fronts.serve.control`).

Viewers never queue: each one waits for the broadcaster's version to move past the last frame
it sent and then takes the newest frame. A viewer whose connection is slow is still sending an
old frame while newer ones are published; it skips them (counted) and the producer, which never
waits for anyone, goes on. A file source plays in a loop, as a demo on a screenless box is
expected to; a camera or stream that ends stops the stream (the API keeps answering).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import cv2
import numpy as np

from attnmap.runtime.core.errors import EncodeError, OptionError, suggest
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.engine import FrameEngine, Job
from attnmap.runtime.frames.capture import LatestFrameGrabber
from attnmap.runtime.frames.frame import Source
from attnmap.runtime.frames.sources import open_source
from attnmap.runtime.fronts.live.loop import LiveConfig, LiveLoop
from attnmap.runtime.fronts.live.state import LiveState
from attnmap.runtime.fronts.live.stats import STAGES, LiveFrame, LiveStats
from attnmap.runtime.methods import METHODS, runs_on

_QUIT = ord("q")


@dataclass(frozen=True)
class StreamConfig:
    """How the stream loop runs.

    Attributes:
        smooth: EMA weight of the previous heatmap in [0, 1) (the page can change it).
        every: run the model on every k-th frame, redrawing the last map in between.
        hud: draw label, fps and stage timings on the frames.
        topk: predictions the page shows.
        jpeg_quality: JPEG quality of the stream, 1-100.
        pace: play a file at its fps (default: yes when known), so it behaves like a camera.
        loop_file: play a file source again from the start when it ends.
        max_fps: publish at most this many frames a second; None: as fast as the source
            delivers. Sources without a frame rate (an image, a folder) get 5 by default, so a
            still image is not explained hundreds of times a second.

    Raises:
        OptionError: a value out of range.
    """

    smooth: float = 0.0
    every: int = 1
    hud: bool = True
    topk: int = 5
    jpeg_quality: int = 80
    pace: bool | None = None
    loop_file: bool = True
    max_fps: float | None = None

    def __post_init__(self) -> None:
        LiveConfig(show=False, smooth=self.smooth, every=self.every)  # the live view's checks
        if self.max_fps is not None and (isinstance(self.max_fps, bool) or not self.max_fps > 0):
            raise OptionError(f"max_fps must be a number > 0 (frames a second) or None; got {self.max_fps!r}")
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 1:
            raise OptionError(f"topk must be an integer >= 1; got {self.topk!r}")
        if isinstance(self.jpeg_quality, bool) or not isinstance(self.jpeg_quality, int) \
                or not 1 <= self.jpeg_quality <= 100:
            raise OptionError(f"jpeg_quality must be an integer in [1, 100]; got {self.jpeg_quality!r}")


class Broadcaster:
    """The newest JPEG frame and its version number, for any number of async viewers.

    :meth:`publish` is called from the producer thread and never blocks on a viewer;
    :meth:`frames` is an async iterator each viewer runs in the server's event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.version = 0
        self.jpeg: bytes | None = None
        self.closed = False
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self, aloop: asyncio.AbstractEventLoop) -> None:
        """Attach the event loop viewers run in (the server calls this at start-up)."""
        self._aloop = aloop
        self._event = asyncio.Event()

    def publish(self, jpeg: bytes) -> int:
        """Make ``jpeg`` the newest frame; return its version (1, 2, ...)."""
        with self._lock:
            self.version += 1
            self.jpeg = jpeg
            version = self.version
        self._wake()
        return version

    def close(self) -> None:
        """End every viewer's stream after the frame it is sending (idempotent)."""
        self.closed = True
        self._wake()

    def latest(self) -> tuple[int, bytes | None]:
        """``(version, jpeg)`` of the newest frame (``(0, None)`` before the first)."""
        with self._lock:
            return self.version, self.jpeg

    def _wake(self) -> None:
        aloop = self._aloop
        if aloop is not None and not aloop.is_closed():
            try:
                aloop.call_soon_threadsafe(self._notify)
            except RuntimeError:  # the loop closed between the check and the call
                pass

    def _notify(self) -> None:
        # Runs in the event loop: wake everyone waiting on the current event, arm a new one.
        event, self._event = self._event, asyncio.Event()
        if event is not None:
            event.set()

    async def frames(self, after: int = 0) -> AsyncIterator[tuple[int, bytes, int]]:
        """Yield ``(version, jpeg, skipped)`` for each newer frame, always the newest one.

        Args:
            after: the version the viewer already has.

        Yields:
            The frame's version, its JPEG bytes, and how many versions were skipped since the
            last one yielded (frames published while this viewer was busy).
        """
        while True:
            event = self._event
            version, jpeg = self.latest()
            if version > after and jpeg is not None:
                skipped = version - after - 1 if after else 0
                after = version
                yield version, jpeg, skipped
                continue
            if self.closed or event is None:
                return
            await event.wait()


class _PageWindow:
    """Stands in for :class:`~attnmap.runtime.frames.sinks.Window` in the live loop: each drawn
    frame is encoded once and published; :meth:`poll` answers ``q`` once the stream stops."""

    def __init__(self, stream: "StreamLoop"):
        self._stream = stream
        self._last: np.ndarray | None = None

    def show(self, image_bgr: np.ndarray, wait_ms: int = 1) -> int:
        if image_bgr is not self._last:  # a paused loop shows the same frame again: no re-encode
            self._last = image_bgr
            self._stream.publish(image_bgr)
        return self.poll(wait_ms)

    def poll(self, wait_ms: int = 1) -> int:
        if wait_ms > 1:
            self._stream.stopping.wait(wait_ms / 1000.0)
        return _QUIT if self._stream.stopping.is_set() else -1

    def close(self) -> None:
        pass


class _ServeLoop(LiveLoop):
    """The live loop, keeping the top-k of each explained frame (the live window shows one)."""

    topk = 5
    on_item = None

    def _engine(self):
        engine = super()._engine()
        if engine.job.topk != self.topk:
            engine = self.engine = engine.with_job(dataclasses.replace(engine.job, topk=self.topk))
        return _RecordingEngine(engine, self.on_item)


class _RecordingEngine:
    """A FrameEngine that hands each :meth:`step` result to a callback too."""

    def __init__(self, engine: FrameEngine, on_item):
        self._engine, self._on_item = engine, on_item

    def step(self, frame, out=None):
        item = self._engine.step(frame, out=out)
        if self._on_item is not None and item.error is None:
            self._on_item(item)
        return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class StreamLoop:
    """One producer thread explaining a source with the live loop, publishing JPEG frames.

    Args:
        explainer: an :class:`~attnmap.runtime.engine.explainer.Explainer`.
        source: a source spec (``"0"``, ``"rtsp://..."``, ``"clip.mp4"``) or an open
            :class:`~attnmap.runtime.frames.frame.Source` (played once: it cannot be reopened).
        job: method, options, fit and ``style`` to start with.
        config: :class:`StreamConfig`.
        metrics: a :func:`~attnmap.runtime.fronts.serve.metrics.server_metrics` registry, or None.

    Raises:
        OptionError: the job's method cannot run on this model, or bad options.
    """

    def __init__(self, explainer, source: "str | Source", job: Job | None = None,
                 config: StreamConfig | None = None, metrics=None):
        job = job or Job()
        self.explainer, self.source, self.config, self.metrics = explainer, source, config or StreamConfig(), metrics
        meta = explainer.meta
        methods = [n for n, m in METHODS.items() if runs_on(n, meta) and (not m.reruns_model or n == job.method)]
        if job.method not in methods:
            raise OptionError(f"method {job.method!r} cannot run on this model; choose from {', '.join(methods)}."
                              + suggest(str(job.method), methods))
        engine = FrameEngine(explainer, dataclasses.replace(job, style=None, topk=self.config.topk))
        self.state = LiveState(method=job.method, options=dict(engine.job.options), fit=job.fit,
                               style=job.style or OverlayStyle(label=False), methods=tuple(methods),
                               num_layers=meta.num_layers, num_heads=meta.output_heads,
                               fused=meta.head_fusion != "none")
        self.stats = LiveStats(source=getattr(source, "spec", str(source)), clock=engine.clock)
        live = LiveConfig(show=False, smooth=self.config.smooth, every=self.config.every, hud=self.config.hud)
        self.loop = _ServeLoop(engine, self.state, self.stats, live, win=_PageWindow(self),
                               recorder=None, on_frame=self._on_frame)
        self.loop.message = ""  # the live window's key reminder means nothing in a browser
        self.loop.topk, self.loop.on_item = self.config.topk, self._on_item
        self.broadcaster = Broadcaster()
        self.stopping = threading.Event()
        self.ended = ""  # "", "end", "error" or "stopped"
        self.error: BaseException | None = None
        self.topk: list[dict[str, Any]] = []
        self.target: str | None = None
        self.last_drawn: np.ndarray | None = None
        self._dropped_before = 0
        self._interval = 0.0  # seconds between published frames, from max_fps
        self._next_at = 0.0
        self._thread = threading.Thread(target=self._run, name="attnmap-serve-loop", daemon=True)

    # ------------------------------------------------------------------ control
    @property
    def smooth(self) -> float:
        """EMA weight of the previous heatmap."""
        return self.loop.smooth

    @smooth.setter
    def smooth(self, value: float) -> None:
        LiveConfig(show=False, smooth=value)  # checks the range
        self.loop.smooth = float(value)

    def start(self) -> "StreamLoop":
        """Start the producer thread."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the loop, release the source and end every viewer's stream; True once stopped."""
        self.stopping.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self.broadcaster.close()
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        """True while the producer thread is alive."""
        return self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        """What the page shows: frame counts, fps, latency, the top-k, why the loop ended."""
        loop, stats = self.loop, self.stats
        times = loop.fps_times
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        latency = stats.records[-1].latency if stats.records else None
        return {"running": self.running, "ended": self.ended, "error": _reason(self.error),
                "source": stats.source, "frames": stats.frames_processed,
                "frames_dropped": self._dropped_before + stats.frames_dropped,
                "fps": round(fps, 2), "latency_ms": None if latency is None else round(latency * 1e3, 1),
                "stages_ms": {s: round(v * 1e3, 2) for s, v in loop.stage_ema.items()},
                "topk": list(self.topk), "target": self.target, "version": self.broadcaster.version}

    # ------------------------------------------------------------------ producer thread
    def publish(self, image_bgr: np.ndarray) -> None:
        """Encode one drawn frame and hand it to the viewers (called by the loop's window)."""
        ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:
            raise EncodeError(f"OpenCV could not JPEG-encode a {image_bgr.shape} frame")
        self.last_drawn = image_bgr
        self.broadcaster.publish(buf.tobytes())

    def _on_item(self, item) -> None:
        ex = item.explanation
        self.topk = [{"index": t.index, "label": t.label, "prob": round(t.prob, 6)} for t in ex.topk]
        self.target = ex.label_of_target

    def _on_frame(self, frame: LiveFrame) -> None:
        if self._interval > 0:
            # The frame rate cap waits here, after the frame's timings are taken.
            now = time.perf_counter()
            self._next_at = max(self._next_at + self._interval, now)
            self.stopping.wait(self._next_at - now)
        m = self.metrics
        if m is None:
            return
        m.inc("attnmap_frames_total")
        clock = self.loop.engine.clock
        for stage in STAGES:
            if frame.explained or stage in ("overlay", "output"):
                m.observe("attnmap_stage_seconds", clock.last(stage), stage=stage)
        if frame.stats.records:
            m.observe("attnmap_frame_latency_seconds", frame.stats.records[-1].latency)
        dropped = self._dropped_before + frame.stats.frames_dropped
        seen = m.value("attnmap_frames_dropped_total")
        if dropped > seen:
            m.inc("attnmap_frames_dropped_total", dropped - seen)

    def _run(self) -> None:
        first = True
        try:
            while not self.stopping.is_set():
                src = self.source if isinstance(self.source, Source) else open_source(self.source)
                grabber = LatestFrameGrabber(src, pace=self.config.pace)
                max_fps = self.config.max_fps or (None if src.fps or src.is_live else 5.0)
                self._interval = 1.0 / max_fps if max_fps else 0.0
                try:
                    if first:
                        self.loop.warm_up(src.size)
                        first = False
                    grabber.start()
                    ended = self.loop.run(grabber, None, None)
                finally:
                    grabber.stop()
                    self._dropped_before += grabber.dropped
                    self.stats.frames_dropped = 0
                if grabber.error is not None:
                    raise grabber.error
                if ended == "quit":
                    self.ended = "stopped"
                    return
                if src.is_live or isinstance(self.source, Source) or not self.config.loop_file:
                    self.ended = "end"
                    return
                # A file: play it again from the start.
        except Exception as exc:  # noqa: BLE001 - reported by status() and /healthz, never a dead server
            self.error, self.ended = exc, "error"
        finally:
            self.broadcaster.close()


def _reason(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


__all__ = ["Broadcaster", "StreamConfig", "StreamLoop"]
