"""The one annotator: map over the seen rectangle, unseen strips dimmed, caption and HUD lines."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from frames_fakes import FAKE_META
from attnmap.runtime.core.errors import ImageError
from attnmap.runtime.draw.annotate import ExplanationAnnotator
from attnmap.runtime.draw.caption import LabelOverlay
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.image.preprocess import preprocess


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _crop(img: np.ndarray):
    """The geometry of a crop fit of ``img`` into the fake model (2 x 2 patches of 16 px)."""
    _, geoms = preprocess([img], FAKE_META, fit="crop")
    return geoms[0]


GRID = np.array([[0.0, 0.25], [0.75, 1.0]], np.float32)


def _reference(img: np.ndarray, grid: np.ndarray, geom, alpha: float = 0.5) -> np.ndarray:
    """The picture spelled out with OpenCV alone: the frame halved everywhere, and inside the
    seen rectangle the jet colours of the map blended at ``alpha``."""
    heat = geom.to_image(grid)
    u8 = cv2.convertScaleAbs(np.clip(heat, 0, 1), alpha=255.0)
    blended = cv2.addWeighted(img, 1 - alpha, cv2.applyColorMap(u8, cv2.COLORMAP_JET), alpha, 0.0)
    out = img >> 1
    y0, y1, x0, x1 = geom.seen_region(grid.shape)
    out[y0:y1, x0:x1] = blended[y0:y1, x0:x1]
    return out


@pytest.mark.parametrize("hw", [(48, 80), (80, 48)], ids=["wide", "tall"])
def test_a_crop_dims_the_strips_it_never_saw_and_colours_the_rest(hw):
    img = _frame(*hw)
    geom = _crop(img)
    y0, y1, x0, x1 = geom.seen_region(GRID.shape)
    assert (y1 - y0, x1 - x0) == (min(hw), min(hw))  # a square crop: two strips unseen
    out = ExplanationAnnotator(OverlayStyle(label=False)).annotate(img, GRID, geom)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, _reference(img, GRID, geom))
    # The strips are the frame at half brightness, not the map's "no relevance" colour.
    strips = np.ones(hw, bool)
    strips[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(out[strips], img[strips] >> 1)


def test_blur_keeps_the_strips_dimmed():
    img = _frame(48, 80, seed=1)
    geom = _crop(img)
    out = ExplanationAnnotator(OverlayStyle(label=False, blur=0.05)).annotate(img, GRID, geom)
    y0, y1, x0, x1 = geom.seen_region(GRID.shape)
    np.testing.assert_array_equal(out[:, :x0], img[:, :x0] >> 1)
    np.testing.assert_array_equal(out[:, x1:], img[:, x1:] >> 1)
    assert not np.array_equal(out, _reference(img, GRID, geom))  # the seen part is blurred


def test_caption_follows_the_style_and_the_hud_is_always_drawn():
    img = _frame(240, 400, seed=2)
    geom = _crop(img)
    heat = geom.to_image(GRID)
    caption, hud = ["dark 0.91", "rollout"], ["fit=crop", "30.0 fps"]
    bare = ExplanationAnnotator(OverlayStyle(label=False)).annotate(img, GRID, geom)
    # label off: the caption is left out, HUD lines are drawn as a caption of their own
    assert np.array_equal(ExplanationAnnotator(OverlayStyle(label=False)).annotate(img, GRID, geom, caption), bare)
    np.testing.assert_array_equal(
        ExplanationAnnotator(OverlayStyle(label=False)).annotate(img, GRID, geom, caption, hud=hud),
        LabelOverlay().annotate(bare, hud, heatmap=heat))
    # label on: the caption, and the HUD under it, in the corner where the map is coldest
    np.testing.assert_array_equal(ExplanationAnnotator().annotate(img, GRID, geom, caption, hud=hud),
                                  LabelOverlay().annotate(bare, caption + hud, heatmap=heat))
    # HUD aside, the picture is the same: only the caption's box differs
    with_hud = ExplanationAnnotator().annotate(img, GRID, geom, caption, hud=hud)
    x, y, w, h = LabelOverlay().box(img.shape[:2], caption + hud, heat)
    outside = np.ones(img.shape[:2], bool)
    outside[y:y + h, x:x + w] = False
    np.testing.assert_array_equal(with_hud[outside], bare[outside])


def test_a_cached_heatmap_gives_the_same_picture_and_a_wrong_size_is_refused():
    img = _frame(48, 80, seed=3)
    geom = _crop(img)
    ann = ExplanationAnnotator(OverlayStyle(colormap="inferno", alpha=0.7))
    np.testing.assert_array_equal(ann.annotate(img, GRID, geom, ["x 0.50"]),
                                  ann.annotate(img, GRID, geom, ["x 0.50"], heatmap=geom.to_image(GRID)))
    with pytest.raises(ImageError, match="80 x 48 image but the frame is 48 x 80"):
        ann.annotate(np.ascontiguousarray(img.transpose(1, 0, 2)), GRID, geom)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)  # converted, as every annotator does
    assert ann.annotate(gray, GRID, geom).shape == (48, 80, 3)
