"""Drawing explanations: heatmap overlays, text labels and tiled layer/head grids.

Annotators follow supervision's split: style goes in the constructor, data in the call, as in
``HeatmapOverlay(colormap="inferno", alpha=0.5).annotate(frame_bgr, heatmap)``. Images are
BGR uint8 in and out; every call returns a new array, never modifies its input, and keeps
no state between frames.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import cv2
import numpy as np

from attnmap.runtime.core.errors import ImageError, OptionError, suggest
from attnmap.runtime.draw.caption import POSITIONS, LabelOverlay  # noqa: F401 - LabelOverlay lives there now
from attnmap.runtime.image.preprocess import check_image

COLORMAPS: dict[str, int] = {name[len("COLORMAP_"):].lower(): int(getattr(cv2, name))
                             for name in sorted(dir(cv2)) if name.startswith("COLORMAP_")}
MODES = ("blend", "mask")


def colormap_id(name: str | int) -> int:
    """Resolve a colormap name (any case, e.g. ``"jet"``, ``"Inferno"``) or OpenCV id to its id.

    Args:
        name: a key of :data:`COLORMAPS` or one of its values (``cv2.COLORMAP_*``).

    Returns:
        The ``cv2.COLORMAP_*`` integer.

    Raises:
        OptionError: unknown name or id, with close matches suggested.
    """
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        if int(name) in COLORMAPS.values():
            return int(name)
        raise OptionError(f"unknown colormap id {int(name)}; expected one of {sorted(COLORMAPS.values())}")
    if isinstance(name, str) and name.lower() in COLORMAPS:
        return COLORMAPS[name.lower()]
    hint = suggest(str(name).lower(), COLORMAPS) or f" Choose one of: {', '.join(COLORMAPS)}."
    raise OptionError(f"unknown colormap {name!r}.{hint}")


def _check_map(heatmap: np.ndarray, name: str = "heatmap") -> np.ndarray:
    h = np.asarray(heatmap)
    if h.ndim != 2 or h.size == 0 or not np.issubdtype(h.dtype, np.floating):
        raise ImageError(f"{name} must be a float array (H, W) with values in [0, 1]; got {h.dtype} {h.shape}")
    h = np.ascontiguousarray(h, dtype=np.float32)
    if not np.isfinite(h).all():  # a sixth of cv2.checkRange's time on a 340 x 256 map
        raise ImageError(f"{name} must be finite; it holds NaN or inf")
    return h


def _clip01(heatmap: np.ndarray, upper: bool = True) -> np.ndarray:
    """``max(heatmap, 0)`` (and ``min(.., 1)``) as thresholds. NOTE not ``cv2.max(heat, 0.0)``:
    OpenCV takes a 1 x 1 array for a scalar there and returns a 4 x 1 result."""
    out = cv2.threshold(heatmap, 0.0, 0.0, cv2.THRESH_TOZERO)[1]
    return cv2.threshold(out, 1.0, 1.0, cv2.THRESH_TRUNC)[1] if upper else out


def _to_u8(heatmap: np.ndarray) -> np.ndarray:
    # values outside [0, 1] (interpolation overshoot) are clipped, not rescaled: negatives go to
    # 0 first, then the conversion rounds and saturates at 255
    return cv2.convertScaleAbs(_clip01(heatmap, upper=False), alpha=255.0)


def colorize(heatmap: np.ndarray, colormap: str | int = "jet") -> np.ndarray:
    """Colour a heatmap with an OpenCV colormap.

    Args:
        heatmap: ``(H, W)`` float array in [0, 1] (values outside are clipped).
        colormap: a name in :data:`COLORMAPS` or a ``cv2.COLORMAP_*`` id.

    Returns:
        ``(H, W, 3)`` uint8 BGR image (with ``"jet"``: 0 is dark blue, 1 dark red).

    Raises:
        ImageError: ``heatmap`` is not a finite 2-D float array.
        OptionError: unknown colormap.
    """
    return _apply_colormap(_to_u8(_check_map(heatmap)), colormap_id(colormap))


@functools.lru_cache(maxsize=None)
def _colormap_luts(cmap: int) -> tuple[np.ndarray, ...]:
    table = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cmap)[:, 0]
    return tuple(np.ascontiguousarray(table[:, c]) for c in range(3))


# Above this many pixels OpenCV's own applyColorMap is the faster of the two (measured: 0.29
# against 0.48 ms on a 434 x 434 map, 0.35 against 0.86 ms on 640 x 480; below, the lookups win).
_APPLY_ABOVE = 128 * 1024


def _apply_colormap(u8: np.ndarray, cmap: int) -> np.ndarray:
    """``cv2.applyColorMap``; on maps of up to :data:`_APPLY_ABOVE` pixels as three
    single-channel lookups in its cached table, merged: the same colours, at 0.06-0.11 ms
    against 0.24-0.25 ms on a 224 x 224 to 340 x 256 map."""
    if u8.size > _APPLY_ABOVE:
        return cv2.applyColorMap(u8, cmap)
    return cv2.merge([cv2.LUT(u8, lut) for lut in _colormap_luts(cmap)])


class HeatmapOverlay:
    """Draws a heatmap over an image.

    Args:
        colormap: a name in :data:`COLORMAPS` or a ``cv2.COLORMAP_*`` id.
        alpha: strength in [0, 1]. ``blend``: ``(1 - alpha) * image + alpha * colour``
            (0 returns the image, 1 the colour map). ``mask``: ``image * (1 - alpha * (1 - map))``
            (1 gives image times map: black where the map is 0).
        blur: Gaussian sigma as a fraction of the image's shorter side (0 = off), so the look
            does not depend on resolution; the blurred map is rescaled to the original peak,
            so a single hot patch stays visible.
        mode: ``"blend"`` or ``"mask"``.

    Raises:
        OptionError: a style value is out of range or unknown.
    """

    def __init__(self, colormap: str | int = "jet", alpha: float = 0.5, blur: float = 0.0, mode: str = "blend"):
        self.colormap = colormap_id(colormap)
        if not 0.0 <= float(alpha) <= 1.0:
            raise OptionError(f"alpha must be in [0, 1]; got {alpha}")
        if not 0.0 <= float(blur) <= 1.0:
            raise OptionError(f"blur must be a fraction of the shorter image side in [0, 1]; got {blur}")
        if mode not in MODES:
            raise OptionError(f"unknown overlay mode {mode!r}; expected one of {MODES}.{suggest(str(mode), MODES)}")
        self.alpha, self.blur, self.mode = float(alpha), float(blur), mode

    def annotate(self, image_bgr: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
        """Overlay ``heatmap`` on ``image_bgr``.

        Args:
            image_bgr: ``(H, W, 3)`` BGR uint8 image (gray or BGRA are converted).
            heatmap: ``(H, W)`` float map in [0, 1] at the image's size (map a patch grid
                with :meth:`runtime.image.preprocess.Geometry.to_image` first).

        Returns:
            A new ``(H, W, 3)`` BGR uint8 image.

        Raises:
            ImageError: bad image, or a heatmap that is not ``(H, W)`` float.
        """
        img = check_image(image_bgr, "image_bgr")
        heat = _check_map(heatmap)
        if heat.shape != img.shape[:2]:
            raise ImageError(f"heatmap shape {heat.shape} must match the image's (H, W) {img.shape[:2]}; "
                             "map a patch grid with Geometry.to_image first")
        return self.draw(img, heat)

    def draw(self, img: np.ndarray, heat: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """:meth:`annotate` without its checks, for callers that made both arrays themselves.

        Every pixel's colour depends on that pixel alone unless :attr:`blur` is set, so a
        caller may draw a sub-rectangle of an image with the same rectangle of its map.

        Args:
            img: ``(H, W, 3)`` BGR uint8.
            heat: ``(H, W)`` finite float32 map.
            out: ``(H, W, 3)`` uint8 to draw into (a view into a larger image is fine); a new
                array when None.

        Returns:
            ``out``, or the new ``(H, W, 3)`` BGR uint8 image.
        """
        if self.blur > 0:
            heat = _blur(heat, self.blur * min(heat.shape))
        if out is None:
            out = np.empty_like(img)
        if self.mode == "blend":
            colour = _apply_colormap(_to_u8(heat), self.colormap)
            cv2.addWeighted(img, 1.0 - self.alpha, colour, self.alpha, 0.0, dst=out)
            return out
        # image * (1 - alpha * (1 - map)), with the gain in 1/255 steps: 255 keeps a pixel exactly
        clipped = _clip01(heat)
        gain = cv2.convertScaleAbs(clipped, alpha=255.0 * self.alpha, beta=255.0 * (1.0 - self.alpha))
        cv2.multiply(img, cv2.cvtColor(gain, cv2.COLOR_GRAY2BGR), dst=out, scale=1 / 255)
        return out


def _blur(heat: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a heatmap, rescaled so that its peak keeps its value."""
    peak = float(heat.max())
    h, w = heat.shape
    if sigma > 8:
        # a wide kernel on a full-size frame is slow (about 130 ms at sigma 24 on 1546 x 1213);
        # the map is smooth, so blur a copy shrunk to sigma 4 and scale it back up
        f = sigma / 4
        small = cv2.resize(heat, (max(1, round(w / f)), max(1, round(h / f))), interpolation=cv2.INTER_AREA)
        heat = cv2.resize(cv2.GaussianBlur(small, (0, 0), 4.0), (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        heat = cv2.GaussianBlur(heat, (0, 0), sigma)
    top = float(heat.max())
    if top > 0:
        heat *= peak / top
    return heat


def layer_head_grid(image_bgr: np.ndarray, maps: np.ndarray, *, titles: Sequence[str] | None = None,
                    cols: int | None = None, overlay: HeatmapOverlay | None = None,
                    tile_width: int = 224) -> np.ndarray:
    """Tile one overlay per map: every layer, or every head of one layer, side by side.

    Args:
        image_bgr: ``(H0, W0, 3)`` BGR uint8 image.
        maps: ``(K, H0, W0)`` float heatmaps in [0, 1] at the image's size, or ``(K, gh, gw)``
            patch grids (resized to each tile with ``INTER_LINEAR``, ignoring any crop: map
            them with ``Geometry.to_image`` first for exact placement).
        titles: K captions, drawn top-left on each tile.
        cols: tiles per row; default ``ceil(sqrt(K))``.
        overlay: how each tile is drawn; default ``HeatmapOverlay()``.
        tile_width: width of one tile in pixels; its height keeps the image's aspect ratio.

    Returns:
        ``(rows * th + 2 * (rows - 1), cols * tile_width + 2 * (cols - 1), 3)`` BGR uint8
        image, tiles separated by 2 px dark-grey gaps; unused slots are dark grey.

    Raises:
        ImageError: bad image or maps.
        OptionError: bad titles, cols or tile_width.
    """
    img = check_image(image_bgr, "image_bgr")
    stack = np.asarray(maps)
    if stack.ndim != 3 or stack.shape[0] == 0 or not np.issubdtype(stack.dtype, np.floating):
        raise ImageError(f"maps must be a float array (K, H, W) or (K, gh, gw); got {stack.dtype} {stack.shape}")
    k = stack.shape[0]
    if titles is not None and len(titles) != k:
        raise OptionError(f"titles must have one entry per map ({k}); got {len(titles)}")
    cols = math.ceil(math.sqrt(k)) if cols is None else int(cols)
    if cols < 1 or int(tile_width) < 8:
        raise OptionError(f"cols must be >= 1 and tile_width >= 8; got cols={cols}, tile_width={tile_width}")
    rows = math.ceil(k / cols)
    tw = int(tile_width)
    th = max(1, round(img.shape[0] * tw / img.shape[1]))
    shrink = cv2.INTER_AREA if tw < img.shape[1] else cv2.INTER_LINEAR
    tile_img = cv2.resize(img, (tw, th), interpolation=shrink)
    at_image_size = stack.shape[1:] == img.shape[:2]
    overlay = overlay if overlay is not None else HeatmapOverlay()
    labeler = LabelOverlay()
    gap = 2
    canvas = np.full((rows * th + gap * (rows - 1), cols * tw + gap * (cols - 1), 3), 32, np.uint8)
    for i in range(k):
        heat = _check_map(stack[i], f"maps[{i}]")
        heat = cv2.resize(heat, (tw, th), interpolation=shrink if at_image_size else cv2.INTER_LINEAR)
        tile = overlay.annotate(tile_img, heat)
        if titles is not None:
            tile = labeler.annotate(tile, [titles[i]])
        r, c = divmod(i, cols)
        canvas[r * (th + gap):r * (th + gap) + th, c * (tw + gap):c * (tw + gap) + tw] = tile
    return canvas
