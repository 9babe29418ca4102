"""EvaluationPlan: one evaluation's settings checked once against the model, and the inputs it scores."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from attnmap import Explainer
from attnmap.runtime.core.errors import ExplainError, InputError, MethodOptionError, OptionError, SourceError
from attnmap.runtime.evaluation import (EvaluationInputs, EvaluationPlan, GroundTruth, evaluate, evaluate_inputs,
                                        score_frames, synthetic_frames)
from attnmap.runtime.frames.sources import open_files
from attnmap.runtime.frames.synth import make_sample
from attnmap.runtime.methods import METHODS, runs_on


@pytest.fixture(scope="module")
def shipped():
    return Explainer(provider="cpu", threads=1)  # the shipped shapes model: no gradients


def _images(folder: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        p = folder / f"s{i}.png"
        cv2.imwrite(str(p), make_sample(np.random.default_rng(10 + i), 96).image_bgr)
        paths.append(p)
    return paths


def test_checked_parses_specs_expands_all_and_converts_options(shipped):
    plan = EvaluationPlan(methods=(" rollout:discard_ratio=0.5:residual=false", "attention"), steps=np.int64(4),
                          options={"attention": {"head_fusion": "max"}}).checked(shipped.meta)
    assert plan.is_checked and plan.specs == ["rollout:discard_ratio=0.5:residual=false", "attention"]
    name, options = plan.checked_methods["rollout:discard_ratio=0.5:residual=false"]
    assert name == "rollout" and options["discard_ratio"] == 0.5 and options["residual"] is False
    assert plan.checked_methods["attention"][1]["head_fusion"] == "max"
    assert plan.steps == 4 and type(plan.steps) is int
    assert plan.checked(shipped.meta) is plan  # checked once
    every = EvaluationPlan(methods=("all",)).checked(shipped.meta)
    assert every.specs == [n for n in METHODS if runs_on(n, shipped.meta)]


@pytest.mark.parametrize("settings, error, needle", [
    (dict(methods=("rolout",)), MethodOptionError, "rollout"),
    (dict(methods=("rollout:layers=2",)), MethodOptionError, "is not option=value"),
    (dict(methods=()), OptionError, "at least one method"),
    (dict(methods=("rollout", "rollout")), OptionError, "once"),
    (dict(methods=("random",)), OptionError, "always evaluated"),
    (dict(baseline="grey"), OptionError, "baseline must be one of"),
    (dict(unit="token"), OptionError, "unit must be one of"),
    (dict(fit="stretch"), OptionError, "fit must be one of"),
    (dict(engine="spark"), OptionError, "engine must be one of"),
    (dict(steps=0), OptionError, "steps must be an integer >= 1"),
    (dict(batch_size=True), OptionError, "batch_size must be an integer >= 1"),
    (dict(sigma=0.0), OptionError, "sigma must be > 0"),
    (dict(synthetic=4, engine="ray"), OptionError, "local engine"),
    (dict(methods=("chefer",)), ExplainError, "needs attention gradients"),
    (dict(labels="/nonexistent/labels.csv"), InputError, "cannot read"),
])
def test_checked_refuses_bad_settings_before_any_image(shipped, settings, error, needle):
    with pytest.raises(error, match=needle):
        EvaluationPlan(**settings).checked(shipped.meta)


def test_checked_reads_the_truth_files_into_one_ground_truth(shipped, tmp_path):
    labels, boxes = tmp_path / "labels.csv", tmp_path / "boxes.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["source", "class"], ["a.png", "1"], ["b.png", shipped.meta.label(2)]])
    with open(boxes, "w", newline="") as f:
        csv.writer(f).writerows([["a.png", 1, 2, 30, 40], ["a.png", 50, 50, 60, 60]])
    given = GroundTruth(labels={"c.png": 0})
    plan = EvaluationPlan(labels=labels, boxes=boxes, masks=tmp_path, truth=given).checked(shipped.meta)
    assert plan.truth.labels == {"c.png": 0, "a.png": 1, "b.png": 2}
    assert plan.truth.boxes == {"a.png": [(1, 2, 30, 40), (50, 50, 60, 60)]}
    assert plan.truth.mask_dir == tmp_path and given.labels == {"c.png": 0}  # the given truth is not changed
    with pytest.raises(InputError, match="expected a folder of masks"):
        EvaluationPlan(masks=labels).checked(shipped.meta)


def test_inputs_list_still_images_and_name_what_is_not_one(shipped, tmp_path):
    paths = _images(tmp_path, 2)
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\ns1.png\n")
    plan = EvaluationPlan(methods=("rollout",), synthetic=2).checked(shipped.meta)
    inputs = plan.inputs([str(paths[0]), str(manifest), str(tmp_path / "clip.mp4"), str(tmp_path / "gone.png")])
    assert inputs.images == (str(paths[0]), str(paths[1]))
    assert [f.source for f in inputs.synthetic] == ["synthetic/0000", "synthetic/0001"] and inputs.total == 4
    assert set(inputs.masks) == {"synthetic/0000", "synthetic/0001"}
    assert [spec for spec, _ in inputs.failures] == [str(tmp_path / "gone.png"), str(tmp_path / "clip.mp4")]
    assert "still images" in inputs.failures[1][1]
    ray = EvaluationPlan(methods=("rollout",), engine="ray").checked(shipped.meta)
    listed = ray.inputs([str(tmp_path), str(tmp_path / "gone.png")])
    # a folder lists its images (the video and the manifest beside them are not listed); the missing file fails
    assert listed.images == tuple(str(p) for p in paths) and [s for s, _ in listed.failures] == [str(tmp_path / "gone.png")]
    with pytest.raises(OptionError, match="checked"):
        EvaluationPlan().inputs([str(paths[0])])
    with pytest.raises(OptionError, match="give images"):
        plan.__class__(methods=("rollout",)).checked(shipped.meta).inputs([])


def test_evaluate_inputs_scores_files_then_synthetic_as_the_keyword_form_does(shipped, tmp_path):
    paths = _images(tmp_path, 2)
    plan = EvaluationPlan(methods=("rollout", "attention"), steps=3, unit="pixel", synthetic=2).checked(shipped.meta)
    seen: list[str] = []
    got = evaluate_inputs(shipped, plan, plan.inputs([str(tmp_path)]), on_image=seen.append)
    # the reference: the keyword API over the same frames, the synthetic masks given as truth
    synth, masks = synthetic_frames(2, 96)
    with open_files([str(p) for p in paths], errors="yield") as frames:
        want = evaluate(shipped, [*frames, *synth], ["rollout", "attention"], steps=3, unit="pixel",
                        truth=GroundTruth(masks=masks))
    assert got.to_dict() == want.to_dict() and got.sources == want.sources
    assert seen == [*map(str, paths), "synthetic/0000", "synthetic/0001"]  # files first, then synthetic
    # with masks known, an image without one cannot be localised: the files fail, the synthetic ones score
    assert got.sources == ["synthetic/0000", "synthetic/0001"]
    assert [s for s, _ in got.failed] == list(map(str, paths)) and "no mask" in got.failed[0][1]
    files_only = EvaluationPlan(methods=("rollout", "attention"), steps=3).checked(shipped.meta)
    with open_files([str(p) for p in paths], errors="yield") as frames:
        want = evaluate(shipped, frames, ["rollout", "attention"], steps=3)
    got = evaluate_inputs(shipped, files_only, files_only.inputs(list(map(str, paths))))
    assert got.to_dict() == want.to_dict() and got.sources == list(map(str, paths))
    assert got.per_image["rollout"]["deletion_auc"] == want.per_image["rollout"]["deletion_auc"]
    with pytest.raises(SourceError, match="no images"):
        evaluate_inputs(shipped, plan, EvaluationInputs())


def test_score_frames_checks_an_unchecked_plan_and_reports_bad_frames(shipped):
    synth, _ = synthetic_frames(2, 96)
    result = score_frames(shipped, synth, EvaluationPlan(methods=("rollout",), steps=2))
    assert result.sources == ["synthetic/0000", "synthetic/0001"] and set(result.per_image) == {"rollout", "random"}
    with pytest.raises(MethodOptionError):
        score_frames(shipped, synth, EvaluationPlan(methods=("rollout:discard_ratio=2",)))
