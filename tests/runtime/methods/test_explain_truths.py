"""Synthetic truths: attention patterns whose right saliency is known by hand.

Uniform, identity and one-hot attention; a constructed case where the product order matters;
discard ratio per image; no mutation of inputs; batches equal single images; and the product
rule's sign and zero-block guards.
"""

import numpy as np
import pytest

from attnmap.runtime.methods import METHODS, attention_maps
from attnmap.runtime.core.meta import TokenLayout

CLS_LAYOUTS = [TokenLayout(1, (4, 4), 0), TokenLayout(2, (3, 5), 0), TokenLayout(5, (4, 4), 0)]
ALL_LAYOUTS = CLS_LAYOUTS + [TokenLayout(0, (4, 4), None), TokenLayout(4, (2, 3), None)]
ALL_METHODS = sorted(n for n, m in METHODS.items() if m.kind.name == "attention")  # what attention_maps() runs
# Options that reach every code path of a method (fast and general rollout, discard ...).
METHOD_OPTIONS = [
    ("rollout", {}), ("rollout", {"discard_ratio": 0.5}), ("rollout", {"head_fusion": "max"}),
    ("rollout", {"residual": False, "head_fusion": "min"}), ("attention", {}), ("attention", {"head": 1}),
    ("attention", {"head_fusion": "max", "layer": 0}), ("chefer", {}), ("grad_rollout", {}),
    ("grad_rollout", {"discard_ratio": 0.5}), ("gradsam", {}), ("product", {}), ("flow", {}),
    ("flow", {"head_fusion": "min", "residual": False}),
]


def softmax_attentions(batch, layers, heads, n, seed):
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.standard_normal((batch, layers, heads, n, n))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def layout_id(layout):
    return f"p{layout.num_prefix}_{layout.grid[0]}x{layout.grid[1]}_t{layout.target_row}"


# --------------------------------------------------------------------------- known patterns
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("layout", ALL_LAYOUTS, ids=layout_id)
def test_uniform_attention_gives_uniform_saliency(method, layout):
    n = layout.num_tokens
    a = np.full((2, 3, 2, n, n), 1.0 / n, dtype=np.float32)
    opts = {"discard_ratio": 0.5} if "discard_ratio" in METHODS[method].options else {}
    maps = attention_maps(method, a, layout, grads=np.ones_like(a), **opts)
    np.testing.assert_array_equal(maps, np.ones((2, *layout.grid), dtype=np.float32))


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("layout", CLS_LAYOUTS, ids=layout_id)
def test_identity_attention_gives_zero_patch_saliency_without_nan(method, layout):
    """The class token only attends to itself, so no patch gets anything, and 0/0 must not happen."""
    n = layout.num_tokens
    a = np.broadcast_to(np.eye(n, dtype=np.float32), (2, 3, 2, n, n)).copy()
    maps = attention_maps(method, a, layout, grads=np.ones_like(a))
    assert not np.isnan(maps).any()
    np.testing.assert_array_equal(maps, np.zeros((2, *layout.grid), dtype=np.float32))


@pytest.mark.parametrize("method", ["rollout", "attention", "chefer", "grad_rollout", "gradsam"])
def test_identity_attention_without_class_token_reads_every_token_equally(method):
    """With the mean row as target, identity attention gives each token 1/N: a uniform map."""
    layout = TokenLayout(0, (4, 4), None)
    a = np.broadcast_to(np.eye(16, dtype=np.float32), (1, 2, 2, 16, 16)).copy()
    np.testing.assert_array_equal(attention_maps(method, a, layout, grads=np.ones_like(a)), np.ones((1, 4, 4)))


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("layout, row, col", [
    (TokenLayout(1, (4, 4), 0), 2, 1), (TokenLayout(2, (3, 5), 0), 1, 3), (TokenLayout(2, (3, 5), 0), 2, 4),
    (TokenLayout(5, (4, 4), 0), 0, 3), (TokenLayout(0, (4, 4), None), 3, 0), (TokenLayout(4, (2, 3), None), 1, 2),
])
def test_one_hot_attention_peaks_exactly_at_that_patch(method, layout, row, col):
    """Every token attends only to the patch at (row, col): the map is 1 there and 0 elsewhere."""
    n = layout.num_tokens
    a = np.zeros((2, 3, 2, n, n), dtype=np.float32)
    a[..., layout.num_prefix + row * layout.grid[1] + col] = 1.0
    expected = np.zeros((2, *layout.grid), dtype=np.float32)
    expected[:, row, col] = 1.0
    np.testing.assert_array_equal(attention_maps(method, a, layout, grads=np.ones_like(a)), expected)


def test_product_order_is_later_layers_on_the_left():
    """A case where R = Â_2 Â_1 and the reversed Â_1 Â_2 disagree (the public-code pitfall).

    Tokens: class 0, patches A=1, B=2, C=3 (grid 1x3). Layer 1: class -> A, B -> C.
    Layer 2: class -> B. Everything else attends to itself. With the residual each Â_l row is
    half self, half the attended token. Ours: e0 Â_2 = (e0 + eB)/2, then Â_1 sends e0 to
    (e0 + eA)/2 and eB to (eB + eC)/2, so A, B and C get 1/4 each. Reversed: e0 Â_1 =
    (e0 + eA)/2, then Â_2 keeps A and sends class half to B: A 1/2, B 1/4, C 0.
    """
    layout = TokenLayout(1, (1, 3), 0)
    a = np.broadcast_to(np.eye(4, dtype=np.float32), (1, 2, 1, 4, 4)).copy()
    a[0, 0, 0, 0] = [0, 1, 0, 0]
    a[0, 0, 0, 2] = [0, 0, 0, 1]
    a[0, 1, 0, 0] = [0, 0, 1, 0]
    ours = attention_maps("rollout", a, layout)
    np.testing.assert_array_equal(ours, [[[1.0, 1.0, 1.0]]])

    hat = [(a[0, l, 0] + np.eye(4)) / 2 for l in range(2)]
    reversed_row = (hat[0] @ hat[1])[0, 1:]
    np.testing.assert_allclose(reversed_row, [0.5, 0.25, 0.0])
    reversed_map = (reversed_row - reversed_row.min()) / np.ptp(reversed_row)
    assert not np.allclose(ours[0, 0], reversed_map)


def test_rollout_is_not_inverted():
    """The patch the class token attends to most in every layer must be the map's maximum."""
    layout = TokenLayout(1, (2, 2), 0)
    a = np.full((1, 4, 2, 5, 5), 0.1, dtype=np.float32)
    a[..., 0, :] = [0.1, 0.1, 0.6, 0.1, 0.1]
    maps = attention_maps("rollout", a, layout)
    assert maps[0, 0, 1] == 1.0 and np.unravel_index(maps.argmax(), maps.shape) == (0, 0, 1)


# --------------------------------------------------------------------------- batches and inputs
@pytest.mark.parametrize("method", ["rollout", "grad_rollout"])
@pytest.mark.parametrize("layout", [TokenLayout(1, (4, 4), 0), TokenLayout(0, (4, 4), None)], ids=layout_id)
def test_discard_ratio_is_applied_to_every_image_of_a_batch(method, layout):
    n = layout.num_tokens
    a = softmax_attentions(3, 3, 2, n, seed=1)
    g = np.random.default_rng(2).standard_normal(a.shape).astype(np.float32)
    batch = attention_maps(method, a, layout, grads=g, discard_ratio=0.6)
    for i in range(3):
        alone = attention_maps(method, a[i:i + 1], layout, grads=g[i:i + 1], discard_ratio=0.6)
        np.testing.assert_allclose(batch[i], alone[0], atol=1e-6)
        # The discard did change image i, so the equality above is about the discard itself.
        kept_all = attention_maps(method, a[i:i + 1], layout, grads=g[i:i + 1])
        assert np.abs(alone - kept_all).max() > 1e-3


def test_discard_keeps_the_class_tokens_own_entry_and_drops_exactly_k_others():
    """[0, 0] is the smallest entry, yet survives; k = floor(0.25 * 16) = 4 other entries go."""
    layout = TokenLayout(1, (1, 3), 0)
    m = np.array([[0.02, 0.30, 0.18, 0.50],
                  [0.10, 0.40, 0.35, 0.15],
                  [0.05, 0.25, 0.30, 0.40],
                  [0.12, 0.08, 0.20, 0.60]], dtype=np.float32)
    a = np.stack([m, m])[None, :, None]               # (1, 2, 1, 4, 4): both layers M
    maps = attention_maps("rollout", a, layout, discard_ratio=0.25)
    f = m.astype(np.float64)
    f[[2, 3, 1, 3], [0, 1, 0, 0]] = 0.0               # 0.05, 0.08, 0.10, 0.12 by hand
    hat = f + np.eye(4)
    hat /= hat.sum(-1, keepdims=True)
    row = (hat @ hat)[0, 1:]
    np.testing.assert_allclose(maps[0, 0], (row - row.min()) / np.ptp(row), atol=1e-6)


def test_discard_keeps_values_tied_across_the_cut():
    """k = floor(0.45 * 16) = 7 cuts inside six equal 0.25s: all six stay, the 5 smaller go."""
    layout = TokenLayout(1, (1, 3), 0)
    m = np.array([[0.40, 0.30, 0.20, 0.10],
                  [0.05, 0.50, 0.25, 0.20],
                  [0.25, 0.25, 0.25, 0.25],
                  [0.10, 0.30, 0.35, 0.25]], dtype=np.float32)
    a = np.stack([m, m])[None, :, None]
    ours = attention_maps("rollout", a, layout, discard_ratio=0.45, residual=False)
    f = m.astype(np.float64)
    f[[1, 0, 3, 0, 1], [0, 3, 0, 2, 3]] = 0.0         # 0.05, 0.1, 0.1, 0.2, 0.2
    hat = f / f.sum(-1, keepdims=True)
    row = (hat @ hat)[0, 1:]
    np.testing.assert_allclose(ours[0, 0], (row - row.min()) / np.ptp(row), atol=1e-6)


@pytest.mark.parametrize("method, opts", METHOD_OPTIONS)
def test_inputs_are_not_mutated(method, opts):
    layout = TokenLayout(2, (3, 5), 0)
    a = softmax_attentions(2, 3, 2, layout.num_tokens, seed=3)
    g = np.random.default_rng(4).standard_normal(a.shape).astype(np.float32)
    a_before, g_before = a.copy(), g.copy()
    attention_maps(method, a, layout, grads=g, **opts)
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(g, g_before)


@pytest.mark.parametrize("method, opts", METHOD_OPTIONS)
@pytest.mark.parametrize("layout", [TokenLayout(2, (3, 5), 0), TokenLayout(4, (2, 3), None)], ids=layout_id)
def test_batch_equals_images_one_by_one(method, opts, layout):
    a = softmax_attentions(4, 3, 2, layout.num_tokens, seed=5)
    g = np.random.default_rng(6).standard_normal(a.shape).astype(np.float32)
    batch = attention_maps(method, a, layout, grads=g, **opts)
    singles = np.concatenate([attention_maps(method, a[i:i + 1], layout, grads=g[i:i + 1], **opts) for i in range(4)])
    np.testing.assert_allclose(batch, singles, atol=1e-6)
    assert np.abs(batch[0] - batch[1]).max() > 1e-2  # distinct images, distinct maps


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes_give_float32_maps(dtype):
    layout = TokenLayout(1, (4, 4), 0)
    a32 = softmax_attentions(1, 3, 2, 17, seed=7)
    maps = attention_maps("rollout", a32.astype(dtype), layout)
    assert maps.dtype == np.float32
    np.testing.assert_allclose(maps, attention_maps("rollout", a32, layout), atol=5e-3 if dtype == np.float16 else 1e-6)


@pytest.mark.parametrize("method, opts", [("rollout", {}), ("rollout", {"discard_ratio": 0.5}), ("attention", {}),
                                          ("chefer", {}), ("grad_rollout", {}), ("gradsam", {}), ("product", {}),
                                          ("flow", {})])
def test_negative_and_positive_start_layer_agree(method, opts):
    layout = TokenLayout(1, (4, 4), 0)
    a = softmax_attentions(1, 4, 2, 17, seed=8)
    g = np.random.default_rng(9).standard_normal(a.shape).astype(np.float32)
    key = "layer" if method == "attention" else "start_layer"
    np.testing.assert_array_equal(attention_maps(method, a, layout, grads=g, **opts, **{key: 1}),
                                  attention_maps(method, a, layout, grads=g, **opts, **{key: -3}))


# --------------------------------------------------------------------------- gradient methods
def test_chefer_relevance_clamps_negative_products_before_the_head_mean():
    """One head with a large negative (G*A) must not cancel another head's positive relevance."""
    layout = TokenLayout(1, (1, 2), 0)
    a = np.array([[0.2, 0.4, 0.4], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    a = np.stack([a, a])[None, None]                  # (1, 1, 2, 3, 3)
    g = np.zeros_like(a)
    g[0, 0, 0, 0] = [0, 1.0, 0.5]                     # head 0: patch 1 > patch 2
    g[0, 0, 1, 0] = [0, -10.0, 0.0]                   # head 1 only pushes patch 1 below zero
    # Ā row 0 = mean_h(relu(G*A)) = [0, 0.2, 0.1]: patch 1 stays the strongest.
    np.testing.assert_allclose(attention_maps("chefer", a, layout, grads=g), [[[1.0, 0.0]]])
    # Clamping after the mean would instead give patch 1 (0.4 - 4)/2 < 0 and flip the ranking.


def test_product_rule_two_negative_factors_do_not_flip_sign():
    """Patch 0 is the worst in both blocks (s = -5): a raw product would make it the best (+25)."""
    layout = TokenLayout(1, (2, 2), 0)
    a = np.full((1, 2, 1, 5, 5), 0.2, dtype=np.float32)
    g = np.zeros_like(a)
    g[0, 0, 0, 0, 1:] = [-25.0, 1.0, 2.0, 3.0]       # s = 0.2 * g = [-5, .2, .4, .6]
    g[0, 1, 0, 0, 1:] = [-25.0, 3.0, 2.0, 1.0]       # s = [-5, .6, .4, .2]
    maps = attention_maps("product", a, layout, grads=g)
    raw = (0.2 * g[0, 0, 0, 0, 1:]) * (0.2 * g[0, 1, 0, 0, 1:])
    assert raw.argmax() == 0                           # the pitfall the shift guards against
    assert maps[0, 0, 0] == 0.0 and maps.reshape(-1).argmin() == 0
    # Shifted and range-scaled factors: block 1 [0, 5.2, 5.4, 5.6]/5.6, block 2 [0, 5.6, 5.4, 5.2]/5.6.
    f1 = np.array([0, 5.2, 5.4, 5.6]) / 5.6 + 0.01
    f2 = np.array([0, 5.6, 5.4, 5.2]) / 5.6 + 0.01
    prod = f1 * f2
    np.testing.assert_allclose(maps.reshape(-1), (prod - prod.min()) / np.ptp(prod), atol=1e-6)


def test_product_rule_a_zero_block_does_not_erase_the_map():
    layout = TokenLayout(1, (2, 2), 0)
    a = np.full((1, 3, 1, 5, 5), 0.2, dtype=np.float32)
    g = np.zeros_like(a)
    g[0, 0, 0, 0, 1:] = [1.0, 2.0, 4.0, 3.0]
    g[0, 2, 0, 0, 1:] = [2.0, 1.0, 4.0, 3.0]          # block 1 has no gradient at all
    with_zero_block = attention_maps("product", a, layout, grads=g)
    without = attention_maps("product", a[:, [0, 2]], layout, grads=g[:, [0, 2]])
    assert with_zero_block.max() == 1.0
    np.testing.assert_allclose(with_zero_block, without, atol=1e-6)


def test_product_rule_eps_keeps_a_patch_that_one_block_ranks_last():
    """Patch 0 is last in block 1 but first in block 2; without eps it would be erased to 0."""
    layout = TokenLayout(1, (1, 3), 0)
    a = np.full((1, 2, 1, 4, 4), 0.25, dtype=np.float32)
    g = np.zeros_like(a)
    g[0, 0, 0, 0, 1:] = [0.0, 1.0, 0.05]              # block 1 factors: [0, 1, .05] + eps
    g[0, 1, 0, 0, 1:] = [1.0, 0.0, 0.05]              # block 2 factors: [1, 0, .05] + eps
    maps = attention_maps("product", a, layout, grads=g, eps=0.01)[0, 0]
    prod = (np.array([0.0, 1.0, 0.05]) + 0.01) * (np.array([1.0, 0.0, 0.05]) + 0.01)
    np.testing.assert_allclose(maps, (prod - prod.min()) / np.ptp(prod), atol=1e-6)
    assert maps[0] > maps[2] and maps[1] > maps[2]    # one low block does not override the other


def test_product_rule_many_blocks_do_not_underflow():
    """48 blocks of factors near eps multiply to ~1e-96 in a direct product: float32 would give 0/0."""
    layout = TokenLayout(1, (2, 2), 0)
    a = np.full((1, 48, 1, 5, 5), 0.2, dtype=np.float32)
    g = np.zeros_like(a)
    g[0, :, 0, 0, 1:] = [0.0, 0.001, 0.002, 1.0]
    maps = attention_maps("product", a, layout, grads=g)
    assert np.isfinite(maps).all() and maps.reshape(-1)[3] == 1.0
    f = np.array([0.0, 0.001, 0.002, 1.0]) + 0.01
    log_prod = 48 * np.log(f)
    expected = np.exp(log_prod - log_prod.max())
    np.testing.assert_allclose(maps.reshape(-1), (expected - expected.min()) / np.ptp(expected), atol=1e-6)


def test_gradsam_uses_positive_gradients_only():
    layout = TokenLayout(1, (1, 3), 0)
    a = np.full((1, 1, 1, 4, 4), 0.25, dtype=np.float32)
    g = np.zeros_like(a)
    g[0, 0, 0, 0, 1:] = [2.0, -100.0, 1.0]
    np.testing.assert_allclose(attention_maps("gradsam", a, layout, grads=g), [[[1.0, 0.0, 0.5]]])
