"""bf16 islands and `attnmap tune` on DeiT-Tiny: fidelity beside every speed figure, the machine's load.

Usage (from the project root)::

    .venv/bin/python bench/tune.py                                   # exports DeiT-Tiny first (torch)
    .venv/bin/python bench/tune.py --fp32 deit.onnx --grads deit_grads.onnx --rounds 15

Three parts, each printed with ``uptime``'s load:

1. **Where bf16 runs here** (:func:`attnmap.runtime.precision.bf16.bf16_support`): the CPU's
   bf16 flags, the CPU provider's bf16 MatMul probe, OpenVINO where installed.
2. **Where bf16 hurts** (``--bf16-islands``): DeiT-Tiny converted to bf16 with each set of
   float32 islands (all; softmax and outputs in bf16; layernorm in bf16; none), its
   fidelity against fp32 on the shared photos measured on the rounding float32 twin
   (:func:`~attnmap.runtime.precision.bf16.emulate_bf16`: bf16 storage, float32 accumulation).
   Numerics only: the twin is no bf16 speed, and no speed is claimed for it.
3. **tune** on the fp32 file (rollout) and on the gradient file (``--grad-method``, default
   chefer): the table `attnmap tune` prints (nothing written), i.e. every set-up timed in
   rounds alternated with plain fp32 inference, gated on the photos. The goals of issue 26
   read from it: the fastest passing rollout set-up against plain inference (OpenVINO's own
   plain inference where onnxruntime-openvino is installed: run this script with that venv),
   and the gradient file's fastest passing set-up against its fp32 CPU set-up at the default
   threads (goal: 1.5x).

The exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CHECKPOINT = SHARED / "weights" / "deit_tiny_patch16_224_in1k.safetensors"
PHOTOS = SHARED / "images"
# attnmap's attention probabilities are graph outputs, so the softmax is inside the outputs island too:
# softmax goes bf16 only when both are dropped.
ISLAND_SETS = {"all": ("softmax", "layernorm", "outputs"), "softmax+outputs bf16": ("layernorm",),
               "layernorm bf16": ("softmax", "outputs"), "none": ()}


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable"


def _export(folder: Path, gradients: bool) -> Path:
    from attnmap.export import export_onnx

    if not CHECKPOINT.is_file():
        sys.exit(f"no --fp32/--grads given and no checkpoint at {CHECKPOINT}")
    out = folder / ("deit_grads.onnx" if gradients else "deit_fp32.onnx")
    export_onnx("deit_tiny_patch16_224", out, checkpoint=CHECKPOINT, gradients=gradients,
                log=lambda m: print(m, file=sys.stderr))
    return out


def bf16_islands(fp32: Path, folder: Path, photos: str, threads: int | None) -> list[dict]:
    """Fidelity of bf16 with each island set, on the rounding twin (no speed)."""
    import onnx

    from attnmap.runtime.engine.explainer import Explainer
    from attnmap.runtime.model.graph import read_model
    from attnmap.runtime.precision.bf16 import convert_bf16, emulate_bf16
    from attnmap.runtime.precision.convert import MAX_CHECK_IMAGES, load_images
    from attnmap.runtime.precision.fidelity import Thresholds, fidelity_failures, measure_fidelity

    reference = Explainer(fp32, provider="cpu", threads=threads)
    x = load_images(photos, reference.meta, MAX_CHECK_IMAGES)
    proto, rows = read_model(fp32), []
    for name, islands in ISLAND_SETS.items():
        path = folder / f"bf16_{name.replace(' ', '_')}.onnx"
        onnx.save_model(emulate_bf16(convert_bf16(proto, islands=islands)), str(path))
        fid = measure_fidelity(reference, Explainer(path, provider="cpu", threads=threads), x, source=photos)
        failures = fidelity_failures(fid, Thresholds())
        rows.append({"islands": name, "fidelity": fid.to_dict(), "passes": not failures, "failures": failures})
        print(f"  bf16 islands {name:<13} {fid.summary()}  -> {'pass' if not failures else 'FAIL'}", flush=True)
    return rows


def tune_table(model: Path, photos: str, method: str, rounds: int, batches: tuple[int, ...]) -> dict:
    from attnmap.runtime.fronts.tune import TunePlan, discard_work, format_table, run_tune

    result = run_tune(model, TunePlan(check=photos, method=method, rounds=rounds, warmup=2, batches=batches),
                      log=lambda line: print("  " + line, file=sys.stderr, flush=True))
    discard_work(result)
    print(format_table(result), flush=True)
    return result.to_dict()


def openvino_plain(fp32: Path, photos: str, rounds: int) -> dict | None:
    """Plain (logits-only) fp32 inference on the OpenVINO provider against the CPU provider, alternated."""
    import onnxruntime as ort

    from attnmap.runtime.engine.explainer import Explainer
    from attnmap.runtime.precision.convert import load_images

    if "OpenVINOExecutionProvider" not in ort.get_available_providers():
        print("  OpenVINO: not installed in this environment (onnxruntime-openvino); no OpenVINO figure", flush=True)
        return None
    cpu, ov = Explainer(fp32, provider="cpu"), Explainer(fp32, provider="openvino")
    x = load_images(photos, cpu.meta, 1)
    times = {"cpu": [], "openvino": []}
    for k in range(rounds + 2):
        for name, e in (("cpu", cpu), ("openvino", ov))[::1 if k % 2 else -1]:
            t0 = time.perf_counter()
            e.infer_plain(x)
            if k >= 2:
                times[name].append((time.perf_counter() - t0) * 1000)
    out = {k: round(statistics.median(v), 3) for k, v in times.items()}
    print(f"  plain fp32 inference, batch 1: cpu {out['cpu']:.2f} ms, openvino {out['openvino']:.2f} ms "
          "(OpenVINO's default CPU precision here is f32: no bf16 instructions)", flush=True)
    return out


def _goals(figures: dict) -> dict:
    """Issue 26's two speed goals, read from the tables (ratios of paired medians)."""
    from attnmap.runtime.model.session import physical_cores

    goals: dict = {}
    rollout, ov = figures.get("tune_rollout"), figures.get("openvino_plain")
    if rollout and rollout["winner"]:
        w = rollout["winner"]
        goals["rollout_winner_x_plain_cpu"] = w["x_plain"]
        line = (f"  rollout: fastest passing set-up {w['provider']} {w['precision']} {w['threads']} threads "
                f"= {w['x_plain']:.2f}x plain fp32 inference on the CPU provider")
        if ov:
            # plain CPU -> plain OpenVINO (fp32 here) from the alternated loop of openvino_plain
            goals["rollout_winner_x_plain_openvino"] = round(w["x_plain"] * ov["cpu"] / ov["openvino"], 3)
            line += f", {goals['rollout_winner_x_plain_openvino']:.2f}x OpenVINO's plain inference (f32 here; goal <= 1.25 against its bf16)"
        print(line, flush=True)
    grads = figures.get("tune_grads")
    if grads and grads["winner"]:
        base = next((r for r in grads["rows"] if r["provider"] == "cpu" and r["precision"] == "fp32"
                     and r["threads"] == physical_cores() and r["batch"] == 1), None)
        if base and base["x_plain"]:
            w = grads["winner"]
            goals["grads_speedup_over_fp32_cpu"] = round(base["x_plain"] / w["x_plain"], 3)
            print(f"  {grads['method']}: fastest passing set-up {w['provider']} {w['precision']} {w['threads']} threads "
                  f"is {goals['grads_speedup_over_fp32_cpu']:.2f}x faster than fp32 on the CPU provider at "
                  f"{physical_cores()} threads (goal >= 1.5)", flush=True)
    return goals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fp32", type=Path, default=None, help="DeiT-Tiny fp32 attnmap file (default: export it)")
    ap.add_argument("--grads", type=Path, default=None, help="DeiT-Tiny gradient file (default: export it)")
    ap.add_argument("--photos", default=str(PHOTOS))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batches", default="1")
    ap.add_argument("--grad-method", default="chefer")
    ap.add_argument("--parts", default="support,islands,tune,grads,openvino")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    batches = tuple(int(b) for b in args.batches.split(","))
    figures: dict = {"load_start": _uptime()}
    print(f"# {figures['load_start']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fp32 = args.fp32 or _export(folder, gradients=False)
        if "support" in parts:
            from attnmap.runtime.precision.bf16 import bf16_support

            support = bf16_support()
            figures["bf16_support"] = {"cpu_flags": support.cpu_flags, "runners": support.runners,
                                       "line": support.line(hint=False)}
            print("## where bf16 runs\n  " + support.line(hint=False), flush=True)
        if "islands" in parts:
            print("## bf16 islands (fidelity of the rounding twin against fp32; numerics, no speed)", flush=True)
            figures["bf16_islands"] = bf16_islands(fp32, folder, args.photos, None)
        if "tune" in parts:
            print(f"## tune, rollout ({_uptime()})", flush=True)
            figures["tune_rollout"] = tune_table(fp32, args.photos, "rollout", args.rounds, batches)
        if "grads" in parts:
            grads = args.grads or _export(folder, gradients=True)
            print(f"## tune, {args.grad_method} on the gradient file ({_uptime()})", flush=True)
            figures["tune_grads"] = tune_table(grads, args.photos, args.grad_method, args.rounds, batches)
        if "openvino" in parts:
            print("## OpenVINO's own plain inference", flush=True)
            figures["openvino_plain"] = openvino_plain(fp32, args.photos, args.rounds)
    figures["goals"] = _goals(figures)
    figures["load_end"] = _uptime()
    print(f"# {figures['load_end']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
