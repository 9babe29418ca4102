"""head-norm on synthetic outputs (NumPy only): against the mixing matrices built and multiplied
explicitly, from either source of its norms, and its refusals."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import ModelMeta, TokenLayout
from attnmap.runtime.methods import METHODS, attn_norm, check_method_use, head_norm, runs_on

LAYOUTS = {"class token": TokenLayout(1, (3, 4), 0, stochastic=True),
           "two prefix tokens": TokenLayout(2, (3, 4), 0, stochastic=True),
           "no class token (mean row)": TokenLayout(0, (3, 4), None, stochastic=True)}


def _case(rng, layout, b=2, l=3, h=3, d=5):
    n = layout.num_tokens
    a = rng.random((b, l, h, n, n)) ** 3
    a = (a / a.sum(-1, keepdims=True)).astype(np.float32)
    w = rng.standard_normal((b, l, n, h, d))  # w^h_j per block
    x = rng.standard_normal((b, l, n, d))  # x_j per block
    norms = np.concatenate([np.linalg.norm(w, axis=-1), np.linalg.norm(x, axis=-1)[..., None]], axis=-1)
    vecs = np.concatenate([w, x[:, :, :, None]], axis=3)
    grams = np.einsum("blnkd,blnmd->blnkm", vecs, vecs)
    return a, w, x, norms.astype(np.float32), grams.astype(np.float32)


def _reference(a, w, x, layout, residual=True, start=0):
    """Target row of M̂_L ··· M̂_start, each M built entry by entry from the vectors, as N x N matrices."""
    b, l, h, n, _ = a.shape
    out = []
    for i in range(b):
        product = np.eye(n)
        for layer in range(l - 1, start - 1, -1):
            m = np.zeros((n, n))
            for row in range(n):
                for col in range(n):
                    m[row, col] = sum(a[i, layer, k, row, col] * np.linalg.norm(w[i, layer, col, k]) for k in range(h))
                if residual:
                    m[row, row] += np.linalg.norm(x[i, layer, row])
            product = product @ (m / m.sum(1, keepdims=True))
        row = product[layout.target_row] if layout.target_row is not None else product.mean(0)
        patches = row[layout.num_prefix:].reshape(layout.grid)
        out.append((patches - patches.min()) / (patches.max() - patches.min()))
    return np.stack(out)


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("residual", [True, False])
def test_head_norm_equals_the_explicit_rollout_of_its_mixing_matrices(layout, residual):
    a, w, x, norms, _ = _case(np.random.default_rng(0), layout)
    got = head_norm(SimpleNamespace(attentions=a, head_norms=norms), layout, residual=residual)
    np.testing.assert_allclose(got, _reference(a, w, x, layout, residual), atol=2e-5)


def test_start_layer_leaves_out_the_earlier_blocks():
    layout = LAYOUTS["class token"]
    a, w, x, norms, _ = _case(np.random.default_rng(1), layout)
    got = head_norm(SimpleNamespace(attentions=a, head_norms=norms), layout, start_layer=-1)
    np.testing.assert_allclose(got, _reference(a, w, x, layout, start=2), atol=2e-5)


def test_the_mix_grams_diagonal_gives_the_same_map_as_head_norms():
    layout = LAYOUTS["class token"]
    a, _, _, norms, grams = _case(np.random.default_rng(2), layout)
    from_norms = head_norm(SimpleNamespace(attentions=a, head_norms=norms), layout)
    from_grams = head_norm(SimpleNamespace(attentions=a, head_norms=None, mix_grams=grams), layout)
    np.testing.assert_allclose(from_grams, from_norms, atol=1e-5)


def test_with_one_head_it_is_attn_norm():
    # one head: ||α_ij w_j|| = α_ij ||w_j||, so the per-head sum is the exact norm
    layout = LAYOUTS["class token"]
    a, _, _, _, grams = _case(np.random.default_rng(3), layout, h=1)
    out = SimpleNamespace(attentions=a, head_norms=None, mix_grams=grams)
    np.testing.assert_allclose(head_norm(out, layout), attn_norm(out, layout), atol=1e-5)


def test_it_does_not_modify_its_inputs():
    layout = LAYOUTS["class token"]
    a, _, _, norms, _ = _case(np.random.default_rng(4), layout)
    out = SimpleNamespace(attentions=a, head_norms=norms)
    before = {k: v.copy() for k, v in vars(out).items()}
    head_norm(out, layout)
    for k, v in vars(out).items():
        np.testing.assert_array_equal(v, before[k])


def test_missing_or_misshapen_norms_name_what_is_expected():
    layout = LAYOUTS["class token"]
    a, _, _, norms, _ = _case(np.random.default_rng(5), layout)
    with pytest.raises(ExplainError, match="attnmap export --norms"):
        head_norm(SimpleNamespace(attentions=a, head_norms=None, mix_grams=None), layout)
    with pytest.raises(ExplainError, match=r"head_norms must be \(B, L, N, H\+1\)"):
        head_norm(SimpleNamespace(attentions=a, head_norms=norms[..., :-1]), layout)


def test_the_kind_runs_on_norms_or_decomposition_files_and_refuses_others():
    meta = ModelMeta(model_name="m", input_size=(3, 24, 32), mean=(0.5,) * 3, std=(0.5,) * 3,
                     interpolation="bilinear", crop_pct=1.0, crop_mode="center", patch_size=(8, 8),
                     grid_size=(3, 4), prefix_tokens=("class",), pooling="token", num_layers=2, num_heads=2,
                     head_fusion="none", num_classes=5)
    assert not runs_on("head-norm", meta)
    with pytest.raises(ExplainError, match="attnmap export --norms"):
        check_method_use("head-norm", meta)
    assert runs_on("head-norm", meta.replace(outputs=("logits", "attentions", "head_norms")))
    assert runs_on("head-norm", meta.replace(outputs=("logits", "attentions", "mix_grams", "mix_grams_ln")))
    assert not METHODS["head-norm"].class_specific
    with pytest.raises(ValueError, match="head_norms"):
        meta.replace(outputs=("logits", "head_norms"))
    with pytest.raises(ValueError, match="head_norms"):
        meta.replace(outputs=("logits", "attentions", "head_norms"), head_fusion="mean")
