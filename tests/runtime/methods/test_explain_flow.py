"""Attention flow against networkx's float max-flow on the explicit layered graph, and by hand.

networkx (preflow-push on float capacities, the graph built node by node here) is the
independent reference; attnmap solves the quantised graph with SciPy's Dinic on its own CSR
layout, so the two share no code.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from extras import need
from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods import attention_maps
from attnmap.runtime.methods import flow as flow_module
from attnmap.runtime.methods.flow import SCALE_BITS, max_flows

nx = need("networkx", "test")
need("scipy", "flow")

SCALE = 2.0 ** SCALE_BITS
IMAGES = Path(__file__).resolve().parents[4] / "shared" / "data" / "images"


def softmax_attentions(batch, layers, heads, n, seed, temperature=2.0):
    rng = np.random.default_rng(seed)
    e = np.exp(temperature * rng.standard_normal((batch, layers, heads, n, n)))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def mixed_capacities(a, head_fusion="mean", residual=True):
    """(L, N, N) float64 capacities of one image, written out from METHODS.md (not flow.py)."""
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion]
    m = fuse(a.astype(np.float64), axis=1)
    if residual:
        m = m + np.eye(m.shape[-1])
    sums = m.sum(-1, keepdims=True)
    return m / np.where(sums > 0, sums, 1.0)


def nx_graph(capacities, target):
    """The full layered graph (no pruning), node (k, i), edge (k, j) -> (k+1, i) of capacity c[k, i, j]."""
    k_layers, n, _ = capacities.shape
    graph = nx.DiGraph()
    for k in range(k_layers):
        for i, j in zip(*np.nonzero(capacities[k])):
            graph.add_edge((k, int(j)), (k + 1, int(i)), capacity=float(capacities[k, i, j]))
    if target is None:
        for i in range(n):
            graph.add_edge((k_layers, i), "sink", capacity=1.0 / n)
        return graph, "sink"
    return graph, (k_layers, target)


def nx_flows(capacities, target, sources):
    graph, sink = nx_graph(capacities, target)
    return np.array([nx.maximum_flow_value(graph, (0, s), sink) if (0, s) in graph and sink in graph else 0.0
                     for s in sources])


def ref_flow_maps(a, layout, head_fusion="mean", residual=True, start_layer=0):
    """Per image: networkx max-flow of every patch, min-max normalised as normalize_maps does."""
    maps = []
    for b in range(a.shape[0]):
        caps = mixed_capacities(a[b, start_layer % a.shape[1]:], head_fusion, residual)
        f = nx_flows(caps, layout.target_row, range(layout.num_prefix, layout.num_tokens)).reshape(layout.grid)
        maps.append((f - f.min()) / np.ptp(f) if np.ptp(f) > 1e-9 else np.full(f.shape, float(f.max() > 0)))
    return np.stack(maps)


def assert_within_quantisation(ours, ref, capacities):
    """attnmap's value is the quantised graph's max-flow: at most the float one, below it by < edges / scale."""
    edges = np.count_nonzero(capacities) + capacities.shape[-1]
    assert np.all(ours <= ref + 1e-12), (ours - ref).max()
    assert np.all(ref - ours < edges / SCALE), (ref - ours).max()


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("layout", [TokenLayout(1, (2, 3), 0), TokenLayout(2, (2, 2), 0), TokenLayout(0, (2, 3), None)],
                         ids=["cls_2x3", "cls_dist_2x2", "no_cls_2x3"])
@pytest.mark.parametrize("opts", [{}, {"head_fusion": "max", "residual": False}, {"start_layer": 1}])
def test_flow_maps_match_networkx(layout, opts):
    a = softmax_attentions(2, 3, 2, layout.num_tokens, seed=11)
    ours = attention_maps("flow", a, layout, **opts)
    assert ours.shape == (2, *layout.grid) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref_flow_maps(a, layout, **opts), atol=1e-6)


@pytest.mark.parametrize("target", [0, 5, None], ids=["target0", "target5", "supersink"])
@pytest.mark.parametrize("layers", [1, 2, 4])
def test_max_flows_match_networkx_on_random_layered_graphs(target, layers):
    """Sparse, unnormalised random graphs: every source, with the quantisation bound."""
    rng = np.random.default_rng(layers * 10 + (target or 1))
    n = 9
    caps = rng.random((layers, n, n)) * (rng.random((layers, n, n)) < 0.4)
    caps /= np.maximum(caps.sum(-1, keepdims=True), 1e-9)
    ours = max_flows(caps, target, range(n))
    ref = nx_flows(caps, target, range(n))
    assert_within_quantisation(ours, ref, caps)
    assert (ref > 0).sum() >= 3, "the random graphs should let some flow through"


def test_capacities_above_one_lower_the_scale_instead_of_overflowing_int32():
    """Rows summing to 6: a flow of up to 6 would overflow int32 at scale 2**30."""
    rng = np.random.default_rng(5)
    caps = 6.0 * rng.random((3, 7, 7)) / 7
    ours = max_flows(caps, 0, range(7))
    ref = nx_flows(caps, 0, range(7))
    assert ref.max() > 2.0                                     # 2 * 2**30 > int32 max
    np.testing.assert_allclose(ours, ref, rtol=0, atol=7 * 3 * 49 * 6.0 / SCALE)


@pytest.mark.parametrize("target", [0, None], ids=["cls", "supersink"])
def test_sparse_certificate_and_full_fallback_agree_with_networkx(monkeypatch, target):
    """Keep 3 edges per token in the first attempt, so some sources certify there and some fall back."""
    caps = mixed_capacities(softmax_attentions(1, 4, 2, 16, seed=2)[0], "min", residual=False)
    calls = []
    run = flow_module._LayeredGraph._run
    monkeypatch.setattr(flow_module._LayeredGraph, "_run",
                        lambda self, mf, parts, col: calls.append(parts is self.full) or run(self, mf, parts, col))
    monkeypatch.setattr(flow_module, "SPARSE_EDGES", 3)
    ours = max_flows(caps, target, range(16))
    full_calls = sum(calls)
    assert len(calls) - full_calls == 16                       # one sparse attempt per source
    assert 0 < full_calls < 16                                 # both outcomes occur
    ref = nx_flows(caps, target, range(16))
    assert_within_quantisation(ours, ref, caps)
    monkeypatch.setattr(flow_module, "SPARSE_EDGES", 10 ** 6)  # no certificate: the full graph every time
    np.testing.assert_array_equal(ours, max_flows(caps, target, range(16)))   # to the last integer unit


def test_flow_on_the_tiny_models_real_attention_matches_networkx(tiny_vit_onnx, monkeypatch):
    cv2 = pytest.importorskip("cv2")
    from attnmap import Explainer

    photos = sorted(IMAGES.glob("*.jpg"))[:2]
    if not photos:
        pytest.skip(f"no photos in {IMAGES}")
    ex = Explainer(tiny_vit_onnx, provider="cpu")
    a = ex.infer(ex.preprocess([cv2.imread(str(p)) for p in photos])[0]).attentions
    layout = ex.meta.layout
    assert a.shape[0] == 2 and a.shape[-1] == layout.num_tokens
    patches = range(layout.num_prefix, layout.num_tokens)
    for sparse_edges in (flow_module.SPARSE_EDGES, 3):           # 3: the certificate path on real attention
        monkeypatch.setattr(flow_module, "SPARSE_EDGES", sparse_edges)
        maps = attention_maps("flow", a, layout)
        for b in range(2):
            caps = mixed_capacities(np.asarray(a[b]))
            ours = max_flows(caps, layout.target_row, patches)
            ref = nx_flows(caps, layout.target_row, patches)
            assert_within_quantisation(ours, ref, caps)
            # Min-max normalisation stretches the quantisation error by 1 / spread of the flows.
            atol = 2 * (np.count_nonzero(caps) + caps.shape[-1]) / SCALE / np.ptp(ref) + 1e-6
            np.testing.assert_allclose(maps[b].ravel(), (ref - ref.min()) / np.ptp(ref), atol=atol)


# --------------------------------------------------------------------------- closed forms
def test_one_layer_flow_is_the_single_edge_capacity():
    """With one layer the only path from (0, j) to (1, t) is the edge itself: flow = Â[t, j]."""
    layout = TokenLayout(1, (2, 3), 0)
    a = softmax_attentions(1, 1, 2, 7, seed=4)
    row = mixed_capacities(a[0])[0, 0, 1:]
    np.testing.assert_allclose(attention_maps("flow", a, layout)[0].ravel(), (row - row.min()) / np.ptp(row), atol=1e-6)
    np.testing.assert_array_equal(max_flows(mixed_capacities(a[0]), 0, range(1, 7)),
                                  np.floor(row * SCALE) / SCALE)


def test_class_token_free_one_layer_flow_caps_each_edge_at_one_over_n():
    """Super-sink: (0, j) -> (1, i) -> sink, so the flow of j is sum_i min(Â[i, j], 1/N)."""
    n = 6
    caps = mixed_capacities(softmax_attentions(1, 1, 1, n, seed=9, temperature=3.0)[0])
    expected = np.minimum(caps[0], 1.0 / n).sum(axis=0)
    assert np.any(caps[0] > 1.0 / n)                           # the 1/N cap binds somewhere
    got = max_flows(caps, None, range(n))
    assert np.all(got <= expected) and np.all(expected - got < 2 * n / SCALE)


def test_quantisation_floors_each_capacity_at_the_documented_scale():
    """A chain of edges 1/3, 1/5 and 1/7 carries floor(2**30 / 7) / 2**30, not 1/7."""
    caps = np.zeros((3, 2, 2))
    caps[0, 1, 0], caps[1, 1, 1], caps[2, 0, 1] = 1 / 3, 1 / 5, 1 / 7
    got = max_flows(caps, 0, [0])[0]
    assert got == np.floor(SCALE / 7) / SCALE
    assert 0 < 1 / 7 - got < 1 / SCALE


def test_flow_sees_a_shared_bottleneck_that_rollout_does_not():
    """Two patches reach the class token only through patch C's edge of capacity 0.2.

    Tokens: class 0, patches A=1, B=2, C=3; no residual. Layer 1: C's row reads A 0.4, B 0.4
    and itself 0.2; layer 2: the class row reads itself 0.8 and C 0.2. Rollout multiplies
    along paths (A, B: 0.2 * 0.4 = 0.08; C: 0.2 * 0.2 = 0.04); flow is capped by the edge
    they share, so A and B get 0.2 each, and C gets 0.2 (its own edge into C is 0.2).
    """
    layout = TokenLayout(1, (1, 3), 0)
    eye = np.eye(4)
    l1 = eye.copy()
    l1[3] = [0.0, 0.4, 0.4, 0.2]                     # C's row in layer 1: A, B and itself
    l2 = eye.copy()
    l2[0] = [0.8, 0.0, 0.0, 0.2]                     # class reads C in layer 2
    a = np.stack([l1, l2])[None, :, None].astype(np.float32)
    flow = attention_maps("flow", a, layout, residual=False)
    np.testing.assert_allclose(flow, [[[1.0, 1.0, 1.0]]])  # every patch is capped at 0.2
    rollout = attention_maps("rollout", a, layout, residual=False)
    np.testing.assert_allclose(rollout, [[[1.0, 1.0, 0.0]]])  # 0.08, 0.08, 0.04: different


def test_a_patch_nobody_attends_to_gets_zero_flow():
    """Without the residual, a patch column of zeros in the first layer leaves its source no edge out."""
    layout = TokenLayout(1, (1, 3), 0)
    a = softmax_attentions(1, 2, 1, 4, seed=3).astype(np.float64)
    a[:, 0, :, :, 2] = 0.0                            # nobody reads patch B (token 2) in layer 0
    a /= a.sum(-1, keepdims=True)
    caps = mixed_capacities(a[0], residual=False)
    assert max_flows(caps, 0, [2])[0] == 0.0
    assert attention_maps("flow", a.astype(np.float32), layout, residual=False)[0, 0, 1] == 0.0


# --------------------------------------------------------------------------- real size, contract
def test_deit_tiny_sized_attention_gives_finite_maps_equal_to_the_full_graph(monkeypatch):
    """12 layers x 197 tokens (a few seconds): finite maps; sampled sources equal the full-graph solve."""
    layout = TokenLayout(1, (14, 14), 0)
    a = softmax_attentions(1, 12, 3, 197, seed=1, temperature=3.0)
    before = a.copy()
    maps = attention_maps("flow", a, layout)
    assert maps.shape == (1, 14, 14) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() == 0.0 and maps.max() == 1.0
    np.testing.assert_array_equal(a, before)                   # the input is not modified
    caps = mixed_capacities(a[0])
    sources = [1, 50, 100, 196]
    fast = max_flows(caps, 0, sources)
    monkeypatch.setattr(flow_module, "SPARSE_EDGES", 10 ** 6)  # no certificate: the full graph every time
    np.testing.assert_array_equal(fast, max_flows(caps, 0, sources))


def test_missing_scipy_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.sparse.csgraph", None)   # `import` now raises ImportError
    a = softmax_attentions(1, 2, 1, 5, seed=0)
    with pytest.raises(ExplainError, match=r"needs SciPy.*pip install 'attnmap\[flow\]'") as info:
        attention_maps("flow", a, TokenLayout(1, (2, 2), 0))
    assert isinstance(info.value.__cause__, ImportError)
