"""Attention flow against networkx's max-flow on the explicit layered graph, and by hand."""

import numpy as np
import pytest

from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.methods import MAX_FLOW_TOKENS, explain
from attnmap.runtime.methods.flow import max_flow
from attnmap.runtime.core.meta import TokenLayout


def softmax_attentions(batch, layers, heads, n, seed):
    rng = np.random.default_rng(seed)
    e = np.exp(2.0 * rng.standard_normal((batch, layers, heads, n, n)))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def ref_flow_maps(a, layout, head_fusion="mean", residual=True, start_layer=0):
    """Build the layered graph node by node and ask networkx for each patch's max flow."""
    nx = pytest.importorskip("networkx")
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion]
    b_size, num_layers, _, n, _ = a.shape
    maps = []
    for b in range(b_size):
        graph = nx.DiGraph()
        layers = range(start_layer % num_layers, num_layers)
        for depth, l in enumerate(layers):
            m = fuse(a[b, l].astype(np.float64), axis=0)
            if residual:
                m = m + np.eye(n)
            m = m / m.sum(-1, keepdims=True)
            for i in range(n):
                for j in range(n):
                    graph.add_edge((depth, j), (depth + 1, i), capacity=float(m[i, j]))
        top = len(layers)
        if layout.target_row is None:
            for i in range(n):
                graph.add_edge((top, i), "sink", capacity=1.0 / n)
            sink = "sink"
        else:
            sink = (top, layout.target_row)
        flows = [nx.maximum_flow_value(graph, (0, j), sink) for j in range(layout.num_prefix, n)]
        f = np.array(flows).reshape(layout.grid)
        maps.append((f - f.min()) / np.ptp(f) if np.ptp(f) > 1e-9 else np.full(f.shape, float(f.max() > 0)))
    return np.stack(maps)


@pytest.mark.parametrize("layout", [TokenLayout(1, (2, 3), 0), TokenLayout(2, (2, 2), 0), TokenLayout(0, (2, 3), None)],
                         ids=["cls_2x3", "cls_dist_2x2", "no_cls_2x3"])
@pytest.mark.parametrize("opts", [{}, {"head_fusion": "max", "residual": False}, {"start_layer": 1}])
def test_flow_matches_networkx_max_flow(layout, opts):
    a = softmax_attentions(2, 3, 2, layout.num_tokens, seed=11)
    ours = explain("flow", a, layout, **opts)
    ref = ref_flow_maps(a, layout, **opts)
    assert ours.shape == (2, *layout.grid) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_max_flow_values_match_networkx_on_a_larger_graph():
    nx = pytest.importorskip("networkx")
    rng = np.random.default_rng(3)
    k_layers, n = 4, 9
    caps = rng.random((k_layers, n, n)) * (rng.random((k_layers, n, n)) < 0.6)  # sparse-ish
    sink = rng.random(n)
    graph = nx.DiGraph()
    for k in range(k_layers):
        for i, j in zip(*np.nonzero(caps[k])):
            graph.add_edge((k, j), (k + 1, i), capacity=float(caps[k, i, j]))
    for i in range(n):
        graph.add_edge((k_layers, i), "sink", capacity=float(sink[i]))
    for source in range(n):
        expected = nx.maximum_flow_value(graph, (0, source), "sink") if (0, source) in graph else 0.0
        assert max_flow(caps, sink, source) == pytest.approx(expected, abs=1e-12)


def test_one_layer_flow_is_the_single_edge_capacity():
    """With one layer the only path from (0, j) to (1, t) is the edge itself: flow = Â[t, j]."""
    layout = TokenLayout(1, (2, 3), 0)
    a = softmax_attentions(1, 1, 2, 7, seed=4)
    hat = a[0, 0].mean(0).astype(np.float64) + np.eye(7)
    row = (hat / hat.sum(-1, keepdims=True))[0, 1:]
    np.testing.assert_allclose(explain("flow", a, layout)[0].ravel(), (row - row.min()) / np.ptp(row), atol=1e-6)


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
    flow = explain("flow", a, layout, residual=False)
    np.testing.assert_allclose(flow, [[[1.0, 1.0, 1.0]]])  # every patch is capped at 0.2
    rollout = explain("rollout", a, layout, residual=False)
    np.testing.assert_allclose(rollout, [[[1.0, 1.0, 0.0]]])  # 0.08, 0.08, 0.04: different


def test_flow_refuses_long_sequences():
    n = MAX_FLOW_TOKENS + 1
    layout = TokenLayout(n - 64, (8, 8), 0)
    a = np.full((1, 1, 1, n, n), 1.0 / n, dtype=np.float32)
    with pytest.raises(ExplainError, match=rf"limited to {MAX_FLOW_TOKENS} tokens; got N={n}.*use 'rollout'"):
        explain("flow", a, layout)
