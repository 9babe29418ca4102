"""Every file kind on every execution provider present: explain speed with its fidelity beside it.

Usage (from the project root, in a venv whose onnxruntime offers the providers to compare:
onnxruntime-openvino offers the OpenVINO provider beside the CPU)::

    python bench/providers.py                                  # the shipped model, synthetic images
    python bench/providers.py --fp32 deit.onnx --grads deit_grads.onnx --images ../shared/data/images

Files: the fp32 file and, made from it with the runtime's own precision package without the gate
(so that the table shows every variant), fp16, int8 dynamic and int8 static (QDQ, calibrated on
the images); with ``--grads``, the gradient file and its fp16 and int8 dynamic variants.
Providers: every one of ``ort.get_available_providers()`` attnmap can choose (``--providers``
narrows them).

Timed at batch 1, "explain" = inference with attentions (and gradients) + one map (rollout,
``--grad-method`` for the gradient files) on a preprocessed image, the median over ``--runs``
runs after ``--warmup``; "plain" = the fp32 file's logits-only graph on the CPU provider (what a
deployment without explanations runs), the unit of the ``x plain`` column. Every set-up runs
once per round, in turns (interleaved in one process), so a shared machine's load falls on all
alike; the load average is printed before and after.

Fidelity beside each speed: against the fp32 file on the CPU provider, on the images (one per
run): top-1 agreement, max |dp|, and the timed method's mean (worst) Pearson r and top-10% IoU.
The exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "shapes_vit.onnx"


def _variants(grads: bool) -> list[tuple[str, dict]]:
    out = [("fp16", {"precision": "fp16"}), ("int8 dynamic", {"precision": "int8"})]
    return out if grads else out + [("int8 static", {"precision": "int8", "mode": "static"})]


def _convert(fp32: Path, folder: Path, name: str, spec: dict, calibration) -> Path:
    """One variant of ``fp32``, written without the gate."""
    import onnx

    from attnmap.runtime.model.graph import read_model
    from attnmap.runtime.model.inference_graph import inference_graph
    from attnmap.runtime.precision.fp16 import convert_fp16
    from attnmap.runtime.precision.quantize import quantize_int8

    proto = inference_graph(read_model(fp32))
    if spec["precision"] == "fp16":
        out = convert_fp16(proto)
    else:
        mode = spec.get("mode", "dynamic")
        out = quantize_int8(proto, mode=mode, calibration=calibration if mode == "static" else None)
    from attnmap.runtime.core.meta import ModelMeta

    meta = ModelMeta.from_props({p.key: p.value for p in proto.metadata_props}, str(fp32))
    onnx.helper.set_model_props(out, meta.replace(precision=spec["precision"]).to_props())
    path = folder / f"{fp32.stem}_{name.replace(' ', '_')}.onnx"
    onnx.save_model(out, str(path))
    return path


def _images(source: str | None, meta, n: int):
    from attnmap.runtime.precision.convert import load_images, synthetic_images

    if source:
        return load_images(source, meta, n), source
    return synthetic_images(meta, n), "synthetic shapes"


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, default=SHIPPED, help="the fp32 attnmap file (default: the shipped one)")
    parser.add_argument("--grads", type=Path, default=None, help="the same model exported with gradients")
    parser.add_argument("--images", default=None, help="image source for calibration and fidelity (default: synthetic)")
    parser.add_argument("--count", type=int, default=32, help="images read at most (default 32)")
    parser.add_argument("--providers", default=None, help="comma-separated short names (default: all present)")
    parser.add_argument("--method", default="rollout")
    parser.add_argument("--grad-method", default="chefer")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)

    import numpy as np
    import onnxruntime as ort

    from attnmap import Explainer
    from attnmap.runtime.core.errors import ModelError
    from attnmap.runtime.model.providers import ORT_NAMES, short_name
    from attnmap.runtime.precision.fidelity import measure_fidelity

    present = [short_name(p) for p in ort.get_available_providers() if short_name(p) in ORT_NAMES]
    providers = args.providers.split(",") if args.providers else present
    print(f"onnxruntime {ort.__version__}, providers {providers}; load average before: {_load()}", flush=True)
    ref = Explainer(args.fp32, provider="cpu")
    x, where = _images(args.images, ref.meta, args.count)
    folder = Path(tempfile.mkdtemp(prefix="attnmap-providers-"))
    files = [("fp32", args.fp32, args.method)]
    sources = [("", args.fp32, args.method, _variants(False))]
    if args.grads:
        files += [("grads fp32", args.grads, args.grad_method)]
        sources.append(("grads ", args.grads, args.grad_method, _variants(True)))
    for prefix, src, method, variants in sources:
        for name, spec in variants:
            try:
                files.append((prefix + name, _convert(src, folder, name, spec, x), method))
            except ModelError as exc:  # this onnxruntime's converter cannot: a row, not the end
                print(f"{prefix}{name}: cannot convert: {exc}", flush=True)
    grads_ref = Explainer(args.grads, provider="cpu") if args.grads else None
    setups = []
    for kind, path, method in files:
        for provider in providers:
            try:
                explainer = Explainer(path, provider=provider)
            except Exception as exc:  # a provider that cannot load a kind is a row, not the end
                print(f"{kind} on {provider}: cannot load: {exc}", flush=True)
                continue
            reference = grads_ref if kind.startswith("grads") else ref
            fid = measure_fidelity(reference, explainer, x, source=where)
            setups.append((kind, provider, method, explainer, fid))
    plain = Explainer(args.fp32, provider="cpu")
    x1 = x[:1]
    times: dict[int, list[float]] = {i: [] for i in range(len(setups) + 1)}

    def run(i: int) -> None:
        if i == len(setups):
            plain.infer_plain(x1)
            return
        _, _, method, explainer, _ = setups[i]
        explainer.maps(explainer.infer(x1), method)

    for _ in range(args.warmup):
        for i in times:
            run(i)
    for _ in range(args.runs):
        for i in times:
            t = time.perf_counter()
            run(i)
            times[i].append(time.perf_counter() - t)
    base = statistics.median(times[len(setups)]) * 1e3
    print(f"\n{ref.meta.model_name}, {len(x)} images ({where}), batch 1, {args.runs} interleaved runs; "
          f"load average after: {_load()}")
    print(f"plain fp32 inference on the CPU provider (logits only): {base:.2f} ms\n")
    print("| file | provider | method | explain ms | x plain fp32 CPU | top-1 | max abs dp | r mean (worst) | top-10% IoU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, (kind, provider, method, _, fid) in enumerate(setups):
        ms = statistics.median(times[i]) * 1e3
        m = fid.maps.get(method)
        r = f"{m.pearson_mean:.4f} ({m.pearson_min:.4f})" if m else "-"
        iou = f"{m.iou_top10_mean:.3f}" if m else "-"
        print(f"| {kind} | {provider} | {method} | {ms:.2f} | {ms / base:.2f} | {fid.top1_agreement:.3f} | "
              f"{fid.max_prob_diff:.4f} | {r} | {iou} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
