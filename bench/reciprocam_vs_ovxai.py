"""attnmap's ``reciprocam`` against openvino-xai's own ViT-ReciproCAM, on the same DeiT-Tiny file.

Runs in a separate venv that has openvino-xai and onnxruntime beside each other (never the
project's: openvino-xai pins its own openvino and torch-free deps), with attnmap on the path::

    python3 -m venv /work/venv-ovxai
    /work/venv-ovxai/bin/pip install openvino-xai onnx numpy opencv-python-headless onnxruntime
    PYTHONPATH=/path/to/dir-holding-attnmap /work/venv-ovxai/bin/python bench/reciprocam_vs_ovxai.py \
        deit_tail.onnx ../shared/data/images

``deit_tail.onnx`` is ``attnmap export deit_tiny_patch16_224 --checkpoint ... --tail``. openvino-xai
gets the same file cut to its ``logits`` output (the graph attnmap's plain inference runs), read
by OpenVINO; its ``ViTReciproCAM`` is built with its defaults (target: the residual Add in front
of the last block, Gaussian 3x3 masks, class token kept, final norm) and without its [0, 255]
scaling, and compiled for the CPU at fp32 (``INFERENCE_PRECISION_HINT=f32``) unless ``--precision
default``. Both see the same preprocessed input (attnmap's preprocessing) and explain the class
attnmap predicts. Per image: Pearson r of the two 14x14 maps, IoU of their top-10% patches, and
whether their argmax patches agree; then the means and each side's time per image.

Not imported by the tests.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def ovxai_maps(onnx_path: Path, xs: list[np.ndarray], classes: list[int], precision: str) -> tuple[list, float]:
    """openvino-xai ViT-ReciproCAM maps (gh, gw) of ``classes``, raw (unscaled), and seconds per image."""
    import openvino as ov
    from openvino_xai.methods.white_box.recipro_cam import ViTReciproCAM

    from attnmap.runtime.model.graph import logits_only, read_model

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "logits_only.onnx"
        onnx.save_model(logits_only(read_model(onnx_path)), str(plain))
        model = ov.Core().read_model(str(plain))
    method = ViTReciproCAM(model, embed_scaling=False, prepare_model=False)
    xai_model = method.prepare_model(load_model=False)
    config = {"INFERENCE_PRECISION_HINT": "f32"} if precision == "f32" else {}
    compiled = ov.Core().compile_model(xai_model, "CPU", config)
    out = compiled.output("saliency_map")
    compiled([xs[0]])  # warm-up
    maps, started = [], time.perf_counter()
    for x, c in zip(xs, classes):
        sal = compiled([x])[out]  # (1, C, gh, gw): the logit of class c for each mosaic copy
        maps.append(np.asarray(sal[0, c], np.float64))
    return maps, (time.perf_counter() - started) / len(xs)


def top_iou(a: np.ndarray, b: np.ndarray, frac: float = 0.1) -> float:
    k = max(1, int(round(frac * a.size)))
    ta = set(np.argsort(a.ravel())[-k:].tolist())
    tb = set(np.argsort(b.ravel())[-k:].tolist())
    return len(ta & tb) / len(ta | tb)


def norm(m: np.ndarray) -> np.ndarray:
    return (m - m.min()) / (m.max() - m.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an attnmap file exported with --tail")
    parser.add_argument("images", type=Path, help="folder of photos")
    parser.add_argument("--precision", choices=("f32", "default"), default="f32",
                        help="OpenVINO's inference precision: f32 forced, or the CPU plugin's default")
    parser.add_argument("--threads", type=int, default=None, help="attnmap's CPU threads")
    args = parser.parse_args()

    import cv2

    from attnmap import Explainer

    ex = Explainer(args.model, provider="cpu", threads=args.threads)
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    xs, classes, ours = [], [], []
    for p in paths:
        x, _ = ex.preprocess([cv2.imread(str(p))])
        xs.append(x)
        classes.append(int(ex.infer_plain(x)[0].argmax()))
    ex.maps(ex.infer(xs[0]), "reciprocam", classes=[classes[0]])  # warm-up (the tail session)
    started = time.perf_counter()
    for x, c in zip(xs, classes):
        ours.append(ex.maps(ex.infer(x), "reciprocam", classes=[c])[0].astype(np.float64))
    ours_s = (time.perf_counter() - started) / len(xs)
    plain_started = time.perf_counter()
    for x in xs:
        ex.infer_plain(x)
    plain_s = (time.perf_counter() - plain_started) / len(xs)
    theirs, theirs_s = ovxai_maps(args.model, xs, classes, args.precision)

    rows = []
    print(f"{'image':<24} {'class':>5} {'pearson r':>10} {'top10% IoU':>11} {'argmax':>7}")
    for p, c, a, b in zip(paths, classes, ours, theirs):
        r = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
        iou = top_iou(a, b)
        same = int(a.argmax()) == int(b.argmax())
        rows.append((r, iou, same))
        print(f"{p.name:<24} {c:>5} {r:>10.5f} {iou:>11.3f} {str(same):>7}")
    r, iou, same = (np.array(v, np.float64) for v in zip(*rows))
    print(f"{'mean':<24} {'':>5} {r.mean():>10.5f} {iou.mean():>11.3f} {int(same.sum()):>4}/{len(same)}")
    worst = max(float(np.abs(norm(a) - norm(b)).max()) for a, b in zip(ours, theirs))
    print(f"min pearson r {r.min():.7f}; largest |difference| of the min-max normalised maps {worst:.2e}")
    print(f"time per image: attnmap reciprocam {ours_s * 1e3:.1f} ms ({ours_s / plain_s:.1f}x attnmap plain "
          f"inference {plain_s * 1e3:.1f} ms); openvino-xai ViTReciproCAM ({args.precision}) {theirs_s * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
