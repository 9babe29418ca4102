"""attn-norm, globenc and decompx on synthetic outputs (NumPy only, no model, no torch).

The quadratic forms in the Grams are checked against the norms of explicit vectors; the maps
against synthetic truths; bad inputs against their messages.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods import METHODS, attn_norm, decompx, globenc
from attnmap.runtime.methods.decomposition import norm_squares

LAYOUT = TokenLayout(1, (3, 4), 0, stochastic=True)


def _vectors(rng, b, n, h, d=7):
    return rng.standard_normal((b, n, h, d)), rng.standard_normal((b, n, d))


def _attention(rng, b, l, h, n):
    a = rng.random((b, l, h, n, n)) ** 3
    return (a / a.sum(-1, keepdims=True)).astype(np.float32)


def _gram(w, x):
    vecs = np.concatenate([w, x[:, :, None]], axis=2)
    return np.einsum("bnkd,bnld->bnkl", vecs, vecs).astype(np.float32)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("rows", [None, slice(0, 1), slice(5, 6)])
def test_norm_squares_equal_the_norms_of_the_explicit_terms(residual, rows):
    rng = np.random.default_rng(0)
    b, h, n = 2, 3, 13
    w, x = _vectors(rng, b, n, h)
    a = _attention(rng, b, 1, h, n)[:, 0]
    terms = np.einsum("bhij,bjhd->bijd", a.astype(np.float64), w)
    if residual:
        terms[:, np.arange(n), np.arange(n)] += x
    want = (terms ** 2).sum(-1)[:, rows if rows is not None else slice(None)]
    got = norm_squares(a, _gram(w, x), residual, rows)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _outputs(rng, b=2, l=3, h=2, contributions=False):
    n = LAYOUT.num_tokens
    grams = np.stack([_gram(*_vectors(rng, b, n, h)) for _ in range(l)], axis=1)
    grams_ln = np.stack([_gram(*_vectors(rng, b, n, h)) for _ in range(l)], axis=1)
    out = SimpleNamespace(attentions=_attention(rng, b, l, h, n), mix_grams=grams, mix_grams_ln=grams_ln,
                          class_contributions=None)
    if contributions:
        out.class_contributions = rng.standard_normal((b, n, 5)).astype(np.float32)
    return out


def test_uniform_attention_and_equal_tokens_give_a_uniform_map():
    b, l, h, n = 1, 2, 2, LAYOUT.num_tokens
    a = np.full((b, l, h, n, n), 1.0 / n, np.float32)
    w = np.ones((b, n, h, 4))
    x = np.ones((b, n, 4))
    g = np.stack([_gram(w, x)] * l, axis=1)
    out = SimpleNamespace(attentions=a, mix_grams=g, mix_grams_ln=g)
    for fn in (attn_norm, globenc):
        np.testing.assert_array_equal(fn(out, LAYOUT), np.ones((1, 3, 4), np.float32))


def test_a_token_with_zero_value_vectors_gets_nothing_in_the_last_layer():
    rng = np.random.default_rng(1)
    out = _outputs(rng, l=1)
    patch = LAYOUT.num_prefix + 6
    for name in ("mix_grams", "mix_grams_ln"):
        g = getattr(out, name)
        g[:, :, patch, :-1, :] = 0.0  # its value vectors are zero (its residual is not)
        g[:, :, patch, :, :-1] = 0.0
    for fn in (attn_norm, globenc):
        m = fn(out, LAYOUT)
        assert m[0].reshape(-1)[6] == 0.0 and m[0].max() == 1.0


def test_decompx_without_carry_back_reads_the_contributions_of_the_chosen_class():
    rng = np.random.default_rng(2)
    out = _outputs(rng, contributions=True)
    classes = np.array([3, 1])
    m = decompx(out, LAYOUT, classes, start_layer=-1)
    for i, c in enumerate(classes):
        v = out.class_contributions[i, LAYOUT.num_prefix:, c]
        np.testing.assert_allclose(m[i].reshape(-1), (v - v.min()) / (v.max() - v.min()), atol=1e-6)


def test_methods_do_not_modify_their_inputs():
    rng = np.random.default_rng(3)
    out = _outputs(rng, contributions=True)
    before = {k: v.copy() for k, v in vars(out).items()}
    attn_norm(out, LAYOUT)
    globenc(out, LAYOUT)
    decompx(out, LAYOUT, np.array([0, 4]))
    for k, v in vars(out).items():
        np.testing.assert_array_equal(v, before[k])


def test_missing_or_misshapen_outputs_name_what_is_expected():
    rng = np.random.default_rng(4)
    out = _outputs(rng)
    with pytest.raises(ExplainError, match="--decompositions"):
        globenc(SimpleNamespace(attentions=out.attentions, mix_grams_ln=None), LAYOUT)
    with pytest.raises(ExplainError, match=r"mix_grams must be \(B, L, N, H\+1, H\+1\)"):
        attn_norm(SimpleNamespace(attentions=out.attentions, mix_grams=out.mix_grams[:, :, :-1]), LAYOUT)
    with pytest.raises(ExplainError, match="class_contributions"):
        decompx(out, LAYOUT, np.array([0, 1]))
    out.class_contributions = np.zeros((2, LAYOUT.num_tokens, 5), np.float32)
    with pytest.raises(ExplainError, match=r"classes must lie in \[0, 5\)"):
        decompx(out, LAYOUT, np.array([0, 5]))


def test_kinds_refuse_a_file_without_the_decomposition_outputs():
    from attnmap.runtime.core.meta import ModelMeta
    from attnmap.runtime.methods import check_method_use, runs_on

    meta = ModelMeta(model_name="m", input_size=(3, 24, 32), mean=(0.5,) * 3, std=(0.5,) * 3,
                     interpolation="bilinear", crop_pct=1.0, crop_mode="center", patch_size=(8, 8),
                     grid_size=(3, 4), prefix_tokens=("class",), pooling="token", num_layers=2, num_heads=2,
                     head_fusion="none", num_classes=5)
    for name in ("attn-norm", "globenc", "decompx"):
        assert not runs_on(name, meta)
        with pytest.raises(ExplainError, match="attnmap export --decompositions" if name != "decompx" else
                           "attnmap export --contributions"):
            check_method_use(name, meta)
    full = meta.replace(outputs=("logits", "attentions", "mix_grams", "mix_grams_ln", "class_contributions"))
    assert all(runs_on(name, full) for name in ("attn-norm", "globenc", "decompx"))
    assert METHODS["decompx"].class_specific and not METHODS["globenc"].class_specific
    no_class = full.replace(outputs=("logits", "attentions", "mix_grams", "mix_grams_ln"))
    assert runs_on("globenc", no_class) and not runs_on("decompx", no_class)
    with pytest.raises(ValueError, match="need both"):
        meta.replace(outputs=("logits", "attentions", "mix_grams"))
    # the contributions alone (export --contributions): decompx without its optional carry-back
    alone = meta.replace(outputs=("logits", "attentions", "class_contributions"))
    assert runs_on("decompx", alone) and not runs_on("globenc", alone)
    with pytest.raises(ValueError, match="a class token"):
        alone.replace(prefix_tokens=(), pooling="avg")


def test_decompx_carries_back_only_with_the_grams():
    rng = np.random.default_rng(6)
    out = _outputs(rng, contributions=True)
    classes = np.array([3, 1])
    last = decompx(out, LAYOUT, classes)  # the default: no carry-back
    np.testing.assert_array_equal(last, decompx(out, LAYOUT, classes, start_layer=-1))
    assert not np.allclose(decompx(out, LAYOUT, classes, start_layer=0), last)
    out.mix_grams_ln = None
    np.testing.assert_array_equal(decompx(out, LAYOUT, classes), last)
    with pytest.raises(ExplainError, match="start_layer=0 carries the contributions back.*--decompositions"):
        decompx(out, LAYOUT, classes, start_layer=0)
