"""What the forward-only decomposition maps cost over plain inference, beside rollout and the gradient maps.

Same method as ``bench/explain_limit.py`` (one torch-free process, every row once per round in a
new seeded order, medians, each ratio over the baseline's median): the baseline is plain
inference of the first file's graph pruned to its logits (what a file exported without
attentions runs) in a user's own onnxruntime session, on an input already preprocessed; each
row is ``Explainer.explain(img224, fit="squash", method=...)``, preprocessing, inference with
the file's outputs, the map, top-k and the result objects. Rollout and raw attention run on a
plain attention export, head-norm (and rollout beside it) on a ``--norms`` export, decompx on a
``--contributions`` export (the last block's contributions, its default), chefer and gradcam on
a ``--gradients`` export, the Gram methods on a ``--decompositions`` export, so each method pays
for the outputs its file carries.

Also reported: the median process CPU time of each row over the baseline's (on a shared,
overloaded machine the wall times measure the other tenants).

Usage (any subset of the files, all exports of one model):
    .venv/bin/python bench/decomposition_cost.py --attn deit.onnx --norms deit_norms.onnx \
        --contrib deit_contrib.onnx --decomp deit_dec.onnx --grads deit_grads.onnx
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI does, before NumPy loads
from attnmap import Explainer  # noqa: E402
from attnmap.runtime.model.session import physical_cores  # noqa: E402
import numpy as np  # noqa: E402

from explain_limit import images, pruned_plain, user_session  # noqa: E402  (bench/ is this script's folder)

def measure(rows: dict, rounds: int, warmup: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall seconds and median process CPU seconds of each row (explain_limit's order).

    The CPU time (every thread of the process: onnxruntime's pool and NumPy) is the figure to
    read on a shared, overloaded machine: waiting for a core counts in the wall time, not in it.
    """
    for _ in range(warmup):
        for fn in rows.values():
            fn()
    keys = list(rows)
    order = np.random.default_rng(18)
    wall: dict[str, list[float]] = {k: [] for k in rows}
    cpu: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(rounds):
        for i in order.permutation(len(keys)):
            key = keys[i]
            t0, c0 = time.perf_counter(), time.process_time()
            rows[key]()
            cpu[key].append(time.process_time() - c0)
            wall[key].append(time.perf_counter() - t0)
    return ({k: float(np.median(v)) for k, v in wall.items()}, {k: float(np.median(v)) for k, v in cpu.items()})


ROWS = {"attn": ("rollout", "attention"), "norms": ("head-norm", "rollout"), "contrib": ("decompx",),
        "decomp": ("attn-norm", "globenc", "decompx:start_layer=0"), "grads": ("chefer", "gradcam")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attn", type=Path, help="the model exported with attentions only")
    parser.add_argument("--norms", type=Path, help="the same model exported with --norms")
    parser.add_argument("--contrib", type=Path, help="the same model exported with --contributions")
    parser.add_argument("--decomp", type=Path, help="the same model exported with --decompositions")
    parser.add_argument("--grads", type=Path, help="the same model exported with --gradients")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    threads = physical_cores()
    files = {k: getattr(args, k) for k in ROWS if getattr(args, k) is not None}
    if not files:
        parser.error("give at least one file")
    with tempfile.TemporaryDirectory() as tmp:
        first = next(iter(files.values()))
        sess = user_session(pruned_plain(first, Path(tmp)), threads)
        name = sess.get_inputs()[0].name
        explainers = {k: Explainer(p, provider="cpu", threads=threads) for k, p in files.items()}
        ex0 = next(iter(explainers.values()))
        img, _, _ = images(ex0.meta.image_size)
        x1, _ = ex0.preprocess([img], fit="squash")
        x1 = x1.copy()
        rows = {"plain": lambda: sess.run(["logits"], {name: x1})}
        for key, ex in explainers.items():
            for spec in ROWS[key]:
                method, _, option = spec.partition(":")
                opts = {option.split("=")[0]: int(option.split("=")[1])} if option else {}
                rows[f"{spec} ({key} file)"] = lambda ex=ex, m=method, o=opts: ex.explain(img, method=m, fit="squash",
                                                                                        **o)
        wall, cpu = measure(rows, args.rounds, args.warmup)
    print(f"plain inference: {wall['plain'] * 1e3:.2f} ms wall, {cpu['plain'] * 1e3:.2f} ms CPU ({threads} threads)")
    for row in wall:
        print(f"{row:42s} {wall[row] * 1e3:8.2f} ms {wall[row] / wall['plain']:6.3f} x plain (wall)   "
              f"{cpu[row] * 1e3:8.2f} ms {cpu[row] / cpu['plain']:6.3f} x plain (CPU)")


if __name__ == "__main__":
    main()
