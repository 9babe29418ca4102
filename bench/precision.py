"""DeiT-Tiny at fp32, int8 (dynamic and static) and fp16: speed, size and fidelity, in one run.

Usage (from the project root)::

    .venv/bin/python bench/precision.py                     # exports DeiT-Tiny first (needs torch)
    .venv/bin/python bench/precision.py --fp32 deit.onnx --runs 40 --sweep

Without ``--fp32`` it exports the real DeiT-Tiny checkpoint from ../shared/data into a temporary
folder. Every converted file is made with the runtime's own precision package
(``attnmap.runtime.precision``), static int8 calibrated on the shared photos, and written
without the gate (``--min-top1 0``) so that the table shows every variant's figures.

Fidelity is measured with one photo per run (the gate's default), and top-1 agreement also in
batches of 8 ("top1b8"): dynamic int8 quantises activations with one scale per batch.

Timed, per file, at batch 1 and batch 8 on the CPU: "explain" = preprocess (decoded BGR photos
to the input tensor) + inference with attentions + rollout maps, the median over ``--runs``
runs after ``--warmup``. The files take turns run by run (fp32, int8, ..., fp32, int8, ...), so
a shared machine's load falls on all of them alike. Fidelity against the fp32 file is measured
on the 12 shared photos (top-1 agreement, max |dp|, rollout and attention correlation, top-10%
IoU). ``--sweep`` adds the int8 variants that quantise what the default keeps in float
(attention MatMuls, Softmax, LayerNorm): the measurement behind that choice.

Targets (issue 14): int8 explains >= 1.5x faster than fp32 at batch 1, is <= 0.3x its size,
keeps top-1 on the photos and rollout correlation >= 0.98. The exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CHECKPOINT = SHARED / "weights" / "deit_tiny_patch16_224_in1k.safetensors"
PHOTOS = SHARED / "images"


def _export(folder: Path) -> Path:
    from attnmap.export import export_onnx

    if not CHECKPOINT.is_file():
        sys.exit(f"no --fp32 given and no checkpoint at {CHECKPOINT}")
    out = folder / "deit_fp32.onnx"
    export_onnx("deit_tiny_patch16_224", out, checkpoint=CHECKPOINT, log=lambda m: print(m, file=sys.stderr))
    return out


def _variants(sweep: bool) -> list[tuple[str, dict]]:
    base = [("int8 dynamic", {"precision": "int8"}),
            ("int8 static", {"precision": "int8", "mode": "static"}),
            ("fp16", {"precision": "fp16"})]
    if sweep:
        base += [("int8 dyn +attn-matmul", {"precision": "int8", "also": ("attention_matmul",)}),
                 ("int8 static +softmax", {"precision": "int8", "mode": "static", "also": ("softmax",)}),
                 ("int8 static +softmax+LN", {"precision": "int8", "mode": "static", "also": ("softmax", "layernorm")}),
                 ("int8 static +attn-matmul", {"precision": "int8", "mode": "static", "also": ("attention_matmul",)})]
    return base


def _convert(fp32: Path, folder: Path, name: str, spec: dict, x_photos):
    """Write one variant (no gate) and return its path."""
    import onnx

    from attnmap.runtime.model.graph import read_model
    from attnmap.runtime.precision.fp16 import convert_fp16
    from attnmap.runtime.precision.quantize import quantize_int8

    proto = read_model(fp32)
    if spec["precision"] == "fp16":
        out = convert_fp16(proto)
    else:
        mode = spec.get("mode", "dynamic")
        out = quantize_int8(proto, mode=mode, calibration=x_photos if mode == "static" else None,
                            also=spec.get("also", ()))
    path = folder / (name.replace(" ", "_").replace("+", "") + ".onnx")
    onnx.save_model(out, str(path))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fp32", type=Path, default=None, help="DeiT-Tiny fp32 attnmap file (default: export it)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--sweep", action="store_true", help="also the int8 variants quantising more")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    from attnmap import Explainer
    from attnmap.runtime.image.decode import read_image
    from attnmap.runtime.precision.fidelity import measure_fidelity

    with tempfile.TemporaryDirectory(prefix="attnmap-precision-") as tmp:
        folder = Path(tmp)
        fp32 = args.fp32 or _export(folder)
        photos = [read_image(p) for p in sorted(PHOTOS.iterdir())]
        ref = Explainer(fp32, provider="cpu")
        x_photos = ref.preprocess(photos)[0].copy()
        files = {"fp32": fp32}
        for name, spec in _variants(args.sweep):
            files[name] = _convert(fp32, folder, name, spec, x_photos)
        explainers = {name: Explainer(path, provider="cpu") for name, path in files.items()}
        rows = {name: {"size_mb": round(path.stat().st_size / 1e6, 2)} for name, path in files.items()}
        for name, ex in explainers.items():
            if name != "fp32":
                rows[name]["fidelity"] = measure_fidelity(ref, ex, x_photos, source="shared photos").to_dict()
                # dynamic int8 depends on the batch (one activation scale per batch): also batches of 8
                rows[name]["top1_b8"] = measure_fidelity(ref, ex, x_photos, batch=8).top1_agreement
        for batch in [int(b) for b in args.batches.split(",")]:
            images = [photos[i % len(photos)] for i in range(batch)]
            times: dict[str, list[float]] = {n: [] for n in explainers}
            for run in range(args.warmup + args.runs):
                order = list(explainers.items())
                if run % 2:
                    order.reverse()
                for name, ex in order:
                    t0 = time.perf_counter()
                    x, _ = ex.preprocess(images)
                    out = ex.infer(x)
                    ex.maps(out, "rollout")
                    if run >= args.warmup:
                        times[name].append(time.perf_counter() - t0)
            base = statistics.median(times["fp32"])
            for name, t in times.items():
                med = statistics.median(t)
                rows[name][f"b{batch}_ms_per_image"] = round(1e3 * med / batch, 2)
                rows[name][f"b{batch}_speedup"] = round(base / med, 3)
    load = os.getloadavg()
    print(f"DeiT-Tiny, CPU {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"explain = preprocess + inference with attentions + rollout, median of {args.runs} runs")
    batches = [int(b) for b in args.batches.split(",")]
    head = f"{'file':<26}{'MB':>7}{'size':>6}" + "".join(f"{'b%d ms/img' % b:>12}{'x fp32':>8}" for b in batches)
    head += f"{'top1':>7}{'top1b8':>7}{'max|dp|':>9}{'rollout r':>10}{'(min)':>8}{'IoU10':>7}{'attn r':>8}"
    print(head)
    for name, r in rows.items():
        line = f"{name:<26}{r['size_mb']:>7.2f}{r['size_mb'] / rows['fp32']['size_mb']:>6.2f}"
        line += "".join(f"{r[f'b{b}_ms_per_image']:>12.2f}{r[f'b{b}_speedup']:>8.2f}" for b in batches)
        f = r.get("fidelity")
        if f:
            ro, at = f["maps"]["rollout"], f["maps"]["attention"]
            line += (f"{f['top1_agreement']:>7.3f}{r['top1_b8']:>7.3f}{f['max_prob_diff']:>9.4f}{ro['pearson_mean']:>10.4f}"
                     f"{ro['pearson_min']:>8.4f}{ro['iou_top10_mean']:>7.3f}{at['pearson_mean']:>8.4f}")
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"load": load, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
