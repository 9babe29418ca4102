"""Pillow's separable resampling filters as cached NumPy weight matrices.

timm's eval transform resizes PIL images through torchvision's ``Resize``: Pillow's filters,
antialiased (the support widens by the shrink factor), each pass rounded and clipped to uint8.
OpenCV's ``INTER_CUBIC`` neither antialiases nor uses Pillow's cubic (a = -0.75 against -0.5),
and ``INTER_AREA`` is a box filter, so the filters are rebuilt here from their definitions:
one ``(n_out, n_in)`` weight matrix per axis and size, applied as matrix products over the band
of rows or columns that each block of 16 outputs reads. Images are resampled as row planes
``(H, C, W)`` (each image row split into its B, G and R rows): a block of either pass is then
one plain matrix product over all channels at once, with no weights spent on mixing channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_BLOCK = 16  # outputs per matrix product: small enough that each reads a narrow input band


def _cubic(x: np.ndarray) -> np.ndarray:
    # Keys' cubic convolution with a = -0.5, the kernel Pillow's BICUBIC uses
    a, x = -0.5, np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1, np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3) & (x < 3), np.sinc(x) * np.sinc(x / 3), 0.0)


# name -> (kernel, support in input pixels at scale 1); "area" is Pillow's BOX filter
_FILTERS = {
    "bilinear": (lambda x: np.maximum(1 - np.abs(x), 0.0), 1.0),
    "bicubic": (_cubic, 2.0),
    "area": (lambda x: ((x > -0.5) & (x <= 0.5)).astype(np.float64), 0.5),
    "lanczos": (_lanczos, 3.0),
}


def resize_matrix(n_in: int, n_out: int, interpolation: str) -> np.ndarray:
    """``(n_out, n_in)`` float64 weights of a 1-D resize, as Pillow computes them.

    Output ``i`` is centred at input coordinate ``c = (i + 0.5) * n_in / n_out`` (input
    pixel ``j`` spans ``[j, j + 1)`` here). When shrinking, the kernel is stretched by the
    shrink factor ``f``: weights ``k((j + 0.5 - c) / f)`` over ``j`` within ``c ± support * f``
    (bounds rounded as Pillow rounds them), normalised to sum to 1. ``nearest`` picks
    ``floor(c)``, Pillow's nearest-neighbour rule.
    """
    scale = n_in / n_out
    m = np.zeros((n_out, n_in))
    if interpolation == "nearest":
        # Pillow steps c by repeated addition (its ImagingScaleAffine); a sequential cumsum
        # reproduces the same float64 rounding, so ties fall the same way
        steps = np.full(n_out, scale)
        steps[0] = 0.5 * scale
        m[np.arange(n_out), np.minimum(np.cumsum(steps).astype(np.int64), n_in - 1)] = 1.0
        return m
    centre = (np.arange(n_out) + 0.5) * scale
    kernel, support = _FILTERS[interpolation]
    stretch = max(scale, 1.0)
    support *= stretch
    # int() truncates toward zero, as Pillow's C casts do
    lo = np.maximum((centre - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((centre + support + 0.5).astype(np.int64), n_in)
    taps = lo[:, None] + np.arange(int((hi - lo).max()))
    valid = taps < hi[:, None]
    w = kernel((taps - centre[:, None] + 0.5) / stretch) * valid
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
    rows = np.broadcast_to(np.arange(n_out)[:, None], taps.shape)
    m[rows[valid], taps[valid]] = w[valid]
    return m


@dataclass(frozen=True)
class Axis:
    """One axis of a resize-then-crop: which outputs hold image and how to compute them."""

    out0: int  # first model-input index that holds image (earlier ones are padding)
    out1: int
    in0: int  # original pixels [in0, in1) are all the outputs read
    in1: int
    # (o0, o1, i0, i1, weights) per block, weights (o1 - o0, i1 - i0) for rows and transposed
    # for columns (the operand order of their matrix products); None when the pass is a copy
    blocks: tuple | None


def plan_axis(n_in: int, n_resized: int, start: int, n_out: int, interpolation: str, columns: bool) -> Axis:
    """Plan one axis: resize ``n_in`` pixels to ``n_resized``, then keep ``n_out`` from ``start``."""
    out0, out1 = max(0, -start), min(n_out, n_resized - start)
    m = resize_matrix(n_in, n_resized, interpolation)[out0 + start:out1 + start]
    used = np.flatnonzero(m.any(axis=0))
    in0, in1 = int(used[0]), int(used[-1]) + 1
    if m.shape[0] == in1 - in0 and np.array_equal(m[:, in0:in1], np.eye(m.shape[0])):
        return Axis(out0, out1, in0, in1, None)
    blocks = []
    for o0 in range(0, m.shape[0], _BLOCK):
        blk = m[o0:o0 + _BLOCK]
        cols = np.flatnonzero(blk.any(axis=0))
        i0, i1 = int(cols[0]), int(cols[-1]) + 1
        w = blk[:, i0:i1].T if columns else blk[:, i0:i1]
        blocks.append((o0, o0 + blk.shape[0], i0, i1, np.ascontiguousarray(w, dtype=np.float32)))
    return Axis(out0, out1, in0, in1, tuple(blocks))


def resample_cols(cols: Axis, planes: np.ndarray, first: int) -> np.ndarray:
    """Resample the columns of float32 row planes ``(R, C, W)`` (column 0 is original column ``first``).

    Returns ``(R, C, out1 - out0)`` float32, rounded and clipped to [0, 255] as Pillow stores
    each pass in uint8 (or a view of ``planes`` when the axis is a copy).
    """
    if cols.blocks is None:
        return planes[:, :, cols.in0 - first:cols.in1 - first]
    r, c, w = planes.shape
    rows = planes.reshape(r * c, w)
    out = np.empty((r * c, cols.out1 - cols.out0), np.float32)
    for o0, o1, i0, i1, weights in cols.blocks:
        np.matmul(rows[:, i0 - first:i1 - first], weights, out=out[:, o0:o1])
    return _round(out).reshape(r, c, -1)


def resample_rows(rows: Axis, planes: np.ndarray, first: int) -> np.ndarray:
    """Resample the rows of float32 row planes ``(R, C, W)`` (row 0 is original row ``first``);
    see :func:`resample_cols`."""
    if rows.blocks is None:
        return planes[rows.in0 - first:rows.in1 - first]
    r, c, w = planes.shape
    out = np.empty((rows.out1 - rows.out0, c, w), np.float32)
    for o0, o1, i0, i1, weights in rows.blocks:
        band = planes[i0 - first:i1 - first].reshape(i1 - i0, c * w)
        np.matmul(weights, band, out=out[o0:o1].reshape(o1 - o0, c * w))
    return _round(out)


def _round(values: np.ndarray) -> np.ndarray:
    # Pillow stores each pass in uint8: round and clip before the next one
    return np.clip(np.rint(values, out=values), 0, 255, out=values)
