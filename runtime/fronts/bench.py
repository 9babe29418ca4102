"""Per-stage benchmark: where the time of one explained frame goes, against plain inference.

``run_bench`` times each stage of the pipeline separately on the same frames, ``runs`` times
after ``warmup`` untimed runs:

======================  ==========================================================
stage                   what is timed (per batch of ``batch_size`` frames)
======================  ==========================================================
decode                  reading the frames (video decode, image file decode)
preprocess              resize, crop, normalise into the model input
inference               the model with its attention outputs (``Explainer.infer``)
explanation             the explanation method on those outputs (``Explainer.maps``)
overlay                 heatmap to image size, colour map, blend, label
encode                  encoding the annotated frames (video: mp4 writer; images: JPEG)
plain inference         the same model without attention outputs (``infer_plain``)
======================  ==========================================================

The headline figure is the overhead of explaining, ``(inference + explanation) / plain``,
taken per run and then the median. Plain and attention inference alternate their order from
run to run, so a machine getting busier or quieter biases neither.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import cv2
import numpy as np

from attnmap.runtime.frames.sinks import VideoSink
from attnmap.runtime.core.errors import OptionError, SourceError
from attnmap.runtime.draw.overlay import HeatmapOverlay, LabelOverlay
from attnmap.runtime.frames.sources import Source, open_source

if TYPE_CHECKING:
    from attnmap.runtime.model.session import ThroughputPlan

STAGES = ("decode", "preprocess", "inference", "explanation", "overlay", "encode")
SYNTHETIC_SIZE = (640, 480)  # (width, height) of the frame used when no source is given


def run_bench(explainer, source: "str | Path | Source | None" = None, *, runs: int = 20, warmup: int = 3,
              batch_size: int = 1, method: str = "rollout", options: Mapping[str, Any] | None = None,
              fit: str = "crop", colormap: str = "jet") -> dict[str, Any]:
    """Time every stage of explaining frames, and plain inference of the same model.

    Args:
        explainer: a :class:`runtime.Explainer`.
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
    opts = dict(options or {})
    feed = _Feed(source)
    heat = HeatmapOverlay(colormap=colormap)
    labeler = LabelOverlay()
    times: dict[str, list[float]] = {s: [] for s in (*STAGES, "plain_inference")}
    ratios: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="attnmap-bench-") as tmp:
            encoder = _Encoder(feed.is_video, Path(tmp), feed.fps)
            for run in range(warmup + runs):
                t = {}
                t0 = time.perf_counter()
                images = [feed.next() for _ in range(batch_size)]
                t["decode"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                x, geoms = explainer.preprocess(images, fit=fit)
                t["preprocess"] = time.perf_counter() - t0
                if run % 2:
                    t["plain_inference"] = _timed(explainer.infer_plain, x)[1]
                outputs, t["inference"] = _timed(explainer.infer, x)
                if not run % 2:
                    t["plain_inference"] = _timed(explainer.infer_plain, x)[1]
                maps, t["explanation"] = _timed(lambda: explainer.maps(outputs, method, **opts))
                t0 = time.perf_counter()
                top = outputs.logits.argmax(axis=1)
                drawn = [labeler.annotate(heat.annotate(img, g.to_image(m)), [explainer.meta.label(int(c))])
                         for img, g, m, c in zip(images, geoms, maps, top)]
                t["overlay"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                for img in drawn:
                    encoder.encode(img)
                t["encode"] = time.perf_counter() - t0
                if run >= warmup:
                    for k, v in t.items():
                        times[k].append(v)
                    ratios.append((t["inference"] + t["explanation"]) / t["plain_inference"])
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
            raise SourceError(f"source {self._source.spec!r} yielded no frames to benchmark") from None
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


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


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


# --------------------------------------------------------------------------- performance targets
TARGETS = {
    "live_fps": "live frames/s >= 0.9 x min(source fps, 1 / plain inference time)",
    "offline_fps": "offline video explain frames/s >= 0.85 x plain-inference frames/s at the same batch size",
    "latency": "capture-to-display latency (median) <= 1.3 x plain inference time",
}


def measure_targets(explainer, video: str | Path, *, batch_size: int = 8, plain_runs: int = 30,
                    live_frames: int | None = None, method: str = "rollout",
                    fit: str = "squash", offline_explainer=None, workers: int = 1) -> dict[str, Any]:
    """Measure the three real-time targets of attnmap on one video (see :data:`TARGETS`).

    Plain inference is timed before and after the live and offline runs, and the median of
    both sets is the baseline, so a machine that gets busier or quieter midway shifts the
    baseline with the measurements. The targets use back-to-back plain runs; plain inference
    is also timed paced at the video's frame rate, the rhythm of the live loop (idle, then
    one frame), and reported beside them as ``plain_paced_ms``: on a small CPU box one run after
    an idle gap is slower than one of a back-to-back series, and that part of the latency
    is not explanation overhead.

    The offline run can go as ``attnmap explain VIDEO`` runs it (:func:`throughput_explainer`:
    on a CPU, two model runs at once on sessions of half the cores). Its target compares with
    plain inference as usually run, one batch at a time on ``explainer``. Plain inference run
    the offline way (``workers`` batches at once on ``offline_explainer``) is timed too and
    reported beside it as ``plain_concurrent_ms_per_frame``: against that, the ratio shows the
    overhead of the explanation alone.

    Args:
        explainer: a :class:`runtime.Explainer`.
        video: a video file with a known fps (it is played paced, like a camera, for the
            live figures, and explained frame by frame for the offline figure).
        batch_size: batch of the offline run and of its plain baseline.
        plain_runs: timed plain-inference runs per batch size, before and after.
        live_frames: stop the live run after this many frames (default: the whole video).
        method: explanation method.
        fit: fit mode of the live and offline runs.
        offline_explainer: the explainer of the offline run (default: ``explainer``).
        workers: model runs at once in the offline run.

    Returns:
        JSON-able dict: ``plain_ms`` (batch 1), ``plain_batch_ms`` (per frame at
        ``batch_size``), ``plain_paced_ms`` (batch 1, one run per frame interval),
        ``offline_workers``, ``plain_concurrent_ms_per_frame`` (per frame, ``workers`` batches
        at once on ``offline_explainer``), ``live``
        (:meth:`LiveStats.to_dict`), ``offline``
        (:meth:`VideoReport.to_dict`), and ``targets``: per target its measured value, the
        threshold, the ratio to the threshold and whether it was met.
    """
    # Imported here: the per-stage benchmark does not need the live and video machinery.
    from attnmap.runtime.fronts.live.loop import run_live
    from attnmap.runtime.fronts.video import explain_video

    with open_source(video) as src:
        if src.fps is None or src.is_live:
            raise SourceError(f"video {src.spec!r} needs a known fps (a video file) to measure real-time targets")
        src_fps = src.fps
        frames = [f.image_bgr for _, f in zip(range(batch_size), src)]
    offline_ex = offline_explainer or explainer
    x1, _ = explainer.preprocess(frames[:1], fit=fit)
    xb, _ = explainer.preprocess((frames * batch_size)[:batch_size], fit=fit)
    plain1, plainb = _plain_times(explainer, x1, plain_runs), _plain_times(explainer, xb, plain_runs)
    # The offline run on the explainer of the plain baseline, one batch at a time: that
    # baseline is the concurrent one too, and is not timed twice.
    same = workers == 1 and offline_ex is explainer
    concurrent = [] if same else [_concurrent_plain_time(offline_ex, xb, plain_runs, workers)]

    live = run_live(explainer, str(video), method=method, show=False, fit=fit, max_frames=live_frames)
    with tempfile.TemporaryDirectory(prefix="attnmap-targets-") as tmp:
        offline = explain_video(offline_ex, str(video), Path(tmp) / "out.mp4", method=method, fit=fit,
                                batch_size=batch_size, workers=workers)
    plain1 += _plain_times(explainer, x1, plain_runs)
    plainb += _plain_times(explainer, xb, plain_runs)
    if not same:
        concurrent.append(_concurrent_plain_time(offline_ex, xb, plain_runs, workers))
    paced = float(np.median(_plain_times(explainer, x1, plain_runs, interval=1.0 / src_fps)))
    t1 = float(np.median(plain1))
    tb = float(np.median(plainb)) / batch_size
    tc = tb if same else float(np.mean(concurrent)) / batch_size
    live_d, off_d = live.to_dict(), offline.to_dict()
    latency = live_d["latency_ms"]["median"] / 1e3
    checks = {
        "live_fps": (live.fps, 0.9 * min(src_fps, 1.0 / t1), True),
        "offline_fps": (offline.throughput_fps, 0.85 / tb, True),
        "latency": (latency * 1e3, 1.3 * t1 * 1e3, False),
    }
    targets = {}
    for name, (value, threshold, higher) in checks.items():
        targets[name] = {"rule": TARGETS[name], "value": round(value, 3), "threshold": round(threshold, 3),
                         "ratio": round(value / threshold, 3) if threshold else None,
                         "met": bool(value >= threshold if higher else value <= threshold)}
    return {"model": explainer.meta.model_name, "provider": _provider(explainer), "video": str(video),
            "source_fps": src_fps, "batch_size": batch_size, "method": method, "fit": fit,
            "plain_ms": round(t1 * 1e3, 3), "plain_batch_ms_per_frame": round(tb * 1e3, 3),
            "plain_paced_ms": round(paced * 1e3, 3), "offline_workers": workers,
            "plain_concurrent_ms_per_frame": round(tc * 1e3, 3),
            "live": live_d, "offline": off_d, "targets": targets}


def format_targets(result: Mapping[str, Any]) -> str:
    """Render a :func:`measure_targets` result as text: baseline, then one line per target."""
    live = result["live"]
    lines = [f"{result['model']}  {result['provider']}  {Path(result['video']).name} at {result['source_fps']:g} fps  "
             f"method {result['method']}  fit {result['fit']}",
             f"plain inference: {result['plain_ms']:.2f} ms at batch 1, "
             f"{result['plain_batch_ms_per_frame']:.2f} ms/frame at batch {result['batch_size']}; "
             f"{result['plain_paced_ms']:.2f} ms at batch 1 paced at {result['source_fps']:g} fps (not a target: "
             f"latency is {result['live']['latency_ms']['median'] / result['plain_paced_ms']:.2f} x that)",
             f"live: {live['frames_processed']} frames in {live['duration_s']:.2f} s, {live['frames_dropped']} dropped, "
             f"latency median {live['latency_ms']['median']:.1f} ms (p90 {live['latency_ms']['p90']:.1f})",
             f"offline: {result['offline']['frames']} frames in {result['offline']['elapsed_s']:.2f} s, "
             f"{result['offline_workers']} model run(s) at once; "
             f"plain inference run that way: {result['plain_concurrent_ms_per_frame']:.2f} ms/frame (not a target: "
             f"offline is {result['targets']['offline_fps']['value'] * result['plain_concurrent_ms_per_frame'] / 1e3:.3f}"
             f" x its frames/s)",
             f"{'target':<13}{'measured':>10}{'threshold':>11}{'ratio':>8}  met"]
    units = {"live_fps": "fps", "offline_fps": "fps", "latency": "ms"}
    for name, t in result["targets"].items():
        lines.append(f"{name:<13}{t['value']:>10.2f}{t['threshold']:>11.2f}{t['ratio']:>8.3f}  "
                     f"{'yes' if t['met'] else 'NO'}   ({units[name]}; {t['rule']})")
    return "\n".join(lines)


def throughput_explainer(explainer, batch_size: int | None = None) -> tuple[Any, ThroughputPlan]:
    """The explainer and :class:`~runtime.model.session.ThroughputPlan` (threads, model runs at
    once, batch size) with which ``attnmap explain`` runs videos and folders of
    ``explainer``'s model (:func:`runtime.model.session.throughput_plan`). The explainer is
    ``explainer`` itself where the plan keeps its threads and one run, else a second one on
    the plan's threads.

    Args:
        explainer: a :class:`runtime.Explainer`.
        batch_size: the batch size asked for (None: the plan's default).
    """
    from attnmap.runtime.engine.explainer import Explainer
    from attnmap.runtime.model.session import throughput_plan

    model = explainer.model
    provider = "cpu" if model.provider == "CPUExecutionProvider" else "cuda"
    plan = throughput_plan(provider, model.threads, batch_size=batch_size)
    if plan.workers == 1 and plan.threads == model.threads:
        return explainer, plan
    return Explainer(explainer.path, provider=provider, threads=plan.threads), plan


def _concurrent_plain_time(explainer, x: np.ndarray, runs: int, workers: int) -> float:
    """Seconds per batch of plain inference with ``workers`` threads each running ``runs``
    batches back to back, all at once (after one untimed run each)."""
    if workers == 1:
        return float(np.median(_plain_times(explainer, x, runs)))
    barrier = threading.Barrier(workers + 1)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            explainer.infer_plain(x)
            barrier.wait()
            for _ in range(runs):
                explainer.infer_plain(x)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, name=f"attnmap-plain-{k}", daemon=True) for k in range(workers)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass  # a run failed: its error is raised once every thread has ended
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return (time.perf_counter() - t0) / (runs * workers)


def _plain_times(explainer, x: np.ndarray, runs: int, interval: float | None = None) -> list[float]:
    """Seconds of ``runs`` plain inferences after two untimed ones: back to back, or one per
    ``interval`` seconds (idle between, like frames arriving from a camera)."""
    for _ in range(2):
        explainer.infer_plain(x)
    out = []
    due = time.perf_counter()
    for _ in range(runs):
        if interval is not None:
            due += interval
            time.sleep(max(0.0, due - time.perf_counter()))
        t0 = time.perf_counter()
        explainer.infer_plain(x)
        out.append(time.perf_counter() - t0)
    return out
