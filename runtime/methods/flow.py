"""Attention flow (Abnar & Zuidema 2020): max-flow from each input patch to the target token.

The layers form a graph with one node per token per layer, (l, i) for l = start .. L, and an
edge (l-1, j) -> (l, i) of capacity Â_l[i, j], where Â_l is the residual-mixed attention of
rollout, (fused(A_l) + I) with rows renormalised. The score of patch j is the maximum flow
from (start, j) to the target: node (L, t), or for a class-token-free model (target row
None) a super-sink fed by every (L, i) through an edge of capacity 1/N, the flow analogue
of rollout's mean row.

Unlike rollout this is exact about shared bottlenecks, but it costs one max-flow problem per
patch and image, each a few hundred augmenting paths on a dense graph. It therefore loops
over images and patches (the one method that does), and refuses sequences longer than
:data:`MAX_FLOW_TOKENS`.
"""

from __future__ import annotations

import numpy as np

from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods.base import (check_attentions, check_bool, check_choice, fuse_heads, grid_maps, HEAD_FUSIONS,
                   resolve_index, start_vector)

# 65 tokens (a class token and an 8x8 grid) at 12 layers take about 15 s per image on one
# CPU core (about 0.2 s per patch); 17 tokens (a 4x4 grid) take about 1 s. A DeiT-Tiny
# sequence (197 tokens) would take hours.
MAX_FLOW_TOKENS = 65

# Capacities are attention weights in [0, 1]; residuals below this are rounding leftovers.
_EPS = 1e-12


def attention_flow(attentions: np.ndarray, layout: TokenLayout, *, grads: np.ndarray | None = None,
                   head_fusion: str = "mean", residual: bool = True, start_layer: int = 0) -> np.ndarray:
    """Attention flow: the max-flow from each patch at layer ``start_layer`` to the target.

    Args:
        attentions: (B, L, H, N, N) float attention probabilities, N <= MAX_FLOW_TOKENS; not
            modified.
        layout: token layout (target row None = super-sink fed 1/N by every last-layer token).
        grads: ignored (class-agnostic); accepted so every method shares one call.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over the heads of each layer.
        residual: True: capacities (F + I) rows renormalised; False: F rows renormalised.
        start_layer: the layer whose input tokens are the sources (negative counts from the
            end).

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    a = check_attentions(attentions, layout)
    n = a.shape[-1]
    if n > MAX_FLOW_TOKENS:
        raise ExplainError(f"method 'flow' solves one max-flow problem per patch and is limited to "
                           f"{MAX_FLOW_TOKENS} tokens; got N={n} (attentions shape {a.shape}); "
                           "use 'rollout' for this model")
    check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    residual = check_bool("residual", residual)
    start = resolve_index("start_layer", start_layer, a.shape[1], "layers")
    capacities = fuse_heads(a[:, start:], head_fusion, axis=2).astype(np.float64)  # (B, K, N, N)
    if residual:
        capacities += np.eye(n)
    sums = capacities.sum(axis=-1, keepdims=True)
    capacities /= np.where(sums > 0.0, sums, 1.0)
    if not np.isfinite(capacities).all():
        # NaN compares False everywhere and would silently close edges instead of failing.
        raise ExplainError("method 'flow' produced NaN or inf; the attentions contain non-finite values")
    sink = start_vector(layout, 1)[0].astype(np.float64)
    p = layout.num_prefix
    flows = np.array([[max_flow(capacities[b], sink, j) for j in range(p, n)] for b in range(a.shape[0])])
    return grid_maps(flows, layout, "flow")


def max_flow(capacities: np.ndarray, sink: np.ndarray, source: int) -> float:
    """Maximum flow through a layered graph, by shortest augmenting paths (Edmonds-Karp).

    Nodes are (k, i) for k = 0 .. K and tokens i; ``capacities[k, i, j]`` is the edge
    (k, j) -> (k+1, i); node (K, i) drains into the sink through an edge of capacity
    ``sink[i]``. Each breadth-first search advances one whole layer set at a time with a
    batched matrix-vector product over the K layers; the path is then traced back through
    the BFS distances, so no parent pointers are kept.

    Args:
        capacities: (K, N, N) float64, non-negative.
        sink: (N,) float64 capacities of the last layer's edges into the sink.
        source: token index of the source node (0, source).

    Returns:
        The value of the maximum flow.
    """
    k_layers, n, _ = capacities.shape
    flow = np.zeros_like(capacities)
    resid = capacities.copy()
    # 0/1 masks as float32 so that reachability is a BLAS matrix-vector product.
    fwd_open = (resid > _EPS).astype(np.float32)
    back_open_t = np.zeros_like(fwd_open)  # [k, j, i]: flow on (k, j) -> (k+1, i) can be undone
    sink_left = sink.copy()
    total = 0.0
    while True:
        dist = np.full((k_layers + 1, n), -1, dtype=np.int64)
        dist[0, source] = 0
        frontier = np.zeros((k_layers + 1, n), dtype=np.float32)
        frontier[0, source] = 1.0
        d, end = 0, -1
        while True:
            hit = (frontier[k_layers] > 0) & (sink_left > _EPS)
            if hit.any():
                end = int(np.argmax(hit))
                break
            reach = np.zeros_like(frontier)
            reach[1:] = np.matmul(fwd_open, frontier[:-1, :, None])[..., 0]
            reach[:-1] += np.matmul(back_open_t, frontier[1:, :, None])[..., 0]
            new = (reach > 0) & (dist < 0)
            if not new.any():
                return total
            d += 1
            dist[new] = d
            frontier = new.astype(np.float32)
        # Trace back: every node at distance d was reached from one at d - 1 through an open
        # residual edge, either forward from the layer below or backward from the layer above.
        level, node, bottleneck, path = k_layers, end, sink_left[end], []
        while d > 0:
            below = np.flatnonzero((dist[level - 1] == d - 1) & (resid[level - 1, node] > _EPS)) \
                if level > 0 else np.empty(0, dtype=np.int64)
            if below.size:
                j = int(below[0])
                bottleneck = min(bottleneck, resid[level - 1, node, j])
                path.append((level - 1, node, j, 1.0))
                level, node = level - 1, j
            else:
                i = int(np.flatnonzero((dist[level + 1] == d - 1) & (flow[level, :, node] > _EPS))[0])
                bottleneck = min(bottleneck, flow[level, i, node])
                path.append((level, i, node, -1.0))
                level, node = level + 1, i
            d -= 1
        for k, i, j, sign in path:
            flow[k, i, j] += sign * bottleneck
            resid[k, i, j] -= sign * bottleneck
            fwd_open[k, i, j] = resid[k, i, j] > _EPS
            back_open_t[k, j, i] = flow[k, i, j] > _EPS
        sink_left[end] -= bottleneck
        total += bottleneck
