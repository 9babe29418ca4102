"""Class-specific explanation latency against plain inference (attention gradients in the graph).

Usage (from the project root)::

    .venv/bin/python bench/bench_gradients.py                   # exports DeiT-Tiny twice first (needs torch)
    .venv/bin/python bench/bench_gradients.py --model deit_grads.onnx --plain deit_plain.onnx --runs 50

Without ``--model``/``--plain`` it exports the real DeiT-Tiny checkpoint from ../shared/data
into a temporary folder: once with ``gradients=True`` and once with ``attentions=False`` (the
plain-inference baseline, the same weights with the logits only).

It times, at batch 1 on the CPU, medians over ``--runs`` runs after ``--warmup`` runs:

* plain inference: the logits-only file (``--plain``), and the gradient file's own pruned
  logits-only copy (``Explainer.infer_plain``);
* the class-specific explanation, stage by stage and end to end: preprocess (BGR photo to the
  input tensor) + inference with gradients (``target`` = the top-1 class) + ``chefer`` maps.

The target is end-to-end explain <= 3.5 x plain inference. The runs interleave the two
measurements (one plain run, one explain run, ...), so that the load of a shared machine falls
on both alike. The exit code is 0 whether or not the target is met (a measurement, not a test).

``--blas-threads`` (default 1) sets ``OPENBLAS_NUM_THREADS`` before NumPy loads: onnxruntime
already uses every core, and OpenBLAS threads for chefer's small (1 x N) @ (N x N) products
would only fight it.
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

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CHECKPOINT = SHARED / "weights" / "deit_tiny_patch16_224_in1k.safetensors"
PHOTO = SHARED / "images" / "vitexplain_both.png"
TARGET_RATIO = 3.5


def _export_pair(folder: Path) -> tuple[Path, Path]:
    """DeiT-Tiny with gradients and without attentions, from the shared checkpoint."""
    from attnmap.export import export_onnx

    if not CHECKPOINT.is_file():
        raise SystemExit(f"no --model given and the checkpoint {CHECKPOINT} is missing; pass --model and --plain")
    grads = export_onnx("deit_tiny_patch16_224", folder / "deit_tiny_grads.onnx", checkpoint=CHECKPOINT,
                        gradients=True, log=lambda line: print(f"  {line}"))
    plain = export_onnx("deit_tiny_patch16_224", folder / "deit_tiny_plain.onnx", checkpoint=CHECKPOINT,
                        attentions=False, log=lambda line: print(f"  {line}"))
    print(f"  export seconds: gradients {grads.seconds:.1f}, plain {plain.seconds:.1f}")
    return grads.path, plain.path


def _graph_summary(path: Path) -> dict:
    import onnx

    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    weights = sum(onnx.numpy_helper.to_array(i).nbytes for i in graph.initializer)
    return {"nodes": len(ops), "softmax": ops.count("Softmax"), "matmul_gemm": ops.count("MatMul") + ops.count("Gemm"),
            "weight_bytes": weights, "file_bytes": path.stat().st_size}


def _median_ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def measure(grads_path: Path, plain_path: Path, image: Path, *, runs: int, warmup: int,
            threads: int | None) -> dict:
    """Interleaved timings of plain inference and class-specific explanation, batch 1.

    Returns:
        ``{"ms": {stage: median ms}, "ratio": explain / plain, ...}``.
    """
    import numpy as np
    import onnxruntime as ort

    from attnmap import Explainer
    from attnmap.runtime.image.preprocess import read_image
    from attnmap.runtime.model.session import session_options

    ex = Explainer(grads_path, provider="cpu", threads=threads)
    plain = ort.InferenceSession(str(plain_path), sess_options=session_options(threads),
                                 providers=["CPUExecutionProvider"])
    img = read_image(image)
    x, _ = ex.preprocess([img])
    top1 = int(ex.infer_plain(x)[0].argmax())
    target = np.array([top1], dtype=np.int64)
    times: dict[str, list[float]] = {k: [] for k in ("plain", "infer_plain", "preprocess", "infer_grads",
                                                     "chefer", "explain")}
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        plain.run(["logits"], {"input": x})
        t1 = time.perf_counter()
        ex.infer_plain(x)
        t2 = time.perf_counter()
        xb, _ = ex.preprocess([img])
        t3 = time.perf_counter()
        out = ex.infer(xb, target=target)
        t4 = time.perf_counter()
        ex.maps(out, "chefer")
        t5 = time.perf_counter()
        if i >= warmup:
            times["plain"].append(t1 - t0)
            times["infer_plain"].append(t2 - t1)
            times["preprocess"].append(t3 - t2)
            times["infer_grads"].append(t4 - t3)
            times["chefer"].append(t5 - t4)
            times["explain"].append(t5 - t2)
    ms = {k: _median_ms(v) for k, v in times.items()}
    return {"ms": ms, "ratio": ms["explain"] / ms["plain"], "ratio_infer_plain": ms["explain"] / ms["infer_plain"],
            "infer_ratio": ms["infer_grads"] / ms["plain"], "target_class": top1, "label": ex.meta.label(top1),
            "runs": runs, "warmup": warmup, "threads": ex.model.session.get_session_options().intra_op_num_threads}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="attnmap .onnx exported with gradients")
    p.add_argument("--plain", type=Path, default=None, help="the same model exported with attentions=False")
    p.add_argument("--image", type=Path, default=PHOTO, help="BGR photo to explain (default: the dog-and-cat photo)")
    p.add_argument("--runs", type=int, default=30, help="timed runs (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: physical cores)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OPENBLAS_NUM_THREADS for NumPy (default 1; 0 keeps OpenBLAS's own default)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if (args.model is None) != (args.plain is None):
        p.error("give both --model and --plain, or neither (then DeiT-Tiny is exported)")
    if args.runs < 30:
        p.error(f"--runs must be at least 30 for a median worth reporting; got {args.runs}")
    if args.blas_threads > 0:
        if "numpy" in sys.modules:
            p.error("--blas-threads must be applied before NumPy is imported; run this file as a script")
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI does, before NumPy loads

    with tempfile.TemporaryDirectory(prefix="attnmap_bench_") as tmp:
        if args.model is None:
            print("exporting DeiT-Tiny (gradients=True and attentions=False) ...")
            grads_path, plain_path = _export_pair(Path(tmp))
        else:
            grads_path, plain_path = args.model, args.plain
        graphs = {"gradients": _graph_summary(grads_path), "plain": _graph_summary(plain_path)}
        result = measure(grads_path, plain_path, args.image, runs=args.runs, warmup=args.warmup,
                         threads=args.threads)
    result["graphs"] = graphs

    ms = result["ms"]
    print(f"DeiT-Tiny, batch 1, CPU ({result['threads']} onnxruntime threads), medians of {result['runs']} runs "
          f"after {result['warmup']}; target class {result['target_class']} ({result['label']})")
    print(f"  plain inference (logits-only file)       {ms['plain']:8.2f} ms")
    print(f"  plain inference (pruned gradient file)   {ms['infer_plain']:8.2f} ms")
    print(f"  preprocess                               {ms['preprocess']:8.2f} ms")
    print(f"  inference with gradients                 {ms['infer_grads']:8.2f} ms  "
          f"({result['infer_ratio']:.2f} x plain)")
    print(f"  chefer maps                              {ms['chefer']:8.2f} ms")
    print(f"  class-specific explain, end to end       {ms['explain']:8.2f} ms")
    verdict = "met" if result["ratio"] <= TARGET_RATIO else "NOT met"
    print(f"  explain / plain = {result['ratio']:.2f} (target <= {TARGET_RATIO}: {verdict}); "
          f"explain / pruned plain = {result['ratio_infer_plain']:.2f}")
    for name, g in graphs.items():
        print(f"  {name:9s} graph: {g['nodes']} nodes, {g['softmax']} Softmax, {g['matmul_gemm']} MatMul/Gemm, "
              f"weights {g['weight_bytes'] / 2**20:.2f} MiB, file {g['file_bytes'] / 2**20:.2f} MiB")
    if args.json is not None:
        from attnmap.runtime.core.files import write_bytes

        write_bytes(args.json, json.dumps(result, indent=1).encode())
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
