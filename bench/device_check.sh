#!/usr/bin/env bash
# GPU checks of issue 14: export/convert, parity and fidelity on CUDA, throughput at batch 1/8/32,
# fp32 vs fp16 (and half attentions), and TensorRT where onnxruntime offers it.
#
# Usage, from the project root on a machine with an NVIDIA GPU and onnxruntime-gpu:
#     bash bench/device_check.sh [OUT_DIR]
# Environment:
#     PYTHON      interpreter with attnmap installed (default: .venv/bin/python, else python3)
#     DEIT_ONNX   an fp32 DeiT-Tiny attnmap file; else it is exported from ../shared/data (needs
#                 torch), else the shipped models/shapes_vit.onnx is used (and said so)
#     PHOTOS      images for the fidelity gate (default ../shared/data/images when present)
#     RUNS        timed runs per measurement (default 20)
# Everything goes to OUT_DIR (default ${OUT:-runs/device_check}): one JSON per measurement and
# summary.txt. The script stops at the first failure (set -e); a missing CUDA provider is
# reported as such, not worked around.
set -euo pipefail

OUT_DIR=${1:-${OUT:-runs/device_check}}
mkdir -p "$OUT_DIR"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
RUNS=${RUNS:-20}
SHARED=../shared/data
PHOTOS=${PHOTOS:-}
if [[ -z "$PHOTOS" && -d "$SHARED/images" ]]; then PHOTOS=$SHARED/images; fi
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
attnmap() { "$PYTHON" -m attnmap.cli "$@"; }

say "== machine"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found") \
    | tee -a "$SUMMARY"
"$PYTHON" - <<'PY' | tee -a "$SUMMARY"
import onnxruntime as ort
print("onnxruntime", ort.__version__, "device", ort.get_device(), "providers", ort.get_available_providers())
PY
if ! "$PYTHON" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
    say "no CUDAExecutionProvider in this onnxruntime: install onnxruntime-gpu; nothing else to check"
    exit 1
fi
HAS_TRT=$("$PYTHON" -c "import onnxruntime as o; print(int('TensorrtExecutionProvider' in o.get_available_providers()))")

say "== files"
FP32=${DEIT_ONNX:-}
if [[ -z "$FP32" ]]; then
    if [[ -f "$SHARED/weights/deit_tiny_patch16_224_in1k.safetensors" ]] && "$PYTHON" -c "import torch, timm" 2>/dev/null; then
        FP32="$OUT_DIR/deit_fp32.onnx"
        attnmap export deit_tiny_patch16_224 --checkpoint "$SHARED/weights/deit_tiny_patch16_224_in1k.safetensors" \
            -o "$FP32" 2>&1 | tail -n 2 | tee -a "$SUMMARY"
    else
        FP32=models/shapes_vit.onnx
        say "no DEIT_ONNX, and no checkpoint or torch to export one: using the shipped $FP32 (not DeiT-Tiny)"
    fi
fi
CHECK=()
if [[ -n "$PHOTOS" ]]; then CHECK=(--check "$PHOTOS"); fi
# conversion and its gate run on the CPU (onnxruntime's quantiser and float16 converter)
attnmap quantize "$FP32" --precision fp16 -o "$OUT_DIR/fp16.onnx" "${CHECK[@]}" 2>&1 | tee -a "$SUMMARY"
attnmap quantize "$FP32" --precision fp16 --attn-dtype fp16 -o "$OUT_DIR/fp16a.onnx" "${CHECK[@]}" 2>&1 | tee -a "$SUMMARY"
attnmap quantize "$FP32" --precision int8 -o "$OUT_DIR/int8.onnx" "${CHECK[@]}" 2>&1 | tee -a "$SUMMARY" \
    || say "int8 failed its gate (see above); continuing without it"

say "== parity and fidelity on CUDA (against fp32 on the CPU)"
"$PYTHON" - "$FP32" "$OUT_DIR" "${PHOTOS:-}" <<'PY' | tee -a "$SUMMARY"
import json, sys
from pathlib import Path
import numpy as np
from attnmap import Explainer
from attnmap.runtime.precision.convert import load_images, synthetic_images
from attnmap.runtime.precision.fidelity import measure_fidelity

fp32, out, photos = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
cpu = Explainer(fp32, provider="cpu")
x = load_images(photos, cpu.meta, 64) if photos else synthetic_images(cpu.meta)
gpu = Explainer(fp32, provider="cuda")
assert gpu.model.provider == "CUDAExecutionProvider", gpu.model.provider
a, b = cpu.infer(x[:8]), gpu.infer(x[:8])
parity = {"logits_max_abs": float(np.abs(a.logits - b.logits).max()),
          "attentions_max_abs": float(np.abs(a.attentions - b.attentions).max())}
print("fp32 cuda vs cpu:", json.dumps(parity))
report = {"parity_fp32": parity}
for name in ("fp32", "fp16", "fp16a", "int8"):
    path = fp32 if name == "fp32" else out / f"{name}.onnx"
    if not Path(path).is_file():
        continue
    try:
        cand = Explainer(path, provider="cuda")
    except Exception as exc:  # int8 MatMulInteger has no CUDA kernel: the session may refuse or place it on CPU
        print(f"{name} on cuda: {type(exc).__name__}: {exc}")
        continue
    fid = measure_fidelity(cpu, cand, x, source=photos or "synthetic")
    report[name] = fid.to_dict()
    print(f"{name} on cuda vs fp32 on cpu: {fid.summary()}")
(out / "fidelity_cuda.json").write_text(json.dumps(report, indent=1))
PY

say "== throughput on CUDA (batch 1/8/32; stage medians, explains/s)"
FILES=("$FP32" "$OUT_DIR/fp16.onnx" "$OUT_DIR/fp16a.onnx")
if [[ -f "$OUT_DIR/int8.onnx" ]]; then FILES+=("$OUT_DIR/int8.onnx"); fi
for B in 1 8 32; do
    for F in "${FILES[@]}"; do
        attnmap bench --model "$F" --provider cuda --batch-size "$B" --runs "$RUNS" --json \
            > "$OUT_DIR/bench_cuda_b${B}_$(basename "$F" .onnx).json"
    done
    say "-- batch $B, side by side:"
    COMPARE=$(IFS=,; echo "${FILES[*]:1}")
    attnmap bench --model "$FP32" --compare "$COMPARE" --provider cuda --batch-size "$B" --runs "$RUNS" \
        | tee -a "$SUMMARY"
done
say "-- the same on the CPU at batch 1 and 8, for reference:"
for B in 1 8; do
    attnmap bench --model "$FP32" --compare "$(IFS=,; echo "${FILES[*]:1}")" --provider cpu --batch-size "$B" \
        --runs "$RUNS" | tee -a "$SUMMARY"
done

if [[ "$HAS_TRT" == 1 ]]; then
    say "== TensorRT (engine cache in $OUT_DIR/trt): attention outputs vs plain inference"
    export ATTNMAP_TRT_CACHE="$OUT_DIR/trt"
    for B in 1 8; do
        # the plain_inference stage is the same graph without attention outputs: their ratio says
        # what the attention outputs cost TensorRT (its fused attention needs them gone)
        attnmap bench --model "$FP32" --provider tensorrt --batch-size "$B" --runs "$RUNS" | tee -a "$SUMMARY"
        attnmap bench --model "$FP32" --provider cuda --batch-size "$B" --runs "$RUNS" | tee -a "$SUMMARY"
    done
else
    say "== TensorRT: not offered by this onnxruntime; not measured"
fi
say "done: $OUT_DIR"
