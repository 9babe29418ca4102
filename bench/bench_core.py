"""Core overhead benchmark: what do attention outputs + rollout cost over plain inference?

Measures, for one model at batch 1 on the CPU provider:
  * attention model: onnxruntime with ``logits`` + ``attentions`` outputs, then rollout;
  * plain model: the SAME timm model exported without attention outputs (``attentions=False``);
  * rollout alone on the attention tensor.
Runs are interleaved (attn, plain, attn, plain, ...) so that a machine getting busier or quieter
shifts both sides alike; figures are medians and p90 over ``--runs`` after ``--warmup``.

Usage (exports both files with torch unless given):
    .venv/bin/python bench/bench_core.py --checkpoint ../shared/data/weights/deit_tiny_patch16_224_in1k.safetensors
    .venv/bin/python bench/bench_core.py --model deit.onnx --plain deit_plain.onnx --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import os  # noqa: E402

# As the CLI does: one BLAS thread, set before NumPy loads (see cli.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

from attnmap.runtime.methods import attention_maps  # noqa: E402
from attnmap.runtime.model.session import OnnxModel, physical_cores  # noqa: E402


def export_pair(model_name: str, checkpoint: str | None, folder: Path, heads: str) -> tuple[Path, Path]:
    """Export the attention model and the logits-only model in a child process.

    The measuring process must look like a deployment: the runtime never imports torch, and a
    process that has (its thread pools, its allocations) times onnxruntime several percent
    slower here.
    """
    import subprocess

    attn, plain = folder / "attn.onnx", folder / "plain.onnx"
    code = ("import sys; from attnmap.export.to_onnx import export_onnx; q = lambda m: None; "
            "name, ckpt, heads, attn, plain = sys.argv[1:6]; ckpt = ckpt or None; "
            "export_onnx(name, attn, checkpoint=ckpt, heads=heads, log=q); "
            "export_onnx(name, plain, checkpoint=ckpt, attentions=False, log=q)")
    subprocess.run([sys.executable, "-c", code, model_name, checkpoint or "", heads, str(attn), str(plain)],
                   check=True, cwd=Path(__file__).resolve().parents[1])
    return attn, plain


def _ms(values: list[float]) -> dict[str, float]:
    v = np.asarray(values) * 1e3
    return {"median": round(float(np.median(v)), 3), "p90": round(float(np.percentile(v, 90)), 3)}


def measure(attn_path: Path, plain_path: Path, runs: int, warmup: int, threads: int | None) -> dict:
    """Interleaved timings of the attention model + rollout against the plain model."""
    attn = OnnxModel(attn_path, provider="cpu", threads=threads)
    plain = OnnxModel(plain_path, provider="cpu", threads=threads)
    if plain.meta.outputs != ("logits",):
        raise SystemExit(f"{plain_path} has outputs {plain.meta.outputs}; export it with attentions=False")
    layout = attn.meta.layout
    x = np.random.default_rng(0).standard_normal((1, 3, *attn.meta.image_size)).astype(np.float32)
    for _ in range(warmup):
        attention_maps("rollout", attn.run(x).attentions, layout)
        plain.run(x)
    t_attn, t_plain, t_infer = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = attn.run(x)
        t1 = time.perf_counter()
        attention_maps("rollout", out.attentions, layout)
        t2 = time.perf_counter()
        # Let go of the outputs before the next run, as the runtime's own loops do (Explainer,
        # live, video): their buffers are then reused rather than a second set being kept
        # (runtime/buffers.py).
        del out
        plain.run(x)
        t3 = time.perf_counter()
        t_infer.append(t1 - t0)
        t_attn.append(t2 - t0)
        t_plain.append(t3 - t2)
    a = attn.run(x).attentions
    t_roll = []
    for _ in range(max(200, runs)):
        t0 = time.perf_counter()
        attention_maps("rollout", a, layout)
        t_roll.append(time.perf_counter() - t0)
    result = {
        "model": attn.meta.model_name, "threads": threads or physical_cores(), "runs": runs,
        "attentions_shape": list(a.shape),
        "attention_inference_ms": _ms(t_infer),
        "attention_inference_plus_rollout_ms": _ms(t_attn),
        "plain_inference_ms": _ms(t_plain),
        "rollout_ms": _ms(t_roll),
    }
    result["ratio"] = round(result["attention_inference_plus_rollout_ms"]["median"]
                            / result["plain_inference_ms"]["median"], 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="attnmap ONNX file with attention outputs")
    parser.add_argument("--plain", type=Path, help="the same model exported with --no-attentions")
    parser.add_argument("--model-name", default="deit_tiny_patch16_224", help="timm name to export when no files")
    parser.add_argument("--checkpoint", help="weights for the export (default: random init)")
    parser.add_argument("--heads", default="none", choices=("none", "mean", "max", "min"),
                        help="head fusion of the exported attention model (default: all heads kept)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model and args.plain:
            attn_path, plain_path = args.model, args.plain
        else:
            attn_path, plain_path = export_pair(args.model_name, args.checkpoint, Path(tmp), args.heads)
        r = measure(attn_path, plain_path, args.runs, args.warmup, args.threads)
    if args.json:
        print(json.dumps(r))
        return
    print(f"{r['model']}  batch 1  CPU, {r['threads']} threads  {r['runs']} interleaved runs  "
          f"attentions {tuple(r['attentions_shape'])}")
    for key in ("plain_inference_ms", "attention_inference_ms", "attention_inference_plus_rollout_ms", "rollout_ms"):
        print(f"{key:<40} median {r[key]['median']:8.3f}  p90 {r[key]['p90']:8.3f}")
    print(f"(inference with attentions + rollout) / plain inference = {r['ratio']:.3f}  (target <= 1.10)")
    print(f"rollout alone: median {r['rollout_ms']['median']:.3f} ms  (target <= 1 ms)")


if __name__ == "__main__":
    main()
