"""The attention_maps() front door: registry, option and shape validation, and normalize_maps."""

import inspect
from contextlib import nullcontext as does_not_raise

import numpy as np
import pytest

from attnmap.runtime.core.errors import AttnmapError, ExplainError
from attnmap.runtime.methods import METHODS, Method, attention_maps, normalize_maps
from attnmap.runtime.core.meta import TokenLayout

LAYOUT = TokenLayout(2, (3, 5), 0)
GRADIENT_METHODS = ["chefer", "grad_rollout", "gradsam", "product", "gradcam", "beyond_intuition"]
# The methods attention_maps() runs: they read attentions (the others go through Explainer.maps).
ATTENTION_METHODS = sorted(n for n, m in METHODS.items() if m.kind.name == "attention")


def attentions(shape=(2, 3, 2, 17, 17), seed=0):
    rng = np.random.default_rng(seed)
    e = np.exp(2.0 * rng.standard_normal(shape))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


A = attentions()
G = np.random.default_rng(1).standard_normal(A.shape).astype(np.float32)


# --------------------------------------------------------------------------- registry
def test_registry_holds_the_documented_methods():
    assert set(METHODS) == {"rollout", "attention", "flow", "chefer", "grad_rollout", "gradsam", "product",
                               "gradcam", "occlusion", "rise", "attn-norm", "head-norm", "globenc", "decompx",
                               "reciprocam", "beyond_intuition", "vit_cx"}
    assert {k for k, m in METHODS.items() if m.needs_gradients} == set(GRADIENT_METHODS)
    assert {k for k, m in METHODS.items() if m.kind.name == "perturbation"} == {"occlusion", "rise"}
    assert {k for k, m in METHODS.items() if m.kind.name == "features"} == {"gradcam"}
    assert {k for k, m in METHODS.items() if m.kind.name == "tail"} == {"reciprocam"}
    assert {k for k, m in METHODS.items() if m.kind.name == "norms"} == {"head-norm"}
    assert {k for k, m in METHODS.items() if not m.class_specific} == {"rollout", "attention", "flow", "attn-norm",
                                                                        "head-norm", "globenc"}


@pytest.mark.parametrize("name", sorted(set(METHODS) - set(ATTENTION_METHODS)))
def test_other_kinds_are_described_and_refused_by_the_attention_entry_point(name):
    m = METHODS[name]
    assert m.summary and "\n" not in m.summary and len(m.summary) < 100
    assert m.fn.__doc__ and "Returns:" in m.fn.__doc__
    with pytest.raises(ExplainError, match="Explainer.maps"):
        attention_maps(name, A, LAYOUT, grads=G)


@pytest.mark.parametrize("name", ATTENTION_METHODS)
def test_every_method_is_described_and_runs_through_explain(name):
    m = METHODS[name]
    assert isinstance(m, Method) and m.name == name
    assert m.summary and "\n" not in m.summary and len(m.summary) < 100
    assert m.fn.__doc__ and "Returns:" in m.fn.__doc__
    # Options are exactly the function's keyword-only parameters, with the same defaults.
    params = {p.name: p.default for p in inspect.signature(m.fn).parameters.values()
              if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "grads"}
    assert m.defaults == params
    for opt, spec in m.options.items():
        assert spec.name == opt and (not spec.choices or spec.default in spec.choices)
    maps = attention_maps(name, A, LAYOUT, grads=G)
    assert maps.shape == (2, 3, 5) and maps.dtype == np.float32
    assert maps.min() == 0.0 and maps.max() == 1.0
    np.testing.assert_array_equal(maps, m.fn(A, LAYOUT, grads=G))


def test_option_defaults_have_cli_friendly_types():
    for m in METHODS.values():
        for opt, spec in m.options.items():
            assert spec.default is None or type(spec.default) is spec.kind, (m.name, opt)
            assert spec.kind in (bool, int, float, str), (m.name, opt)


def test_non_gradient_methods_ignore_grads():
    np.testing.assert_array_equal(attention_maps("rollout", A, LAYOUT, grads=G), attention_maps("rollout", A, LAYOUT))


# --------------------------------------------------------------------------- validation
def test_unknown_method_suggests_a_close_name():
    with pytest.raises(ExplainError, match=r"unknown explanation method 'rolout'.*Did you mean 'rollout'"):
        attention_maps("rolout", A, LAYOUT)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ExplainError, match=r"expected one of rollout, attention, flow, chefer"):
        attention_maps("lime", A, LAYOUT)


def test_unknown_option_names_the_method_and_suggests():
    with pytest.raises(ExplainError, match=r"method 'rollout' has no option 'discard'.*Did you mean 'discard_ratio'"):
        attention_maps("rollout", A, LAYOUT, discard=0.5)


@pytest.mark.parametrize("method, opts, expectation", [
    ("rollout", {"discard_ratio": 0.5}, does_not_raise()),
    ("rollout", {"discard_ratio": 0}, does_not_raise()),
    ("rollout", {"discard_ratio": np.float32(0.25)}, does_not_raise()),
    ("rollout", {"discard_ratio": "0.5"}, pytest.raises(ExplainError, match=r"must be a number in \[0, 1\); got '0.5' \(str\)")),
    ("rollout", {"discard_ratio": 1.0},
     pytest.raises(ExplainError, match=r"'discard_ratio' of method 'rollout' must be a number in \[0, 1\); got 1.0")),
    ("rollout", {"discard_ratio": -0.1}, pytest.raises(ExplainError, match="discard_ratio")),
    ("rollout", {"head_fusion": "avg"},
     pytest.raises(ExplainError, match=r"one of mean, max, min; got 'avg'")),
    ("rollout", {"head_fusion": "maxx"}, pytest.raises(ExplainError, match="Did you mean 'max'")),
    ("rollout", {"residual": 1}, pytest.raises(ExplainError, match="must be true or false; got 1")),
    ("rollout", {"residual": np.bool_(False)}, does_not_raise()),
    ("rollout", {"start_layer": 2}, does_not_raise()),
    ("rollout", {"start_layer": -3}, does_not_raise()),
    ("rollout", {"start_layer": 3},
     pytest.raises(ExplainError, match=r"start_layer must be in \[-3, 3\) for 3 layers; got 3")),
    ("rollout", {"start_layer": 1.0}, pytest.raises(ExplainError, match="must be a layer index.*got 1.0")),
    ("rollout", {"start_layer": True}, pytest.raises(ExplainError, match="must be a layer index.*got True")),
    ("attention", {"layer": -4}, pytest.raises(ExplainError, match="layer must be in")),
    ("attention", {"head": 1}, does_not_raise()),
    ("attention", {"head": 2}, pytest.raises(ExplainError, match=r"head must be in \[-2, 2\) for 2 heads; got 2")),
    ("attention", {"head": "0"}, pytest.raises(ExplainError, match="'head' of method 'attention' must be a head index")),
    ("product", {"eps": 0.0}, pytest.raises(ExplainError, match=r"'eps' of method 'product' must be a number in \(0, inf\]")),
    ("product", {"eps": float("nan")}, pytest.raises(ExplainError, match=r"must be a number in \(0, inf\]; got nan")),
    ("grad_rollout", {"discard_ratio": 0.99}, does_not_raise()),
])
def test_option_values_are_checked(method, opts, expectation):
    with expectation:
        maps = attention_maps(method, A, LAYOUT, grads=G, **opts)
        assert maps.shape == (2, 3, 5)


def test_direct_calls_check_their_options_too():
    with pytest.raises(ExplainError, match="discard_ratio"):
        METHODS["rollout"].fn(A, LAYOUT, discard_ratio=2.0)
    with pytest.raises(ExplainError, match="head_fusion"):
        METHODS["attention"].fn(A, LAYOUT, head_fusion="sum")


@pytest.mark.parametrize("method", [m for m in GRADIENT_METHODS if m in ATTENTION_METHODS])
def test_gradient_method_without_grads_says_how_to_get_them(method):
    msg = f"method '{method}' needs attention gradients; export the model with --gradients"
    with pytest.raises(ExplainError) as info:
        attention_maps(method, A, LAYOUT)
    assert str(info.value) == msg
    with pytest.raises(ExplainError, match="needs attention gradients"):
        METHODS[method].fn(A, LAYOUT)


@pytest.mark.parametrize("bad, pattern", [
    (A[0], r"must be 5-D \(B,L,H,N,N\); got shape \(3, 2, 17, 17\)"),
    (A[..., :16], r"square in the last two axes.*got shape \(2, 3, 2, 17, 16\)"),
    (attentions((1, 2, 2, 16, 16)),
     r"N=16 tokens but the layout expects 17 \(2 prefix \+ 3x5 patches\); got shape \(1, 2, 2, 16, 16\)"),
    (np.zeros((0, 3, 2, 17, 17), np.float32), r"empty axis; got shape \(0, 3, 2, 17, 17\)"),
    (A.astype(np.complex64), "real numbers; got dtype complex64"),
    (np.full(A.shape, "x"), "real numbers"),
])
def test_wrong_attentions_are_rejected_with_their_shape(bad, pattern):
    for method in ATTENTION_METHODS:
        with pytest.raises(ExplainError, match=pattern):
            attention_maps(method, bad, LAYOUT, grads=G)


def test_grads_of_the_wrong_shape_are_rejected():
    pattern = r"grads must have the shape of attentions \(2, 3, 2, 17, 17\); got shape \(2, 3, 1, 17, 17\)"
    with pytest.raises(ExplainError, match=pattern):
        attention_maps("chefer", A, LAYOUT, grads=G[:, :, :1])


@pytest.mark.parametrize("layout, pattern", [
    (TokenLayout(2, (3, 5), 17), r"target_row must be None or in \[0, 17\); got 17"),
    (TokenLayout(-1, (3, 6), 0), "num_prefix >= 0 and a positive grid"),
    ((2, (3, 5), 0), "layout must be a runtime.core.meta.TokenLayout; got tuple"),
])
def test_bad_layouts_are_rejected(layout, pattern):
    with pytest.raises(ExplainError, match=pattern):
        attention_maps("rollout", A, layout)


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_non_finite_inputs_raise_instead_of_drawing_nan(method):
    bad = A.copy()
    bad[0, 1, 0, 0, 5] = np.nan
    with pytest.raises(ExplainError, match="NaN or inf"):
        attention_maps(method, bad, LAYOUT, grads=G, **({"layer": 1} if method == "attention" else {}))


def test_errors_are_attnmap_errors_and_value_errors():
    with pytest.raises(AttnmapError):
        attention_maps("nope", A, LAYOUT)
    with pytest.raises(ValueError):
        attention_maps("nope", A, LAYOUT)


# --------------------------------------------------------------------------- normalize_maps
def test_normalize_maps_scales_each_map_on_its_own():
    maps = np.array([[[1.0, 3.0], [2.0, 5.0]], [[-4.0, -2.0], [-3.0, 0.0]]])
    out = normalize_maps(maps)
    assert out.dtype == np.float32 and out.shape == (2, 2, 2)
    np.testing.assert_allclose(out[0], [[0.0, 0.5], [0.25, 1.0]])
    np.testing.assert_allclose(out[1], [[0.0, 0.5], [0.25, 1.0]])


@pytest.mark.parametrize("value, expected", [(0.3, 1.0), (1e-12, 1.0), (0.0, 0.0), (-2.0, 0.0)])
def test_constant_maps_become_ones_when_positive_else_zeros(value, expected):
    out = normalize_maps(np.full((3, 2, 4), value))
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out, np.full((3, 2, 4), expected, dtype=np.float32))


def test_float32_rounding_noise_counts_as_constant_but_small_real_contrast_does_not():
    base = np.full((1, 2, 2), 0.0625, dtype=np.float32)
    noisy = base.copy()
    noisy[0, 0, 0] = np.nextafter(np.float32(0.0625), np.float32(1.0))  # one ulp
    np.testing.assert_array_equal(normalize_maps(noisy), np.ones((1, 2, 2)))
    contrast = base.astype(np.float64)
    contrast[0, 0, 0] *= 1.001
    np.testing.assert_allclose(normalize_maps(contrast), [[[1.0, 0.0], [0.0, 0.0]]])


def test_normalize_maps_does_not_modify_its_input_and_checks_it():
    maps = np.array([[[2.0, 4.0]]])
    normalize_maps(maps)
    np.testing.assert_array_equal(maps, [[[2.0, 4.0]]])
    with pytest.raises(ExplainError, match=r"at least 2 axes; got shape \(3,\)"):
        normalize_maps(np.ones(3))
    with pytest.raises(ExplainError, match="NaN or inf"):
        normalize_maps(np.array([[0.0, np.inf]]))
