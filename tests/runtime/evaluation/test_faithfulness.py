"""Perturbation curves and AUCs, against independent loops over the same definitions."""

from __future__ import annotations

import numpy as np
import pytest

from attnmap import Explainer
from attnmap.runtime.core.errors import OptionError
from attnmap.runtime.frames.synth import make_sample
from attnmap.runtime.evaluation.curves import (PN_FRACTIONS, Curves, baseline_input, curves_of, perturbed_inputs,
                                               unit_order)


@pytest.fixture(scope="module")
def shipped():
    return Explainer(provider="cpu")  # the shipped shapes model: 96 px input, 12 x 12 patches of 8 px


def test_units_are_ranked_by_value_with_ties_by_index():
    m = np.array([[[0.5, 0.9], [0.5, 0.1]]])
    assert unit_order(m).tolist() == [[1, 0, 2, 3]]
    assert unit_order(m, descending=False).tolist() == [[3, 0, 2, 1]]
    assert unit_order(np.zeros((1, 2, 3))).tolist() == [[0, 1, 2, 3, 4, 5]]  # all equal: index order


def test_perturbed_inputs_remove_and_restore_exactly_the_first_k_units():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6, 9)).astype(np.float32)
    base = rng.normal(size=(3, 6, 9)).astype(np.float32)
    order = np.array([4, 0, 5, 1, 3, 2])  # a 2 x 3 grid of 3 x 3 patches
    counts = np.array([0, 1, 3, 6])
    removed = perturbed_inputs(x, base, order, counts, (2, 3))
    restored = perturbed_inputs(x, base, order, counts, (2, 3), restore=True)
    for i, k in enumerate(counts):
        want_r, want_i = x.copy(), base.copy()
        for unit in order[:k]:  # an independent loop over the units' pixel blocks
            r, c = divmod(int(unit), 3)
            want_r[:, 3 * r:3 * r + 3, 3 * c:3 * c + 3] = base[:, 3 * r:3 * r + 3, 3 * c:3 * c + 3]
            want_i[:, 3 * r:3 * r + 3, 3 * c:3 * c + 3] = x[:, 3 * r:3 * r + 3, 3 * c:3 * c + 3]
        np.testing.assert_array_equal(removed[i], want_r)
        np.testing.assert_array_equal(restored[i], want_i)
    with pytest.raises(OptionError, match="whole number"):
        perturbed_inputs(np.zeros((3, 7, 9), np.float32), np.zeros((3, 7, 9), np.float32), order, counts, (2, 3))


def test_baselines_are_the_mean_colour_black_and_a_blur(shipped):
    meta = shipped.meta
    img = make_sample(np.random.default_rng(1), 96).image_bgr
    x, _ = shipped.preprocess([img], fit="squash")
    assert not baseline_input(x, meta, "mean").any()
    black, _ = shipped.preprocess([np.zeros_like(img)], fit="squash")
    np.testing.assert_allclose(baseline_input(x, meta, "black"), black, atol=1e-6)
    blurred = baseline_input(x, meta, "blur", sigma=3.0)
    assert blurred.shape == x.shape and 0 < np.abs(blurred - x).mean() and blurred.std() < x.std()
    with pytest.raises(OptionError, match="baseline must be one of"):
        baseline_input(x, meta, "noise")


@pytest.mark.parametrize("baseline", ["mean", "blur"])
def test_curves_equal_a_one_input_at_a_time_reference(shipped, baseline):
    meta = shipped.meta
    img = make_sample(np.random.default_rng(7), 96).image_bgr
    x, _ = shipped.preprocess([img], fit="squash")
    r = shipped.explain(img, fit="squash")
    target = r.topk[0].index
    c = curves_of(shipped, x[0], r.grid, target, baseline=baseline, sigma=4.0, steps=8, batch_size=7)
    base = baseline_input(x, meta, baseline, 4.0)[0]
    P = 144
    flat = r.grid.reshape(-1).astype(np.float64)
    most = sorted(range(P), key=lambda u: (-flat[u], u))
    least = sorted(range(P), key=lambda u: (flat[u], u))

    def run(order, k, restore=False):
        inp = (base if restore else x[0]).copy()
        for unit in order[:k]:
            rr, cc = divmod(unit, 12)
            inp[:, 8 * rr:8 * rr + 8, 8 * cc:8 * cc + 8] = (x[0] if restore else base)[:, 8 * rr:8 * rr + 8,
                                                                                       8 * cc:8 * cc + 8]
        z = shipped.infer_plain(inp[None])[0].astype(np.float64)
        p = np.exp(z - z.max())
        return int(z.argmax()), float(p[target] / p.sum())

    for i, f in enumerate(PN_FRACTIONS):
        k = int(round(f * P))
        assert c.positive[i] == float(run(most, k)[0] == target)
        assert c.negative[i] == float(run(least, k)[0] == target)
    for i, f in enumerate(c.di_fractions):
        k = int(round(f * P))
        assert c.deletion[i] == pytest.approx(run(most, k)[1], abs=1e-5)
        assert c.insertion[i] == pytest.approx(run(most, k, restore=True)[1], abs=1e-5)
    assert c.positive[0] == 1.0 and c.deletion[0] == pytest.approx(r.topk[0].prob, abs=1e-4)


def test_aucs_follow_the_papers_definitions():
    f = np.arange(5) / 4.0
    c = Curves(PN_FRACTIONS, np.ones(10), np.r_[np.ones(5), np.zeros(5)], f, np.array([1.0, 0.5, 0.25, 0.0, 0.0]),
               np.full(5, 0.8))
    a = c.aucs()
    assert a["positive_auc"] == pytest.approx(90.0)  # always right over [0, 0.9], x 100
    assert a["negative_auc"] == pytest.approx(45.0)  # 1 up to 0.4, down to 0 at 0.5: 40 + 5
    assert a["deletion_auc"] == pytest.approx(0.25 * (0.75 + 0.375 + 0.125))
    assert a["insertion_auc"] == pytest.approx(0.8)


def test_rollout_is_more_faithful_than_a_random_map_on_the_shapes(shipped):
    """Deletion of rollout's top patches hurts the shipped model sooner than a random map's."""
    rng = np.random.default_rng(0)
    rollout, random = [], []
    for i in range(12):
        img = make_sample(np.random.default_rng(100 + i), 96).image_bgr
        x, _ = shipped.preprocess([img], fit="squash")
        r = shipped.explain(img, fit="squash")
        t = r.topk[0].index
        rollout.append(curves_of(shipped, x[0], r.grid, t, steps=8).aucs()["deletion_auc"])
        random.append(curves_of(shipped, x[0], rng.random(r.grid.shape), t, steps=8).aucs()["deletion_auc"])
    assert np.mean(rollout) < np.mean(random)
