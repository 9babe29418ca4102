"""One stage clock for every front: how long each stage of each frame took.

The frame engine times its stages on a :class:`StageClock`; offline explain, live and bench
read the same clock, so a stage is called the same and measured the same way everywhere.
The clock is thread-safe (the inference threads of the engine add to it at once) and its
time source can be replaced (``now=``), so tests drive it with a fake clock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
import contextlib
from typing import Callable

import numpy as np

# The engine's stages, in the order a frame passes them.
STAGES = ("decode", "preprocess", "inference", "explanation", "overlay", "output")
_KEPT = 20_000  # durations kept per stage for the percentiles (about 11 minutes at 30 fps)


class StageClock:
    """Per-stage durations (seconds): the last ``keep`` of each, plus running totals and counts.

    Args:
        now: the time source, ``time.perf_counter`` by default.
        keep: durations kept per stage for medians and percentiles (totals count all).
    """

    def __init__(self, now: Callable[[], float] = time.perf_counter, keep: int = _KEPT):
        self.now = now
        self._keep = int(keep)
        self._lock = threading.Lock()
        self._recent: dict[str, deque] = {}
        self._total: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def add(self, stage: str, seconds: float) -> None:
        """Record one duration of ``stage``."""
        with self._lock:
            if stage not in self._recent:
                self._recent[stage] = deque(maxlen=self._keep)
                self._total[stage] = 0.0
                self._count[stage] = 0
            self._recent[stage].append(seconds)
            self._total[stage] += seconds
            self._count[stage] += 1

    def stage(self, name: str) -> "_Timed":
        """Time the ``with`` block as one duration of stage ``name`` (also when it raises)."""
        return _Timed(self, name)

    def stages(self) -> list[str]:
        """The stages recorded so far, in :data:`STAGES` order, then others in first-seen order."""
        with self._lock:
            seen = list(self._recent)
        return [s for s in STAGES if s in seen] + [s for s in seen if s not in STAGES]

    def durations(self, stage: str) -> list[float]:
        """The kept durations of ``stage`` in seconds (empty if never recorded)."""
        with self._lock:
            return list(self._recent.get(stage, ()))

    def last(self, stage: str) -> float:
        """The latest duration of ``stage`` in seconds (0.0 if never recorded)."""
        with self._lock:
            d = self._recent.get(stage)
            return d[-1] if d else 0.0

    def total(self, stage: str) -> float:
        """Seconds spent in ``stage`` over the whole run."""
        with self._lock:
            return self._total.get(stage, 0.0)

    def count(self, stage: str) -> int:
        """How many durations of ``stage`` were recorded over the whole run."""
        with self._lock:
            return self._count.get(stage, 0)

    def totals(self) -> dict[str, float]:
        """Stage -> seconds over the whole run."""
        return {s: self.total(s) for s in self.stages()}

    def summary(self) -> dict[str, dict[str, float]]:
        """Stage -> :func:`summarize_ms` of its kept durations plus ``"total_s"`` (JSON-able)."""
        return {s: {**summarize_ms(self.durations(s)), "total_s": round(self.total(s), 6)}
                for s in self.stages()}


class _Timed:
    """The context manager of :meth:`StageClock.stage` (a class: a generator-based one costs
    several times more per frame)."""

    __slots__ = ("_clock", "_name", "_t0")

    def __init__(self, clock: StageClock, name: str):
        self._clock, self._name = clock, name

    def __enter__(self) -> None:
        self._t0 = self._clock.now()

    def __exit__(self, *exc) -> bool:
        self._clock.add(self._name, self._clock.now() - self._t0)
        return False


class NullClock(StageClock):
    """A stage clock that records nothing: for single calls whose stage times nobody reads
    (``Explainer.explain``), so that they pay for no timing."""

    def add(self, stage: str, seconds: float) -> None:
        return None

    def stage(self, name: str):
        return _NOTHING


_NOTHING = contextlib.nullcontext()


def summarize_ms(seconds, frames: int = 1) -> dict[str, float]:
    """The one timing summary every front reports: durations given in seconds, in milliseconds.

    Args:
        seconds: durations in seconds (each one run of a stage).
        frames: frames each duration covers (a batch), for ``per_frame_ms``.

    Returns:
        ``{"median_ms", "p90_ms", "max_ms", "per_frame_ms", "n"}``: median, 90th percentile and
        maximum in ms (rounded to 0.1 microsecond), the median per frame, and the count; all 0
        for no durations.
    """
    v = np.asarray(list(seconds), dtype=np.float64) * 1e3
    if v.size == 0:
        return {"median_ms": 0.0, "p90_ms": 0.0, "max_ms": 0.0, "per_frame_ms": 0.0, "n": 0}
    med = float(np.median(v))
    return {"median_ms": round(med, 4), "p90_ms": round(float(np.percentile(v, 90)), 4),
            "max_ms": round(float(v.max()), 4), "per_frame_ms": round(med / max(1, int(frames)), 4),
            "n": int(v.size)}
