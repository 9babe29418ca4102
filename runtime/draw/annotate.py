"""The one picture of an explanation: the map over the frame it explains, and its caption.

Every front draws through :class:`ExplanationAnnotator`: ``explain`` and video files (through
:meth:`Explanation.overlay <attnmap.runtime.engine.explainer.Explanation.overlay>`), ``/v1/explain``,
the live window and the served stream (through the live session). So the same frame, map and
style give the same pixels on every front; the live view's HUD is only more caption lines.

Style in the constructor, data in the call (supervision's split), as in
``ExplanationAnnotator(style).annotate(frame_bgr, grid, geometry, ["Samoyed 0.78", "rollout"])``.
BGR uint8 in and out; every call returns a new array and keeps no state between frames.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from attnmap.runtime.core.errors import ImageError
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.image.preprocess import Geometry, check_image


class ExplanationAnnotator:
    """Draws a patch-grid map over the frame it was computed on, with a caption.

    Pixels the model never saw (strips a ``crop`` fit cut away, or past the last whole patch)
    carry no evidence either way: they are shown dimmed (``image >> 1``), without colour,
    rather than coloured as "no relevance".

    Args:
        style: how to draw (:class:`~attnmap.runtime.draw.style.OverlayStyle`); default
            ``OverlayStyle()``.
    """

    def __init__(self, style: OverlayStyle | None = None):
        self.style = style if style is not None else OverlayStyle()

    def annotate(self, image_bgr: np.ndarray, grid: np.ndarray, geometry: Geometry,
                 caption: Sequence[str] = (), *, hud: Sequence[str] = (),
                 heatmap: np.ndarray | None = None) -> np.ndarray:
        """Draw the map of ``grid`` over ``image_bgr``, and the caption.

        Args:
            image_bgr: ``(H0, W0, 3)`` BGR uint8 frame (gray or BGRA are converted).
            grid: ``(gh, gw)`` float map in [0, 1] over the model's patch grid.
            geometry: how ``image_bgr`` was mapped into the model input (its ``image_size``
                is ``(H0, W0)``).
            caption: text lines (prediction, method), drawn when the style's ``label`` is on.
            hud: more lines under the caption, drawn whatever the style's ``label`` (the live
                view's fps and stage timings).
            heatmap: ``geometry.to_image(grid)`` when the caller has it already (an
                :class:`Explanation` caches it); computed here when None.

        Returns:
            A new ``(H0, W0, 3)`` BGR uint8 image; every pixel is written once. The text goes
            in the corner where the map is coldest.

        Raises:
            ImageError: a bad image, a grid that does not match the geometry, or a frame of
                another size than the geometry's.
        """
        style = self.style
        img = image_bgr
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            img = check_image(img, "image_bgr")
        h, w = img.shape[:2]
        heat = geometry.to_image(grid) if heatmap is None else heatmap
        if heat.shape != (h, w):
            raise ImageError(f"the map covers a {heat.shape[1]} x {heat.shape[0]} image but the frame is "
                             f"{w} x {h}; draw a map on the frame it was computed for")
        # Every output pixel is written once: the seen rectangle drawn from its part of the map
        # (drawing is per pixel unless blurred), the strips around it dimmed.
        y0, y1, x0, x1 = geometry.seen_region(np.shape(grid))
        if (y0, y1, x0, x1) == (0, h, 0, w) or style.blur > 0 or y0 >= y1 or x0 >= x1:
            out = style.heatmap.draw(img, heat)
            if (y0, y1, x0, x1) != (0, h, 0, w):
                seen = out[y0:y1, x0:x1].copy()
                out = np.right_shift(img, 1)
                out[y0:y1, x0:x1] = seen
        else:
            out = np.empty_like(img)
            for (r0, r1), (c0, c1) in (((0, y0), (0, w)), ((y1, h), (0, w)), ((y0, y1), (0, x0)), ((y0, y1), (x1, w))):
                np.right_shift(img[r0:r1, c0:c1], 1, out=out[r0:r1, c0:c1])
            style.heatmap.draw(img[y0:y1, x0:x1], heat[y0:y1, x0:x1], out=out[y0:y1, x0:x1])
        lines = [*(caption if style.label else ()), *hud]
        if lines:
            style.caption.draw(out, lines, heatmap=heat)
        return out


__all__ = ["ExplanationAnnotator"]
