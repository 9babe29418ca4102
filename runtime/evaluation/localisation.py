"""Localisation metrics for saliency maps against object boxes or masks (NumPy + OpenCV).

* **Pointing game** (Zhang et al., "Top-down Neural Attention by Excitation Backprop", 2016):
  a hit when the map's maximum lies inside the object's box, or within ``tolerance_px`` of it
  (the paper uses 15 px).
* **Box-mass ratio**: the fraction of the map's mass that falls inside the box, divided by the
  fraction of the image the box covers. 1 is what a map blind to the object scores on average
  (e.g. a uniform map); higher means the mass concentrates on the object.

* **Segmentation agreement** (Chefer et al., CVPR 2021, Sec. 4, ImageNet-segmentation): the
  map is thresholded at its mean (a pixel is "object" when its value is above the map's mean);
  pixel accuracy = share of pixels whose label agrees with the mask, mIoU = mean of the object's
  and the background's intersection over union, AP = average precision of the raw map values
  as a per-pixel object score, AP = sum_n (R_n - R_(n-1)) P_n over the distinct values taken
  as thresholds, highest first. Here each is computed per image (the authors pool the counts
  over the dataset before dividing); :mod:`attnmap.runtime.evaluation.scoring` averages them.

Boxes are ``(x0, y0, x1, y1)`` in pixels, half-open like slices (as :mod:`attnmap.runtime.frames.synth` makes
them): a pixel ``(y, x)`` is inside when ``x0 <= x < x1`` and ``y0 <= y < y1``. Maps are at the
image's own size; :func:`~attnmap.runtime.image.resample.resize_maps` brings a patch-grid map there.
"""

from __future__ import annotations

import cv2
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
    return mask_mass_ratio(maps, box_masks(b, maps.shape[1:]))


def _check_masks(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.ndim != 3 or masks.shape != maps.shape:
        raise ExplainError(f"maps and masks must both be (B, H, W) of one shape; got {maps.shape} and {masks.shape}")
    if not np.all(np.isfinite(maps)):
        raise ExplainError("maps must be finite; got NaN or inf values")
    masks = masks.astype(bool)
    empty = ~masks.reshape(masks.shape[0], -1).any(axis=1)
    if empty.any():
        raise ExplainError(f"mask {int(np.argmax(empty))} is empty: a localisation metric needs an object")
    return maps.astype(np.float64), masks


def mask_pointing_game(maps: np.ndarray, masks: np.ndarray, tolerance_px: float = 15.0) -> np.ndarray:
    """Pointing-game hits against masks: is each map's maximum within ``tolerance_px`` of its mask?

    The distance from the peak (the first maximum in row-major order) to the nearest mask pixel
    is exact Euclidean (OpenCV's precise distance transform); 0 inside the mask.

    Args:
        maps: (B, H, W) float saliency at the mask's size.
        masks: (B, H, W) bool object masks, none empty.
        tolerance_px: distance in pixels within which a peak still hits (15 in Zhang et al.).

    Returns:
        (B,) bool hits.
    """
    maps, masks = _check_masks(maps, masks)
    if tolerance_px < 0:
        raise ExplainError(f"tolerance_px must be >= 0; got {tolerance_px}")
    hits = np.empty(maps.shape[0], bool)
    for i in range(maps.shape[0]):
        y, x = np.unravel_index(int(np.argmax(maps[i])), maps.shape[1:])
        # distanceTransform measures each pixel's distance to the nearest zero pixel: make the
        # mask the zeros.
        dist = cv2.distanceTransform((~masks[i]).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        hits[i] = dist[y, x] <= tolerance_px
    return hits


def mask_mass_ratio(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each map's mass inside its mask over the mask's share of the image.

        ratio = (sum_{p in mask} m_p / sum_p m_p) / (|mask| / (H * W))

    Args:
        maps: (B, H, W) non-negative float saliency at the mask's size.
        masks: (B, H, W) bool object masks, none empty.

    Returns:
        (B,) float64 ratios; NaN for an all-zero map (it points nowhere).
    """
    maps, masks = _check_masks(maps, masks)
    if (maps < 0).any():
        raise ExplainError(f"maps must be non-negative for mass ratios; got minimum {maps.min():.4g}")
    total = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    share = masks.mean(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)
    return frac / share


def segmentation_scores(maps: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """Chefer et al.'s segmentation agreement of each map with its mask (see the module docstring).

    Args:
        maps: (B, H, W) float saliency at the mask's size.
        masks: (B, H, W) bool object masks, none empty.

    Returns:
        ``{"pixel_accuracy", "miou", "ap"}``, each (B,) float64 in [0, 1].
    """
    maps, masks = _check_masks(maps, masks)
    b = maps.shape[0]
    flat, truth = maps.reshape(b, -1), masks.reshape(b, -1)
    pred = flat > flat.mean(axis=1, keepdims=True)
    acc = (pred == truth).mean(axis=1)
    ious = []
    for p, t in ((pred, truth), (~pred, ~truth)):
        union = (p | t).sum(axis=1)
        ious.append(np.where(union > 0, (p & t).sum(axis=1) / np.maximum(union, 1), 1.0))
    miou = (ious[0] + ious[1]) / 2.0
    ap = np.array([_average_precision(flat[i], truth[i]) for i in range(b)])
    return {"pixel_accuracy": acc, "miou": miou, "ap": ap}


def _average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """AP = sum_n (R_n - R_(n-1)) P_n, the thresholds being the distinct scores, highest first."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    tp = np.cumsum(t)
    # The last position of each run of equal scores is where that threshold's counts are read.
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tp_at = tp[ends].astype(np.float64)
    precision = tp_at / (ends + 1)
    recall = tp_at / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


__all__ = ["box_mass_ratio", "box_masks", "mask_mass_ratio", "mask_pointing_game", "pointing_game",
           "segmentation_scores"]
