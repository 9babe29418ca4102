"""attnmap evaluate's ground truth and reports: localisation metrics against brute-force
references, labels / masks / boxes files, pixel units, shared batches, CSV and plots."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import attnmap.cli as cli
from attnmap import Explainer
from attnmap.runtime.core.errors import InputError, MethodOptionError
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.frames.synth import make_sample
from attnmap.runtime.evaluation import (GroundTruth, LOCALISATION, RANDOM, evaluate, parse_method_spec, read_boxes,
                                        read_labels, synthetic_frames)
from attnmap.runtime.evaluation.curves import baseline_input, curves_of, score_maps, unit_scores
from attnmap.runtime.evaluation.localisation import (box_mass_ratio, box_masks, mask_mass_ratio, mask_pointing_game,
                                                     segmentation_scores)
from attnmap.runtime.evaluation.scoring import _localisation


@pytest.fixture(scope="module")
def shipped():
    return Explainer(provider="cpu")


def _ap_reference(scores, truth):
    """Average precision by brute force: every distinct score as a threshold, highest first."""
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        tp = np.sum(pred & truth)
        precision, recall = tp / pred.sum(), tp / truth.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def test_segmentation_scores_equal_brute_force_counts():
    rng = np.random.default_rng(3)
    maps = rng.random((4, 9, 11))
    maps[1] = np.round(maps[1], 1)  # ties between scores
    masks = rng.random((4, 9, 11)) < 0.3
    got = segmentation_scores(maps, masks)
    for i in range(4):
        pred = maps[i] > maps[i].mean()
        acc = np.mean(pred == masks[i])
        ious = [np.sum(p & t) / np.sum(p | t) for p, t in ((pred, masks[i]), (~pred, ~masks[i]))]
        assert got["pixel_accuracy"][i] == pytest.approx(acc)
        assert got["miou"][i] == pytest.approx(np.mean(ious))
        assert got["ap"][i] == pytest.approx(_ap_reference(maps[i].ravel(), masks[i].ravel()))
    perfect = segmentation_scores(masks.astype(float), masks)
    assert np.allclose(perfect["pixel_accuracy"], 1) and np.allclose(perfect["ap"], 1)


def test_mask_pointing_game_uses_the_euclidean_distance_to_the_mask():
    mask = np.zeros((1, 60, 60), bool)
    mask[0, 10:20, 10:20] = True
    for (y, x), hit in [((15, 15), True), ((19, 34), True), ((19, 35), False), ((30, 30), True), ((31, 31), False)]:
        m = np.zeros((1, 60, 60))
        m[0, y, x] = 1.0
        # the nearest mask pixel of (30, 30) is (19, 19): sqrt(121 + 121) = 15.56 > 15 -> a miss
        dist = np.min(np.hypot(*np.nonzero(mask[0])[::-1] - np.array([[x], [y]])))
        assert mask_pointing_game(m, mask, 15.0)[0] == (dist <= 15.0)
        assert mask_pointing_game(m, mask, 15.0)[0] == hit or (y, x) == (30, 30)


def test_mask_mass_ratio_equals_the_box_version_on_box_masks():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 20, 30))
    boxes = np.array([[0, 0, 5, 5], [3, 4, 30, 20], [10, 2, 11, 3]])
    np.testing.assert_allclose(mask_mass_ratio(maps, box_masks(boxes, (20, 30))), box_mass_ratio(maps, boxes))


def test_pixel_units_rank_the_bilinear_map_and_remove_exactly_those_pixels(shipped):
    img = make_sample(np.random.default_rng(11), 96).image_bgr
    x, _ = shipped.preprocess([img], fit="squash")
    r = shipped.explain(img, fit="squash")
    scores = unit_scores(r.grid, "pixel", (96, 96))
    ref = cv2.resize(r.grid.astype(np.float32), (96, 96), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(scores, ref, atol=1e-5)  # bilinear, pixel centres aligned
    target = r.topk[0].index
    c = curves_of(shipped, x[0], r.grid, target, steps=4, unit="pixel", batch_size=5)
    base = baseline_input(x, shipped.meta, "mean")[0]
    flat = scores.ravel()
    order = sorted(range(flat.size), key=lambda u: (-flat[u], u))
    for i, f in enumerate(np.arange(5) / 4):
        inp = x[0].reshape(3, -1).copy()
        k = int(np.rint(f * flat.size))
        inp[:, order[:k]] = base.reshape(3, -1)[:, order[:k]]
        z = shipped.infer_plain(inp.reshape(1, 3, 96, 96))[0].astype(np.float64)
        p = np.exp(z - z.max())
        assert c.deletion[i] == pytest.approx(p[target] / p.sum(), rel=1e-5)


def test_maps_scored_together_equal_each_scored_alone(shipped):
    img = make_sample(np.random.default_rng(12), 96).image_bgr
    x, _ = shipped.preprocess([img])
    rng = np.random.default_rng(0)
    maps = [rng.random((12, 12)) for _ in range(3)]
    together = score_maps(shipped, x[0], maps, 2, steps=5, batch_size=13)
    for m, c in zip(maps, together):
        alone = curves_of(shipped, x[0], m, 2, steps=5, batch_size=64)
        for name in ("positive", "negative", "deletion", "insertion"):
            np.testing.assert_allclose(getattr(c, name), getattr(alone, name), rtol=1e-5, atol=1e-7)


def test_localisation_runs_on_the_original_pixels_the_model_saw(shipped):
    s = make_sample(np.random.default_rng(5), 128)
    r = shipped.explain(s.image_bgr, fit="crop")
    got = _localisation(r.geometry, r.grid, s.mask)
    y0, y1, x0, x1 = r.geometry.seen_region(r.grid.shape)
    heat, mask = r.heatmap[y0:y1, x0:x1][None], s.mask[y0:y1, x0:x1][None]
    assert got["mass_ratio"] == pytest.approx(mask_mass_ratio(heat, mask)[0])
    assert got["ap"] == pytest.approx(segmentation_scores(heat, mask)["ap"][0])


def test_labels_boxes_and_masks_files(tmp_path, shipped):
    meta = shipped.meta
    (tmp_path / "labels.csv").write_text("source,class\nphotos/a.png,2\nb.png,star\n")
    labels = read_labels(tmp_path / "labels.csv", meta)
    truth = GroundTruth(labels=labels)
    assert truth.label_of("photos/a.png") == 2 and truth.label_of("/elsewhere/b.png") == meta.label_names.index("star")
    with pytest.raises(InputError, match="no label for this image"):
        truth.label_of("c.png")
    (tmp_path / "bad.csv").write_text("a.png,2\nb.png,zebra\n")
    with pytest.raises(InputError, match=r"bad.csv:2: .*zebra"):
        read_labels(tmp_path / "bad.csv", meta)
    (tmp_path / "boxes.csv").write_text("source,x0,y0,x1,y1\na.png,1,2,5,6\na.png,4,4,8,8\n")
    boxed = GroundTruth(boxes=read_boxes(tmp_path / "boxes.csv"))
    mask = boxed.mask_of("dir/a.png", (10, 10))
    assert mask.sum() == 16 + 16 - 2 and mask[2, 1] and mask[7, 7] and not mask[0, 0]
    with pytest.raises(InputError, match="does not fit the 6x6 image"):
        boxed.mask_of("a.png", (6, 6))
    (tmp_path / "masks").mkdir()
    m = np.zeros((10, 12), np.uint8)
    m[3:5, 4:9] = 255
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), m)
    folder = GroundTruth(mask_dir=tmp_path / "masks")
    np.testing.assert_array_equal(folder.mask_of("x/a.jpg", (10, 12)), m > 0)
    with pytest.raises(InputError, match="must have the image's size"):
        folder.mask_of("a.jpg", (12, 10))
    with pytest.raises(InputError, match="no mask or box"):
        folder.mask_of("b.jpg", (10, 12))


def test_a_label_sets_the_explained_class(shipped):
    img = make_sample(np.random.default_rng(21), 96).image_bgr
    top = int(shipped.explain(img).topk[0].index)
    other = (top + 1) % shipped.meta.num_classes
    frames = [Frame(0, img, "a.png", 0.0)]
    r = evaluate(shipped, frames, ["rollout"], steps=2, truth=GroundTruth(labels={"a.png": other}))
    assert r.targets == [other]
    # unperturbed, the top-1 is not the labelled class: positive perturbation starts at 0
    assert r.curves["rollout"]["positive"][0][0] == 0.0
    r = evaluate(shipped, frames, ["rollout"], steps=2)
    assert r.targets == [top] and r.curves["rollout"]["positive"][0][0] == 1.0


def test_method_specs_evaluate_one_method_under_several_option_sets(shipped):
    assert parse_method_spec("rollout:discard_ratio=0.5:head_fusion=max:residual=false") == (
        "rollout", {"discard_ratio": 0.5, "head_fusion": "max", "residual": False})
    with pytest.raises(MethodOptionError, match="'layer' is not option=value"):
        parse_method_spec("rollout:layer")
    with pytest.raises(MethodOptionError, match="discard_ratio"):
        parse_method_spec("rollout:discard_ratio=2")
    frames, masks = synthetic_frames(2, 96)
    r = evaluate(shipped, frames, ["rollout", "rollout:discard_ratio=0.5"], steps=2)
    s = evaluate(shipped, frames, ["rollout"], steps=2, options={"rollout": {"discard_ratio": 0.5}})
    assert r.per_image["rollout:discard_ratio=0.5"]["deletion_auc"] == s.per_image["rollout"]["deletion_auc"]


def test_cli_synthetic_localisation_csv_and_plots(tmp_path):
    out = tmp_path / "report"
    res = CliRunner().invoke(cli.main, ["evaluate", "--synthetic", "4", "--methods", "rollout,attention",
                                        "--steps", "2", "--json", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["images"] == 4
    for method in ("rollout", "attention", RANDOM):
        assert all(doc["methods"][method][k] is not None for k in LOCALISATION)
    # the shipped model's rollout finds the shape far better than a random map does
    assert doc["methods"]["rollout"]["mass_ratio"] > 2 * doc["methods"][RANDOM]["mass_ratio"]
    rows = (out / "per_image.csv").read_text().splitlines()
    assert rows[0].startswith("source,class,method,positive_auc") and len(rows) == 1 + 4 * 3
    for name in ("perturbation.png", "deletion_insertion.png"):
        assert cv2.imread(str(out / name)).shape[0] > 100
    res = CliRunner().invoke(cli.main, ["evaluate", "--methods", "rollout"])
    assert res.exit_code == 2 and "--synthetic" in res.output


def test_methods_all_is_what_the_file_can_run(shipped, tiny_vit_grads_onnx):
    from attnmap.runtime.methods import METHODS, runs_on

    plain = {n for n in METHODS if runs_on(n, shipped.meta)}
    assert plain == {"rollout", "attention", "flow", "occlusion", "rise"}  # no gradients in the shipped file
    grads = Explainer(tiny_vit_grads_onnx, provider="cpu").meta
    # every method but those that read a --tail or --decompositions file (exported without gradients)
    forward_only = {"reciprocam", "attn-norm", "head-norm", "globenc", "decompx"}
    assert {n for n in METHODS if runs_on(n, grads)} == set(METHODS) - forward_only


def test_option_text_is_parsed_by_the_options_kind():
    from attnmap.runtime.core.errors import OptionError
    from attnmap.runtime.methods import METHODS

    rollout, attention = METHODS["rollout"].options, METHODS["attention"].options
    assert rollout["residual"].parse("off") is False and rollout["residual"].parse("True") is True
    assert attention["head"].parse("none") is None and attention["layer"].parse("-2", size=4) == -2
    with pytest.raises(OptionError, match="must be a number"):
        rollout["discard_ratio"].parse("lots")
    with pytest.raises(OptionError, match=r"in \[-4, 4\)"):
        attention["layer"].parse("7", size=4)
