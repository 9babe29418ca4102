"""Per-stage benchmark: where the time of one explained frame goes, against plain inference.

``run_bench`` drives the frame engine's stages one by one on the same frames, ``runs`` times
after ``warmup`` untimed runs, and times each on a stage clock:

======================  ==========================================================
stage                   what is timed (per batch of ``batch_size`` frames)
======================  ==========================================================
decode                  reading the frames (video decode, image file decode)
preprocess              resize, crop, normalise into the model input
inference               the model with its attention outputs (``Explainer.infer``)
explanation             the explanation method on those outputs (``Explainer.maps``)
overlay                 heatmap to image size, colour map, blend, caption
output                  encoding the annotated frames (video: the video writer; images: JPEG)
plain inference         the same model without attention outputs (``infer_plain``)
======================  ==========================================================

The headline figure is the overhead of explaining, ``(inference + explanation) / plain``,
taken per run and then the median. Plain and attention inference alternate their order from
run to run, so a machine getting busier or quieter biases neither.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import cv2
import numpy as np

from attnmap.runtime.core.errors import OptionError, SourceError
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.clock import STAGES as CLOCK_STAGES, StageClock
from attnmap.runtime.engine.engine import FrameEngine, Job
from attnmap.runtime.frames.frame import Frame, Source
from attnmap.runtime.frames.sinks import VideoSink
from attnmap.runtime.frames.sources import open_source

STAGES = CLOCK_STAGES  # decode, preprocess, inference, explanation, overlay, output
SYNTHETIC_SIZE = (640, 480)  # (width, height) of the frame used when no source is given


def run_bench(explainer, source: "str | Path | Source | None" = None, *, runs: int = 20, warmup: int = 3,
              batch_size: int = 1, method: str = "rollout", options: Mapping[str, Any] | None = None,
              fit: str = "crop", colormap: str = "jet") -> dict[str, Any]:
    """Time every stage of explaining frames, and plain inference of the same model.

    Args:
        explainer: a :class:`attnmap.Explainer`.
        source: frames to use: any source spec (a video is read onward and reopened at its
            end; a folder is cycled), an open source, or None for a synthetic 640x480 frame
            stored as JPEG in memory (so that decode still decodes).
        runs: timed runs (>= 1).
        warmup: untimed runs first (session warm-up, allocator, caches).
        batch_size: frames per run.
        method: explanation method.
        options: the method's options.
        fit: preprocessing fit mode.
        colormap: overlay colour map.

    Returns:
        A JSON-able dict: ``model``, ``provider``, ``source``, ``frame_size``, ``batch_size``,
        ``runs``, ``method``; ``stages`` maps each stage (and ``plain_inference``) to
        ``{"median_ms", "p90_ms", "per_frame_ms"}`` (per_frame = median / batch);
        ``ratio`` = median over runs of (inference + explanation) / plain; ``fps`` with the
        frames/s of plain inference, of inference + explanation, and of the whole serial
        pipeline.
    """
    if runs < 1 or warmup < 0 or batch_size < 1:
        raise OptionError(f"runs and batch_size must be >= 1 and warmup >= 0; got runs={runs}, "
                          f"warmup={warmup}, batch_size={batch_size}")
    engine = FrameEngine(explainer, Job(method=method, options=dict(options or {}), fit=fit, topk=1,
                                        style=OverlayStyle(colormap=colormap)), batch_size=batch_size)
    opts = dict(engine.job.options)
    feed = _Feed(source)
    times: dict[str, list[float]] = {s: [] for s in (*STAGES, "plain_inference")}
    ratios: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="attnmap-bench-") as tmp:
            encoder = _Encoder(feed.is_video, Path(tmp), feed.fps)
            for run in range(warmup + runs):
                t = StageClock()
                with t.stage("decode"):
                    frames = [Frame(i, feed.next(), feed.name, 0.0) for i in range(batch_size)]
                with t.stage("preprocess"):
                    batch = engine.prepare(frames)
                if batch.failed:
                    raise batch.failed[0].error
                if run % 2:
                    with t.stage("plain_inference"):
                        explainer.infer_plain(batch.x)
                with t.stage("inference"):
                    outputs = engine.infer(batch)
                if not run % 2:
                    with t.stage("plain_inference"):
                        explainer.infer_plain(batch.x)
                with t.stage("explanation"):
                    items = engine.explain(batch, outputs)
                with t.stage("overlay"):
                    for item in items:
                        engine.draw(item)
                with t.stage("output"):
                    for item in items:
                        if item.error is not None:
                            raise item.error
                        encoder.encode(item.drawn)
                if run >= warmup:
                    for k in times:
                        times[k].append(t.last(k))
                    ratios.append((t.last("inference") + t.last("explanation")) / t.last("plain_inference"))
            encoder.close()
    finally:
        feed.close()

    stages = {k: _stats(v, batch_size) for k, v in times.items()}
    serial_ms = sum(stages[s]["median_ms"] for s in STAGES)
    return {
        "model": explainer.meta.model_name,
        "file": str(getattr(explainer, "path", "")),
        "provider": _provider(explainer),
        "source": feed.name,
        "frame_size": list(feed.size),
        "batch_size": batch_size,
        "runs": runs,
        "warmup": warmup,
        "method": method,
        "options": opts,
        "fit": fit,
        "stages": stages,
        "ratio": round(float(np.median(ratios)), 4),
        "fps": {
            "plain_inference": _fps(stages["plain_inference"]["median_ms"], batch_size),
            "inference_and_explanation": _fps(stages["inference"]["median_ms"] + stages["explanation"]["median_ms"],
                                              batch_size),
            "serial_pipeline": _fps(serial_ms, batch_size),
        },
    }


def format_bench(result: Mapping[str, Any]) -> str:
    """Render a :func:`run_bench` result as a text table."""
    head = (f"{result['model']}  {result['provider']}  source {result['source']} "
            f"{result['frame_size'][0]}x{result['frame_size'][1]}  batch {result['batch_size']}  "
            f"{result['runs']} runs  method {result['method']}")
    lines = [head, f"{'stage':<18}{'median ms':>11}{'p90 ms':>10}{'ms/frame':>10}"]
    for name in (*STAGES, "plain_inference"):
        s = result["stages"][name]
        lines.append(f"{name.replace('_', ' '):<18}{s['median_ms']:>11.2f}{s['p90_ms']:>10.2f}{s['per_frame_ms']:>10.2f}")
    fps = result["fps"]
    lines.append(f"(inference + explanation) / plain = {result['ratio']:.3f}")
    lines.append(f"frames/s: plain {fps['plain_inference']:.1f}, with explanation "
                 f"{fps['inference_and_explanation']:.1f}, whole serial pipeline {fps['serial_pipeline']:.1f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers
class _Feed:
    """Endless decoded frames from a source (reopened at its end), or from an in-memory JPEG."""

    def __init__(self, source):
        self._source: Source | None = None
        self._iter: Iterator | None = None
        self._spec = source
        if source is None:
            w, h = SYNTHETIC_SIZE
            rng = np.random.default_rng(0)
            # Smooth random colours, so that JPEG decoding costs what a photo's would.
            small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
            img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
            self._jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
            self.name, self.size, self.is_video, self.fps = "synthetic", (w, h), False, None
            return
        self._jpeg = None
        self._open()
        try:
            first = next(self._iter).image_bgr
        except StopIteration:
            self._source.close()
            raise SourceError(f"source {self._source.spec!r} yielded no frames to benchmark") from None  # noqa: B904 (StopIteration says nothing)
        self._first = first
        self.name = self._source.spec
        self.size = (first.shape[1], first.shape[0])
        self.is_video = self._source.kind in ("video", "sequence", "camera", "stream")
        self.fps = self._source.fps

    def _open(self) -> None:
        if self._source is None and isinstance(self._spec, Source):
            self._source = self._spec
        else:
            if self._source is not None:
                self._source.close()
            self._source = open_source(self._spec.ref if isinstance(self._spec, Source) else self._spec)
        self._iter = iter(self._source)

    def next(self) -> np.ndarray:
        if self._jpeg is not None:
            return cv2.imdecode(self._jpeg, cv2.IMREAD_COLOR)
        if self._first is not None:
            img, self._first = self._first, None
            return img
        try:
            return next(self._iter).image_bgr
        except StopIteration:
            self._open()
            return next(self._iter).image_bgr

    def close(self) -> None:
        if self._source is not None:
            self._source.close()


class _Encoder:
    """Encodes annotated frames as the matching output would: mp4 for video, JPEG for images."""

    def __init__(self, video: bool, folder: Path, fps: float | None):
        self.video, self.folder, self.fps = video, folder, fps or 25.0
        self.sink: VideoSink | None = None

    def encode(self, img: np.ndarray) -> None:
        if not self.video:
            cv2.imencode(".jpg", img)
            return
        if self.sink is None or self.sink.size != (img.shape[1], img.shape[0]):
            if self.sink is not None:
                self.sink.close(commit=False)
            self.sink = VideoSink(self.folder / "bench.mp4", self.fps, (img.shape[1], img.shape[0]))
        self.sink.write(img)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close(commit=False)


def _stats(seconds: list[float], batch: int) -> dict[str, float]:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    med = float(np.median(ms))
    return {"median_ms": round(med, 4), "p90_ms": round(float(np.percentile(ms, 90)), 4),
            "per_frame_ms": round(med / batch, 4)}


def _fps(ms: float, batch: int) -> float:
    return round(1e3 * batch / ms, 3) if ms > 0 else 0.0


def _provider(explainer) -> str:
    model = getattr(explainer, "model", None)
    return str(getattr(model, "provider", "unknown"))


