"""Attention flow at real size: seconds per image on real photos, with rollout for scale.

Usage (from the project root)::

    .venv/bin/python bench/flow.py                              # /tmp/deit.onnx, ../shared/data/images
    .venv/bin/python bench/flow.py --model deit.onnx --repeats 5 --json

For each photo it runs the model once (batch 1, CPU) to get the attentions, then times
``attention_maps("flow", ...)`` ``--repeats`` times and keeps the median; it prints each photo's
wall-clock and process CPU seconds and their median and maximum over the photos. CPU seconds
are printed beside wall seconds because on a shared machine the wall clock includes the time
other processes held the cores (the flow solves run on one thread). Rollout on the same
attentions is timed for scale. A measurement, not a test: the exit code is 0 whatever it finds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

# As the CLI does: one BLAS thread, set before NumPy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np
from attnmap import Explainer
from attnmap.runtime.image.decode import read_image
from attnmap.runtime.methods import attention_maps

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "data" / "images"
SUFFIXES = {".jpg", ".jpeg", ".png"}


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and process CPU seconds of ``fn()`` over ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def measure(model: Path, images: list[Path], repeats: int) -> dict:
    """Flow and rollout seconds per image on ``images`` with ``model``."""
    import scipy

    ex = Explainer(model, provider="cpu")
    layout = ex.meta.layout
    rows, roll = [], []
    for path in images:
        x, _ = ex.preprocess([read_image(path)])
        a = np.asarray(ex.infer(x).attentions)
        attention_maps("flow", a, layout)                               # warm-up (imports, allocations)
        wall, cpu = timed(lambda a=a: attention_maps("flow", a, layout), repeats)
        roll.append(timed(lambda a=a: attention_maps("rollout", a, layout), 20)[0])
        rows.append({"image": path.name, "flow_wall_s": round(wall, 3), "flow_cpu_s": round(cpu, 3)})
        print(f"{path.name:28s} flow {wall:6.2f} s wall {cpu:6.2f} s cpu", flush=True)
    walls = [r["flow_wall_s"] for r in rows]
    cpus = [r["flow_cpu_s"] for r in rows]
    return {
        "model": str(model), "attentions_shape": list(a.shape), "images": len(rows), "repeats": repeats,
        "scipy": scipy.__version__, "cpu_count": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
        "flow_wall_s_median": round(statistics.median(walls), 3), "flow_wall_s_max": round(max(walls), 3),
        "flow_cpu_s_median": round(statistics.median(cpus), 3), "flow_cpu_s_max": round(max(cpus), 3),
        "rollout_ms_median": round(1e3 * statistics.median(roll), 3), "per_image": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("/tmp/deit.onnx"),
                        help="attnmap ONNX file with attention outputs (default: /tmp/deit.onnx, DeiT-Tiny)")
    parser.add_argument("--images", type=Path, default=IMAGES, help="folder of photos (default: shared data)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per photo; the median is kept")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"model {args.model} not found; export DeiT-Tiny with `attnmap export` or pass --model")
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in SUFFIXES)
    if not images:
        raise SystemExit(f"no photos ({', '.join(sorted(SUFFIXES))}) in {args.images}")
    r = measure(args.model, images, max(1, args.repeats))
    print(f"flow: median {r['flow_wall_s_median']:.2f} s/image wall (max {r['flow_wall_s_max']:.2f}), "
          f"median {r['flow_cpu_s_median']:.2f} s/image cpu (max {r['flow_cpu_s_max']:.2f}); "
          f"rollout: {r['rollout_ms_median']:.2f} ms/image; {r['images']} images, attentions {r['attentions_shape']}, "
          f"load average {r['load_average']}")
    if args.json:
        print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
