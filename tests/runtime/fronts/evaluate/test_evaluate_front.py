"""`attnmap evaluate` and its library function: the four AUCs per method, a random floor, per-image failures."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import attnmap.cli as cli
from attnmap import Explainer
from attnmap.runtime.core.errors import OptionError
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.frames.synth import make_sample
from attnmap.runtime.evaluation import METRICS, PERTURBATION, RANDOM, evaluate
from attnmap.runtime.evaluation.curves import curves_of


@pytest.fixture(scope="module")
def shipped():
    return Explainer(provider="cpu")


def _frames(n: int) -> list[Frame]:
    return [Frame(i, make_sample(np.random.default_rng(50 + i), 96).image_bgr, f"img{i}", 0.0) for i in range(n)]


def test_each_methods_scores_are_its_maps_curves_and_random_is_beside_them(shipped):
    frames = _frames(3)
    r = evaluate(shipped, frames, ["rollout", "attention"], fit="squash", steps=4,
                 options={"rollout": {"discard_ratio": 0.5}})
    assert r.images == 3 and r.sources == ["img0", "img1", "img2"] and r.failed == []
    assert set(r.per_image) == {"rollout", "attention", RANDOM}
    for i, f in enumerate(frames):
        x, _ = shipped.preprocess([f.image_bgr], fit="squash")
        ref = shipped.explain(f.image_bgr, fit="squash", discard_ratio=0.5)
        want = curves_of(shipped, x[0], ref.grid, ref.topk[0].index, steps=4).aucs()
        for k in PERTURBATION:
            assert r.per_image["rollout"][k][i] == pytest.approx(want[k])
    s = r.summary()
    for method in s:
        assert all(s[method][k] is None for k in METRICS if k not in PERTURBATION)  # no ground truth given
        for k in PERTURBATION:
            m = s[method][k]
            assert m["ci_low"] <= m["mean"] <= m["ci_high"]
            assert m["mean"] == pytest.approx(np.mean(r.per_image[method][k]), abs=1e-4)


def test_an_image_that_cannot_be_scored_is_reported_and_the_rest_are_scored(shipped):
    frames = _frames(2) + [Frame(2, None, "broken.png", 0.0, error=OSError("unreadable"))]
    r = evaluate(shipped, frames, ["rollout"], steps=2)
    assert r.sources == ["img0", "img1"] and r.failed == [("broken.png", "unreadable")]
    with pytest.raises(OptionError, match="baseline"):
        evaluate(shipped, frames, ["rollout"], baseline="noise")
    with pytest.raises(OptionError):
        evaluate(shipped, frames, ["rollout"], options={"rollout": {"discard_ratio": 1.5}})


def test_cli_prints_the_json_schema_and_fails_on_bad_inputs(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"s{i}.png"), make_sample(np.random.default_rng(i), 96).image_bgr)
    res = CliRunner().invoke(cli.main, ["evaluate", str(tmp_path), "--methods", "rollout", "--steps", "4",
                                        "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["images"] == 2 and doc["unit"] == "patch" and doc["baseline"] == "mean"
    assert set(doc["methods"]) == {"rollout", RANDOM}
    assert set(doc["methods"]["rollout"]) == {*METRICS, *(k + "_ci" for k in METRICS), "curves", "explain_ms",
                                              "cost_x"}
    assert doc["schema_version"] == 1 and doc["plain_ms"] is None  # not timed without --timing
    assert doc["methods"]["rollout"]["explain_ms"] is None and doc["methods"]["rollout"]["cost_x"] is None
    assert doc["methods"]["rollout"]["pointing_game"] is None  # no masks, boxes or synthetic images
    curves = doc["methods"]["rollout"]["curves"]
    assert curves["pn_fractions"] == [round(i / 10, 4) for i in range(10)] and len(curves["deletion"]) == 5
    (tmp_path / "bad.png").write_bytes(b"not an image")
    res = CliRunner().invoke(cli.main, ["evaluate", str(tmp_path), "--methods", "rollout", "--steps", "2"])
    assert res.exit_code == 1 and "bad.png" in res.output and "Traceback" not in res.output
    assert "rollout" in res.stdout  # the good images are still scored and printed
    res = CliRunner().invoke(cli.main, ["evaluate", str(tmp_path), "--methods", "rolout"])
    assert res.exit_code == 2 and "unknown explanation method 'rolout'" in res.output


def test_a_method_that_fails_on_an_image_is_named_and_the_next_image_is_scored(shipped, monkeypatch):
    calls = {"n": 0}
    real = shipped.method_maps

    def flaky(outputs, m, options, **kw):
        calls["n"] += m.name == "attention"
        if m.name == "attention" and calls["n"] <= 2:  # the first image's attention map (the engine retries once)
            raise ValueError("no attention here")
        return real(outputs, m, options, **kw)

    monkeypatch.setattr(shipped, "method_maps", flaky)
    r = evaluate(shipped, _frames(2), ["rollout", "attention"], steps=2)
    assert r.failed == [("img0", "method 'attention': no attention here")] and r.sources == ["img1"]
