"""What the forward-only decomposition maps cost over plain inference, beside rollout and the gradient maps.

Same method as ``bench/explain_limit.py`` (one torch-free process, every row once per round in a
new seeded order, medians, each ratio over the baseline's median): the baseline is plain
inference of the decomposition file's graph pruned to its logits (what a file exported without
attentions runs) in a user's own onnxruntime session, on an input already preprocessed; each
row is ``Explainer.explain(img224, fit="squash", method=...)``, preprocessing, inference with
the file's outputs, the map, top-k and the result objects. Rollout and raw attention run on a
plain attention export, chefer and gradcam on a ``--gradients`` export, the decomposition
methods on a ``--decompositions`` export, so each method pays for the outputs its file carries.

Usage:
    .venv/bin/python bench/decomposition_cost.py --decomp deit_dec.onnx --attn deit.onnx --grads deit_grads.onnx
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI does, before NumPy loads
from attnmap import Explainer  # noqa: E402
from attnmap.runtime.model.session import physical_cores  # noqa: E402
from explain_limit import images, measure, pruned_plain, user_session  # noqa: E402  (bench/ is this script's folder)

ROWS = {"attn": ("rollout", "attention"), "decomp": ("rollout", "attn-norm", "globenc", "decompx"),
        "grads": ("chefer", "gradcam")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decomp", type=Path, required=True, help="export with --decompositions")
    parser.add_argument("--attn", type=Path, help="the same model exported with attentions only")
    parser.add_argument("--grads", type=Path, help="the same model exported with --gradients")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    threads = physical_cores()
    files = {"decomp": args.decomp, "attn": args.attn, "grads": args.grads}
    with tempfile.TemporaryDirectory() as tmp:
        sess = user_session(pruned_plain(args.decomp, Path(tmp)), threads)
        name = sess.get_inputs()[0].name
        explainers = {k: Explainer(p, provider="cpu", threads=threads) for k, p in files.items() if p is not None}
        img, _, _ = images(explainers["decomp"].meta.image_size)
        x1, _ = explainers["decomp"].preprocess([img], fit="squash")
        x1 = x1.copy()
        rows = {"plain": lambda: sess.run(["logits"], {name: x1})}
        for key, ex in explainers.items():
            for method in ROWS[key]:
                rows[f"{method} ({key} file)"] = lambda ex=ex, m=method: ex.explain(img, method=m, fit="squash")
        med = measure(rows, args.rounds, args.warmup)
    base = med["plain"]
    print(f"plain inference: {base * 1e3:.2f} ms ({threads} threads)")
    for row, sec in med.items():
        print(f"{row:32s} {sec * 1e3:7.2f} ms  {sec / base:5.3f} x plain")


if __name__ == "__main__":
    main()
