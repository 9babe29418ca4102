"""Paired A/B of issue 18's calls: this checkout against an earlier git revision, in one process.

Figures from two processes (or two runs of ``explain_limit.py``) differ by several percent on
a shared 2-core VM whatever the code does, which hides changes of a few tenths of a
millisecond. Here both versions live in one torch-free process: the revision is exported with
``git archive`` into a temporary folder and imported as the package ``attnmap_rev`` (its
``attnmap`` imports renamed), each with its own onnxruntime session of the same file. Every
round makes each call with both versions back to back, in a random order, and records the
difference; the medians of those paired differences are what the script reports, with their
quartiles and how often the checkout was the faster. The ratios to plain inference (a logits-only
session, timed once per round) are given too.

Usage:
    .venv/bin/python bench/ab_revision.py --rev 5ee84fb --model deit.onnx --plain deit_plain.onnx
    .venv/bin/python bench/ab_revision.py --rev 5ee84fb --shipped
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI does, before NumPy loads
import numpy as np  # noqa: E402

from attnmap import Explainer  # noqa: E402
from attnmap.runtime.model.registry import resolve_model  # noqa: E402
from attnmap.runtime.model.session import physical_cores  # noqa: E402
from explain_limit import explain_calls, images, pruned_plain, user_session  # noqa: E402  (bench/ is this script's folder)

ROOT = Path(__file__).resolve().parents[1]
REV_PACKAGE = "attnmap_rev"
# explain_limit's calls, as this script's table names them
LABELS = {"explain224": "explain(img, squash)", "explain640": "explain(frame640x480)",
          "explain224_max09": "max fusion, discard 0.9", "explain640_overlay": "explain(frame).overlay()",
          "explain224_b8": "batch 8, per image"}
_IMPORTS = re.compile(r"\b(from|import)\s+attnmap\b|\battnmap\.(?=runtime|export|cli|fronts)")


def import_revision(rev: str, folder: Path):
    """The ``Explainer`` of git revision ``rev``, imported from ``folder`` as ``attnmap_rev``."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "__init__.py", "runtime"],
                          check=True, capture_output=True).stdout
    package = folder / REV_PACKAGE
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(package, filter="data")
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(_IMPORTS.sub(lambda m: m.group(0).replace("attnmap", REV_PACKAGE), text), encoding="utf-8")
    sys.path.insert(0, str(folder))
    from attnmap_rev import Explainer as RevExplainer  # noqa: E402  (created just above)

    return RevExplainer


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="git revision to compare against (e.g. 5ee84fb)")
    parser.add_argument("--model", type=Path, help="attnmap ONNX file with attention outputs")
    parser.add_argument("--plain", type=Path, help="the same model exported with --no-attentions")
    parser.add_argument("--shipped", action="store_true", help="the shipped default model")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    if not args.shipped and not (args.model and args.plain):
        parser.error("give --model and --plain, or --shipped")
    threads = physical_cores()
    with tempfile.TemporaryDirectory() as tmp:
        model = resolve_model(None) if args.shipped else args.model
        plain = pruned_plain(model, Path(tmp)) if args.shipped else args.plain
        old = import_revision(args.rev, Path(tmp))(model, provider="cpu", threads=threads)
        new = Explainer(model, provider="cpu", threads=threads)
        sess = user_session(plain, threads)
        name = sess.get_inputs()[0].name
        img, frame, eight = images(new.meta.image_size)
        x1 = new.preprocess([img], fit="squash")[0].copy()
        x8 = new.preprocess(eight, fit="squash")[0].copy()
        made = explain_calls(img, frame, eight)
        calls: dict[str, tuple[Callable, int]] = {label: (made[key], 8 if key.endswith("_b8") else 1)
                                                  for key, label in LABELS.items()}
        for _ in range(args.warmup):
            for fn, _ in calls.values():
                fn(old), fn(new)
        diffs: dict[str, list[float]] = {k: [] for k in calls}
        t_old: dict[str, list[float]] = {k: [] for k in calls}
        t_new: dict[str, list[float]] = {k: [] for k in calls}
        plain1, plain8 = [], []
        rng = np.random.default_rng(18)
        keys = list(calls)
        load = os.getloadavg()[0]
        for _ in range(args.rounds):
            plain1.append(timed(lambda: sess.run(["logits"], {name: x1})))
            plain8.append(timed(lambda: sess.run(["logits"], {name: x8})) / 8)
            for i in rng.permutation(len(keys)):
                fn, per = calls[keys[i]]
                if rng.random() < 0.5:
                    a = timed(lambda: fn(old))
                    b = timed(lambda: fn(new))
                else:
                    b = timed(lambda: fn(new))
                    a = timed(lambda: fn(old))
                t_old[keys[i]].append(a / per)
                t_new[keys[i]].append(b / per)
                diffs[keys[i]].append((b - a) / per)
    p1, p8 = float(np.median(plain1)), float(np.median(plain8))
    print(f"{Path(model).name}  this checkout against {args.rev}  {args.rounds} paired rounds  {threads} threads  "
          f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"plain inference {p1 * 1e3:.3f} ms, at batch 8 {p8 * 1e3:.3f} ms per image")
    print(f"{'call':<26} {args.rev + ' x plain':>14} {'now x plain':>12} {'now - then, ms':>15} {'quartiles':>17} {'now faster':>11}")
    for key in calls:
        base = p8 if calls[key][1] == 8 else p1
        d = np.array(diffs[key]) * 1e3
        q1, q3 = np.percentile(d, [25, 75])
        print(f"{key:<26} {np.median(t_old[key]) / base:14.3f} {np.median(t_new[key]) / base:12.3f} "
              f"{np.median(d):+15.3f} {f'{q1:+.2f}..{q3:+.2f}':>17} {np.mean(d < 0):11.0%}")


if __name__ == "__main__":
    main()
