"""Localisation metrics for saliency maps against object boxes (NumPy only).

* **Pointing game** (Zhang et al., "Top-down Neural Attention by Excitation Backprop", 2016):
  a hit when the map's maximum lies inside the object's box, or within ``tolerance_px`` of it
  (the paper uses 15 px).
* **Box-mass ratio**: the fraction of the map's mass that falls inside the box, divided by the
  fraction of the image the box covers. 1 is what a map blind to the object scores on average
  (e.g. a uniform map); higher means the mass concentrates on the object.

Boxes are ``(x0, y0, x1, y1)`` in pixels, half-open like slices (as :mod:`attnmap.runtime.frames.synth` makes
them): a pixel ``(y, x)`` is inside when ``x0 <= x < x1`` and ``y0 <= y < y1``. Maps are at the
image's own size; :func:`resize_maps` brings a patch-grid map there.
"""

from __future__ import annotations

import numpy as np

from attnmap.runtime.core.errors import ExplainError


def _check_maps(maps: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps)
    boxes = np.asarray(boxes)
    if maps.ndim != 3:
        raise ExplainError(f"maps must be 3-D (B, H, W); got shape {maps.shape}")
    if boxes.shape != (maps.shape[0], 4):
        raise ExplainError(f"boxes must have shape (B, 4) = ({maps.shape[0]}, 4) to match maps; "
                           f"got {boxes.shape}")
    if not np.all(np.isfinite(maps)):
        raise ExplainError("maps must be finite; got NaN or inf values")
    b = boxes.astype(np.int64)
    h, w = maps.shape[1:]
    bad = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w) | (b[:, 3] > h) | \
          (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if bad.any():
        i = int(np.argmax(bad))
        raise ExplainError(f"boxes must be non-empty (x0, y0, x1, y1) with 0 <= x0 < x1 <= {w} "
                           f"and 0 <= y0 < y1 <= {h}; box {i} is {tuple(boxes[i])}")
    return maps, b


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


def pointing_game(maps: np.ndarray, boxes: np.ndarray, tolerance_px: float = 0) -> np.ndarray:
    """Pointing-game hits: does each map's maximum fall in (or within ``tolerance_px`` of) its box?

    Ties go to the first maximum in row-major order (``np.argmax``).

    Args:
        maps: (B, H, W) float saliency at the image's size.
        boxes: (B, 4) int ``(x0, y0, x1, y1)``, half-open pixel boxes.
        tolerance_px: Euclidean distance in pixels from the box within which a peak still hits.

    Returns:
        (B,) bool hits.
    """
    maps, b = _check_maps(maps, boxes)
    if tolerance_px < 0:
        raise ExplainError(f"tolerance_px must be >= 0; got {tolerance_px}")
    flat = maps.reshape(maps.shape[0], -1).argmax(axis=1)
    y, x = np.divmod(flat, maps.shape[2])
    # Distance from the peak pixel to the nearest pixel of the box (0 inside).
    dx = np.maximum(np.maximum(b[:, 0] - x, x - (b[:, 2] - 1)), 0)
    dy = np.maximum(np.maximum(b[:, 1] - y, y - (b[:, 3] - 1)), 0)
    return np.hypot(dx, dy) <= tolerance_px


def box_masks(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Rasterise half-open boxes (B, 4) into (B, H, W) bool masks."""
    b = np.asarray(boxes, dtype=np.int64)
    ys = np.arange(size[0])[None, :, None]
    xs = np.arange(size[1])[None, None, :]
    return ((ys >= b[:, 1, None, None]) & (ys < b[:, 3, None, None])
            & (xs >= b[:, 0, None, None]) & (xs < b[:, 2, None, None]))


def box_mass_ratio(maps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Share of each map's mass inside its box, relative to the box's share of the image.

        ratio = (sum_{p in box} m_p / sum_p m_p) / (|box| / (H * W))

    Args:
        maps: (B, H, W) non-negative float saliency at the image's size.
        boxes: (B, 4) int ``(x0, y0, x1, y1)``, half-open pixel boxes.

    Returns:
        (B,) float64 ratios; NaN for an all-zero map (it points nowhere).
    """
    maps, b = _check_maps(maps, boxes)
    if (maps < 0).any():
        raise ExplainError(f"maps must be non-negative for mass ratios; got minimum {maps.min():.4g}")
    m = maps.astype(np.float64)
    h, w = m.shape[1:]
    total = m.sum(axis=(1, 2))
    inside = (m * box_masks(b, (h, w))).sum(axis=(1, 2))
    share = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / float(h * w)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)
    return frac / share
