"""Captions: a few lines of text in a compact, see-through box, in the corner where the heatmap
is coldest.

Style in the constructor, data in the call (supervision's split), as in
``LabelOverlay().annotate(frame_bgr, ["Samoyed 0.78", "rollout"], heatmap=heat)``. Images are
BGR uint8 in and out; every call returns a new array and keeps no state between frames.

Sizes follow the image: the text is 3.2 % of the shorter side tall (8 px at least, below which
OpenCV's Hershey font loses its spaces; 48 px at most), and shrinks further (to the 8 px floor)
when the widest line would not fit across the image. The live view's four HUD lines take 11 to
13 % of a 340 x 256 frame, a two-line caption 3 % of a 224 x 224 image. The box is 60 % opaque
by default, and the text has a 1 px shadow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from attnmap.runtime.core.errors import ImageError, OptionError, suggest
from attnmap.runtime.image.decode import check_image

POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")
AUTO = "auto"

TEXT_FRACTION = 0.032  # text height / the image's shorter side
MIN_TEXT_PX = 8.0
MAX_TEXT_PX = 48.0
# With a heatmap, the first corner of POSITIONS whose mean heat under the box is within
# CORNER_TOLERANCE (relative) plus CORNER_SLACK (absolute) of the coldest corner's is taken: the
# caption does not hop between corners that are about as cold (no state is kept between frames,
# so this is the only damping), yet a box mostly over cold pixels but clipping a hot spot (mean
# 0.019 against 0.005 on the Samoyed) loses to a truly cold corner.
CORNER_TOLERANCE = 0.25
CORNER_SLACK = 0.002

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_PX = cv2.getTextSize("H", _FONT, 1.0, 1)[0][1]  # text height at scale 1 (27 px)


@dataclass(frozen=True)
class _Layout:
    texts: tuple[str, ...]  # the lines that fit, top to bottom
    scale: float
    thick: int
    pad: int
    ascent: int
    line_h: int
    box_w: int
    box_h: int


def _colour(value, name: str) -> tuple[int, int, int]:
    try:
        bgr = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        bgr = ()
    if len(bgr) != 3 or not all(0 <= v <= 255 for v in bgr):
        raise OptionError(f"{name} must be a BGR triple of ints in [0, 255]; got {value!r}")
    return bgr  # type: ignore[return-value]


def text_scale(h: int, w: int) -> float:
    """The automatic OpenCV font scale for an ``h`` x ``w`` image (before fitting the width).

    Returns:
        A scale giving text :data:`TEXT_FRACTION` of the shorter side tall, clamped to
        [:data:`MIN_TEXT_PX`, :data:`MAX_TEXT_PX`] pixels (scale 0.30 to 1.78).
    """
    return min(max(TEXT_FRACTION * min(h, w), MIN_TEXT_PX), MAX_TEXT_PX) / _FONT_PX


def _layout(h: int, w: int, texts: Sequence[str], scale: float | None) -> _Layout | None:
    """Where the text goes, or None when not even one line fits the image."""
    if scale is None:
        scale = text_scale(h, w)
        widest = max(cv2.getTextSize(t, _FONT, scale, 1)[0][0] for t in texts)
        room = w - 2 * _pad(scale)
        if widest > room > 0:  # shrink to fit the width, down to the legible floor
            scale = max(scale * room / widest, MIN_TEXT_PX / _FONT_PX)
    thick = max(1, round(scale * _FONT_PX / 16))
    sizes = [cv2.getTextSize(t, _FONT, scale, thick) for t in texts]
    ascent = max(s[0][1] for s in sizes)
    descent = max(s[1] for s in sizes)
    pad = _pad(scale)
    line_h = ascent + descent + max(1, round(0.2 * scale * _FONT_PX))
    fits = (h - 2 * pad - ascent - descent) // line_h + 1 if h >= 2 * pad + ascent + descent else 0
    if fits < 1 or w < 2 * pad + 4:  # not one line, or not one character's width
        return None
    texts = tuple(texts[:fits])
    box_w = min(w, max(s[0][0] for s in sizes[:fits]) + 2 * pad)
    box_h = min(h, (len(texts) - 1) * line_h + ascent + descent + 2 * pad)
    return _Layout(texts, scale, thick, pad, ascent, line_h, box_w, box_h)


def _pad(scale: float) -> int:
    return max(2, round(0.3 * scale * _FONT_PX))


def coldest_corner(heatmap: np.ndarray, box_w: int, box_h: int, image_hw: tuple[int, int]) -> str:
    """The corner of :data:`POSITIONS` where a ``box_w`` x ``box_h`` box covers the least heat.

    The mean heat under the box is exact: a full-size map is summed over the box's pixels, and
    a smaller map (a patch grid) counts each cell by the part of it the box covers. Nothing is
    rounded to a coarser grid, so the choice depends on the box alone: OpenCV 5.1 measures the
    Hershey font 1 px wider per glyph than 5.0, a box a few pixels wider must not move the
    caption unless the heat under that box says so.

    Args:
        heatmap: ``(Hm, Wm)`` float map, finite; the image's size, or any other size that
            covers the same area (a patch grid), whose box is then scaled to it.
        box_w: box width in image pixels.
        box_h: box height in image pixels.
        image_hw: the image's ``(H, W)``.

    Returns:
        The name of the corner with the lowest mean heat under the box, or an earlier corner
        of :data:`POSITIONS` whose mean is within :func:`near_coldest` of it.

    Raises:
        ImageError: the map is not a finite 2-D float array.
    """
    heat = np.asarray(heatmap)
    if heat.ndim != 2 or heat.size == 0 or not np.issubdtype(heat.dtype, np.floating):
        raise ImageError(f"heatmap must be a float array (H, W); got {heat.dtype} {heat.shape}")
    # Finiteness of the whole map from a strided view of about 48 samples on the shorter side
    # (a view: no copy); the boxes themselves are checked exactly through their means below.
    step = max(1, min(heat.shape) // 48)
    if not np.isfinite(heat[::step, ::step]).all():
        raise ImageError("heatmap must be finite; it holds NaN or inf")
    (h, w), (hm, wm) = image_hw, heat.shape
    if (box_h * hm) % h == 0 and (box_w * wm) % w == 0 and heat.dtype in (np.float32, np.float64):
        # Whole cells (always so on a full-size map): OpenCV's sum reads each box in place and
        # adds in float64, the four 900 x 150 boxes of a 1080p map in about 0.3 ms.
        ky, kx = min(hm, max(1, box_h * hm // h)), min(wm, max(1, box_w * wm // w))
        n = float(ky * kx)
        means = [cv2.sumElems(heat[ys, xs])[0] / n for ys in (slice(0, ky), slice(hm - ky, hm))
                 for xs in (slice(0, kx), slice(wm - kx, wm))]
    else:
        # Each cell counts by the part of it the box covers: weights @ cells @ weights.
        rows, cols = _cover(box_h * hm / h, hm), _cover(box_w * wm / w, wm)
        ky, kx = len(rows), len(cols)
        n = float(rows.sum() * cols.sum())
        means = [float(r @ heat[ys, xs].astype(np.float64) @ c) / n
                 for r, ys in ((rows, slice(0, ky)), (rows[::-1], slice(hm - ky, hm)))
                 for c, xs in ((cols, slice(0, kx)), (cols[::-1], slice(wm - kx, wm)))]
    if not all(map(math.isfinite, means)):
        raise ImageError("heatmap must be finite; it holds NaN or inf")
    coldest = min(means)
    return next(p for p, m in zip(POSITIONS, means) if near_coldest(m, coldest))


def _cover(extent: float, size: int) -> np.ndarray:
    """Weights of the first map cells a box ``extent`` cells long covers from the map's edge:
    ``(ceil(extent),)`` float64, 1 for whole cells and the covered part of the last one."""
    extent = min(max(extent, 1e-9), float(size))
    k = max(1, min(size, int(np.ceil(extent - 1e-9))))
    weights = np.ones(k)
    weights[-1] = extent - (k - 1)
    return weights


def near_coldest(mean: float, coldest: float) -> bool:
    """Whether a corner with ``mean`` heat under the box counts as cold as the ``coldest``:
    within :data:`CORNER_TOLERANCE` of it (relative) plus :data:`CORNER_SLACK`."""
    return mean <= coldest * (1.0 + CORNER_TOLERANCE) + CORNER_SLACK


class LabelOverlay:
    """Writes lines of text in a compact, see-through box in one corner of an image.

    Args:
        position: ``"auto"`` (the corner where the heatmap passed to :meth:`annotate` is
            coldest; top-left without one) or one of :data:`POSITIONS` (always that corner).
        scale: OpenCV font scale; None sizes the text from the image (see the module doc).
        color: BGR text colour (drawn over a 1 px black shadow).
        background: BGR box colour, or None for no box.
        opacity: the box's opacity in [0, 1]: 0.6 lets the image show through, 1 hides it.

    Raises:
        OptionError: unknown position, non-positive scale, opacity outside [0, 1] or a bad colour.
    """

    def __init__(self, position: str = AUTO, scale: float | None = None,
                 color: tuple[int, int, int] = (255, 255, 255),
                 background: tuple[int, int, int] | None = (0, 0, 0), opacity: float = 0.6):
        if position != AUTO and position not in POSITIONS:
            choices = (AUTO, *POSITIONS)
            raise OptionError(f"unknown label position {position!r}; expected one of {choices}."
                              f"{suggest(str(position), choices)}")
        if scale is not None and not float(scale) > 0:
            raise OptionError(f"scale must be positive or None (automatic); got {scale}")
        if not 0.0 <= float(opacity) <= 1.0:
            raise OptionError(f"opacity must be in [0, 1]; got {opacity}")
        self.position, self.scale = position, None if scale is None else float(scale)
        self.color = _colour(color, "color")
        self.background = None if background is None else _colour(background, "background")
        self.opacity = float(opacity)

    def box(self, image_hw: tuple[int, int], lines: Sequence[str] | str,
            heatmap: np.ndarray | None = None) -> tuple[int, int, int, int] | None:
        """The box :meth:`annotate` would draw: ``(x0, y0, width, height)`` in pixels, or None
        when no text fits (see :meth:`annotate`)."""
        placed = self._place((int(image_hw[0]), int(image_hw[1])), _texts(lines), heatmap)
        return None if placed is None else (placed[1], placed[2], placed[0].box_w, placed[0].box_h)

    def annotate(self, image_bgr: np.ndarray, lines: Sequence[str] | str,
                 heatmap: np.ndarray | None = None) -> np.ndarray:
        """Draw ``lines`` on a copy of ``image_bgr``.

        Args:
            image_bgr: ``(H, W, 3)`` BGR uint8 image (gray or BGRA are converted).
            lines: text lines, top to bottom (a single string is one line). OpenCV's fonts
                are ASCII only; other characters are drawn as ``?``.
            heatmap: with ``position="auto"``, the ``(H, W)`` (or patch-grid) float map the
                caption should avoid: the box goes where it is coldest. Ignored otherwise.

        Returns:
            A new ``(H, W, 3)`` BGR uint8 image. Lines that do not fit below the first are
            left out and lines wider than the image are cut at its edge; when not even one
            line fits at the smallest size (an image under about 10 px tall or 8 px wide),
            the image is returned without text.

        Raises:
            ImageError: bad image or heatmap.
        """
        img = check_image(image_bgr, "image_bgr").copy()
        self.draw(img, lines, heatmap)
        return img

    def draw(self, img: np.ndarray, lines: Sequence[str] | str, heatmap: np.ndarray | None = None) -> None:
        """:meth:`annotate` in place, on an image the caller owns: ``(H, W, 3)`` BGR uint8,
        C-contiguous (the frame engine's own overlay, which a copy would only duplicate)."""
        placed = self._place(img.shape[:2], _texts(lines), heatmap)
        if placed is None:
            return
        lay, x0, y0 = placed
        if self.background is not None and self.opacity > 0:
            roi = img[y0:y0 + lay.box_h, x0:x0 + lay.box_w]
            fill = np.empty_like(roi)
            fill[:] = self.background
            cv2.addWeighted(fill, self.opacity, roi, 1.0 - self.opacity, 0.0, dst=roi)
        shadow = max(1, round(lay.scale * _FONT_PX / 24))
        for i, text in enumerate(lay.texts):
            x, y = x0 + lay.pad, y0 + lay.pad + lay.ascent + i * lay.line_h
            cv2.putText(img, text, (x + shadow, y + shadow), _FONT, lay.scale, (0, 0, 0), lay.thick, cv2.LINE_AA)
            cv2.putText(img, text, (x, y), _FONT, lay.scale, self.color, lay.thick, cv2.LINE_AA)

    def _place(self, image_hw: tuple[int, int], texts: list[str],
               heatmap: np.ndarray | None) -> tuple[_Layout, int, int] | None:
        h, w = image_hw
        lay = _layout(h, w, texts, self.scale) if texts else None
        if lay is None:
            return None
        corner = self.position
        if corner == AUTO:
            corner = POSITIONS[0] if heatmap is None else coldest_corner(heatmap, lay.box_w, lay.box_h, (h, w))
        x0 = 0 if corner.endswith("left") else w - lay.box_w
        y0 = 0 if corner.startswith("top") else h - lay.box_h
        return lay, x0, y0


def _texts(lines: Sequence[str] | str) -> list[str]:
    if isinstance(lines, str):
        lines = [lines]
    return [str(t).encode("ascii", "replace").decode("ascii") for t in lines]
