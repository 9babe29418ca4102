"""Images/s of `attnmap explain` on the local engine and on Ray Data with 1 and 2 actors.

Usage (from the project root; needs the distributed extra)::

    .venv/bin/python bench/ray_scaling.py --model deit.onnx --images 300 --json runs/ray_scaling.json

Export DeiT-Tiny first (needs torch)::

    .venv/bin/python -c "from attnmap.export import export_onnx; export_onnx('deit_tiny_patch16_224', 'deit.onnx', \\
        checkpoint='../shared/data/weights/deit_tiny_patch16_224_in1k.safetensors')"

The collection is the shared photos (``../shared/data/images``) linked over and over into a temp
folder up to ``--images`` files. Every run writes overlays (and, with ``--save-maps``, maps) into
its own fresh folder, so nothing is resumed. For each configuration it prints images/s over the
pipeline (Ray start-up excluded; actor start-up included), the load average beside it, and for
Ray the throughput per actor, the figure to multiply by the actors of a larger cluster.

The figures depend on what else the machine runs; on a shared box they are noisy. The exit code
is 0 (a measurement, not a test).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "images"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="attnmap .onnx file (e.g. DeiT-Tiny)")
    p.add_argument("--photos", type=Path, default=PHOTOS, help="folder of images to repeat (default: shared photos)")
    p.add_argument("--images", type=int, default=300, help="collection size (default 300)")
    p.add_argument("--actors", default="1,2", help="actor counts to run (default 1,2)")
    p.add_argument("--decode", default="actor,task", help="where Ray decodes: actor, task or both (default both, "
                                                          "the task variant with the largest actor count only)")
    p.add_argument("--batch-size", type=int, default=4, help="images per model run (default 4)")
    p.add_argument("--method", default="rollout", help="explanation method (default rollout)")
    p.add_argument("--save-maps", action="store_true", help="also write .npz maps")
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)

    import ray

    from attnmap import Explainer
    from attnmap.runtime.engine.engine import FrameEngine, Job
    from attnmap.runtime.fronts.distributed import RayOptions, explain_on_ray
    from attnmap.runtime.fronts.offline import FolderOutput, explain_inputs
    from attnmap.runtime.model.plan import plan_for_inputs

    work = Path(tempfile.mkdtemp(prefix="attnmap-ray-bench-"))
    try:
        folder = _collection(args.photos, work / "in", args.images)
        job = Job(method=args.method)
        results = []

        def record(name: str, seconds: float, n: int, actors: int | None = None, **extra) -> None:
            r = {"config": name, "images": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 2),
                 "load_1min": round(os.getloadavg()[0], 2), **extra}
            if actors:
                r["per_actor_images_per_s"] = round(n / seconds / actors, 2)
            results.append(r)
            print(json.dumps(r), flush=True)

        plan = plan_for_inputs("cpu", images=args.images, videos=0, batch_size=args.batch_size)
        engine = FrameEngine(Explainer(args.model, provider="cpu", threads=plan.threads), job,
                             batch_size=plan.batch_size, workers=plan.workers)
        t0 = time.perf_counter()
        rep = explain_inputs(engine, [str(folder)], FolderOutput(work / "local", save_maps=args.save_maps),
                             on_record=lambda r, line: None, on_fail=lambda s, r: None)
        record(f"local (workers {plan.workers} x threads {plan.threads}, batch {plan.batch_size})",
               time.perf_counter() - t0, rep.done)

        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="warning")
        print(json.dumps({"ray_init_s": round(time.perf_counter() - t0, 2)}), flush=True)
        driver = FrameEngine(Explainer(args.model, provider="cpu", threads=1), job)
        counts = [int(a) for a in args.actors.split(",")]
        decodes = [d.strip() for d in args.decode.split(",")]
        configs = [(a, "actor" if "actor" in decodes else decodes[0]) for a in counts]
        if "task" in decodes and "actor" in decodes:
            configs.append((max(counts), "task"))
        for actors, decode in configs:
            out = work / f"ray{actors}{decode}"
            options = RayOptions(actors=actors, batch_size=args.batch_size, decode=decode)
            t0 = time.perf_counter()
            rep = explain_on_ray(driver, [str(folder)], FolderOutput(out, save_maps=args.save_maps), options,
                                 on_record=lambda r, line: None, on_fail=lambda s, r: None)
            wall = time.perf_counter() - t0
            record(f"ray {actors} actor{'s' if actors > 1 else ''}, decode in {decode}", rep.seconds, rep.done,
                   actors, wall_with_table_s=round(wall, 2))
        ray.shutdown()
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _collection(photos: Path, folder: Path, n: int) -> Path:
    """``n`` links to the photos, round robin, as ``img00000_<name>`` (distinct names, same bytes)."""
    files = sorted(p for p in photos.iterdir() if p.is_file())
    if not files:
        sys.exit(f"no photos in {photos}")
    folder.mkdir(parents=True)
    for i in range(n):
        src = files[i % len(files)]
        (folder / f"img{i:05d}_{src.name}").symlink_to(src.resolve())
    return folder


if __name__ == "__main__":
    sys.exit(main())
