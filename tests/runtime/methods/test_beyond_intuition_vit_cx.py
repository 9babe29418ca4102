"""Beyond Intuition (Chen et al. 2023) and ViT-CX (Xie et al. 2023) against references written
here from the papers' formulas (plain loops and SciPy's clustering, not the runtime's code)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from attnmap import Explainer
from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods import METHODS, check_method_use
from attnmap.runtime.methods.causal import complete_linkage, vit_cx
from attnmap.runtime.methods.cost import estimate
from attnmap.runtime.methods.intuition import FEEDBACK_STEPS, beyond_intuition

LAYOUT = TokenLayout(num_prefix=1, grid=(3, 3), target_row=0)


def _minmax(v):
    v = np.asarray(v, np.float64)
    return (v - v.min()) / (v.max() - v.min())


# --------------------------------------------------------------------------- Beyond Intuition
def _bi_reference(a, g, w_grads, t=0, p=1, start=0):
    """Eq.: I_h = E|A_h^T dA_h|, normalised; A_bar = sum_h I_h A_h; R = I, R <- R + A_bar R;
    W = E_h[(mean_alpha dA_L)+]; map = (W * R)[t, patches]."""
    b, layers, heads, n, _ = a.shape
    out = []
    for i in range(b):
        r = np.eye(n)
        for l in range(start, layers):
            imp = np.array([np.mean(np.abs(a[i, l, h].T.astype(np.float64) @ g[i, l, h])) for h in range(heads)])
            imp = imp / imp.sum()
            bar = sum(imp[h] * a[i, l, h].astype(np.float64) for h in range(heads))
            r = r + bar @ r
        w = np.mean([np.clip(w_grads[i, h], 0, None) for h in range(heads)], axis=0)
        out.append(_minmax((w * r)[t, p:]))
    return np.array(out)


@pytest.mark.parametrize("start", [0, 1])
def test_beyond_intuition_equals_the_papers_formula(start):
    rng = np.random.default_rng(0)
    a = rng.random((2, 3, 2, 10, 10)).astype(np.float32)
    a /= a.sum(-1, keepdims=True)
    g = rng.normal(size=a.shape).astype(np.float32)
    feedback = rng.normal(size=(2, 2, 10, 10)).astype(np.float32)
    before = (a.copy(), g.copy(), feedback.copy())
    got = beyond_intuition(a, LAYOUT, feedback, grads=g, start_layer=start)
    np.testing.assert_allclose(got.reshape(2, -1), _bi_reference(a, g, feedback, start=start), atol=1e-5)
    assert all(np.array_equal(x, y) for x, y in zip((a, g, feedback), before))  # inputs not mutated
    with pytest.raises(ExplainError, match="feedback"):
        beyond_intuition(a, LAYOUT, None, grads=g)


def test_beyond_intuitions_feedback_is_the_last_maps_gradient_integrated_over_scaled_inputs(tiny_vit_grads_onnx):
    ex = Explainer(tiny_vit_grads_onnx, provider="cpu")
    img = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x, _ = ex.preprocess([img])
    m = METHODS["beyond_intuition"]
    out = ex.forward(x, m)
    cls = out.logits.argmax(axis=1)
    want = np.mean([ex.infer(np.float32(alpha) * x, target=cls).grads[:, -1].copy()
                    for alpha in np.linspace(0, 1, FEEDBACK_STEPS)], axis=0)
    np.testing.assert_allclose(out.feedback, want, rtol=1e-4, atol=1e-7)
    assert out.slice(0, 1).feedback.shape == want.shape  # kept through the engine's slicing
    grid = ex.maps(out, "beyond_intuition")
    layout = ex.meta.layout
    ref = _bi_reference(out.attentions, out.grads, want, t=layout.target_row, p=layout.num_prefix)
    np.testing.assert_allclose(grid.reshape(1, -1), ref, atol=1e-5)
    assert estimate("beyond_intuition", {}, ex.meta).forward_passes == FEEDBACK_STEPS + 1
    assert m.reruns_model and m.class_specific


def test_beyond_intuition_and_vit_cx_need_a_gradient_file(tiny_vit_onnx):
    meta = Explainer(tiny_vit_onnx, provider="cpu").meta
    for name in ("beyond_intuition", "vit_cx"):
        with pytest.raises(ExplainError, match="--gradients"):
            check_method_use(name, meta)


# --------------------------------------------------------------------------- ViT-CX
def test_complete_linkage_matches_scipy():
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    from scipy.spatial.distance import squareform

    rng = np.random.default_rng(2)
    for _ in range(30):
        pts = rng.random((int(rng.integers(2, 25)), 3))
        d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
        t = float(rng.uniform(0.1, 0.8))
        ours = complete_linkage(d, t)
        ref = hierarchy.fcluster(hierarchy.linkage(squareform(d, checks=False), "complete"), t, "distance")
        # the same partition (labels may be numbered differently)
        assert len(set(zip(ours, ref))) == len(set(ours)) == len(set(ref))


class _Linear:
    """A fixed softmax-linear "model" over the normalised input, for exact references."""

    def __init__(self, shape, classes=4, seed=3):
        self.w = np.random.default_rng(seed).normal(size=(classes, int(np.prod(shape)))).astype(np.float64) * 0.05
        self.calls = 0

    def __call__(self, x):
        self.calls += len(x)
        z = x.reshape(len(x), -1).astype(np.float64) @ self.w.T
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _vit_cx_reference(x, f, c, tokens, layout, threshold, noise, seed):
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    from scipy.spatial.distance import pdist

    _, h, w = x.shape
    gh, gw = layout.grid
    patches = tokens[layout.num_prefix:]
    masks = []
    for k in range(patches.shape[1]):  # each embedding dimension a map, upsampled, min-max normalised
        m = cv2.resize(patches[:, k].reshape(gh, gw).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        if m.max() > m.min():
            masks.append(_minmax(m))
    masks = np.array(masks)
    flat = masks.reshape(len(masks), -1)
    labels = hierarchy.fcluster(hierarchy.linkage(pdist(flat, "cosine"), "complete"), threshold, "distance")
    clusters = [_minmax(masks[labels == lab].sum(axis=0)) for lab in sorted(set(labels), key=list(labels).index)]
    eps = np.random.default_rng(seed).standard_normal((len(clusters), *x.shape)).astype(np.float32) * noise
    p0 = f(x[None])[0, c]
    num, den = np.zeros((h, w)), np.zeros((h, w))
    for i, m in enumerate(clusters):
        n_i = eps[i] * (1 - m)
        s = f((x * m + n_i)[None])[0, c] - f((x + n_i)[None])[0, c] + p0
        num += s * m
        den += m
    sal = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    return _minmax(sal.reshape(gh, h // gh, gw, w // gw).mean(axis=(1, 3))), len(clusters)


@pytest.mark.parametrize("forward_batch", [1, 5, 64])
def test_vit_cx_equals_the_papers_formula(forward_batch):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 3, 24, 24)).astype(np.float32)
    tokens = rng.normal(size=(1, 10, 12)).astype(np.float32)
    tokens[0, 1:, 3] = 0.5  # a constant embedding dimension: no mask
    tokens[0, 1:, 5] = 2 * tokens[0, 1:, 4] + 1  # the same map as dimension 4: one cluster
    f = _Linear(x.shape[1:])
    got = vit_cx(x, f, np.array([2]), LAYOUT, tokens, distance_threshold=0.3, noise=0.1, noise_seed=7,
                 forward_batch=forward_batch)
    ref, k = _vit_cx_reference(x[0], f, 2, tokens[0], LAYOUT, 0.3, 0.1, 7)
    np.testing.assert_allclose(got[0], ref, atol=1e-5)
    assert k < 11  # the repeated dimension merged (and the constant one dropped)


def test_vit_cx_masks_from_wider_embeddings_than_one_opencv_resize_takes():
    # DeiT-Tiny's 192 dimensions (ViT-B's 768) are upsampled in slices: OpenCV 5 resizes <= 128 channels
    rng = np.random.default_rng(6)
    x = rng.normal(size=(1, 3, 24, 24)).astype(np.float32)
    tokens = rng.normal(size=(1, 10, 300)).astype(np.float32)
    f = _Linear(x.shape[1:])
    got = vit_cx(x, f, np.array([1]), LAYOUT, tokens, distance_threshold=0.05, noise=0.1, noise_seed=1)
    ref, _ = _vit_cx_reference(x[0], f, 1, tokens[0], LAYOUT, 0.05, 0.1, 1)
    np.testing.assert_allclose(got[0], ref, atol=1e-5)


def test_vit_cx_runs_on_a_gradient_file_and_its_cost_is_budgeted(tiny_vit_grads_onnx):
    ex = Explainer(tiny_vit_grads_onnx, provider="cpu")
    img = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    a = ex.explain(img, method="vit_cx")
    b = ex.explain(img, method="vit_cx")
    assert a.grid.shape == (4, 4) and np.array_equal(a.grid, b.grid)  # seeded noise: the same map
    cost = estimate("vit_cx", {}, ex.meta)
    assert cost.forward_passes == 2 * 64 * ex.meta.num_heads + 1
    assert METHODS["vit_cx"].reruns_model and METHODS["vit_cx"].class_specific
