"""What each method's map costs: explain time per image beside plain inference, and the Pareto front.

``attnmap evaluate --timing`` (:attr:`EvaluationPlan.timing
<attnmap.runtime.evaluation.plan.EvaluationPlan.timing>`) times, on every image it scores:

* each method's explanation as a user calls it: the frame engine's batch step on that one
  image (preprocess, inference with the outputs the method reads, the map, the top-1), which
  for a perturbation method includes all of its extra model runs;
* the baseline, :data:`PLAIN`: the logits-only graph on the already-preprocessed input, the
  inference a deployment without explanations runs anyway (``bench/explain_limit.py``'s
  baseline, so a cost here reads like the README's "x plain inference").

All of them run on the same image one after the other, in an order shuffled per image (seeded
by the image's index), so that a machine getting busier or quieter shifts every method alike and
no method always follows the same one. Before the first timed image, every one of them runs once
untimed on it (warm-up: onnxruntime's first run of a session and first-touch allocations are not
a method's cost). Each method's cost is the median over images of its time, in ms, and that
median over the baseline's median (``cost_x``, "x plain inference").

:func:`pareto_front` marks the methods that no other method beats on both cost and faithfulness.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence, TypeVar

import numpy as np

PLAIN = "plain"
T = TypeVar("T")
Clock = Callable[[], float]


class ExplainTimer:
    """Times named calls on one image, kept apart until the image is known to be scored.

    Args:
        clock: seconds, monotonic (``time.perf_counter``; tests pass a fake clock).

    Attributes:
        image: name -> seconds of the calls timed since :meth:`start_image`.
    """

    def __init__(self, clock: Clock | None = None):
        self.clock = clock or time.perf_counter
        self.image: dict[str, float] = {}
        self.warmed = False

    def start_image(self) -> None:
        """Forget the last image's times (kept by the caller when that image was scored)."""
        self.image = {}

    def time(self, name: str, call: Callable[[], T]) -> T:
        """``call()``, its wall time added to ``image[name]``; an exception passes through untimed."""
        t0 = self.clock()
        out = call()
        self.image[name] = self.image.get(name, 0.0) + (self.clock() - t0)
        return out


def call_order(names: Sequence[str], seed: int) -> list[str]:
    """``names`` in the order one image times them: a permutation seeded by ``seed`` (the image's index)."""
    order = list(names)
    np.random.default_rng(seed).shuffle(order)
    return order


def cost_summary(timings: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Per method, its median explain time and its cost over plain inference.

    Args:
        timings: name -> (images,) seconds per image, :data:`PLAIN` among them.

    Returns:
        name -> ``{"explain_ms": median ms, "cost_x": median / PLAIN's median}`` (rounded: 3 and 2
        decimals), for every name with times, :data:`PLAIN` included (its cost_x is 1.0); empty
        without :data:`PLAIN` times.
    """
    plain = timings.get(PLAIN)
    if not plain:
        return {}
    base = float(np.median(plain))
    out = {}
    for name, seconds in timings.items():
        if len(seconds):
            med = float(np.median(seconds))
            out[name] = {"explain_ms": round(med * 1e3, 3), "cost_x": round(med / base, 2) if base > 0 else None}
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, both coordinates to be minimised.

    A point dominates another when it is no worse on both coordinates and better on at least
    one; equal points do not dominate each other, so both stay on the front.

    Args:
        points: (cost, score) pairs, e.g. (x plain inference, deletion AUC); lower is better
            on both (negate a higher-is-better score).

    Returns:
        The front's indices, in the order of increasing cost (ties by score, then index).
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    order = sorted(range(len(p)), key=lambda i: (p[i, 0], p[i, 1], i))
    front, best = [], np.inf
    for i in order:
        # in cost order, a point survives when its score is below every cheaper point's, or
        # equal to the best so far at the same cost as that best (a tie on both coordinates)
        if p[i, 1] < best or (front and p[i, 1] == best and np.array_equal(p[i], p[front[-1]])):
            front.append(i)
            best = min(best, p[i, 1])
    return front


__all__ = ["PLAIN", "ExplainTimer", "call_order", "cost_summary", "pareto_front"]
