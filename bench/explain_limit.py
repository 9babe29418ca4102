"""End to end: what a full explanation costs over the plain inference a user runs anyway.

Every row is timed as a user calls it, in one torch-free process, interleaved round by round
(every row once per round, in a new seeded order each round), so that a machine getting busier
or quieter shifts every row alike, and no row always follows the same one. Figures are medians
over ``--rounds`` after ``--warmup``; each ratio is a row's median over the baseline's median.

The baseline is plain inference the way a user runs it: an ``onnxruntime.InferenceSession`` of
a logits-only file (``attnmap export --no-attentions``, or, for a shipped model, the file's
graph pruned to its logits), intra-op threads = physical cores, spinning off, fed an input
that is already preprocessed. Everything the explanation adds is inside the measured rows:
preprocessing, inference with attention outputs, the map, top-k and the result objects, and
in the overlay row the heatmap at frame size and the drawing.

Two rows break the 224 row down, with no goal of their own: inference with the attention
outputs alone, then with the rollout map, both on the baseline's preprocessed input.

Rows (issue 18's table):
  * ``explain(img224, fit="squash")``: rollout with its defaults;
  * ``explain(frame640x480)``: the default crop fit;
  * ``explain(img224, fit="squash", head_fusion="max", discard_ratio=0.9)``;
  * ``explain(frame640x480)`` then ``.overlay()``;
  * batch 8: ``explain([8 x img224], fit="squash")`` per image against plain batch 8 per image.

Usage:
    .venv/bin/python bench/explain_limit.py --checkpoint ../shared/data/weights/deit_tiny_patch16_224_in1k.safetensors
    .venv/bin/python bench/explain_limit.py --model deit.onnx --plain deit_plain.onnx
    .venv/bin/python bench/explain_limit.py --shipped          # the shipped default model
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

# As the CLI does: one BLAS thread, set before NumPy loads (see cli.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from attnmap import Explainer  # noqa: E402
from attnmap.runtime.model.graph import logits_only, read_model  # noqa: E402
from attnmap.runtime.model.registry import resolve_model  # noqa: E402
from attnmap.runtime.model.session import physical_cores  # noqa: E402
from bench_core import export_pair  # noqa: E402  (bench/ is this script's folder)

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "images"


def pruned_plain(model: Path, folder: Path) -> Path:
    """A logits-only copy of ``model`` (what a file exported without attentions runs)."""
    out = folder / "plain.onnx"
    out.write_bytes(logits_only(read_model(model)).SerializeToString())
    return out


def user_session(path: Path, threads: int) -> ort.InferenceSession:
    """An onnxruntime session as the brief tells users to make one on CPU."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def images(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A real photo at the model's input size, the same photo as a 640x480 frame, and eight
    photos at the input size (synthetic noise where ../shared is absent)."""
    paths = sorted(p for p in PHOTOS.glob("*") if p.suffix.lower() in (".jpg", ".png")) if PHOTOS.is_dir() else []
    photos = [cv2.imread(str(p)) for p in paths[:8]]
    photos = [p for p in photos if p is not None]
    if not photos:
        rng = np.random.default_rng(0)
        photos = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(8)]
    h, w = size
    small = [cv2.resize(p, (w, h), interpolation=cv2.INTER_AREA) for p in photos]
    while len(small) < 8:
        small.append(small[len(small) % len(photos)])
    frame = cv2.resize(photos[0], (640, 480), interpolation=cv2.INTER_AREA)
    return small[0], frame, small[:8]


def measure(rows: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds of each row, interleaved round by round, in a new order each round.

    In a fixed order each row always follows the same one, so whatever its predecessor leaves
    behind (caches, allocator, sleeping threads) is part of its figure: the baseline, first in
    the round, always followed the batch-8 explanation. A seeded shuffle per round gives every
    row every predecessor alike.
    """
    for _ in range(warmup):
        for fn in rows.values():
            fn()
    keys = list(rows)
    order = np.random.default_rng(18)
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(rounds):
        for i in order.permutation(len(keys)):
            key = keys[i]
            t0 = time.perf_counter()
            rows[key]()
            times[key].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def explain_calls(img: np.ndarray, frame: np.ndarray, eight: list[np.ndarray]) -> dict[str, Callable[[Explainer], object]]:
    """Issue 18's calls, each given the explainer to make it with (bench/ab_revision.py makes
    them with two); ``explain224_b8`` explains 8 images."""
    return {
        "explain224": lambda ex: ex.explain(img, fit="squash"),
        "explain640": lambda ex: ex.explain(frame),
        "explain224_max09": lambda ex: ex.explain(img, fit="squash", head_fusion="max", discard_ratio=0.9),
        "explain640_overlay": lambda ex: ex.explain(frame).overlay(),
        "explain224_b8": lambda ex: ex.explain(eight, fit="squash"),
    }


def run(model: Path, plain: Path, rounds: int, warmup: int, threads: int) -> list[tuple[str, float, float, float | None]]:
    """(row, median ms per image, ratio to its baseline, goal) for every row of the table."""
    ex = Explainer(model, provider="cpu", threads=threads)
    sess = user_session(plain, threads)
    name = sess.get_inputs()[0].name
    img, frame, eight = images(ex.meta.image_size)
    x1, _ = ex.preprocess([img], fit="squash")
    x8, _ = ex.preprocess(eight, fit="squash")
    x1, x8 = x1.copy(), x8.copy()
    rows: dict[str, Callable[[], object]] = {
        "plain": lambda: sess.run(["logits"], {name: x1}),
        "plain_b8": lambda: sess.run(["logits"], {name: x8}),
    }
    for key, call in explain_calls(img, frame, eight).items():
        rows[key] = lambda call=call: call(ex)
    # Where the 224 row's time goes, on the same preprocessed input as the baseline: inference
    # with the attention outputs alone, then with the rollout map too. What is left of the row
    # is preprocessing and the result objects.
    rows["infer_attn"] = lambda: ex.infer(x1)
    rows["infer_rollout"] = lambda: ex.maps(ex.infer(x1), "rollout")
    med = measure(rows, rounds, warmup)
    base, base8 = med["plain"], med["plain_b8"]
    small = f"img{img.shape[0]}" if img.shape[0] == img.shape[1] else f"img{img.shape[1]}x{img.shape[0]}"
    table = [
        ("plain inference (logits-only file, batch 1)", base, 1.0, None),
        ("  inference with attention outputs (preprocessed input)", med["infer_attn"], med["infer_attn"] / base, None),
        ("  + rollout map (preprocessed input)", med["infer_rollout"], med["infer_rollout"] / base, None),
        (f'explain({small}, fit="squash")', med["explain224"], med["explain224"] / base, 1.05),
        ("explain(frame640x480) (crop)", med["explain640"], med["explain640"] / base, 1.07),
        (f'explain({small}, "squash", head_fusion="max", discard_ratio=0.9)', med["explain224_max09"],
         med["explain224_max09"] / base, 1.10),
        ("explain(frame640x480).overlay()", med["explain640_overlay"], med["explain640_overlay"] / base, 1.12),
        ("plain inference, batch 8, per image", base8 / 8, 1.0, None),
        (f'explain(8 x {small}, "squash"), per image', med["explain224_b8"] / 8, med["explain224_b8"] / base8, 1.05),
    ]
    return [(row, ms * 1e3, ratio, goal) for row, ms, ratio, goal in table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="attnmap ONNX file with attention outputs")
    parser.add_argument("--plain", type=Path, help="the same model exported with --no-attentions")
    parser.add_argument("--shipped", action="store_true", help="the shipped default model (plain: its logits-only graph)")
    parser.add_argument("--model-name", default="deit_tiny_patch16_224", help="timm name to export when no files")
    parser.add_argument("--checkpoint", help="weights for the export (default: random init)")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    args = parser.parse_args()
    threads = args.threads or physical_cores()
    with tempfile.TemporaryDirectory() as tmp:
        if args.shipped:
            model = resolve_model(None)
            plain = pruned_plain(model, Path(tmp))
        elif args.model and args.plain:
            model, plain = args.model, args.plain
        else:
            model, plain = export_pair(args.model_name, args.checkpoint, Path(tmp), "none")
        load = os.getloadavg()[0]
        table = run(model, plain, args.rounds, args.warmup, threads)
        load_after = os.getloadavg()[0]
    print(f"{Path(model).name}  CPU, {threads} threads, spinning off  {args.rounds} interleaved rounds  "
          f"load average {load:.2f} -> {load_after:.2f}")
    print(f"{'call':<68} {'ms/image':>9} {'x plain':>8} {'goal':>6}")
    for row, ms, ratio, goal in table:
        mark = "" if goal is None else ("  ok" if ratio <= goal else "  MISSED")
        print(f"{row:<68} {ms:9.3f} {ratio:8.3f} {'' if goal is None else f'{goal:.2f}':>6}{mark}")


if __name__ == "__main__":
    main()
