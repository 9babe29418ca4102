"""The Python API contract: Explainer(path).explain(images) -> Explanation(probs, topk, grid, heatmap, overlay)."""

import numpy as np
import onnxruntime as ort
import pytest

from attnmap import Explainer, ExplainError, ImageError, ModelError, ProviderError
from attnmap.runtime.engine.explainer import resolve_class, softmax, top_indices
from attnmap.runtime.methods import attention_maps as run_method
from attnmap.runtime.image.preprocess import preprocess


def _image(h=40, w=56, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def ex(tiny_vit_onnx):
    return Explainer(tiny_vit_onnx, provider="cpu")


def test_single_image_gives_one_explanation_with_the_contract_fields(ex):
    img = _image()
    r = ex.explain(img, method="rollout", topk=3)
    assert r.probs.shape == (10,) and r.probs.dtype == np.float32
    assert abs(float(r.probs.sum()) - 1) < 1e-5
    assert [t.index for t in r.topk] == list(np.argsort(-r.probs)[:3])
    assert r.topk[0].label == ex.meta.label(r.topk[0].index) and r.topk[0].prob == pytest.approx(r.probs.max())
    assert r.grid.shape == tuple(ex.meta.grid_size) and r.grid.dtype == np.float32
    assert r.grid.min() >= 0 and r.grid.max() <= 1 and r.grid.max() == 1
    assert r.heatmap.shape == img.shape[:2] and r.heatmap.dtype == np.float32
    assert 0 <= r.heatmap.min() and r.heatmap.max() <= 1
    ov = r.overlay(colormap="inferno", alpha=0.4)
    assert ov.shape == img.shape and ov.dtype == np.uint8 and not np.array_equal(ov, img)


def test_results_equal_an_independent_run_of_the_stages(ex, tiny_vit_onnx):
    """The API's probabilities and maps equal onnxruntime + the method run by hand."""
    imgs = [_image(40, 56, 1), _image(64, 32, 2)]
    results = ex.explain(imgs, method="rollout", head_fusion="max")
    x, _ = preprocess(imgs, ex.meta, fit="crop")
    sess = ort.InferenceSession(str(tiny_vit_onnx), providers=["CPUExecutionProvider"])
    logits, attn = sess.run(["logits", "attentions"], {"input": x})
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    maps = run_method("rollout", attn, ex.meta.layout, head_fusion="max")
    for i, r in enumerate(results):
        np.testing.assert_allclose(r.probs, probs[i], atol=1e-5)
        np.testing.assert_allclose(r.grid, maps[i], atol=1e-5)


def test_batch_equals_one_by_one_and_keeps_order(ex):
    imgs = [_image(30 + 7 * i, 50 - 3 * i, i) for i in range(4)]
    batch = ex.explain(imgs, method="attention", layer=0)
    for img, r in zip(imgs, batch):
        one = ex.explain(img, method="attention", layer=0)
        np.testing.assert_allclose(r.probs, one.probs, atol=1e-5)
        np.testing.assert_allclose(r.grid, one.grid, atol=1e-5)
        assert r.image is img


def test_a_4d_array_is_a_batch_and_grey_images_are_accepted(ex):
    stack = np.stack([_image(32, 32, 5), _image(32, 32, 6)])
    assert len(ex.explain(stack)) == 2
    grey = _image(33, 47, 7)[:, :, 0]
    r = ex.explain(grey)
    assert r.heatmap.shape == (33, 47) and r.overlay().shape == (33, 47, 3)


@pytest.mark.parametrize("fit", ["crop", "squash", "letterbox"])
def test_every_fit_maps_the_heatmap_onto_the_original_pixels(ex, fit):
    img = _image(45, 90, 3)
    r = ex.explain(img, fit=fit)
    assert r.heatmap.shape == (45, 90)
    if fit == "crop":
        # The centre crop of a 2:1 image leaves the left and right edges unseen: exactly zero there.
        assert r.heatmap[:, 0].max() == 0 and r.heatmap[:, -1].max() == 0
    # The grid's peak cell, mapped through the geometry, is where the heatmap is high.
    gh, gw = r.grid.shape
    ph, pw = ex.meta.patch_size
    row, col = np.unravel_index(np.argmax(r.grid), r.grid.shape)
    (x, y), = r.geometry.input_to_image_points(np.array([[(col + 0.5) * pw - 0.5, (row + 0.5) * ph - 0.5]]))
    assert r.heatmap[int(round(y)), int(round(x))] > 0.8
    nearest = r.geometry.to_image(r.grid, interpolation="nearest")
    assert nearest.max() == 1.0 and nearest[int(round(y)), int(round(x))] == 1.0


def test_explain_does_not_modify_the_caller_image(ex):
    img = _image()
    before = img.copy()
    r = ex.explain(img)
    r.overlay(mode="mask", blur=0.05)
    assert np.array_equal(img, before)


def test_overlay_dims_what_the_crop_cut_away(ex):
    img = np.full((40, 120, 3), 200, np.uint8)
    r = ex.explain(img, fit="crop")
    ov = r.overlay(label=False)
    assert np.array_equal(ov[:, 0], img[:, 0] // 2)  # unseen edge: dimmed original, no colour


def test_class_agnostic_methods_refuse_a_target(ex):
    with pytest.raises(ExplainError, match="class-agnostic"):
        ex.explain(_image(), method="rollout", target=3)


def test_gradient_methods_need_a_gradient_export(ex):
    with pytest.raises(ExplainError, match="--gradients"):
        ex.explain(_image(), method="chefer")


def test_unknown_method_and_option_are_clear_errors(ex):
    with pytest.raises(ExplainError, match="rollout"):
        ex.explain(_image(), method="rolout")
    with pytest.raises(ExplainError, match="discard"):
        ex.explain(_image(), method="rollout", discard=0.5)


def test_bad_images_are_refused_with_the_shape(ex):
    with pytest.raises(ImageError, match="float64"):
        ex.explain(np.zeros((10, 10, 3)))
    with pytest.raises(ImageError):
        ex.explain("/nonexistent/file.jpg")


def test_resolve_class_by_index_name_and_close_match(ex):
    assert resolve_class(ex.meta, 3) == 3 and resolve_class(ex.meta, "3") == 3
    assert resolve_class(ex.meta, "Horse") == ex.meta.label_names.index("horse")
    with pytest.raises(ExplainError, match="Did you mean 'horse'"):
        resolve_class(ex.meta, "hors")
    with pytest.raises(ExplainError, match="out of range"):
        resolve_class(ex.meta, 10)


def test_plain_inference_matches_the_attention_graph(ex):
    x, _ = ex.preprocess([_image(), _image(50, 50, 9)])
    np.testing.assert_allclose(ex.infer_plain(x), ex.infer(x).logits, atol=1e-5)


def test_model_errors_are_typed(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        Explainer(tmp_path / "missing.onnx", provider="cpu")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load model"):
        Explainer(bad, provider="cpu")


def test_cuda_where_unavailable_is_an_error_not_a_fallback(tiny_vit_onnx):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime offers CUDA")
    with pytest.raises(ProviderError, match="'cuda' is not available"):
        Explainer(tiny_vit_onnx, provider="cuda")
    assert Explainer(tiny_vit_onnx, provider="auto").model.provider == "CPUExecutionProvider"


def test_softmax_is_stable_for_large_logits():
    p = softmax(np.array([[1000.0, 1000.0, -1000.0]], np.float32))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0]], atol=1e-7)


def test_top_indices_is_a_stable_descending_sort_cut_at_k():
    rng = np.random.default_rng(5)
    scores = softmax(rng.standard_normal((6, 1000)).astype(np.float32))
    tied = np.round(scores * 200) / 200  # many equal scores, ties inside the top k
    for s in (scores, tied):
        ref = np.argsort(-s, axis=1, kind="stable")
        for k in (1, 2, 5, 999, 1000):
            got = top_indices(s, k)
            assert got.shape == (6, k)
            if s is scores or k == 1000:
                assert np.array_equal(got, ref[:, :k])
            else:  # equal scores at the k-th place may swap which index gets in, never the scores
                assert np.array_equal(np.take_along_axis(s, got, 1), np.take_along_axis(s, ref[:, :k], 1))
                inside = np.take_along_axis(s, got, 1)
                assert all((np.diff(row) <= 0).all() for row in inside)
