"""Exact counters and histograms, written out in the Prometheus text format (version 0.0.4).

A small writer rather than ``prometheus_client``: the server needs three families (frames,
per-stage latency, requests by status), every value must be exact (a histogram's buckets are
plain counts, its ``_sum`` the exact sum), and the base runtime gains no dependency. Every
update takes one lock, so the producer thread and the request handlers may update at once;
:meth:`Registry.render` reads a consistent snapshot.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

# Seconds: from 1 ms (a cached JPEG) to 10 s (a perturbation method on a big model).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2 ** 53 else repr(float(value))


@dataclass
class _Family:
    name: str
    help: str
    kind: str  # "counter", "gauge" or "histogram"
    label_names: tuple[str, ...]
    buckets: tuple[float, ...] = ()
    values: dict = field(default_factory=dict)  # label values -> float, or [bucket counts..., sum, count]


class Registry:
    """Named metric families, updated through :meth:`inc`, :meth:`set` and :meth:`observe`.

    Example::

        reg = Registry()
        reg.counter("attnmap_frames_total", "Frames explained and published.")
        reg.inc("attnmap_frames_total")
        text = reg.render()
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}

    # ------------------------------------------------------------------ declaring
    def counter(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        """Declare a counter (a ``_total`` name, by convention)."""
        self._declare(_Family(name, help, "counter", tuple(labels)))

    def gauge(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        """Declare a gauge."""
        self._declare(_Family(name, help, "gauge", tuple(labels)))

    def histogram(self, name: str, help: str, labels: tuple[str, ...] = (),
                  buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        """Declare a histogram with these upper bounds (``+Inf`` is added)."""
        if list(buckets) != sorted(set(buckets)):
            raise ValueError(f"histogram {name}: buckets must be increasing and distinct; got {buckets}")
        self._declare(_Family(name, help, "histogram", tuple(labels), tuple(float(b) for b in buckets)))

    def _declare(self, family: _Family) -> None:
        with self._lock:
            if family.name in self._families:
                raise ValueError(f"metric {family.name!r} is declared twice")
            self._families[family.name] = family

    # ------------------------------------------------------------------ updating
    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0) to a counter."""
        if amount < 0:
            raise ValueError(f"counter {name}: cannot decrease (amount {amount})")
        fam, key = self._key(name, labels, ("counter", "gauge"))
        with self._lock:
            fam.values[key] = fam.values.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        fam, key = self._key(name, labels, ("gauge",))
        with self._lock:
            fam.values[key] = float(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation (seconds, for the latency histograms)."""
        fam, key = self._key(name, labels, ("histogram",))
        value = float(value)
        with self._lock:
            row = fam.values.get(key)
            if row is None:
                row = fam.values[key] = [0] * len(fam.buckets) + [0.0, 0]
            for i, bound in enumerate(fam.buckets):
                if value <= bound:
                    row[i] += 1
            row[-2] += value
            row[-1] += 1

    def value(self, name: str, **labels: str) -> float:
        """A counter's or gauge's value (0 when never set); a histogram's observation count."""
        fam, key = self._key(name, labels, ("counter", "gauge", "histogram"))
        with self._lock:
            got = fam.values.get(key)
        if got is None:
            return 0.0
        return float(got[-1]) if fam.kind == "histogram" else float(got)

    def _key(self, name: str, labels: dict[str, str], kinds: tuple[str, ...]) -> tuple[_Family, tuple[str, ...]]:
        fam = self._families.get(name)
        if fam is None or fam.kind not in kinds:
            raise KeyError(f"no {' or '.join(kinds)} called {name!r} is declared")
        if set(labels) != set(fam.label_names):
            raise KeyError(f"metric {name!r} takes labels {fam.label_names}; got {tuple(labels)}")
        return fam, tuple(str(labels[n]) for n in fam.label_names)

    # ------------------------------------------------------------------ exposition
    def render(self) -> str:
        """Every family in the Prometheus text format 0.0.4 (``text/plain; version=0.0.4``).

        Histograms are cumulative: the bucket ``le="b"`` counts observations <= b, ``le="+Inf"``
        equals ``_count``.
        """
        lines: list[str] = []
        with self._lock:
            for fam in self._families.values():
                lines.append(f"# HELP {fam.name} {fam.help}")
                lines.append(f"# TYPE {fam.name} {fam.kind}")
                if fam.kind != "histogram":
                    rows = fam.values.items() if fam.values or fam.label_names else [((), 0.0)]
                    for key, val in sorted(rows):
                        lines.append(f"{fam.name}{_labels(fam.label_names, key)} {_number(val)}")
                    continue
                hrows = fam.values.items() if fam.values or fam.label_names else \
                    [((), [0] * len(fam.buckets) + [0.0, 0])]
                for key, row in sorted(hrows):
                    for bound, count in zip(fam.buckets, row):
                        le = f'le="{_number(bound)}"'
                        lines.append(f"{fam.name}_bucket{_labels(fam.label_names, key, le)} {count}")
                    inf = _labels(fam.label_names, key, 'le="+Inf"')
                    lines.append(f"{fam.name}_bucket{inf} {row[-1]}")
                    lines.append(f"{fam.name}_sum{_labels(fam.label_names, key)} {_number(row[-2])}")
                    lines.append(f"{fam.name}_count{_labels(fam.label_names, key)} {row[-1]}")
        return "\n".join(lines) + "\n"


def server_metrics() -> Registry:
    """The families ``attnmap serve`` reports (see the README's metrics table)."""
    reg = Registry()
    reg.counter("attnmap_frames_total", "Frames the stream loop explained, drew and JPEG-encoded.")
    reg.counter("attnmap_frames_dropped_total", "Source frames replaced by a newer one before the loop took them.")
    reg.counter("attnmap_viewer_frames_skipped_total",
                "Stream frames a viewer never received because a newer one was ready when it could take one.")
    reg.gauge("attnmap_stream_viewers", "MJPEG viewers connected now.")
    reg.histogram("attnmap_stage_seconds", "Time per stream-loop stage and frame.", ("stage",))
    reg.histogram("attnmap_frame_latency_seconds", "Capture-to-published latency of stream frames.")
    reg.counter("attnmap_http_requests_total", "HTTP requests answered, by route and status code.",
                ("route", "status"))
    reg.counter("attnmap_http_client_disconnects_total",
                "Requests whose client went away before they were read (not counted as answered).", ("route",))
    reg.histogram("attnmap_http_request_seconds", "Time to answer an HTTP request (streams: to first byte).",
                  ("route",))
    return reg
