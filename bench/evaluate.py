"""Throughput of ``attnmap evaluate`` against plain batched inference of as many perturbed inputs.

Usage (from the project root)::

    .venv/bin/python bench/evaluate.py --model /tmp/deit.onnx [--images ../shared/data/images]
        [--methods rollout,attention] [--rounds 3] [--batch-size 32] [--steps 16]

Evaluation is dominated by forward passes: every image's maps are scored by running the model
on ``(methods + 3 random) x (2 x 10 + 2 x (steps + 1))`` perturbed inputs. Each round runs, in
this one process and interleaved:

* ``evaluate``: :func:`~attnmap.runtime.evaluation.scoring.evaluate` over the images (decode,
  preprocess, one forward pass with attentions per image, the maps, building the perturbed
  inputs, their forward passes, the metrics);
* ``plain``: ``infer_plain`` over the same number of inputs (the perturbed inputs of one image,
  built once before timing), in batches of ``--batch-size``: the forward passes alone.

It prints the forward passes, seconds and forwards/s of both per round and the ratio of their
medians (evaluate / plain; the issue's target is >= 0.85), plus the total time for the images
with every method the model can run (``--all`` adds that row). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from attnmap import Explainer
from attnmap.runtime.evaluation import RANDOM, evaluate
from attnmap.runtime.evaluation.curves import PN_FRACTIONS
from attnmap.runtime.evaluation.scoring import RANDOM_SEEDS
from attnmap.runtime.frames.sources import expand_sources, open_files
from attnmap.runtime.methods import METHODS


def _evaluate(explainer, images, methods, steps, batch_size):
    with open_files(images, errors="yield") as frames:
        t0 = time.perf_counter()
        result = evaluate(explainer, frames, methods, steps=steps, batch_size=batch_size)
        return time.perf_counter() - t0, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--images", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "images"))
    p.add_argument("--methods", default="rollout,attention")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--all", action="store_true", help="also time one run with every method the model can run")
    args = p.parse_args(argv)

    explainer = Explainer(args.model, provider="cpu")
    images = [r.target for r in expand_sources([args.images]) if r.kind == "image"]
    methods = [m for m in args.methods.split(",") if m]
    per_map = 2 * PN_FRACTIONS.size + 2 * (args.steps + 1)
    forwards = len(images) * (len(methods) + RANDOM_SEEDS) * per_map
    h, w = explainer.meta.input_size[1:]
    x = np.random.default_rng(0).normal(size=(args.batch_size, 3, h, w)).astype(np.float32)
    explainer.infer_plain(x)  # warm-up
    print(f"model {explainer.meta.model_name}  {len(images)} images  methods {','.join(methods)}  "
          f"{forwards} perturbed forwards per run  batch {args.batch_size}")
    ev_rates, plain_rates = [], []
    for r in range(args.rounds):
        seconds, result = _evaluate(explainer, images, methods, args.steps, args.batch_size)
        if result.failed:
            print("failed:", result.failed, file=sys.stderr)
            return 1
        ev_rates.append(forwards / seconds)
        t0 = time.perf_counter()
        done = 0
        while done < forwards:
            n = min(args.batch_size, forwards - done)
            explainer.infer_plain(x[:n])
            done += n
        plain = time.perf_counter() - t0
        plain_rates.append(forwards / plain)
        print(f"round {r}: evaluate {seconds:6.2f} s {ev_rates[-1]:7.1f} fwd/s   plain {plain:6.2f} s "
              f"{plain_rates[-1]:7.1f} fwd/s   ratio {ev_rates[-1] / plain_rates[-1]:.3f}")
    ratio = statistics.median(ev_rates) / statistics.median(plain_rates)
    print(f"median: evaluate {statistics.median(ev_rates):.1f} fwd/s, plain {statistics.median(plain_rates):.1f} "
          f"fwd/s, ratio {ratio:.3f}")
    if args.all:
        every = [n for n, m in METHODS.items() if not m.needs_gradients or explainer.meta.has_gradients]
        seconds, result = _evaluate(explainer, images, every, args.steps, args.batch_size)
        print(f"all methods ({','.join(every)}; {RANDOM} beside them): {seconds:.1f} s for {result.images} images, "
              f"{len(result.failed)} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
