"""What ViT-ReciproCAM costs over plain inference, beside the methods it is compared with.

``bench/explain_limit.py``'s method: one torch-free process, every row timed as a user calls it
(``Explainer.explain(img224, fit="squash", method=...)``: preprocessing, inference, the map, the
result), interleaved round by round in a new seeded order each round, medians over ``--rounds``;
the baseline is plain inference, an onnxruntime session of the file's logits-only graph on an
already-preprocessed input. The ``--tail`` file gives ``reciprocam`` and ``rollout``; the
optional ``--grads`` file (``attnmap export --gradients``) gives ``gradcam`` and ``chefer``, each
against its own file's plain baseline (the same weights: the logits-only graphs are the same).

Usage:
    .venv/bin/python bench/reciprocam_cost.py --tail deit_tail.onnx --grads deit_grads.onnx
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from attnmap import Explainer  # noqa: E402
from attnmap.runtime.model.session import physical_cores  # noqa: E402
from explain_limit import images, measure, pruned_plain, user_session  # noqa: E402  (bench/ is this folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tail", type=Path, required=True, help="a file exported with --tail")
    parser.add_argument("--grads", type=Path, default=None, help="the same model exported with --gradients")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = args.threads or physical_cores()
    rows, plain_of = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        files = [("tail", args.tail, ("rollout", "reciprocam"))]
        if args.grads is not None:
            files.append(("grads", args.grads, ("gradcam", "chefer")))
        for key, path, methods in files:
            ex = Explainer(path, provider="cpu", threads=threads)
            folder = Path(tmp) / key
            folder.mkdir()
            sess = user_session(pruned_plain(path, folder), threads)
            img, _, _ = images(ex.meta.image_size)
            x, _ = ex.preprocess([img], fit="squash")
            x = x.copy()
            name = sess.get_inputs()[0].name
            rows[f"plain[{key}]"] = lambda sess=sess, name=name, x=x: sess.run(["logits"], {name: x})
            for method in methods:
                rows[method] = lambda ex=ex, img=img, method=method: ex.explain(img, fit="squash", method=method)
                plain_of[method] = f"plain[{key}]"
        med = measure(rows, args.rounds, args.warmup)
    print(f"{'row':<34} {'ms':>9} {'x plain':>8}")
    for row, seconds in med.items():
        base = med[plain_of.get(row, row)]
        print(f"{row:<34} {seconds * 1e3:>9.1f} {seconds / base:>8.2f}")
    print(f"threads {threads}, rounds {args.rounds}, medians")


if __name__ == "__main__":
    main()
