"""The one inference loop behind ``attnmap serve`` and the broadcaster its viewers read.

The loop is a :class:`~attnmap.runtime.engine.live.session.LiveSession` (the one ``attnmap live``
drives: frame engine, latest-frame capture, smoothing, HUD) run in one producer thread, with
the browser in the place of the window: :class:`_PageView` receives every drawn frame,
JPEG-encodes it once and hands the bytes to the :class:`Broadcaster`. The page's controls change
the session's :class:`~attnmap.runtime.engine.live.state.LiveState`, as the live window's keys do
(:mod:`attnmap.runtime.fronts.serve.control`).

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
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import cv2
import numpy as np

from attnmap.runtime.core.errors import EncodeError, OptionError
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.engine import Job
from attnmap.runtime.engine.live.session import LiveSession, LiveSettings
from attnmap.runtime.engine.live.stats import STAGES, LiveFrame
from attnmap.runtime.frames.capture import LatestFrameGrabber
from attnmap.runtime.frames.frame import Frame, Source
from attnmap.runtime.frames.sources import open_source

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
        settings: the session's part (smooth, every, hud), checked
            (:class:`~attnmap.runtime.engine.live.session.LiveSettings`).

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
    settings: LiveSettings = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # smooth, every and hud are the live session's settings, checked as such
        object.__setattr__(self, "settings", LiveSettings(smooth=self.smooth, every=self.every, hud=self.hud))
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


class _PageView:
    """The live session's view in serve: each drawn frame is encoded once and published; no keys
    come from the page (its controls change the state), only ``q`` once the stream stops."""

    interactive = False

    def __init__(self, stream: "StreamLoop"):
        self._stream = stream

    def show(self, drawn: np.ndarray, frame: Frame) -> int:
        self._stream.publish(drawn)
        return self.poll(1, None)

    def poll(self, wait_ms: int, paused: np.ndarray | None) -> int:
        if wait_ms > 1:
            self._stream.stopping.wait(wait_ms / 1000.0)
        return _QUIT if self._stream.stopping.is_set() else -1


class StreamLoop:
    """One producer thread running a live session on a source, publishing JPEG frames.

    Args:
        explainer: an :class:`~attnmap.runtime.engine.explainer.Explainer`.
        source: a source spec (``"0"``, ``"rtsp://..."``, ``"clip.mp4"``) or an open
            :class:`~attnmap.runtime.frames.frame.Source` (played once: it cannot be reopened).
        job: method, options, fit and ``style`` to start with (``OverlayStyle(label=False)``
            when it has none: the page lists the predictions).
        config: :class:`StreamConfig`.
        metrics: a :func:`~attnmap.runtime.fronts.serve.metrics.server_metrics` registry, or None.

    Raises:
        OptionError: the job's method cannot run on this model, or bad options.
    """

    def __init__(self, explainer, source: "str | Source", job: Job | None = None,
                 config: StreamConfig | None = None, metrics=None):
        job = job or Job()
        self.explainer, self.source, self.config, self.metrics = explainer, source, config or StreamConfig(), metrics
        job = dataclasses.replace(job, style=job.style or OverlayStyle(label=False), topk=self.config.topk)
        self.session = LiveSession(explainer, job, self.config.settings, on_frame=self._on_frame)
        self.state = self.session.state
        self.stats = self.session.stats
        self.stats.source = getattr(source, "spec", str(source))
        self.broadcaster = Broadcaster()
        self.stopping = threading.Event()
        self.ended = ""  # "", "end", "error" or "stopped"
        self.error: BaseException | None = None
        self.topk: list[dict[str, Any]] = []
        self.target: str | None = None
        self.last_drawn: np.ndarray | None = None
        self._view = _PageView(self)
        self._interval = 0.0  # seconds between published frames, from max_fps
        self._next_at = 0.0
        self._thread = threading.Thread(target=self._run, name="attnmap-serve-loop", daemon=True)

    # ------------------------------------------------------------------ control
    @property
    def smooth(self) -> float:
        """EMA weight of the previous heatmap (checked when set)."""
        return self.session.smooth

    @smooth.setter
    def smooth(self, value: float) -> None:
        self.session.smooth = value

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
        session, stats = self.session, self.stats
        latency = session.latency
        return {"running": self.running, "ended": self.ended, "error": _reason(self.error),
                "source": stats.source, "frames": stats.frames_processed,
                "frames_dropped": stats.frames_dropped,
                "fps": round(session.fps, 2), "latency_ms": None if latency is None else round(latency * 1e3, 1),
                "stages_ms": {s: round(v * 1e3, 2) for s, v in session.stage_ema.items()},
                "topk": list(self.topk), "target": self.target, "version": self.broadcaster.version}

    # ------------------------------------------------------------------ producer thread
    def publish(self, image_bgr: np.ndarray) -> None:
        """Encode one drawn frame and hand it to the viewers (called by the session's view)."""
        ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:
            raise EncodeError(f"OpenCV could not JPEG-encode a {image_bgr.shape} frame")
        self.last_drawn = image_bgr
        self.broadcaster.publish(buf.tobytes())

    def _on_frame(self, frame: LiveFrame) -> None:
        if frame.explained:
            ex = frame.explanation
            self.topk = [{"index": t.index, "label": t.label, "prob": round(t.prob, 6)} for t in ex.topk]
            self.target = ex.label_of_target
        if self._interval > 0:
            # The frame rate cap waits here, after the frame's timings are taken.
            now = time.perf_counter()
            self._next_at = max(self._next_at + self._interval, now)
            self.stopping.wait(self._next_at - now)
        m = self.metrics
        if m is None:
            return
        m.inc("attnmap_frames_total")
        clock = self.session.clock
        for stage in STAGES:
            if frame.explained or stage in ("overlay", "output"):
                m.observe("attnmap_stage_seconds", clock.last(stage), stage=stage)
        if frame.stats.records:
            m.observe("attnmap_frame_latency_seconds", frame.stats.records[-1].latency)
        dropped = frame.stats.frames_dropped
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
                        self.session.warm_up(src.size)
                        first = False
                    grabber.start()
                    ended = self.session.run(grabber, self._view)
                finally:
                    grabber.stop()
                    self.session.count_source(grabber)
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
