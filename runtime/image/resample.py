"""Pillow's separable resampling filters as cached NumPy weight matrices.

timm's eval transform resizes PIL images through torchvision's ``Resize``: Pillow's filters,
antialiased (the support widens by the shrink factor), each pass rounded and clipped to uint8.
OpenCV's ``INTER_CUBIC`` neither antialiases nor uses Pillow's cubic (a = -0.75 against -0.5),
and ``INTER_AREA`` is a box filter, so the filters are rebuilt here from their definitions:
one ``(n_out, n_in)`` weight matrix per axis and size, applied as matrix products over the band
of rows that each block of 8 outputs reads.

Both passes resample axis 0 of an interleaved ``(rows, cols * 3)`` array, so that a block is
one wide matrix product ``(8, band) @ (band, cols * 3)`` over all channels at once, with no
weights spent on mixing channels and no channel planes to split. The column pass runs on the
image transposed (OpenCV's ``transpose`` of the uint8 pixels, a few tens of microseconds),
which turns its few-output-columns products into the same wide shape. Each pass ends in uint8,
as Pillow stores it (:func:`to_uint8`).

:func:`resize_maps` is the other resize of the package, for saliency maps rather than images: a
patch grid brought up to pixels, point-sampled as OpenCV's ``INTER_LINEAR`` samples (half-pixel
centres, edges clamped, float32 throughout). On an upsample it equals the ``bilinear`` filter
above up to float rounding; on a shrink it does not antialias, and no pass is rounded to uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from attnmap.runtime.core.errors import ExplainError

_BLOCK = 8  # outputs per matrix product: each reads a narrow input band (8 beat 6, 12 and 16 on
# a 640 x 480 frame for both a 1.9x bicubic and a 5x area shrink; the dense band wastes less)
_GROUP_BYTES = 256 * 1024  # float32 input band per group of blocks (beat 64 KiB to 1 MiB)


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


def resize_matrix(n_in: int, n_out: int, interpolation: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    """``(n_out, n_in)`` float64 weights of a 1-D resize, as Pillow computes them.

    With ``rows=(r0, r1)`` only outputs ``r0 .. r1 - 1`` are computed, ``(r1 - r0, n_in)``: a
    crop that keeps 96 of a 1 x 4000 strip's 384,000 resized rows must not build the other
    383,904 (12 GB in float64).

    Output ``i`` is centred at input coordinate ``c = (i + 0.5) * n_in / n_out`` (input
    pixel ``j`` spans ``[j, j + 1)`` here). When shrinking, the kernel is stretched by the
    shrink factor ``f``: weights ``k((j + 0.5 - c) / f)`` over ``j`` within ``c ± support * f``
    (bounds rounded as Pillow rounds them), normalised to sum to 1. ``nearest`` picks
    ``floor(c)``, Pillow's nearest-neighbour rule.
    """
    scale = n_in / n_out
    r0, r1 = (0, n_out) if rows is None else rows
    m = np.zeros((r1 - r0, n_in))
    if interpolation == "nearest":
        # Pillow steps c by repeated addition (its ImagingScaleAffine); a sequential cumsum
        # reproduces the same float64 rounding, so ties fall the same way (hence from output 0)
        steps = np.full(r1, scale)
        steps[0] = 0.5 * scale
        m[np.arange(r1 - r0), np.minimum(np.cumsum(steps)[r0:].astype(np.int64), n_in - 1)] = 1.0
        return m
    centre = (np.arange(r0, r1) + 0.5) * scale
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
    rows = np.broadcast_to(np.arange(r1 - r0)[:, None], taps.shape)
    m[rows[valid], taps[valid]] = w[valid]
    return m


@dataclass(frozen=True)
class Axis:
    """One axis of a resize-then-crop: which outputs hold image and how to compute them."""

    out0: int  # first model-input index that holds image (earlier ones are padding)
    out1: int
    in0: int  # original pixels [in0, in1) are all the outputs read
    in1: int
    # (o0, o1, i0, i1, weights (o1 - o0, i1 - i0)) per block; None when the pass is a copy
    blocks: tuple | None


def plan_axis(n_in: int, n_resized: int, start: int, n_out: int, interpolation: str) -> Axis:
    """Plan one axis: resize ``n_in`` pixels to ``n_resized``, then keep ``n_out`` from ``start``."""
    out0, out1 = max(0, -start), min(n_out, n_resized - start)
    m = resize_matrix(n_in, n_resized, interpolation, rows=(out0 + start, out1 + start))
    used = np.flatnonzero(m.any(axis=0))
    in0, in1 = int(used[0]), int(used[-1]) + 1
    if m.shape[0] == in1 - in0 and np.array_equal(m[:, in0:in1], np.eye(m.shape[0])):
        return Axis(out0, out1, in0, in1, None)
    blocks = []
    for o0 in range(0, m.shape[0], _BLOCK):
        blk = m[o0:o0 + _BLOCK]
        cols = np.flatnonzero(blk.any(axis=0))
        i0, i1 = int(cols[0]), int(cols[-1]) + 1
        blocks.append((o0, o0 + blk.shape[0], i0, i1, np.ascontiguousarray(blk[:, i0:i1], dtype=np.float32)))
    return Axis(out0, out1, in0, in1, tuple(blocks))


def resample_rows(axis: Axis, pixels: np.ndarray) -> np.ndarray:
    """Resample axis 0 of ``pixels``, uint8 ``(R, ...)`` whose row 0 is original index ``axis.in0``.

    The blocks run in groups whose input band, in float32, is about :data:`_GROUP_BYTES`: each
    group's band is converted from uint8 just before its products read it, so it is read from
    the core's own cache rather than from a float copy of the whole input (10-15% of a 640 x
    480 frame's preprocessing, measured right after an inference).

    Returns ``(axis.out1 - axis.out0, ...)`` uint8, each output rounded and clipped as Pillow
    stores a pass (or ``pixels`` itself when the axis is a copy).
    """
    if axis.blocks is None:
        return pixels
    width = pixels[0].size
    out = np.empty((axis.out1 - axis.out0, width), np.float32)
    blocks, first = axis.blocks, axis.in0
    band = blocks[0][3] - blocks[0][2]
    per = max(1, _GROUP_BYTES // (4 * width * band))
    for g in range(0, len(blocks), per):
        group = blocks[g:g + per]
        lo, hi = group[0][2], group[-1][3]
        # straight from the (possibly strided) uint8 window: no contiguous copy of it first
        chunk = pixels[lo - first:hi - first].astype(np.float32).reshape(hi - lo, width)
        for o0, o1, i0, i1, weights in group:
            np.matmul(weights, chunk[i0 - lo:i1 - lo], out=out[o0:o1])
    return to_uint8(out).reshape(out.shape[0], *pixels.shape[1:])


def to_uint8(values: np.ndarray) -> np.ndarray:
    """float32 -> uint8 as Pillow stores a pass, exactly ``clip(rint(values), 0, 255)``:
    negatives set to 0 in place, then OpenCV's saturating conversion (round half to even,
    clip at 255), two vectorised passes where NumPy takes three and twice the time."""
    cv2.threshold(values, 0.0, 0.0, cv2.THRESH_TOZERO, dst=values)
    return cv2.convertScaleAbs(values)


def resample_cols(axis: Axis, hwc: np.ndarray) -> np.ndarray:
    """Resample axis 1 of a uint8 ``(R, W, 3)`` image whose column 0 is original column
    ``axis.in0``: :func:`resample_rows` on the image transposed, transposed back."""
    if axis.blocks is None:
        return hwc
    return cv2.transpose(resample_rows(axis, cv2.transpose(hwc)))


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize maps, pixel centres aligned (as ``cv2.resize`` ``INTER_LINEAR``).

    A grid cell's value lands on the centre of the image region it covers, so a one-cell peak
    stays centred on its patch. Separable: ``out[b] = Wy @ maps[b] @ Wx.T``.

    Args:
        maps: (B, gh, gw) float maps (e.g. the explanation of a ViT's patch grid).
        size: ``(H, W)`` of the output.

    Returns:
        (B, H, W) float32 maps.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ExplainError(f"maps must be 3-D (B, gh, gw); got shape {maps.shape}")
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise ExplainError(f"size must be positive (H, W); got {size}")
    wy = _linear_weights(maps.shape[1], h)
    wx = _linear_weights(maps.shape[2], w)
    return np.einsum("yi,bij,xj->byx", wy, maps, wx, optimize=True).astype(np.float32)


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) interpolation matrix, half-pixel centres, edge values clamped."""
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (pos - lo).astype(np.float32)
    weights = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights
