"""Per-stage benchmark: where the time of one explained frame goes, against plain inference.

``run_bench`` runs the frame engine's batch step (``FrameEngine.explain_batch``, the step
every front uses) on the same frames, ``runs`` times after ``warmup`` untimed runs, and reads
each stage's time from the engine's stage clock:

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
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np

from attnmap.runtime.core.errors import OptionError, SourceError
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.clock import STAGES as CLOCK_STAGES, StageClock, summarize_ms
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
        :func:`~attnmap.runtime.engine.clock.summarize_ms` (``median_ms``, ``p90_ms``, ``max_ms``,
        ``per_frame_ms`` = median / batch, ``n``);
        ``ratio`` = median over runs of (inference + explanation) / plain; ``fps`` with the
        frames/s of plain inference, of inference + explanation, and of the whole serial
        pipeline.
    """
    if runs < 1 or warmup < 0 or batch_size < 1:
        raise OptionError(f"runs and batch_size must be >= 1 and warmup >= 0; got runs={runs}, "
                          f"warmup={warmup}, batch_size={batch_size}")
    t = StageClock()
    engine = FrameEngine(explainer, Job(method=method, options=dict(options or {}), fit=fit, topk=1,
                                        style=OverlayStyle(colormap=colormap)), batch_size=batch_size, clock=t)
    opts = dict(engine.job.options)
    feed = _Feed(source)
    times: dict[str, list[float]] = {s: [] for s in (*STAGES, "plain_inference")}
    ratios: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="attnmap-bench-") as tmp:
            encoder = _Encoder(feed.is_video, Path(tmp), feed.fps)
            for run in range(warmup + runs):
                before = t.totals()
                with t.stage("decode"):
                    frames = [Frame(i, feed.next(), feed.name, 0.0) for i in range(batch_size)]
                # plain inference on the same input, before the step or after it in turn
                x, _ = explainer.preprocess([f.image_bgr for f in frames], fit=engine.job.fit)
                if run % 2:
                    with t.stage("plain_inference"):
                        explainer.infer_plain(x)
                items = engine.explain_batch(frames)  # preprocess, inference, explanation, overlay
                if not run % 2:
                    with t.stage("plain_inference"):
                        explainer.infer_plain(x)
                with t.stage("output"):
                    for item in items:
                        if item.error is not None:
                            raise item.error
                        encoder.encode(item.drawn)
                if run >= warmup:
                    took = _took(t, before)
                    for k in times:
                        times[k].append(took.get(k, 0.0))
                    ratios.append((took["inference"] + took["explanation"]) / took["plain_inference"])
            encoder.close()
    finally:
        feed.close()

    stages = {k: summarize_ms(v, batch_size) for k, v in times.items()}
    serial_ms = sum(stages[s]["median_ms"] for s in STAGES)
    return {
        "model": explainer.meta.model_name,
        "file": str(getattr(explainer, "path", "")),
        "provider": getattr(explainer, "provider", "unknown"),
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


# --------------------------------------------------------------------------- compare
COMPARE_STAGES = ("preprocess", "inference", "explanation", "overlay")


def run_compare(explainers: Sequence, source: "str | Path | Source | None" = None, *, runs: int = 20,
                warmup: int = 3, batch_size: int = 1, method: str = "rollout",
                options: Mapping[str, Any] | None = None, fit: str = "crop") -> dict[str, Any]:
    """The same frames through several files (precisions, head fusions), side by side.

    Each run decodes ``batch_size`` frames once, then every file preprocesses, infers,
    explains and draws them, the files taking turns (the order reverses every run, so that a
    machine getting busier or quieter favours none of them).

    Args:
        explainers: one :class:`attnmap.Explainer` per file; the first is the reference.
        source: frames (see :func:`run_bench`); None for a synthetic 640x480 frame.
        runs, warmup, batch_size, method, options, fit: as :func:`run_bench`.

    Returns:
        A JSON-able dict: ``source``, ``batch_size``, ``runs``, ``method`` and ``files``, one
        per explainer in order: ``file``, ``size_bytes``, ``precision``, ``provider``,
        ``stages`` (each of :data:`COMPARE_STAGES`: a ``summarize_ms`` summary),
        ``explain_ms`` (median of preprocess + inference + explanation per run),
        ``explains_per_s``, ``speedup`` (the first file's explain_ms / this one's),
        ``size_ratio`` (this size / the first's), ``stored_fidelity`` (the gate's figures from the
        file's metadata, empty for fp32), and against the first file on the timed frames:
        ``top1_agreement`` and ``map_pearson`` (mean Pearson r of the maps).

    Raises:
        OptionError: no explainers, or runs/batch/warmup out of range.
    """
    from attnmap.runtime.precision.fidelity import pearson

    if not explainers:
        raise OptionError("compare needs at least one model file")
    if runs < 1 or warmup < 0 or batch_size < 1:
        raise OptionError(f"runs and batch_size must be >= 1 and warmup >= 0; got runs={runs}, "
                          f"warmup={warmup}, batch_size={batch_size}")
    job = Job(method=method, options=dict(options or {}), fit=fit, topk=1, style=OverlayStyle())
    engines = [FrameEngine(ex, job, batch_size=batch_size) for ex in explainers]
    times = [{s: [] for s in (*COMPARE_STAGES, "explain")} for _ in engines]
    agree = [[] for _ in engines]
    corr = [[] for _ in engines]
    feed = _Feed(source)
    try:
        for run in range(warmup + runs):
            frames = [Frame(i, feed.next(), feed.name, 0.0) for i in range(batch_size)]
            order = list(enumerate(engines))
            results: dict[int, list] = {}
            for k, engine in (order if run % 2 == 0 else order[::-1]):
                before = engine.clock.totals()
                items = engine.explain_batch(frames)  # preprocess, inference, explanation, overlay
                for item in items:
                    if item.error is not None:
                        raise item.error
                results[k] = [item.explanation for item in items]
                if run >= warmup:
                    took = _took(engine.clock, before)
                    for stage in COMPARE_STAGES:
                        times[k][stage].append(took.get(stage, 0.0))
                    times[k]["explain"].append(took["preprocess"] + took["inference"] + took["explanation"])
            if run >= warmup:
                first = results[0]
                for k, got in results.items():
                    agree[k] += [a.topk[0].index == b.topk[0].index for a, b in zip(first, got)]
                    corr[k] += pearson(np.stack([a.grid for a in first]), np.stack([b.grid for b in got])).tolist()
    finally:
        feed.close()
    files = []
    for k, ex in enumerate(explainers):
        path = Path(getattr(ex, "path", ""))
        explain_ms = float(np.median(times[k]["explain"])) * 1e3
        files.append({
            "file": str(path), "size_bytes": path.stat().st_size if path.is_file() else 0,
            "precision": ex.meta.precision, "provider": getattr(ex, "provider", "unknown"),
            "stages": {s: summarize_ms(times[k][s], batch_size) for s in COMPARE_STAGES},
            "explain_ms": round(explain_ms, 4), "explains_per_s": _fps(explain_ms, batch_size),
            "stored_fidelity": dict(ex.meta.fidelity),
            "top1_agreement": round(float(np.mean(agree[k])), 4), "map_pearson": round(float(np.mean(corr[k])), 6)})
    for f in files:
        f["speedup"] = round(files[0]["explain_ms"] / f["explain_ms"], 4) if f["explain_ms"] > 0 else 0.0
        f["size_ratio"] = round(f["size_bytes"] / files[0]["size_bytes"], 4) if files[0]["size_bytes"] else 0.0
    return {"source": feed.name, "frame_size": list(feed.size), "batch_size": batch_size, "runs": runs,
            "warmup": warmup, "method": method, "files": files}


def format_compare(result: Mapping[str, Any]) -> str:
    """Render a :func:`run_compare` result as a text table, the first file as the reference."""
    lines = [f"source {result['source']} {result['frame_size'][0]}x{result['frame_size'][1]}  batch "
             f"{result['batch_size']}  {result['runs']} runs  method {result['method']}  (medians; ms per batch)"]
    head = (f"{'file':<28}{'prec':>5}{'MB':>7}{'size':>6}" + "".join(f"{s[:7]:>9}" for s in COMPARE_STAGES)
            + f"{'expl/s':>8}{'speedup':>8}{'top1=':>7}{'map r':>8}{'gate top1':>10}{'gate r':>8}")
    lines.append(head)
    for f in result["files"]:
        fid = f["stored_fidelity"]
        rollout = fid.get("maps", {}).get("rollout", {}) if fid else {}
        gate = (f"{fid['top1_agreement']:>10.3f}{rollout.get('pearson_mean', float('nan')):>8.4f}" if fid
                else f"{'-':>10}{'-':>8}")
        name = Path(f["file"]).name
        lines.append(f"{name[-28:]:<28}{f['precision']:>5}{f['size_bytes'] / 1e6:>7.2f}{f['size_ratio']:>6.2f}"
                     + "".join(f"{f['stages'][s]['median_ms']:>9.2f}" for s in COMPARE_STAGES)
                     + f"{f['explains_per_s']:>8.1f}{f['speedup']:>8.2f}{f['top1_agreement']:>7.3f}"
                     f"{f['map_pearson']:>8.4f}{gate}")
    lines.append("expl/s: frames explained per second (preprocess + inference + explanation); speedup and "
                 "top1= / map r: against the first file; gate: the fidelity figures stored in the file")
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


def _took(clock: StageClock, before: Mapping[str, float]) -> dict[str, float]:
    """Stage -> seconds since ``before`` (a ``clock.totals()``): one run's time in each stage,
    however many durations (one per drawn item, say) the stage recorded in it."""
    return {s: total - before.get(s, 0.0) for s, total in clock.totals().items()}


def _fps(ms: float, batch: int) -> float:
    return round(1e3 * batch / ms, 3) if ms > 0 else 0.0



