"""Images in, model input out: timm's eval transform in NumPy + OpenCV, with exact geometry.

Every fit mode maps an original image onto the model input by an axis-aligned scale and
offset: resize the whole image to ``(Hr, Wr)``, then crop (or pad) a window starting at
resized pixel ``(top, left)``; a negative start means padding. :class:`Geometry` records
that map, so a patch-grid saliency map can be drawn back onto the original pixels exactly.

Coordinates use the pixel-centre convention of OpenCV and Pillow: pixel ``i`` covers
``[i - 0.5, i + 0.5)`` and its centre is at ``i``. A resize from ``n`` to ``m`` pixels maps
``x`` to ``(x + 0.5) * m / n - 0.5``, so the whole map is ``input = orig * s + offset`` with
``s = m / n`` and ``offset = 0.5 * s - 0.5 - top``.

Resampling reproduces what torchvision's ``Resize`` does to a PIL image, which is what timm's
eval transform runs: Pillow's separable filters, antialiased (the support widens by the
shrink factor), each pass rounded and clipped to uint8, in Pillow's order of passes. OpenCV's
``INTER_CUBIC`` neither antialiases nor uses Pillow's cubic (a = -0.75 against -0.5), and
``INTER_AREA`` is a box filter, so the filters are built here as weight matrices, cached per
image size, and applied as matrix products over the band of rows or columns each block of
8 outputs reads.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from attnmap.runtime.core.errors import ImageError, MetadataError, OptionError, suggest
from attnmap.runtime.image.decode import check_image, read_image  # noqa: F401  (re-exported: preprocess is where users look)
from attnmap.runtime.core.meta import ModelMeta
from attnmap.runtime.image.resample import Axis, plan_axis, resample_cols, resample_rows

FITS = ("crop", "squash", "letterbox")
MAP_INTERPOLATIONS = ("nearest", "linear", "cubic")


# ----------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """How one original image was mapped into the model input: an axis-aligned scale + offset.

    ``input = orig * scale + offset`` per axis, in the pixel-centre convention (pixel ``i``
    has its centre at coordinate ``i``). Points are ``(x, y)``; sizes and scales ``(y, x)``.

    Attributes:
        image_size: ``(H0, W0)`` of the original image.
        input_size: ``(H, W)`` of the model input.
        scale: ``(sy, sx)``, model-input pixels per original pixel.
        offset: ``(oy, ox)`` in model-input pixels.
        fit: the fit mode that made this map (one of :data:`FITS`).
        patch_size: ``(ph, pw)`` of the model's patches; None means "input size divided by
            the grid shape", which then has to divide exactly.
    """

    image_size: tuple[int, int]
    input_size: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[float, float]
    fit: str
    patch_size: tuple[int, int] | None = None

    def image_to_input_points(self, xy: np.ndarray) -> np.ndarray:
        """Map original-image points to model-input points.

        Args:
            xy: ``(..., 2)`` float array of ``(x, y)`` original pixel coordinates.

        Returns:
            ``(..., 2)`` float64 array of ``(x, y)`` model-input coordinates.
        """
        xy = _points(xy)
        return xy * (self.scale[1], self.scale[0]) + (self.offset[1], self.offset[0])

    def input_to_image_points(self, xy: np.ndarray) -> np.ndarray:
        """Map model-input points back to original-image points (inverse of the above).

        Args:
            xy: ``(..., 2)`` float array of ``(x, y)`` model-input coordinates.

        Returns:
            ``(..., 2)`` float64 array of ``(x, y)`` original pixel coordinates.
        """
        xy = _points(xy)
        return (xy - (self.offset[1], self.offset[0])) / (self.scale[1], self.scale[0])

    def seen_region(self, grid_shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """Original pixels whose centres fall on the patch grid, as ``(y0, y1, x0, x1)``.

        The grid covers model-input pixels ``[0, gh * ph) x [0, gw * pw)``; an original pixel
        counts as seen when its centre maps inside that area (edges included). Pixels a
        crop cut away, or that fall past the last whole patch, are not seen.

        Args:
            grid_shape: ``(gh, gw)`` of the patch grid.

        Returns:
            Half-open row and column ranges, clipped to the image.
        """
        (ph, pw), eps = self._patch(grid_shape), 1e-6
        out = []
        for axis, extent in ((0, grid_shape[0] * ph), (1, grid_shape[1] * pw)):
            s, o, n = self.scale[axis], self.offset[axis], self.image_size[axis]
            lo = math.ceil((-0.5 - o) / s - eps)
            hi = math.floor((extent - 0.5 - o) / s + eps) + 1
            out += [min(max(lo, 0), n), min(max(hi, 0), n)]
        return out[0], out[1], out[2], out[3]

    def to_image(self, grid_map: np.ndarray, *, interpolation: str = "linear") -> np.ndarray:
        """Draw a patch-grid map onto the original image's pixels.

        Grid cell ``(r, c)`` covers model-input pixels ``[r*ph, (r+1)*ph) x [c*pw, (c+1)*pw)``
        and is centred at input coordinate ``((c + 0.5) * pw - 0.5, (r + 0.5) * ph - 0.5)``.
        Every original pixel is mapped to its grid coordinate ``g = orig * s / p + (o + 0.5) / p
        - 0.5`` per axis and the grid is sampled there, separably, beyond the edge cells as if
        they repeated: ``heatmap = Wy @ grid @ Wxᵀ`` with per-axis weight matrices cached per
        geometry. Original pixels the model never saw (see :meth:`seen_region`) are set to 0.

        Args:
            grid_map: ``(gh, gw)`` float map over the patch grid.
            interpolation: ``"linear"``, ``"nearest"`` or ``"cubic"`` (Keys' cubic with
                a = -0.75 as OpenCV's, clipped to the grid's value range so it cannot overshoot).

        Returns:
            ``(H0, W0)`` float32 heatmap on the original pixels.

        Raises:
            ImageError: ``grid_map`` is not a finite 2-D array matching the patch grid.
            OptionError: unknown ``interpolation``.
        """
        if interpolation not in MAP_INTERPOLATIONS:
            raise OptionError(f"unknown interpolation {interpolation!r}; expected one of "
                              f"{MAP_INTERPOLATIONS}.{suggest(interpolation, MAP_INTERPOLATIONS)}")
        grid = np.asarray(grid_map)
        if grid.ndim != 2 or grid.size == 0 or not np.issubdtype(grid.dtype, np.number):
            raise ImageError(f"grid_map must be a 2-D numeric array (gh, gw); got {grid.dtype} {grid.shape}")
        grid = np.ascontiguousarray(grid, dtype=np.float32)
        if not np.isfinite(grid).all():
            raise ImageError("grid_map must be finite; it holds NaN or inf")
        wy, wx_t = self._map_weights(grid.shape, interpolation)
        y0, y1, x0, x1 = self.seen_region(grid.shape)
        out = np.empty(self.image_size, np.float32)
        if y0 < y1 and x0 < x1:  # only the rectangle the model saw is computed
            seen = out[y0:y1, x0:x1]
            np.matmul(wy[y0:y1], grid @ wx_t[:, x0:x1], out=seen)
            if interpolation == "cubic":
                np.clip(seen, grid.min(), grid.max(), out=seen)
            # and only the strips around it are zeroed: every pixel is written once
            out[:y0], out[y1:], out[y0:y1, :x0], out[y0:y1, x1:] = 0.0, 0.0, 0.0, 0.0
        else:
            out.fill(0.0)
        return out

    @functools.lru_cache(maxsize=16)
    def _map_weights(self, grid_shape: tuple[int, int], interpolation: str) -> tuple[np.ndarray, np.ndarray]:
        """``(H0, gh)`` and ``(gw, W0)`` float32 weights of :meth:`to_image`."""
        (ph, pw), (gh, gw) = self._patch(grid_shape), grid_shape
        (sy, sx), (oy, ox) = self.scale, self.offset
        h0, w0 = self.image_size
        wy = _sample_weights(np.arange(h0) * (sy / ph) + ((oy + 0.5) / ph - 0.5), gh, interpolation)
        wx = _sample_weights(np.arange(w0) * (sx / pw) + ((ox + 0.5) / pw - 0.5), gw, interpolation)
        return wy, np.ascontiguousarray(wx.T)

    def _patch(self, grid_shape: tuple[int, int]) -> tuple[int, int]:
        h, w = self.input_size
        gh, gw = int(grid_shape[0]), int(grid_shape[1])
        if self.patch_size is not None:
            ph, pw = self.patch_size
            if (gh, gw) != (h // ph, w // pw):
                raise ImageError(f"grid_map must be {(h // ph, w // pw)} for a {h}x{w} input with "
                                 f"{ph}x{pw} patches; got shape {(gh, gw)}")
            return int(ph), int(pw)
        if h % gh or w % gw:
            raise ImageError(f"grid_map shape {(gh, gw)} does not divide the {h}x{w} input; "
                             "set Geometry.patch_size")
        return h // gh, w // gw


def _sample_weights(g: np.ndarray, n: int, interpolation: str) -> np.ndarray:
    """``(len(g), n)`` float32 weights that sample n cells at coordinates ``g`` (cell j centred
    at j), the edge cells repeated beyond the ends."""
    w = np.zeros((g.size, n))
    rows = np.arange(g.size)
    if interpolation == "nearest":
        w[rows, np.clip(np.floor(g + 0.5), 0, n - 1).astype(np.int64)] = 1.0
        return w.astype(np.float32)
    j0 = np.floor(g)
    t = g - j0
    if interpolation == "linear":
        taps, kernel = (0, 1), np.stack([1.0 - t, t])
    else:  # cubic: Keys' kernel with a = -0.75, as OpenCV's INTER_CUBIC
        a = -0.75
        d = np.stack([1 + t, t, 1 - t, 2 - t])  # distances to taps j0-1 .. j0+2
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        taps, kernel = (-1, 0, 1, 2), np.where(d <= 1, near, far)
    for k, weight in zip(taps, kernel):
        np.add.at(w, (rows, np.clip(j0 + k, 0, n - 1).astype(np.int64)), weight)
    return w.astype(np.float32)


def _points(xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim == 0 or xy.shape[-1] != 2:
        raise OptionError(f"points must be an array (..., 2) of (x, y); got shape {xy.shape}")
    return xy


@dataclass(frozen=True)
class _Plan:
    geometry: Geometry
    rows: Axis
    cols: Axis
    # (256,) float32 per input channel B, G, R: the normalised value of each uint8 level,
    # v * gain + bias computed in float32 (what the model input holds for that level)
    levels: tuple[np.ndarray, np.ndarray, np.ndarray]
    fill: np.ndarray  # (3,) float32 normalised value of padded pixels, RGB
    vertical_first: bool


def _start(n_resized: int, n_out: int) -> int:
    # torchvision's CenterCrop and timm's CenterCropOrPad: pad (left-biased) or crop centred
    if n_resized < n_out:
        return -((n_out - n_resized) // 2)
    return int(round((n_resized - n_out) / 2.0))


def _resized_size(h0: int, w0: int, h: int, w: int, crop_pct: float, crop_mode: str, fit: str) -> tuple[int, int]:
    """``(Hr, Wr)`` before the centre crop or pad, with timm's exact rounding."""
    if fit == "squash":
        return h, w
    if fit == "letterbox":
        crop_pct, crop_mode = 1.0, "border"
    sh, sw = math.floor(h / crop_pct), math.floor(w / crop_pct)
    if crop_mode == "squash":
        return sh, sw
    if crop_mode == "center" and sh == sw:
        # torchvision Resize(int): shorter side to sh, longer side truncated
        return (sh, int(sh * w0 / h0)) if w0 >= h0 else (int(sh * h0 / w0), sh)
    # timm ResizeKeepRatio: "center" fits the shorter side (longest=0), "border" the longer one
    rh, rw = h0 / sh, w0 / sw
    ratio = max(rh, rw) if crop_mode == "border" else min(rh, rw)
    # a sliver (say 1 x 1000) would round to 0 rows; keep at least one
    return max(1, round(h0 / ratio)), max(1, round(w0 / ratio))


@functools.lru_cache(maxsize=32)
def _plan(h0: int, w0: int, key: tuple) -> _Plan:
    (h, w), (ph, pw), interpolation, crop_pct, crop_mode, mean, std, fit = key
    hr, wr = _resized_size(h0, w0, h, w, crop_pct, crop_mode, fit)
    top, left = _start(hr, h), _start(wr, w)
    sy, sx = hr / h0, wr / w0
    geometry = Geometry((h0, w0), (h, w), (sy, sx), (0.5 * sy - 0.5 - top, 0.5 * sx - 0.5 - left),
                        fit, (ph, pw))
    mean, std = np.array(mean, np.float64), np.array(std, np.float64)
    if fit == "letterbox":
        fill = np.zeros(3)  # the mean colour: exactly 0 after normalising
    else:
        pad = np.round(255 * mean) if crop_mode == "border" else np.zeros(3)
        fill = (pad / 255 - mean) / std
    # Pillow 13 runs the vertical pass first when height shrinks by more than twice the
    # pixels width loses; the order decides how the uint8 rounding between passes falls
    vertical_first = hr < h0 and wr != w0 and (h0 - hr) > 2 * (w0 - wr)
    gain, bias = (1 / (255 * std)).astype(np.float32), (-mean / std).astype(np.float32)
    level = np.arange(256, dtype=np.float32)
    levels = tuple(level * gain[c] + bias[c] for c in (2, 1, 0))  # B, G, R: the image's order
    return _Plan(geometry, plan_axis(h0, hr, top, h, interpolation), plan_axis(w0, wr, left, w, interpolation),
                 levels, fill.astype(np.float32), vertical_first)


def _run(plan: _Plan, img_bgr: np.ndarray, out_chw: np.ndarray) -> None:
    rows, cols = plan.rows, plan.cols
    # The pixels read, resampled pass by pass in Pillow's order (resample.py), uint8 throughout.
    pixels = img_bgr[rows.in0:rows.in1, cols.in0:cols.in1]
    if plan.vertical_first:
        pixels = resample_cols(cols, resample_rows(rows, pixels))
    else:
        pixels = resample_rows(rows, resample_cols(cols, pixels))
    if (rows.out0, rows.out1, cols.out0, cols.out1) != (0, out_chw.shape[1], 0, out_chw.shape[2]):
        out_chw[...] = plan.fill[:, None, None]  # a padded border
    # BGR -> RGB and (v / 255 - mean) / std in one lookup per channel, written into the input
    for c, plane in enumerate(cv2.split(pixels)):
        cv2.LUT(plane, plan.levels[c], dst=out_chw[2 - c, rows.out0:rows.out1, cols.out0:cols.out1])


# ----------------------------------------------------------------------------- public API
def preprocess(images_bgr: Sequence[np.ndarray] | np.ndarray, meta: ModelMeta, *, fit: str = "crop",
               out: np.ndarray | None = None) -> tuple[np.ndarray, list[Geometry]]:
    """Turn BGR images of any sizes into a normalised model-input batch, with their geometry.

    Fit modes:
        ``crop``: the model's timm eval transform, from metadata alone: resize by
            ``crop_pct`` with ``meta.interpolation`` and centre-crop (``meta.crop_mode``
            ``"center"``: shorter side to ``floor(size / crop_pct)``; ``"squash"``: both sides
            to it; ``"border"``: longer side to it, then pad with ``round(255 * mean)``).
        ``squash``: the whole frame resized to the input size; aspect ratio not kept.
        ``letterbox``: the whole frame scaled to fit, centred, padded with the mean colour
            (so the padding is exactly 0 after normalising).

    Args:
        images_bgr: one BGR image ``(H, W, 3)`` uint8 (or gray ``(H, W)``, or BGRA; see
            :func:`check_image`), a batch array ``(B, H, W, 3)``, or a sequence of images of
            any sizes.
        meta: the model's metadata (input size, mean, std, interpolation, crop_pct ...).
        fit: one of :data:`FITS`.
        out: optional preallocated ``(B, 3, H, W)`` float32 C-contiguous buffer to fill
            (reused across frames in live loops); a new one is allocated when None.

    Returns:
        ``x_nchw`` ``(B, 3, H, W)`` float32 (RGB, ``(v / 255 - mean) / std``) and one
        :class:`Geometry` per image.

    Raises:
        ImageError: an image is not a BGR uint8 array.
        OptionError: unknown ``fit``, or ``out`` of the wrong shape or dtype.
        MetadataError: the model does not take 3-channel input.
    """
    if fit not in FITS:
        raise OptionError(f"unknown fit {fit!r}; expected one of {FITS}.{suggest(str(fit), FITS)}")
    if int(meta.input_size[0]) != 3:
        raise MetadataError(f"preprocess needs a 3-channel model input; got input_size {meta.input_size}")
    if isinstance(images_bgr, np.ndarray) and images_bgr.ndim == 4:
        images = [check_image(im, f"images_bgr[{i}]") for i, im in enumerate(images_bgr)]
    elif isinstance(images_bgr, np.ndarray):
        images = [check_image(images_bgr, "images_bgr")]
    else:
        images = [check_image(im, f"images_bgr[{i}]") for i, im in enumerate(images_bgr)]
    if not images:
        raise ImageError("images_bgr is empty; expected at least one image")
    h, w = meta.image_size
    shape = (len(images), 3, h, w)
    if out is None:
        out = np.empty(shape, np.float32)
    elif (not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != np.float32
          or not out.flags.c_contiguous):
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise OptionError(f"out must be a C-contiguous float32 array {shape}; got {got}")
    key = ((h, w), tuple(int(p) for p in meta.patch_size), meta.interpolation, float(meta.crop_pct),
           meta.crop_mode, tuple(map(float, meta.mean)), tuple(map(float, meta.std)), fit)
    geometries = []
    for i, img in enumerate(images):
        plan = _plan(img.shape[0], img.shape[1], key)
        _run(plan, img, out[i])
        geometries.append(plan.geometry)
    return out, geometries


def preprocess_one(image_bgr: np.ndarray, meta: ModelMeta, fit: str = "crop") -> tuple[np.ndarray, Geometry]:
    """:func:`preprocess` for one image.

    Args:
        image_bgr: ``(H, W, 3)`` BGR uint8 image.
        meta: the model's metadata.
        fit: one of :data:`FITS`.

    Returns:
        ``x_chw`` ``(3, H, W)`` float32 and its :class:`Geometry`.
    """
    x, geometries = preprocess([image_bgr], meta, fit=fit)
    return x[0], geometries[0]
