"""``evaluate --timing``'s library side: every method and plain inference timed per scored image
(warm-up left out), the cost summary, the call order, and the Pareto front against a brute-force
reference. Times come from a fake clock that the model's runs advance: no wall-clock bounds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from attnmap import Explainer
from attnmap.runtime.core.errors import OptionError
from attnmap.runtime.evaluation import EvaluationPlan, evaluate, score_frames
from attnmap.runtime.evaluation.timing import PLAIN, call_order, cost_summary, pareto_front
from attnmap.runtime.frames.frame import Frame


class FakeClock:
    """Seconds that pass only when the model runs: ``infer`` (the pass with attentions) costs
    ``INFER`` per input, ``infer_plain`` (plain inference, and every perturbed batch of a
    perturbation method) ``PLAIN_RUN`` per input."""

    INFER, PLAIN_RUN = 3.0, 2.0

    def __init__(self, explainer):
        self.now = 0.0
        self.calls: list[str] = []
        infer, plain = explainer.infer, explainer.infer_plain

        def timed_infer(x, target=None):
            self.now += self.INFER * len(x)
            self.calls.append("infer")
            return infer(x, target=target)

        def timed_plain(x):
            self.now += self.PLAIN_RUN * len(x)
            self.calls.append("plain")
            return plain(x)

        # instance attributes: the engine's forward and the perturbation methods' probabilities
        # go through explainer.infer / explainer.infer_plain
        explainer.infer, explainer.infer_plain = timed_infer, timed_plain

    def __call__(self) -> float:
        return self.now


def _frames(n: int, size: int = 32) -> list[Frame]:
    rng = np.random.default_rng(7)
    return [Frame(i, rng.integers(0, 256, (size, size, 3), dtype=np.uint8), f"img{i}", 0.0) for i in range(n)]


def test_every_method_and_plain_inference_are_timed_per_scored_image_without_the_warm_up(tiny_vit_onnx):
    ex = Explainer(tiny_vit_onnx, provider="cpu")
    clock = FakeClock(ex)
    broken = Frame(3, None, "broken.png", 0.0, error=OSError("unreadable"))
    frames = [*_frames(3), broken, *_frames(2)[1:]]
    plan = EvaluationPlan(methods=("rollout", "attention", "occlusion"), steps=2, fit="squash", timing=True)
    r = score_frames(ex, frames, plan, clock=clock)
    assert r.sources == ["img0", "img1", "img2", "img1"] and [s for s, _ in r.failed] == ["broken.png"]
    assert set(r.timings) == {PLAIN, "rollout", "attention", "occlusion"}
    assert all(len(v) == r.images for v in r.timings.values())
    # tiny ViT: 32x32 input, 8 px patches -> the occluder (patch-sized, stride = window) visits 16 places;
    # after the one pass with attentions, occlusion runs the clean input and the 16 occluded ones plainly
    want = {PLAIN: FakeClock.PLAIN_RUN, "rollout": FakeClock.INFER, "attention": FakeClock.INFER,
            "occlusion": FakeClock.INFER + 17 * FakeClock.PLAIN_RUN}
    for name, seconds in r.timings.items():
        assert seconds == pytest.approx([want[name]] * r.images), name  # the warm-up's runs are not in them
    cost = r.cost()
    assert cost[PLAIN] == {"explain_ms": 2000.0, "cost_x": 1.0}
    assert cost["occlusion"] == {"explain_ms": 37000.0, "cost_x": 18.5} and cost["rollout"]["cost_x"] == 1.5
    doc = r.to_dict()
    assert doc["plain_ms"] == 2000.0 and doc["methods"]["occlusion"]["cost_x"] == 18.5
    assert doc["methods"]["random"]["explain_ms"] is None and doc["methods"]["random"]["cost_x"] is None


def test_the_warm_up_runs_each_method_once_before_the_first_timed_image(tiny_vit_onnx):
    ex = Explainer(tiny_vit_onnx, provider="cpu")
    clock = FakeClock(ex)
    r = score_frames(ex, _frames(1), EvaluationPlan(methods=("rollout",), steps=1, timing=True), clock=clock)
    timed_calls, clock.calls = clock.calls, []
    untimed = score_frames(ex, _frames(1), EvaluationPlan(methods=("rollout",), steps=1))
    assert r.timings[PLAIN] == [FakeClock.PLAIN_RUN] and untimed.timings == {}
    # with timing: the warm-up (plain + rollout), then the timed calls (plain + rollout), then the
    # curves' plain runs; without it, rollout's one pass and the same curves
    assert sorted(timed_calls[:2]) == ["infer", "plain"] and sorted(timed_calls[2:4]) == ["infer", "plain"]
    assert clock.calls[0] == "infer" and timed_calls[4:] == clock.calls[1:] and set(clock.calls[1:]) == {"plain"}
    assert r.per_image["rollout"] == untimed.per_image["rollout"]  # timing changes no score


def test_methods_run_in_an_order_shuffled_per_image_and_seeded():
    names = [PLAIN, "rollout", "attention", "chefer", "rise"]
    orders = [call_order(names, seed) for seed in range(20)]
    assert all(sorted(o) == sorted(names) for o in orders)
    assert call_order(names, 3) == call_order(names, 3)
    assert len({tuple(o) for o in orders}) > 5  # not one fixed order
    assert len({o[0] for o in orders}) > 2  # no method always first


def test_cost_summary_is_medians_over_the_plain_median():
    t = {PLAIN: [0.010, 0.012, 0.011], "a": [0.020, 0.100, 0.022], "b": [0.5, 0.4, 0.6, 0.45]}
    s = cost_summary(t)
    assert s[PLAIN] == {"explain_ms": 11.0, "cost_x": 1.0}
    assert s["a"] == {"explain_ms": 22.0, "cost_x": 2.0}
    assert s["b"] == {"explain_ms": 475.0, "cost_x": round(0.475 / 0.011, 2)}
    assert cost_summary({"a": [1.0]}) == {}  # no baseline, no cost


def _dominated_reference(points):
    """Brute force, from the definition: i is dominated when some j is <= on both and < on one."""
    out = []
    for i, (ci, si) in enumerate(points):
        if not any(cj <= ci and sj <= si and (cj < ci or sj < si) for j, (cj, sj) in enumerate(points) if j != i):
            out.append(i)
    return out


@pytest.mark.parametrize("points, front", [
    ([(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (10.0, 1.0)], [0, 1, 3]),  # (3, 4) dominated by (2, 3)
    ([(1.0, 5.0), (1.0, 4.0)], [1]),  # same cost: the better score wins
    ([(1.0, 4.0), (2.0, 4.0)], [0]),  # same score: the cheaper wins
    ([(2.0, 3.0), (2.0, 3.0), (5.0, 3.0)], [0, 1]),  # exact ties both stay; the dearer equal score is out
    ([(3.0, 1.0)], [0]),
    ([], []),
])
def test_pareto_front_by_hand(points, front):
    assert pareto_front(points) == front


def test_pareto_front_equals_a_brute_force_reference_on_random_points_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 12))
        pts = [tuple(map(float, p)) for p in rng.integers(0, 5, (n, 2))]  # small ints: many ties
        got = pareto_front(pts)
        assert sorted(got) == _dominated_reference(pts), pts
        assert [pts[i] for i in got] == sorted(pts[i] for i in got)  # cheapest first
    pts = [(c, s) for c, s in itertools.product([0.5, 1.0, 20.0], [0.1, 0.2])]
    assert pareto_front(pts) == [0]


def test_timing_is_refused_on_the_ray_engine_and_scores_unchanged_by_the_keyword_form(tiny_vit_onnx):
    ex = Explainer(tiny_vit_onnx, provider="cpu")
    with pytest.raises(OptionError, match="local engine"):
        EvaluationPlan(methods=("rollout",), timing=True, engine="ray").checked(ex.meta)
    assert evaluate(ex, _frames(1), ["rollout"], steps=1).timings == {}
    timed = evaluate(ex, _frames(1), ["rollout"], steps=1, timing=True)
    assert set(timed.timings) == {PLAIN, "rollout"} and all(len(v) == 1 for v in timed.timings.values())
