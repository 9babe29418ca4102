"""Perturbation methods (occlusion, RISE): against references written from their definitions.

The NumPy "models" below have class probabilities that are known functions of which pixels are
visible, so the right occlusion map is known in closed form; RISE is compared with a direct loop
over its masks written from the paper's formula, S(λ) = 1/(E[M]·N) Σ_i f(I ⊙ M_i) · M_i(λ), and
with the values its expectation converges to. Real runs use the committed tiny ViT (plain, with
gradients, and cut down to logits only) through ``Explainer`` and the frame engine.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from attnmap import Explainer, FrameEngine, Job
from attnmap.cli import main
from attnmap.runtime.core.errors import ExplainError, MethodOptionError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.methods import METHODS, check_method_use, attention_maps
from attnmap.runtime.methods.perturbation import RiseMasks, occluder_positions, occlusion, rise, rise_saliency
from attnmap.runtime.model.graph import prune_to_outputs

H = W = 32
LAYOUT = TokenLayout(1, (4, 4), 0)  # 8 px patches
REGION = (slice(5, 21), slice(3, 13))  # rows 5..20, cols 3..12: not aligned with the patches
LOW, GAIN = 0.2, 0.6


def visible_region_model(x: np.ndarray) -> np.ndarray:
    """(b, 2) probabilities: class 1 = LOW + GAIN * (visible fraction of REGION), class 0 the rest.

    A pixel is visible where channel 0 is not 0 (the ``mean`` baseline writes 0); inputs are ones.
    """
    visible = (x[:, 0][:, REGION[0], REGION[1]] != 0).mean(axis=(1, 2))
    p1 = LOW + GAIN * visible
    return np.stack([1 - p1, p1], axis=1).astype(np.float32)


def ones(b: int = 1) -> np.ndarray:
    return np.ones((b, 3, H, W), np.float32)


def minmax(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min())


def region_mask() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[REGION] = True
    return m


# --------------------------------------------------------------------------- occlusion
def test_occluder_positions_cover_every_pixel_and_touch_the_border():
    assert occluder_positions(32, 8, 8) == [0, 8, 16, 24]
    assert occluder_positions(32, 12, 8) == [0, 8, 16, 20]  # 24 + 12 > 32: the last moves back to 20
    assert occluder_positions(32, 32, 5) == [0]


def test_default_occlusion_scores_each_patch_by_the_probability_its_occluder_removes():
    maps = occlusion(ones(), visible_region_model, np.array([1]), LAYOUT)
    # Occluding patch (r, c) hides |patch ∩ REGION| region pixels: drop = GAIN * that / |REGION|.
    overlap = region_mask().reshape(4, 8, 4, 8).sum(axis=(1, 3)).astype(np.float64)
    assert overlap.min() == 0 and (overlap > 0).sum() > 4
    np.testing.assert_allclose(maps[0], overlap / overlap.max(), atol=1e-6)
    assert maps.dtype == np.float32 and maps.shape == (1, 4, 4)


def test_overlapping_occluders_average_over_the_windows_covering_each_pixel():
    window, stride = 12, 4
    got = occlusion(ones(), visible_region_model, np.array([1]), LAYOUT, window=window, stride=stride)
    region = region_mask()
    starts = list(range(0, H - window + 1, stride))  # 0, 4, ..., 20: 20 + 12 = 32 covers the border
    acc, count = np.zeros((H, W)), np.zeros((H, W))
    for y in starts:
        for x in starts:
            drop = GAIN * region[y:y + window, x:x + window].sum() / region.sum()
            acc[y:y + window, x:x + window] += drop
            count[y:y + window, x:x + window] += 1
    pixel = acc / count
    ref = np.array([[pixel[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].mean() for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(got[0], minmax(ref), atol=1e-6)


def test_occlusion_of_the_other_class_reverses_the_map():
    # p0 = 1 - p1: every drop of class 1 is a rise of class 0, so min-max gives 1 - map.
    c1 = occlusion(ones(), visible_region_model, np.array([1]), LAYOUT, window=8, stride=4)
    c0 = occlusion(ones(), visible_region_model, np.array([0]), LAYOUT, window=8, stride=4)
    np.testing.assert_allclose(c0, 1.0 - c1, atol=1e-6)


@pytest.mark.parametrize("forward_batch", [1, 5, 64])
def test_occlusion_is_the_same_whatever_the_chunk_size_and_batch(forward_batch):
    x = np.concatenate([ones(), 2 * ones()])  # two images, explained for different classes
    classes = np.array([1, 0])
    ref = np.stack([occlusion(x[i:i + 1], visible_region_model, classes[i:i + 1], LAYOUT, window=8, stride=4,
                              forward_batch=1000)[0] for i in range(2)])
    sizes = []

    def forward(xb):
        sizes.append(len(xb))
        return visible_region_model(xb)

    got = occlusion(x, forward, classes, LAYOUT, window=8, stride=4, forward_batch=forward_batch)
    np.testing.assert_array_equal(got, ref)
    assert max(sizes) == min(forward_batch, 2 * 49) and sum(sizes) == 2 + 2 * 49  # 7 x 7 positions each


def test_blur_baseline_of_a_flat_image_changes_nothing_so_the_map_is_all_zero():
    calls = []

    def forward(x):
        calls.append(x.copy())
        return visible_region_model(x)

    maps = occlusion(ones(), forward, np.array([1]), LAYOUT, baseline="blur")
    assert len(calls) == 2 and all(np.allclose(c, 1.0) for c in calls)  # blurred ones are ones
    np.testing.assert_array_equal(maps, np.zeros((1, 4, 4), np.float32))


def test_occlusion_never_mutates_its_input():
    x = ones()
    occlusion(x, visible_region_model, np.array([1]), LAYOUT)
    np.testing.assert_array_equal(x, ones())


@pytest.mark.parametrize("kwargs, match", [
    (dict(window=40), "larger than the 32x32 input"),
    (dict(window=4, stride=8), "stride 8x8 is larger than the window"),
    (dict(baseline="black"), "baseline must be one of"),
    (dict(forward_batch=0), "forward_batch must be an integer >= 1"),
])
def test_occlusion_refuses_bad_geometry(kwargs, match):
    with pytest.raises(ExplainError, match=match):
        occlusion(ones(), visible_region_model, np.array([1]), LAYOUT, **kwargs)


@pytest.mark.parametrize("x, classes, match", [
    (np.ones((1, 32, 32), np.float32), [1], r"\(B, 3, H, W\)"),
    (np.ones((1, 3, 30, 32), np.float32), [1], "whole number"),
    (np.ones((2, 3, 32, 32), np.float32), [1], "one class index"),
    (np.ones((1, 3, 32, 32), np.float32), [1.0], "one class index"),
    (np.ones((1, 3, 32, 32), np.float32), [2], "out of range for 2 classes"),
])
def test_perturbation_inputs_are_checked(x, classes, match):
    with pytest.raises(ExplainError, match=match):
        occlusion(x, visible_region_model, np.array(classes), LAYOUT)


# --------------------------------------------------------------------------- RISE masks
def test_rise_masks_are_the_grids_bilinearly_upsampled_and_shifted():
    # H = W = 28, s = 2: C = 14, the 2 x 2 grid is stretched to (s+1)·C = 42 px, 21 px a cell. With
    # pixel centres at half-pixel offsets the centre of cell k falls on pixel 21 k + 10 of the
    # upsampled mask, where bilinear interpolation returns the cell's value exactly.
    masks = RiseMasks.draw(40, 2, 0.5, (28, 28), seed=3)
    assert masks.cell == (14, 14) and masks.grids.shape == (40, 2, 2)
    assert masks.shifts.min() >= 0 and masks.shifts.max() <= 13 and len(np.unique(masks.shifts)) > 5
    rendered = masks.render(np.arange(40))
    assert rendered.shape == (40, 28, 28) and rendered.min() >= 0 and rendered.max() <= 1
    checked = 0
    for i in range(40):
        dy, dx = masks.shifts[i]
        for k in range(2):
            for j in range(2):
                y, x = 21 * k + 10 - dy, 21 * j + 10 - dx
                if 0 <= y < 28 and 0 <= x < 28:
                    assert rendered[i, y, x] == pytest.approx(float(masks.grids[i, k, j]), abs=1e-6)
                    checked += 1
        # halfway between two cells of different value the mask is their mean
        if masks.grids[i, 0, 0] != masks.grids[i, 0, 1] and 0 <= 10 - dy < 28 and 0 <= 20 - dx < 28:
            assert rendered[i, 10 - dy, 20 - dx] == pytest.approx(0.5 - 0.5 / 21, abs=1e-6) or \
                rendered[i, 10 - dy, 20 - dx] == pytest.approx(0.5 + 0.5 / 21, abs=1e-6)
    assert checked > 40


def test_rise_masks_keep_a_fraction_p_and_depend_only_on_the_seed():
    a = RiseMasks.draw(2000, 7, 0.3, (32, 32), seed=0)
    assert abs(a.grids.mean() - 0.3) < 0.01
    assert abs(a.render(np.arange(500)).mean() - 0.3) < 0.02  # bilinear weights sum to 1: E[M] = p
    b = RiseMasks.draw(2000, 7, 0.3, (32, 32), seed=0)
    c = RiseMasks.draw(2000, 7, 0.3, (32, 32), seed=1)
    np.testing.assert_array_equal(a.grids, b.grids)
    np.testing.assert_array_equal(a.shifts, b.shifts)
    assert not np.array_equal(a.grids, c.grids)


# --------------------------------------------------------------------------- RISE saliency
def rise_reference(x_chw: np.ndarray, forward, cls: int, masks: RiseMasks) -> np.ndarray:
    """The paper's formula as a plain loop: one masked image and one model call per mask."""
    s = np.zeros(masks.size)
    for i in range(len(masks)):
        m = masks.render(np.array([i]))[0].astype(np.float64)
        f = float(forward((x_chw * m)[None].astype(np.float32))[0, cls])
        s += f * m
    return s / (masks.p * len(masks))


def test_rise_saliency_is_the_papers_weighted_sum_of_masks():
    x = np.random.default_rng(0).uniform(0.5, 1.5, (2, 3, H, W)).astype(np.float32)

    def forward(xb):  # class 1 grows with the (continuous) visible mass of the region
        mass = xb[:, 0][:, REGION[0], REGION[1]].mean(axis=(1, 2))
        p1 = 1 / (1 + np.exp(-(4 * mass - 2)))
        return np.stack([1 - p1, p1], axis=1).astype(np.float32)

    masks = RiseMasks.draw(60, 5, 0.5, (H, W), seed=7)
    classes = np.array([1, 0])
    got = rise_saliency(x, forward, classes, masks, forward_batch=16)
    for b in range(2):
        np.testing.assert_allclose(got[b], rise_reference(x[b], forward, int(classes[b]), masks), rtol=1e-5)
    # rise() = the same saliency, area-averaged over the patches and min-max normalised
    maps = rise(x, forward, classes, LAYOUT, masks=60, cells=5, mask_seed=7)
    pooled = got.reshape(2, 4, 8, 4, 8).mean(axis=(2, 4))
    np.testing.assert_allclose(maps, np.stack([minmax(p) for p in pooled]), atol=1e-6)


@pytest.mark.parametrize("forward_batch", [1, 7, 500])
def test_rise_is_the_same_whatever_the_chunk_size(forward_batch):
    x = np.concatenate([ones(), 2 * ones()])
    sizes = []

    def forward(xb):
        sizes.append(len(xb))
        return visible_region_model(xb)

    ref = rise(x, visible_region_model, np.array([1, 1]), LAYOUT, masks=100, forward_batch=33)
    got = rise(x, forward, np.array([1, 1]), LAYOUT, masks=100, forward_batch=forward_batch)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert max(sizes) == forward_batch if forward_batch < 200 else sizes == [200]  # memory bounded
    assert sum(sizes) == 200


def test_rise_is_determined_by_its_seed():
    a = rise(ones(), visible_region_model, np.array([1]), LAYOUT, masks=50, mask_seed=4)
    b = rise(ones(), visible_region_model, np.array([1]), LAYOUT, masks=50, mask_seed=4)
    c = rise(ones(), visible_region_model, np.array([1]), LAYOUT, masks=50, mask_seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_rise_of_a_constant_model_converges_to_that_constant():
    # f = 0.7 whatever is masked: S(λ) = 0.7 · mean_i M_i(λ) / p -> 0.7
    def forward(xb):
        return np.tile(np.array([[0.3, 0.7]], np.float32), (len(xb), 1))

    s = rise_saliency(ones(), forward, np.array([1]), RiseMasks.draw(3000, 7, 0.5, (H, W), seed=0))
    pooled = s.reshape(4, 8, 4, 8).mean(axis=(1, 3))
    np.testing.assert_allclose(pooled, 0.7, rtol=0.06)


def test_rise_of_a_one_pixel_model_peaks_at_that_pixel_and_is_p_far_from_it():
    # f = M(λ0): S(λ) = E[M(λ0) M(λ)] / p, which is E[M²]/p at λ0 and p where the masks at λ and
    # λ0 are independent (more than a cell plus its interpolation apart).
    y0, x0 = 4, 27  # patch (0, 3)

    def forward(xb):
        v = xb[:, 0, y0, x0].astype(np.float64)
        return np.stack([1 - v, v], axis=1).astype(np.float32)

    masks = RiseMasks.draw(3000, 7, 0.5, (H, W), seed=1)
    s = rise_saliency(ones(), forward, np.array([1]), masks)[0]
    pooled = s.reshape(4, 8, 4, 8).mean(axis=(1, 3))
    assert np.unravel_index(pooled.argmax(), pooled.shape) == (0, 3)
    assert abs(pooled[3, 0] - 0.5) < 0.04  # the far corner
    assert pooled[0, 3] > 0.6


# --------------------------------------------------------------------------- registry and dispatch
def test_perturbation_methods_are_registered_as_class_specific_without_gradients():
    for name in ("occlusion", "rise"):
        m = METHODS[name]
        assert m.kind.name == "perturbation" and m.class_specific and not m.needs_gradients
    assert METHODS["rise"].defaults == {"masks": 1000, "p": 0.5, "cells": 7, "mask_seed": 0, "forward_batch": 32}
    assert set(METHODS["occlusion"].options) == {"window", "stride", "baseline", "forward_batch"}
    assert not METHODS["rollout"].class_specific and METHODS["chefer"].class_specific


def test_the_attention_entry_point_refuses_perturbation_methods():
    a = np.full((1, 1, 1, 17, 17), 1 / 17, np.float32)
    with pytest.raises(ExplainError, match="perturbation method, not an attention method.*Explainer.maps"):
        attention_maps("rise", a, LAYOUT)


# --------------------------------------------------------------------------- real models
def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 40, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tiny_vit_onnx) -> Explainer:
    return Explainer(tiny_vit_onnx, provider="cpu")


def occlusion_reference(ex: Explainer, x_chw: np.ndarray, cls: int) -> np.ndarray:
    """Each 8 px patch set to 0 (the mean colour) in turn; the drop of ``cls``'s probability."""
    clean = softmax(ex.infer_plain(x_chw[None]))[0, cls]
    drops = np.zeros((4, 4))
    for r in range(4):
        for c in range(4):
            xo = x_chw.copy()
            xo[:, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 0
            drops[r, c] = clean - softmax(ex.infer_plain(xo[None]))[0, cls]
    return minmax(drops)


def test_occlusion_on_the_tiny_vit_matches_occluding_each_patch_by_hand(tiny):
    img = picture(0)
    r = tiny.explain(img, method="occlusion")
    x, _ = tiny.preprocess([img])
    predicted = int(np.argmax(r.probs))
    assert r.target == predicted and r.method == "occlusion"
    np.testing.assert_allclose(r.grid, occlusion_reference(tiny, x[0], predicted), atol=1e-5)
    other = (predicted + 1) % 10
    chosen = tiny.explain(img, method="occlusion", target=tiny.meta.label(other))  # no gradients needed
    assert chosen.target == other and chosen.label_of_target == tiny.meta.label(other)
    np.testing.assert_allclose(chosen.grid, occlusion_reference(tiny, x[0], other), atol=1e-5)
    assert chosen.caption()[1].startswith(f"occlusion: {tiny.meta.label(other)}")


def test_rise_on_the_tiny_vit_matches_the_papers_loop(tiny):
    imgs = [picture(1), picture(2)]
    rs = tiny.explain(imgs, method="rise", target=[3, 5], masks=24, cells=3, mask_seed=2, forward_batch=5)
    x, _ = tiny.preprocess(imgs)
    masks = RiseMasks.draw(24, 3, 0.5, (32, 32), seed=2)

    def forward(xb):
        return softmax(tiny.infer_plain(xb))

    for r, xi, cls in zip(rs, x, (3, 5)):
        ref = rise_reference(xi, forward, cls, masks).reshape(4, 8, 4, 8).mean(axis=(1, 3))
        assert r.target == cls
        np.testing.assert_allclose(r.grid, minmax(ref), atol=1e-5)


def test_maps_needs_the_input_for_perturbation_methods_and_defaults_to_the_prediction(tiny):
    x, _ = tiny.preprocess([picture(3), picture(4)])
    outputs = tiny.infer(x)
    with pytest.raises(ExplainError, match="needs the .*model input"):
        tiny.maps(outputs, "occlusion")
    with pytest.raises(ExplainError, match="must hold the 2 inputs"):
        tiny.maps(outputs, "occlusion", x=x[:1])
    with pytest.raises(MethodOptionError, match="masks"):
        tiny.maps(outputs, "rise", x=x, masks=0)
    default = tiny.maps(outputs, "occlusion", x=x)
    predicted = outputs.logits.argmax(axis=1)
    np.testing.assert_array_equal(default, tiny.maps(outputs, "occlusion", x=x, classes=predicted))
    for i in range(2):
        np.testing.assert_allclose(default[i], occlusion_reference(tiny, x[i], int(predicted[i])), atol=1e-5)


def test_a_class_is_refused_for_class_agnostic_methods_only(tiny):
    assert check_method_use("rise", tiny.meta, class_given=True).name == "rise"
    with pytest.raises(MethodOptionError, match="class-agnostic.*occlusion, rise"):
        check_method_use("rollout", tiny.meta, class_given=True)


def test_a_gradient_model_gives_the_same_perturbation_maps_for_the_same_class(tiny, tiny_vit_grads_onnx):
    grads = Explainer(tiny_vit_grads_onnx, provider="cpu")  # same weights as the plain tiny ViT
    img = picture(5)
    a = grads.explain(img, method="occlusion", target=7)
    b = tiny.explain(img, method="occlusion", target=7)
    assert a.target == b.target == 7
    np.testing.assert_allclose(a.grid, b.grid, atol=1e-5)


def logits_only(src, dst):
    """The tiny ViT with its attention output and the nodes only it needed removed."""
    model = onnx.load(str(src))
    keep = [o for o in model.graph.output if o.name == "logits"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    model = prune_to_outputs(model)
    for prop in model.metadata_props:
        if prop.key == "attnmap":
            doc = json.loads(prop.value)
            doc["outputs"] = ["logits"]
            prop.value = json.dumps(doc)
    onnx.save(model, str(dst))
    return dst


def test_a_logits_only_file_is_explained_by_perturbation_and_refused_by_attention_methods(tiny, tiny_vit_onnx,
                                                                                          tmp_path):
    plain = Explainer(logits_only(tiny_vit_onnx, tmp_path / "plain.onnx"), provider="cpu")
    assert plain.meta.outputs == ("logits",)
    img = picture(6)
    r = plain.explain(img, method="rise", masks=20, target=4)
    np.testing.assert_allclose(r.grid, tiny.explain(img, method="rise", masks=20, target=4).grid, atol=1e-5)
    assert r.target == 4 and r.grid.shape == (4, 4)
    with pytest.raises(ExplainError, match="no attentions"):
        plain.explain(img, method="rollout")


# --------------------------------------------------------------------------- frame engine
def frames(n: int) -> list[Frame]:
    return [Frame(i, picture(10 + i), f"f{i}", 0.0) for i in range(n)]


def test_the_frame_engine_runs_perturbation_methods_with_the_jobs_class(tiny):
    job = Job(method="rise", options={"masks": 16, "cells": 3}, target=2)
    items = list(FrameEngine(tiny, job, batch_size=2).run(frames(3)))
    assert [i.index for i in items] == [0, 1, 2] and all(i.ok for i in items)
    for item in items:
        ref = tiny.explain(item.frame.image_bgr, method="rise", masks=16, cells=3, target=2)
        assert item.explanation.target == 2
        np.testing.assert_allclose(item.explanation.grid, ref.grid, atol=1e-5)
    step = FrameEngine(tiny, Job(method="occlusion")).step(frames(1)[0])
    ref = tiny.explain(frames(1)[0].image_bgr, method="occlusion")
    assert step.ok and step.explanation.target == ref.target
    np.testing.assert_allclose(step.explanation.grid, ref.grid, atol=1e-5)


def test_the_frame_engine_explains_the_top_classes_with_occlusion(tiny):
    items = list(FrameEngine(tiny, Job(method="occlusion", top_classes=2), batch_size=2).run(frames(2)))
    for item in items:
        top = [t.index for t in item.explanation.topk[:2]]
        assert [e.target for e in item.alternatives] == top
        for e, cls in zip(item.alternatives, top):
            ref = tiny.explain(item.frame.image_bgr, method="occlusion", target=cls)
            np.testing.assert_allclose(e.grid, ref.grid, atol=1e-5)


def test_the_cli_takes_the_perturbation_options_from_their_specs(tiny_vit_onnx, tmp_path):
    img = tmp_path / "in.png"
    cv2.imwrite(str(img), picture(20))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["explain", str(img), "-m", str(tiny_vit_onnx), "--method", "rise", "--masks", "12",
                                  "--cells", "3", "--p", "0.4", "--mask-seed", "5", "--save-maps", "-o", str(out)])
    assert r.exit_code == 0, r.output
    tiny = Explainer(tiny_vit_onnx, provider="cpu")
    ref = tiny.explain(str(img), method="rise", masks=12, cells=3, p=0.4, mask_seed=5)
    saved = np.load(next(out.glob("*.npz")))
    np.testing.assert_allclose(saved["grid"], ref.grid, atol=1e-5)
    bad = CliRunner().invoke(main, ["explain", str(img), "-m", str(tiny_vit_onnx), "--method", "occlusion",
                                    "--masks", "12", "-o", str(out)])
    assert bad.exit_code == 2 and "--method occlusion does not take it" in bad.output
