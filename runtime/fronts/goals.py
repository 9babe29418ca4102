"""Real-time goals: live frames/s, offline frames/s and capture-to-display latency on one video.

A front over the live and offline fronts (themselves on the frame engine): both run on the
same video, and plain inference of the same model is timed before and after as the baseline.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from attnmap.runtime.core.errors import SourceError
from attnmap.runtime.engine.engine import FrameEngine, Job
from attnmap.runtime.frames.sources import open_source
from attnmap.runtime.model.plan import ThroughputPlan, throughput_plan

GOALS = {
    "live_fps": "live frames/s >= 0.9 x min(source fps, 1 / plain inference time)",
    "offline_fps": "offline video explain frames/s >= 0.85 x plain-inference frames/s at the same batch size",
    "latency": "capture-to-display latency (median) <= 1.3 x plain inference time",
}


def measure_goals(explainer, video: str | Path, *, batch_size: int = 8, plain_runs: int = 30,
                    live_frames: int | None = None, method: str = "rollout",
                    fit: str = "squash", offline_explainer=None, workers: int = 1) -> dict[str, Any]:
    """Measure the three real-time goals of attnmap on one video (see :data:`GOALS`).

    Plain inference is timed before and after the live and offline runs, and the median of
    both sets is the baseline, so a machine that gets busier or quieter midway shifts the
    baseline with the measurements. The goals use back-to-back plain runs; plain inference
    is also timed paced at the video's frame rate, the rhythm of the live loop (idle, then
    one frame), and reported beside them as ``plain_paced_ms``: on a small CPU box one run after
    an idle gap is slower than one of a back-to-back series, and that part of the latency
    is not explanation overhead.

    The offline run can go as ``attnmap explain VIDEO`` runs it (:func:`throughput_explainer`:
    on a CPU, two model runs at once on sessions of half the cores). Its goal compares with
    plain inference as usually run, one batch at a time on ``explainer``. Plain inference run
    the offline way (``workers`` batches at once on ``offline_explainer``) is timed too and
    reported beside it as ``plain_concurrent_ms_per_frame``: against that, the ratio shows the
    overhead of the explanation alone.

    Args:
        explainer: a :class:`attnmap.Explainer`.
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
        (:meth:`VideoReport.to_dict`), and ``goals``: per goal its measured value, the
        threshold, the ratio to the threshold and whether it was met.
    """
    # Imported here: the per-stage benchmark does not need the live and video machinery.
    from attnmap.runtime.fronts.live.loop import LiveConfig, run_live
    from attnmap.runtime.fronts.video import explain_video

    with open_source(video) as src:
        if src.fps is None or src.is_live:
            raise SourceError(f"video {src.spec!r} needs a known fps (a video file) to measure real-time goals")
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

    job = Job(method=method, fit=fit)
    live = run_live(explainer, str(video), job, LiveConfig(show=False, max_frames=live_frames))
    with tempfile.TemporaryDirectory(prefix="attnmap-goals-") as tmp:
        engine = FrameEngine(offline_ex, job, batch_size=batch_size, workers=workers)
        offline = explain_video(engine, str(video), Path(tmp) / "out.mp4")
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
    goals = {}
    for name, (value, threshold, higher) in checks.items():
        goals[name] = {"rule": GOALS[name], "value": round(value, 3), "threshold": round(threshold, 3),
                         "ratio": round(value / threshold, 3) if threshold else None,
                         "met": bool(value >= threshold if higher else value <= threshold)}
    return {"model": explainer.meta.model_name, "provider": getattr(explainer, "provider", "unknown"),
            "video": str(video),
            "source_fps": src_fps, "batch_size": batch_size, "method": method, "fit": fit,
            "plain_ms": round(t1 * 1e3, 3), "plain_batch_ms_per_frame": round(tb * 1e3, 3),
            "plain_paced_ms": round(paced * 1e3, 3), "offline_workers": workers,
            "plain_concurrent_ms_per_frame": round(tc * 1e3, 3),
            "live": live_d, "offline": off_d, "goals": goals}


def format_goals(result: Mapping[str, Any]) -> str:
    """Render a :func:`measure_goals` result as text: baseline, then one line per goal."""
    live = result["live"]
    lines = [f"{result['model']}  {result['provider']}  {Path(result['video']).name} at {result['source_fps']:g} fps  "
             f"method {result['method']}  fit {result['fit']}",
             f"plain inference: {result['plain_ms']:.2f} ms at batch 1, "
             f"{result['plain_batch_ms_per_frame']:.2f} ms/frame at batch {result['batch_size']}; "
             f"{result['plain_paced_ms']:.2f} ms at batch 1 paced at {result['source_fps']:g} fps (not a goal: "
             f"latency is {result['live']['latency_ms']['median'] / result['plain_paced_ms']:.2f} x that)",
             f"live: {live['frames_processed']} frames in {live['duration_s']:.2f} s, {live['frames_dropped']} dropped, "
             f"latency median {live['latency_ms']['median']:.1f} ms (p90 {live['latency_ms']['p90']:.1f})",
             f"offline: {result['offline']['frames']} frames in {result['offline']['elapsed_s']:.2f} s, "
             f"{result['offline_workers']} model run(s) at once; "
             f"plain inference run that way: {result['plain_concurrent_ms_per_frame']:.2f} ms/frame (not a goal: "
             f"offline is {result['goals']['offline_fps']['value'] * result['plain_concurrent_ms_per_frame'] / 1e3:.3f}"
             f" x its frames/s)",
             f"{'goal':<13}{'measured':>10}{'threshold':>11}{'ratio':>8}  met"]
    units = {"live_fps": "fps", "offline_fps": "fps", "latency": "ms"}
    for name, t in result["goals"].items():
        lines.append(f"{name:<13}{t['value']:>10.2f}{t['threshold']:>11.2f}{t['ratio']:>8.3f}  "
                     f"{'yes' if t['met'] else 'NO'}   ({units[name]}; {t['rule']})")
    return "\n".join(lines)


def throughput_explainer(explainer, batch_size: int | None = None) -> tuple[Any, ThroughputPlan]:
    """The explainer and :class:`~attnmap.runtime.model.plan.ThroughputPlan` (threads, model runs at
    once, batch size) with which ``attnmap explain`` runs videos and folders of
    ``explainer``'s model (:func:`~attnmap.runtime.model.plan.throughput_plan`). The explainer is
    ``explainer`` itself where the plan keeps its threads and one run, else a second one on
    the plan's threads.

    Args:
        explainer: a :class:`attnmap.Explainer`.
        batch_size: the batch size asked for (None: the plan's default).
    """
    from attnmap.runtime.engine.explainer import Explainer

    model = explainer.model
    provider = model.provider_short
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
