"""Every explanation method against an independent full-matrix reference (float64, per image).

The references below are written straight from the definitions in METHODS.md with explicit
N x N matrices (np.eye, fused + I, rows / rows.sum(-1, keepdims=True), R = Â_L @ ... @ Â_1)
and one image at a time, so they share neither the vector-from-the-left trick, nor the
batching, nor the float32 arithmetic of runtime/explain.
"""

import dataclasses

import numpy as np
import pytest

from attnmap.runtime.methods import attention_maps
from attnmap.runtime.core.meta import TokenLayout

LAYOUTS = {
    "cls_4x4": TokenLayout(1, (4, 4), 0),
    "cls_dist_3x5": TokenLayout(2, (3, 5), 0),
    "cls_4reg_4x4": TokenLayout(5, (4, 4), 0),
    "no_cls_4x4": TokenLayout(0, (4, 4), None),
    "4reg_no_cls_2x3": TokenLayout(4, (2, 3), None),
}
NUM_LAYERS, NUM_HEADS = 3, 3


def random_attentions(batch, layers, heads, n, seed, sharpness=2.0):
    """Softmax attention with rows summing to 1; ``sharpness`` scales the logits."""
    rng = np.random.default_rng(seed)
    logits = sharpness * rng.standard_normal((batch, layers, heads, n, n))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def random_grads(shape, seed, scale=1e-3):
    """Gradient-like values: both signs, a realistic small scale."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


# --------------------------------------------------------------------------- references
def ref_normalize(m):
    m = np.asarray(m, dtype=np.float64)
    lo, hi = m.min(), m.max()
    if hi - lo <= 1e-5 * max(abs(hi), abs(lo)):
        return np.full(m.shape, 1.0 if hi > 0 else 0.0)
    return (m - lo) / (hi - lo)


def ref_fuse(a_l, how):
    return {"mean": a_l.mean(0), "max": a_l.max(0), "min": a_l.min(0)}[how]


def ref_discard(f, ratio, target):
    """Zero the k = floor(ratio N^2) smallest entries, never the protected ones, via a full sort."""
    n = f.shape[0]
    protected = {i * n + i for i in range(n)} if target is None else {target * n + target}
    flat = f.ravel().copy()
    candidates = [i for i in np.argsort(flat, kind="stable") if i not in protected]
    k = min(int(ratio * n * n), len(candidates))
    flat[candidates[:k]] = 0.0
    return flat.reshape(n, n)


def ref_target_row(r, layout):
    return r.mean(0) if layout.target_row is None else r[layout.target_row]


def ref_to_map(row, layout):
    return ref_normalize(row[layout.num_prefix:].reshape(layout.grid))


def ref_rollout(a, layout, fused_of_layer, discard_ratio=0.0, residual=True, start_layer=0):
    maps = []
    for b in range(a.shape[0]):
        n = a.shape[-1]
        r = np.eye(n)
        for l in range(start_layer % a.shape[1], a.shape[1]):
            f = fused_of_layer(b, l)
            if discard_ratio:
                f = ref_discard(f, discard_ratio, layout.target_row)
            m = f + np.eye(n) if residual else f
            sums = m.sum(-1, keepdims=True)
            m = m / np.where(sums > 0, sums, 1.0)
            r = m @ r  # later layers on the left
        maps.append(ref_to_map(ref_target_row(r, layout), layout))
    return np.stack(maps)


def ref_attention_rollout(a, layout, head_fusion="mean", **kw):
    a = a.astype(np.float64)
    return ref_rollout(a, layout, lambda b, l: ref_fuse(a[b, l], head_fusion), **kw)


def ref_grad_rollout(a, g, layout, **kw):
    a, g = a.astype(np.float64), g.astype(np.float64)
    return ref_rollout(a, layout, lambda b, l: np.maximum(a[b, l] * g[b, l], 0).mean(0), **kw)


def ref_raw_attention(a, layout, layer=-1, head=None, head_fusion="mean"):
    a = a.astype(np.float64)
    maps = []
    for b in range(a.shape[0]):
        m = a[b, layer][head] if head is not None else ref_fuse(a[b, layer], head_fusion)
        maps.append(ref_to_map(ref_target_row(m, layout), layout))
    return np.stack(maps)


def ref_chefer(a, g, layout, start_layer=0):
    a, g = a.astype(np.float64), g.astype(np.float64)
    maps = []
    for b in range(a.shape[0]):
        r = np.eye(a.shape[-1])
        for l in range(start_layer % a.shape[1], a.shape[1]):
            abar = np.maximum(g[b, l] * a[b, l], 0).mean(0)
            r = r + abar @ r
        maps.append(ref_to_map(ref_target_row(r, layout), layout))
    return np.stack(maps)


def ref_gradsam(a, g, layout, start_layer=0):
    a, g = a.astype(np.float64), g.astype(np.float64)
    s = start_layer % a.shape[1]
    maps = []
    for b in range(a.shape[0]):
        m = (np.maximum(g[b, s:], 0) * a[b, s:]).mean(axis=(0, 1))
        maps.append(ref_to_map(ref_target_row(m, layout), layout))
    return np.stack(maps)


def ref_product(a, g, layout, eps=0.01, start_layer=0):
    a, g = a.astype(np.float64), g.astype(np.float64)
    p = layout.num_prefix
    maps = []
    for b in range(a.shape[0]):
        prod = np.ones(layout.grid[0] * layout.grid[1])
        for l in range(start_layer % a.shape[1], a.shape[1]):
            s = ref_target_row((a[b, l] * g[b, l]).mean(0), layout)[p:]
            shifted = s - s.min()
            if shifted.max() <= 1e-5 * max(abs(s.max()), abs(s.min())):
                continue  # a block without a ranking is a factor of 1
            prod = prod * (shifted / shifted.max() + eps)
        maps.append(ref_normalize(prod.reshape(layout.grid)))
    return np.stack(maps)


# --------------------------------------------------------------------------- comparisons
def _inputs(layout_name, batch, seed):
    layout = LAYOUTS[layout_name]
    a = random_attentions(batch, NUM_LAYERS, NUM_HEADS, layout.num_tokens, seed)
    g = random_grads(a.shape, seed + 1)
    return layout, a, g


def _check(ours, ref, layout, batch):
    assert ours.shape == (batch, *layout.grid)
    assert ours.dtype == np.float32
    assert ours.min() >= 0.0 and ours.max() <= 1.0
    # Every random case must have real contrast, or the comparison would prove little.
    assert (ref.reshape(batch, -1).max(1) == 1).all() and (ref.reshape(batch, -1).min(1) == 0).all()
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


layout_params = pytest.mark.parametrize("layout_name", list(LAYOUTS))
batch_params = pytest.mark.parametrize("batch", [1, 2])


@layout_params
@batch_params
@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.5])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("start_layer", [0, 1])
def test_rollout_matches_matrix_product_reference(layout_name, batch, head_fusion, discard_ratio, residual,
                                                  start_layer):
    layout, a, _ = _inputs(layout_name, batch, seed=10)
    opts = dict(head_fusion=head_fusion, discard_ratio=discard_ratio, residual=residual, start_layer=start_layer)
    _check(attention_maps("rollout", a, layout, **opts), ref_attention_rollout(a, layout, **opts), layout, batch)


@layout_params
@batch_params
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("start_layer", [0, 1])
def test_rollout_with_softmax_rows_declared_matches_the_renormalising_reference(layout_name, batch, residual,
                                                                                start_layer):
    """A layout that declares stochastic rows (an export's softmax attentions) skips the row
    sums; on softmax attentions that must be the reference with its explicit row sums."""
    layout, a, _ = _inputs(layout_name, batch, seed=11)
    declared = dataclasses.replace(layout, stochastic=True)
    opts = dict(residual=residual, start_layer=start_layer)
    _check(attention_maps("rollout", a, declared, **opts), ref_attention_rollout(a, layout, **opts), layout, batch)


def test_declared_stochastic_rows_use_the_papers_half_and_half_mix():
    """On rows that do not sum to 1 the declaration shows: each step is 0.5 F + 0.5 I with F
    taken as given (Abnar & Zuidema's form), not renormalised. The first step reads only the
    class token's row, so it renormalises that row exactly either way."""
    layout = TokenLayout(1, (3, 4), 0, stochastic=True)
    n = layout.num_tokens
    rows = np.random.default_rng(13).uniform(0.3, 3.0, (n, 1)).astype(np.float32)
    a = random_attentions(1, 3, 2, n, seed=12) * rows  # row i sums to rows[i]
    ours = attention_maps("rollout", a, layout)
    f = a[0].astype(np.float64).mean(1)  # (L, N, N) fused
    eye = np.eye(layout.num_tokens)
    top = f[-1] + eye
    v = top[0] / top[0].sum()
    for l in (1, 0):
        v = v @ (0.5 * f[l] + 0.5 * eye)
    _check(ours, ref_normalize(v[1:].reshape(layout.grid))[None], layout, 1)
    # and it is not what renormalising every step would give
    assert np.abs(ours - attention_maps("rollout", a, dataclasses.replace(layout, stochastic=False))).max() > 1e-3


@layout_params
@batch_params
@pytest.mark.parametrize("layer, head, head_fusion", [
    (-1, None, "mean"), (-1, None, "max"), (-1, None, "min"), (0, None, "mean"), (1, None, "max"),
    (-1, 0, "mean"), (0, -1, "mean"), (-3, 2, "min"),
])
def test_raw_attention_matches_reference(layout_name, batch, layer, head, head_fusion):
    layout, a, _ = _inputs(layout_name, batch, seed=20)
    ours = attention_maps("attention", a, layout, layer=layer, head=head, head_fusion=head_fusion)
    _check(ours, ref_raw_attention(a, layout, layer, head, head_fusion), layout, batch)


@layout_params
@batch_params
@pytest.mark.parametrize("discard_ratio", [0.0, 0.5])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("start_layer", [0, -2])
def test_grad_rollout_matches_reference(layout_name, batch, discard_ratio, residual, start_layer):
    layout, a, g = _inputs(layout_name, batch, seed=30)
    opts = dict(discard_ratio=discard_ratio, residual=residual, start_layer=start_layer)
    _check(attention_maps("grad_rollout", a, layout, grads=g, **opts), ref_grad_rollout(a, g, layout, **opts),
           layout, batch)


@layout_params
@batch_params
@pytest.mark.parametrize("start_layer", [0, 1])
def test_chefer_matches_explicit_relevance_matrices(layout_name, batch, start_layer):
    layout, a, g = _inputs(layout_name, batch, seed=40)
    _check(attention_maps("chefer", a, layout, grads=g, start_layer=start_layer),
           ref_chefer(a, g, layout, start_layer), layout, batch)


@layout_params
@batch_params
@pytest.mark.parametrize("start_layer", [0, 2])
def test_gradsam_matches_formula(layout_name, batch, start_layer):
    layout, a, g = _inputs(layout_name, batch, seed=50)
    _check(attention_maps("gradsam", a, layout, grads=g, start_layer=start_layer),
           ref_gradsam(a, g, layout, start_layer), layout, batch)


@layout_params
@batch_params
@pytest.mark.parametrize("eps", [0.01, 1e-4])
@pytest.mark.parametrize("start_layer", [0, 1])
def test_product_rule_matches_direct_product(layout_name, batch, eps, start_layer):
    layout, a, g = _inputs(layout_name, batch, seed=60)
    _check(attention_maps("product", a, layout, grads=g, eps=eps, start_layer=start_layer),
           ref_product(a, g, layout, eps, start_layer), layout, batch)


@pytest.mark.parametrize("method, opts", [
    ("rollout", {}), ("rollout", {"head_fusion": "max", "discard_ratio": 0.5}), ("attention", {}),
    ("chefer", {}), ("grad_rollout", {"discard_ratio": 0.5}), ("gradsam", {}), ("product", {}),
])
def test_single_head_input_from_a_fused_export(method, opts):
    """H == 1 (the exporter fused heads in the graph): every method reads the one head."""
    layout = LAYOUTS["cls_dist_3x5"]
    a = random_attentions(2, 4, 1, layout.num_tokens, seed=70)
    g = random_grads(a.shape, seed=71)
    refs = {
        "rollout": lambda: ref_attention_rollout(a, layout, **opts),
        "attention": lambda: ref_raw_attention(a, layout),
        "chefer": lambda: ref_chefer(a, g, layout),
        "grad_rollout": lambda: ref_grad_rollout(a, g, layout, **opts),
        "gradsam": lambda: ref_gradsam(a, g, layout),
        "product": lambda: ref_product(a, g, layout),
    }
    _check(attention_maps(method, a, layout, grads=g, **opts), refs[method](), layout, 2)


def test_deit_tiny_shape_rollout_matches_reference():
    """Full-size check: DeiT-Tiny's 12 layers, 3 heads, 197 tokens, against explicit 197x197 products."""
    layout = TokenLayout(1, (14, 14), 0)
    a = random_attentions(1, 12, 3, 197, seed=80, sharpness=3.0)
    for opts in ({}, {"discard_ratio": 0.9}, {"head_fusion": "max", "discard_ratio": 0.5}):
        _check(attention_maps("rollout", a, layout, **opts), ref_attention_rollout(a, layout, **opts), layout, 1)
    declared = TokenLayout(1, (14, 14), 0, stochastic=True)
    _check(attention_maps("rollout", a, declared), ref_attention_rollout(a, layout), layout, 1)
