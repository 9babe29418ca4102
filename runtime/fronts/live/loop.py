"""The live view: a camera (or a video played in real time) -> heatmap in a window or a file.

The work per frame (scheduling, smoothing, drawing, keys, statistics) is the
:class:`~attnmap.runtime.engine.live.session.LiveSession`'s; this front opens the source, the
window and the recorder, and hands the session a view of them.

Keys in the window (or returned by ``on_frame``): ``m`` method, ``[`` ``]`` layer, ``h`` head
(or head fusion), ``c`` colour map, ``f`` fit mode, space pause, ``s`` snapshot, ``q``/Esc quit.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from attnmap.runtime.core.errors import OptionError
from attnmap.runtime.engine.clock import StageClock
from attnmap.runtime.engine.engine import Job
from attnmap.runtime.engine.live.session import LiveSession, LiveSettings
from attnmap.runtime.engine.live.stats import LiveFrame, LiveStats
from attnmap.runtime.frames.capture import LatestFrameGrabber
from attnmap.runtime.frames.frame import Frame, Source
from attnmap.runtime.frames.sinks import RealTimeRecorder, Window, check_display
from attnmap.runtime.frames.sources import open_source


@dataclass(frozen=True)
class LiveConfig:
    """How a live run shows, records and stops.

    Attributes:
        show: draw in a window. Without a display this raises before any window is created
            (OpenCV's Qt would otherwise abort the process).
        out: also write the annotated stream to this video file (e.g. ``live.mp4``).
        smooth: EMA weight of the previous heatmap in [0, 1); 0 disables smoothing.
        every: run the model on every k-th processed frame, reusing the last map in between.
        hud: draw the HUD (settings, fps, latency, stage timings) under the caption.
        max_frames: stop after this many processed frames.
        duration: stop after this many seconds.
        pace: play non-live sources at their fps (default: yes when the fps is known), so a
            video file behaves like a camera.
        out_fps: frame rate of ``out`` (default: the source's, else 30).
        snapshot_dir: folder for ``s`` snapshots (PNG).
        window: window title.
        settings: the session's part of the above (smooth, every, hud, snapshot_dir), checked
            (:class:`~attnmap.runtime.engine.live.session.LiveSettings`).

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
    settings: LiveSettings = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The session's part (smooth, every, hud, snapshot_dir) is checked as the session's settings.
        object.__setattr__(self, "settings", LiveSettings(smooth=self.smooth, every=self.every, hud=self.hud,
                                                          snapshot_dir=self.snapshot_dir))
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
        # The HUD shows one prediction: the engine keeps one.
        session = LiveSession(explainer, dataclasses.replace(job, topk=1), config.settings, clock=clock,
                              on_frame=on_frame)
        if config.show:
            check_display()
    except BaseException:
        if isinstance(source, Source):
            source.close()  # the caller handed it over; it is released on every path
        raise
    src = source if isinstance(source, Source) else open_source(source)
    stats = session.stats
    grabber = LatestFrameGrabber(src, pace=config.pace)
    view = _WindowView(None, None)
    try:
        if config.show:
            view.win = Window(config.window)
            # A reminder of the keys for the first seconds in a window (the full list: KEY_HELP).
            session.note("keys: m [ ] h c f space s q", 5.0)
        if config.out is not None:
            fps = config.out_fps or src.fps or 30.0
            view.recorder = RealTimeRecorder(config.out, fps, by_index=not src.is_live and src.fps is not None
                                             and config.out_fps is None)
        session.warm_up(src.size)
        grabber.start()
        try:
            stats.ended = session.run(grabber, view, max_frames=config.max_frames, duration=config.duration)
        except KeyboardInterrupt:
            # Ctrl-C is how a headless camera run is stopped: finish the recording, report.
            stats.ended = "interrupted"
    finally:
        grabber.stop()
        session.count_source(grabber)
        if view.win is not None:
            view.win.close()
        if view.recorder is not None:
            frames = view.recorder.frames
            committed = view.recorder.close()
            stats.out = None if committed is None else str(committed)
            stats.frames_written = frames
    if grabber.error is not None:
        stats.ended = "error"
        raise grabber.error
    return stats


class _WindowView:
    """The live session's view here: an OpenCV window (keys, pause) and / or a recorder."""

    def __init__(self, win: Window | None, recorder: RealTimeRecorder | None):
        self.win, self.recorder = win, recorder

    @property
    def interactive(self) -> bool:
        return self.win is not None

    def show(self, drawn: np.ndarray, frame: Frame) -> int:
        key = -1
        if self.win is not None:
            key = self.win.show(drawn)
        if self.recorder is not None:
            self.recorder.write(drawn, frame)
        return key

    def poll(self, wait_ms: int, paused: np.ndarray | None) -> int:
        if self.win is not None:
            if paused is not None:
                return self.win.show(paused, wait_ms)
            return self.win.poll(wait_ms)
        if paused is not None:
            time.sleep(wait_ms / 1000.0)
        return -1


__all__ = ["LiveConfig", "LiveFrame", "LiveStats", "run_live"]
