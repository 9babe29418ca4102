"""The fidelity gate's metrics against independent reference computations (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from attnmap.runtime.core.errors import OptionError
from attnmap.runtime.precision.fidelity import (Fidelity, FidelityError, MapFidelity, Thresholds, check_fidelity,
                                                fidelity_failures, pearson, top_iou)


def test_pearson_matches_numpy_corrcoef_per_item():
    rng = np.random.default_rng(0)
    a = rng.random((5, 4, 6)).astype(np.float32)
    b = a + 0.3 * rng.random((5, 4, 6)).astype(np.float32)
    b[3] = -a[3]  # perfectly anti-correlated
    want = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(5)]
    np.testing.assert_allclose(pearson(a, b), want, rtol=1e-6)
    assert pearson(a, b)[3] == pytest.approx(-1.0)


def test_pearson_of_flat_maps_is_one_when_both_are_flat_and_zero_when_one_is():
    flat, ramp = np.full((1, 3, 3), 0.5), np.arange(9, dtype=np.float64).reshape(1, 3, 3)
    assert pearson(flat, flat + 0.2).tolist() == [1.0]
    assert pearson(flat, ramp).tolist() == [0.0] and pearson(ramp, flat).tolist() == [0.0]


def test_top_iou_counts_the_shared_top_cells_by_hand():
    # 20 cells: the top 10% are 2 cells. a's top: cells 19, 18; b's top: cells 19, 0.
    a = np.arange(20, dtype=np.float64).reshape(1, 4, 5)
    b = a.copy()
    b[0, 0, 0] = 100.0
    b[0, 3, 3] = -1.0  # cell 18 drops out of b's top
    assert top_iou(a, b).tolist() == [pytest.approx(1 / 3)]  # |{19}| / |{19, 18, 0}|
    assert top_iou(a, a).tolist() == [1.0]
    # a fraction smaller than one cell still takes one cell
    assert top_iou(a, b, fraction=0.01).tolist() == [0.0]  # 19 vs 0


def _fid(top1=1.0, r=0.99, dp=0.01):
    return Fidelity(50, "test", top1, dp, {"rollout": MapFidelity(r, r - 0.01, 0.9)})


def test_gate_names_every_failing_figure_and_passes_at_the_threshold():
    t = Thresholds(min_top1=0.98, min_rollout_corr=0.98, max_prob_diff=0.05)
    assert fidelity_failures(_fid(0.98, 0.98, 0.05), t) == []
    fails = fidelity_failures(_fid(0.9, 0.5, 0.2), t)
    assert len(fails) == 3 and "top-1 agreement 0.900 < 0.98" in fails[0] and "rollout" in fails[1]
    with pytest.raises(FidelityError, match="no file written"):
        check_fidelity(_fid(0.9), t, "x.onnx")
    check_fidelity(_fid(), t)  # passes silently


def test_a_nan_correlation_fails_the_gate():
    assert fidelity_failures(_fid(r=float("nan")), Thresholds())


def test_thresholds_out_of_range_are_option_errors():
    with pytest.raises(OptionError, match="min_top1 must be in"):
        Thresholds(min_top1=1.5)
    with pytest.raises(OptionError, match="min_rollout_corr"):
        Thresholds(min_rollout_corr=-2)


def test_fidelity_round_trips_through_its_dict_form():
    f = _fid()
    back = Fidelity.from_dict(f.to_dict())
    assert back == f
    with pytest.raises(FidelityError, match="malformed"):
        Fidelity.from_dict({"images": 3})
