"""Frames-in-motion benchmark: per-stage timings and the three real-time goals.

Usage (from the project root)::

    .venv/bin/python bench/bench_frames.py --model deit.onnx
    .venv/bin/python bench/bench_frames.py --model deit.onnx --video ../shared/data/video/mmaction2_test.mp4 \\
        --batch-size 8 --json runs/bench_frames.json

Export DeiT-Tiny first (needs torch)::

    .venv/bin/python -c "from attnmap.export import export_onnx; export_onnx('deit_tiny_patch16_224', 'deit.onnx', \\
        checkpoint='../shared/data/weights/deit_tiny_patch16_224_in1k.safetensors')"

For each video it prints the per-stage table (batch 1 and ``--batch-size``) and the goals:

* live frames/s >= 0.9 x min(source fps, 1 / plain inference time)
* offline video explain frames/s >= 0.85 x plain-inference frames/s at the same batch size
* capture-to-display latency (median) <= 1.3 x plain inference time

The figures depend on what else the machine runs: measure on a quiet machine. The exit code is
0 whether or not the goals are met (this is a measurement, not a test).

``--blas-threads`` (default 1) sets ``OPENBLAS_NUM_THREADS`` before NumPy loads. On a small
CPU box onnxruntime already uses every core; OpenBLAS threads for the small matrix products
of preprocessing then only fight it (measured here on 2 cores under load: ``fit="squash"``
preprocessing of a 340x256 frame took a median 84-180 ms with OpenBLAS's default threads and
0.6 ms with one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = sorted((ROOT.parent / "shared" / "data" / "video").glob("*.mp4"))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="attnmap .onnx file (e.g. DeiT-Tiny)")
    p.add_argument("--video", action="append", help="video file(s); default: the shared 340x256 clips")
    p.add_argument("--batch-size", type=int, default=None,
                   help="offline batch size (default: the one `attnmap explain` uses, 4 on a CPU)")
    p.add_argument("--runs", type=int, default=30, help="timed runs per stage table (default 30)")
    p.add_argument("--method", default="rollout", help="explanation method (default rollout)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: physical cores)")
    p.add_argument("--live-frames", type=int, default=None, help="stop each live run after N frames (default: whole clip)")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure the goals this many times per video and report the median ratios "
                        "(a shared machine's load drifts between the baseline and the runs)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OPENBLAS_NUM_THREADS for NumPy (default 1; 0 keeps OpenBLAS's own default)")
    p.add_argument("--json", type=Path, default=None, help="also write all results to this JSON file")
    args = p.parse_args(argv)
    if args.blas_threads > 0:
        if "numpy" in sys.modules:
            p.error("--blas-threads must be applied before NumPy is imported; run this file as a script")
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)
    # Imported only now, so that the thread setting above is in place when NumPy loads.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI does, before NumPy loads
    from attnmap import Explainer
    from attnmap.runtime.fronts.bench import format_bench, run_bench
    from attnmap.runtime.fronts.goals import format_goals, measure_goals, throughput_explainer
    from attnmap.runtime.core.files import write_bytes

    videos = [Path(v) for v in args.video] if args.video else VIDEOS
    if not videos:
        p.error("no --video given and no shared clips found in ../shared/data/video")
    ex = Explainer(args.model, provider="cpu", threads=args.threads)
    # The offline target runs as `attnmap explain VIDEO` does (two runs at once on a CPU).
    offline_ex, plan = throughput_explainer(ex, args.batch_size)
    results = {"model": str(args.model), "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "videos": {}}
    for video in videos:
        print(f"== {video.name}")
        entry = {"stages": {}}
        for bs in sorted({1, plan.batch_size}):
            r = run_bench(ex, str(video), runs=args.runs, warmup=3, batch_size=bs, method=args.method)
            entry["stages"][bs] = r
            print(format_bench(r))
            print()
        entry["goals"] = []
        for _ in range(max(1, args.repeats)):
            t = measure_goals(ex, video, batch_size=plan.batch_size, plain_runs=args.runs, method=args.method,
                                live_frames=args.live_frames, offline_explainer=offline_ex, workers=plan.workers)
            entry["goals"].append(t)
            print(format_goals(t))
            print()
        if len(entry["goals"]) > 1:
            medians = {name: statistics.median(t["goals"][name]["ratio"] for t in entry["goals"])
                       for name in entry["goals"][0]["goals"]}
            entry["median_ratios"] = medians
            print("median over repeats of measured / threshold (fps: >= 1 meets; latency: <= 1 meets): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in medians.items()))
            print()
        results["videos"][video.name] = entry
    if args.json is not None:
        write_bytes(args.json, json.dumps(results, indent=1).encode())
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
