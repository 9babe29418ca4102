"""The cost model of the methods (issue 27 part 1): the model runs it predicts are the runs the
methods make, and work over a budget is refused before the model runs once, in the library (an
Explainer, a Job) with the figures in the message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attnmap import Explainer
from attnmap.runtime.core.errors import MethodOptionError, OptionError
from attnmap.runtime.engine.job import Job
from attnmap.runtime.methods import METHODS
from attnmap.runtime.methods.cost import LIBRARY_BUDGET, Budget, WorkLimitError, check_budget, estimate

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "shapes_vit.onnx"


@pytest.fixture(scope="module")
def ex():
    return Explainer(SHIPPED, threads=1)


def _image(ex) -> np.ndarray:
    _, h, w = ex.meta.input_size
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _count_runs(ex, monkeypatch) -> list[int]:
    """Record the batch size of every logits-only model run (the perturbation methods' forward)."""
    runs: list[int] = []
    real = ex.model.run_plain

    def counted(x):
        runs.append(len(x))
        return real(x)

    monkeypatch.setattr(ex.model, "run_plain", counted)
    return runs


@pytest.mark.parametrize("method, options", [
    ("rise", {"masks": 40, "forward_batch": 16}),
    ("rise", {"masks": 7, "forward_batch": 32, "cells": 3}),
    ("occlusion", {}),
    ("occlusion", {"window": 24, "stride": 20, "forward_batch": 5}),
    ("occlusion", {"window": 16, "stride": 16}),
])
def test_predicted_runs_are_the_runs_the_method_makes(ex, monkeypatch, method, options):
    runs = _count_runs(ex, monkeypatch)
    ex.explain(_image(ex), method=method, **options)
    cost = estimate(method, options, ex.meta)
    # the clean pass runs on the full model (infer), the perturbed inputs on run_plain
    assert cost.forward_passes == sum(runs) + 1
    assert cost.batch == max(runs)


def test_occlusion_positions_match_the_method_on_odd_strides(ex):
    from attnmap.runtime.methods.perturbation import occluder_positions

    _, h, w = ex.meta.input_size
    for window, stride in [(8, 8), (8, 3), (13, 7), (1, 1), (96, 1), (20, 20)]:
        expected = len(occluder_positions(h, window, stride)) * len(occluder_positions(w, window, stride))
        assert estimate("occlusion", {"window": window, "stride": stride}, ex.meta).forward_passes == expected + 2


def test_memory_grows_with_forward_batch_and_masks(ex):
    small = estimate("rise", {"forward_batch": 8}, ex.meta)
    big = estimate("rise", {"forward_batch": 4000, "masks": 4000}, ex.meta)
    assert big.unit_bytes == small.unit_bytes > 3 * 4 * 96 * 96  # at least the input itself
    assert big.batch_bytes - small.batch_bytes >= (4000 - 8) * small.unit_bytes
    grid_heavy = estimate("rise", {"masks": 1000, "cells": 1000}, ex.meta)
    assert grid_heavy.batch_bytes >= 1000 * 1000 * 1000  # a bool per cell at least
    assert estimate("rollout", {}, ex.meta).forward_passes == 1


def test_library_refuses_before_the_model_runs(ex, monkeypatch):
    runs = _count_runs(ex, monkeypatch)
    infers = []
    monkeypatch.setattr(ex, "infer", lambda *a, **k: infers.append(1))
    small = Explainer(SHIPPED, threads=1, budget=Budget(max_forward_passes=500, max_batch_bytes=64 * 1024 ** 2))
    monkeypatch.setattr(small, "infer", lambda *a, **k: infers.append(1))
    with pytest.raises(WorkLimitError, match=r"runs the model 1,001 times per image, over the limit of 500 "
                                             r"\(max_forward_passes\); lower masks"):
        small.explain(_image(ex), method="rise")
    with pytest.raises(WorkLimitError, match=r"needs about .* GB at once \(4000 inputs per model run at about "
                                             r".* MB each\), over the limit of 4.0 GB \(max_batch_bytes\)"):
        ex.explain(_image(ex), method="rise", masks=4000, forward_batch=4000)
    with pytest.raises(WorkLimitError, match="9,218 times"):
        small.explain(_image(ex), method="occlusion", window=1, stride=1)
    assert runs == [] and infers == []


@pytest.mark.parametrize("option, value, allowed", [
    ("masks", 10 ** 12, "[1, 1,000,000]"), ("cells", 100_000, "[1, 1,024]"), ("forward_batch", 4000 * 4, "[1, 4,096]")])
def test_absurd_values_are_option_errors_not_memory_errors(ex, option, value, allowed):
    with pytest.raises(MethodOptionError) as info:
        ex.explain(_image(ex), method="rise", **{option: value})
    assert f"must be an integer in {allowed}" in str(info.value)


def test_a_job_is_checked_against_its_budget(ex):
    job = Job(method="rise", options={"masks": 3000})
    assert job.checked(ex.meta).options == {"masks": 3000}  # within the library's default
    with pytest.raises(WorkLimitError, match="3,001 times per image, over the limit of 2,000"):
        Job(method="rise", options={"masks": 3000}, budget=Budget(max_forward_passes=2000)).checked(ex.meta)
    assert isinstance(WorkLimitError("x"), OptionError)


def test_budget_and_names(ex):
    with pytest.raises(MethodOptionError, match="max_forward_passes must be a positive integer"):
        Budget(max_forward_passes=0)
    with pytest.raises(WorkLimitError, match=r"the server's --max-forward-passes"):
        check_budget("rise", {"masks": 5000}, ex.meta, Budget(max_forward_passes=100),
                     limit_names={"max_forward_passes": "the server's --max-forward-passes"})
    # every method's default options are within the library's budget
    for name in METHODS:
        check_budget(name, {}, ex.meta, LIBRARY_BUDGET)
