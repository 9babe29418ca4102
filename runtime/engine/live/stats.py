"""What a live session reports: per-frame timings, run statistics, and the view handed to ``on_frame``.

All times are on the ``time.perf_counter()`` clock, the one :class:`attnmap.runtime.frames.sources.Frame`
timestamps use, so that capture-to-display latency is one subtraction.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attnmap.runtime.engine.clock import StageClock, summarize_ms as clock_summary
from attnmap.runtime.engine.explainer import Explanation
from attnmap.runtime.frames.frame import Frame

STAGES = ("preprocess", "inference", "explanation", "overlay", "output")
_RECORDS_KEPT = 20_000  # per-frame timings kept for the percentiles (about 11 min at 30 fps)


@dataclass
class FrameRecord:
    """Timings of one processed frame, all on the ``time.perf_counter()`` clock (seconds).

    Attributes:
        index: the frame's index in the source.
        captured: when the frame was decoded / captured.
        started: when the loop took it.
        shown: when it was on screen (or written, or handed to ``on_frame``).
        explained: True when the model ran on this frame (False: the last map was reused).
    """

    index: int
    captured: float
    started: float
    shown: float
    explained: bool

    @property
    def latency(self) -> float:
        """Capture-to-display latency in seconds."""
        return self.shown - self.captured

    @property
    def age(self) -> float:
        """How old the frame was when the loop took it, in seconds."""
        return self.started - self.captured


@dataclass
class LiveFrame:
    """One drawn frame, as passed to a live session's ``on_frame`` (``run_live(on_frame=...)``).

    Attributes:
        image_bgr: the annotated frame (H, W, 3) BGR uint8, as shown or written.
        frame: the source frame it was drawn on.
        grid: (gh, gw) float32 map in [0, 1] that was drawn (after smoothing).
        label: top-1 class name.
        prob: top-1 probability.
        method: the explanation method.
        options: the options the method ran with (including the keys' layer / head choices).
        fit: the fit mode the frame entered the model with.
        colormap: the colour map drawn with.
        explained: True when the model ran on this frame, False when the last map was reused.
        stats: the run's statistics so far.
        explanation: the explanation of the last model run (its top-k, the explained class;
            its ``grid`` is the map before smoothing).
    """

    image_bgr: np.ndarray
    frame: Frame
    grid: np.ndarray
    label: str
    prob: float
    method: str
    options: dict[str, Any]
    fit: str
    colormap: str
    explained: bool
    stats: "LiveStats"
    explanation: Explanation | None = None


@dataclass
class LiveStats:
    """What a live run did and how fast.

    Attributes:
        source: the source spec.
        frames_captured: frames the capture thread read.
        frames_dropped: frames replaced by a newer one before the loop took them.
        frames_processed: frames drawn with a heatmap (shown, written or passed to ``on_frame``).
        frames_explained: frames the model ran on (fewer than processed when ``every`` > 1).
        frames_written: frames in the output video (gaps from dropped frames are filled by
            repeating the last drawn frame, so the file plays in real time).
        duration_s: from the first frame taken to the last shown.
        ended: why the loop stopped: ``"end"`` of stream, ``"quit"``, ``"max_frames"``,
            ``"duration"``, ``"interrupted"`` (Ctrl-C) or ``"error"``.
        out: the output video, if one was written.
        snapshots: snapshot files saved with ``s``.
        records: per-frame timings (the last 20,000).
        clock: the run's stage clock (the frame engine's): per-stage durations, named as in
            :data:`STAGES` (preprocess, inference and explanation only on frames the model ran on).
    """

    source: str
    frames_captured: int = 0
    frames_dropped: int = 0
    frames_processed: int = 0
    frames_explained: int = 0
    frames_written: int = 0
    duration_s: float = 0.0
    ended: str = ""
    out: str | None = None
    snapshots: list[str] = field(default_factory=list)
    records: deque = field(default_factory=lambda: deque(maxlen=_RECORDS_KEPT), repr=False)
    clock: StageClock = field(default_factory=StageClock, repr=False)

    @property
    def stage_s(self) -> dict[str, list[float]]:
        """Per-stage durations in seconds, one list per name in :data:`STAGES`."""
        return {s: self.clock.durations(s) for s in STAGES}

    @property
    def fps(self) -> float:
        """Processed frames per second."""
        return self.frames_processed / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary: counts, fps, and median / p90 / max of latency, age and stages in ms."""
        return {
            "source": self.source, "ended": self.ended, "out": self.out, "snapshots": list(self.snapshots),
            "frames_captured": self.frames_captured, "frames_dropped": self.frames_dropped,
            "frames_processed": self.frames_processed, "frames_explained": self.frames_explained,
            "frames_written": self.frames_written, "duration_s": round(self.duration_s, 4),
            "fps": round(self.fps, 3),
            "latency_ms": summarize_ms([r.latency for r in self.records]),
            "age_ms": summarize_ms([r.age for r in self.records]),
            "stages_ms": {s: summarize_ms(v) for s, v in self.stage_s.items()},
        }


def summarize_ms(values) -> dict[str, float]:
    """Median, p90 and max in milliseconds (and the count) of durations given in seconds,
    keyed ``median``, ``p90``, ``max``, ``n`` (the stage clock's summary, in this report's keys)."""
    return {key.removesuffix("_ms"): value for key, value in clock_summary(values).items()}
