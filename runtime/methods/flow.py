"""Attention flow (Abnar & Zuidema 2020): max-flow from each input patch to the target token.

The layers form a graph with one node per token per layer, (l, i) for l = start .. L, and an
edge (l-1, j) -> (l, i) of capacity Â_l[i, j], where Â_l is the residual-mixed attention of
rollout, (fused(A_l) + I) with rows renormalised. The score of patch j is the maximum flow
from (start, j) to the target: node (L, t), or for a class-token-free model (target row
None) a super-sink fed by every (L, i) through an edge of capacity 1/N, the flow analogue
of rollout's mean row.

How it is solved (one max-flow problem per patch and image, by SciPy's Dinic):

* Dead nodes are dropped, exactly: a layer-0 node other than the source has no edge in and
  a layer-L node other than the target (when there is one) no edge out, so neither can carry
  flow. The graph of source s is s -> layers 1 .. L-1 -> target; all but the source's own
  edges are shared by every patch, so they are laid out as CSR arrays once per image.
* SciPy wants integer capacities: they are quantised to int32 as floor(c * scale), with
  ``scale`` = 2**:data:`SCALE_BITS` (capacities here are <= 1, as the rows of Â sum to 1; a
  larger graph capacity lowers the scale so that no capacity or flow value overflows). The
  value computed is the exact max-flow of the quantised graph divided by ``scale``. Flooring
  only lowers capacities, so it is a lower bound of the float max-flow F, and it lies below
  F by at most m / scale, m the number of edges of a minimum cut of the quantised graph (at
  most the number of edges; on attention graphs the min cut is the source's or the target's
  N edges, about 2e-7 at N = 197).
* A cheaper exact certificate comes first: the max-flow of a sparse subgraph (every source
  and target edge, and between hidden layers only each token's :data:`SPARSE_EDGES` largest
  edges in and out) is a feasible flow of the full graph, and the capacity of the source's
  edges or of the target's is a cut of it. When the subgraph's flow reaches the smaller cut
  it is the exact max-flow; otherwise (rare on attention) the full graph is solved.

The solves run one after another: SciPy's solver holds the GIL (with a 2-thread pool over the
sources the process used no more CPU time than wall time, and was no faster on 2 cores).
``bench/flow.py`` prints seconds per image: about 0.6 s of CPU at DeiT-Tiny size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods.base import (
    HEAD_FUSIONS,
    check_attentions,
    check_bool,
    check_choice,
    fuse_heads,
    grid_maps,
    resolve_index,
)

# Capacities <= 1 become integers <= 2**30; a flow value then stays below int32's 2**31 - 1.
SCALE_BITS = 30
# Edges each hidden token keeps in and out in the sparse first attempt (out of N).
SPARSE_EDGES = 16


def attention_flow(attentions: np.ndarray, layout: TokenLayout, *, grads: np.ndarray | None = None,
                   head_fusion: str = "mean", residual: bool = True, start_layer: int = 0) -> np.ndarray:
    """Attention flow: the max-flow from each patch at layer ``start_layer`` to the target.

    Args:
        attentions: (B, L, H, N, N) float attention probabilities; not modified.
        layout: token layout (target row None = super-sink fed 1/N by every last-layer token).
        grads: ignored (class-agnostic); accepted so every method shares one call.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over the heads of each layer.
        residual: True: capacities (F + I) rows renormalised; False: F rows renormalised.
        start_layer: the layer whose input tokens are the sources (negative counts from the
            end).

    Returns:
        (B, gh, gw) float32 in [0, 1].

    Raises:
        ExplainError: bad shapes or options, non-finite attentions, or SciPy missing.
    """
    a = check_attentions(attentions, layout)
    check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    residual = check_bool("residual", residual)
    start = resolve_index("start_layer", start_layer, a.shape[1], "layers")
    n = a.shape[-1]
    capacities = fuse_heads(a[:, start:], head_fusion, axis=2).astype(np.float64)  # (B, K, N, N)
    if residual:
        capacities += np.eye(n)
    sums = capacities.sum(axis=-1, keepdims=True)
    capacities /= np.where(sums > 0.0, sums, 1.0)
    if not np.isfinite(capacities).all():
        # NaN compares False everywhere and would silently close edges instead of failing.
        raise ExplainError("method 'flow' produced NaN or inf; the attentions contain non-finite values")
    sources = range(layout.num_prefix, n)
    flows = np.stack([max_flows(capacities[b], layout.target_row, sources) for b in range(a.shape[0])])
    return grid_maps(flows, layout, "flow")


def max_flows(capacities: np.ndarray, target: int | None, sources: Sequence[int]) -> np.ndarray:
    """Max-flow from each source token through a layered graph, quantised as the module says.

    Nodes are (k, i) for k = 0 .. K and tokens i; ``capacities[k, i, j]`` is the capacity of
    the edge (k, j) -> (k+1, i). The sink is (K, target), or, for ``target`` None, a
    super-sink fed by every (K, i) through an edge of capacity 1/N.

    Args:
        capacities: (K, N, N) float64, finite and non-negative.
        target: the target token, or None for the super-sink.
        sources: tokens i whose node (0, i) is a source, one problem each.

    Returns:
        (len(sources),) float64: each max-flow of the graph with capacities
        floor(c * scale) / scale (see the module docstring for scale and the error bound).

    Raises:
        ExplainError: SciPy is not installed.
    """
    maximum_flow = _maximum_flow()
    graph = _LayeredGraph(capacities, target)
    values = [graph.solve(maximum_flow, int(s)) for s in sources]
    return np.array(values, dtype=np.float64) / graph.scale


class _LayeredGraph:
    """The graph source -> hidden layers -> sink of one image, as CSR arrays without the source.

    Hops h = 0 .. H-1 join node layer h to layer h+1; layer 0 is the source alone, layer H
    the sink alone. ``hops[h][i, j]`` is the int64 capacity of (h, j) -> (h+1, i). Hidden
    layers 1 .. H-1 are numbered consecutively from 0, the sink follows (id M), then the
    source (id M + 1), so a source only appends one CSR row.
    """

    def __init__(self, capacities: np.ndarray, target: int | None):
        n = capacities.shape[-1]
        if target is None:
            hops = list(capacities) + [np.full((1, n), 1.0 / n)]
        else:
            hops = list(capacities[:-1]) + [capacities[-1][target:target + 1]]
        # The flow value is at most the capacity into the sink; keep it and every edge <= 2**SCALE_BITS.
        bound = max(1.0, float(hops[-1].sum()), max(float(h.max()) for h in hops))
        self.scale = float(2 ** SCALE_BITS) / bound
        self.first = np.floor(hops[0] * self.scale).astype(np.int64)          # (n1, N): column s = source s
        rest = [np.floor(h * self.scale).astype(np.int64) for h in hops[1:]]
        sizes = [h.shape[1] for h in rest]                                     # hidden layer sizes
        self.hidden = sum(sizes)
        self.sink_cap = int(rest[-1].sum()) if rest else None                 # None: no hidden layer
        self.full = _csr_parts(rest, sizes, None) if rest else None
        self.sparse = _csr_parts(rest, sizes, SPARSE_EDGES) if rest and n > 2 * SPARSE_EDGES else None

    def solve(self, maximum_flow: Callable, source: int) -> int:
        """The integer max-flow from (0, ``source``): sparse certificate first, else the full graph."""
        col = self.first[:, source]
        if self.sink_cap is None:                       # one hop: the source's edge into the sink
            return int(col[0])
        bound = min(int(col.sum()), self.sink_cap)
        if bound == 0:
            return 0
        if self.sparse is not None:
            value = self._run(maximum_flow, self.sparse, col)
            if value == bound:
                return value
        return self._run(maximum_flow, self.full, col)

    def _run(self, maximum_flow: Callable, parts: tuple, col: np.ndarray) -> int:
        import scipy.sparse as sp

        indptr, indices, data = parts
        heads = np.flatnonzero(col).astype(np.int32)
        m = self.hidden
        g = sp.csr_array((np.concatenate([data, col[heads].astype(np.int32)]), np.concatenate([indices, heads]),
                          np.append(indptr, indptr[-1] + heads.size).astype(np.int32)), shape=(m + 2, m + 2))
        return int(maximum_flow(g, m + 1, m, method="dinic").flow_value)


def _csr_parts(hops: list[np.ndarray], sizes: list[int], keep: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (indptr, indices, data) of the hidden layers and the sink, rows 0 .. M (the sink's empty).

    Args:
        hops: int64 (n_{h+1}, n_h) capacities from hidden layer h to layer h+1 (the last into
            the sink, a single row).
        sizes: n_h of each hidden layer.
        keep: None: every positive edge; else between two hidden layers only each token's
            ``keep`` largest edges out and in (the edges into the sink are always kept).

    Returns:
        indptr (M + 2,) int32 (no source row yet), indices and data int32.
    """
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    rows, cols, vals = [], [], []
    for h, w in enumerate(hops):
        mask = w > 0
        if keep is not None and w.shape[0] > keep and w.shape[1] > keep:
            top = np.zeros_like(mask)
            np.put_along_axis(top, np.argpartition(-w, keep - 1, axis=0)[:keep], True, axis=0)
            np.put_along_axis(top, np.argpartition(-w, keep - 1, axis=1)[:, :keep], True, axis=1)
            mask &= top
        j, i = np.nonzero(mask.T)                       # row-major over (from j, to i): CSR order
        rows.append(offsets[h] + j)
        cols.append(offsets[h + 1] + i)                 # the last hop's i = 0 lands on the sink, id M
        vals.append(w[i, j])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    m = int(offsets[-1])
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m + 1))])
    return indptr.astype(np.int32), cols.astype(np.int32), np.concatenate(vals).astype(np.int32)


def _maximum_flow() -> Callable:
    """SciPy's ``maximum_flow``, imported on first use (SciPy is the optional extra ``flow``)."""
    try:
        from scipy.sparse.csgraph import maximum_flow
    except ImportError as e:
        raise ExplainError("method 'flow' needs SciPy (its exact max-flow solver), which is not installed; "
                           "install it with: pip install 'attnmap[flow]'") from e
    return maximum_flow
