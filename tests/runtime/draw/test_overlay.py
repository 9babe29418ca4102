"""Overlays: colours, blending, masking, blur, labels, tiled grids, validation, and a golden."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from attnmap.runtime.core.errors import ImageError, OptionError
from attnmap.runtime.draw.overlay import (COLORMAPS, HeatmapOverlay, LabelOverlay, colorize, colormap_id,
                             layer_head_grid)

GOLDEN = Path(__file__).resolve().parents[2] / "golden"


def photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- colormaps
def test_colormaps_cover_every_opencv_colormap():
    names = {n for n in dir(cv2) if n.startswith("COLORMAP_")}
    assert set(COLORMAPS) == {n[len("COLORMAP_"):].lower() for n in names}
    assert {"jet", "inferno", "viridis", "turbo", "magma"} <= set(COLORMAPS)
    assert COLORMAPS["jet"] == cv2.COLORMAP_JET


def test_colorize_gives_opencv_colours_for_every_map_and_level():
    """colorize looks colours up in a cached table; they must be applyColorMap's, bit for bit."""
    levels = np.arange(256, dtype=np.float32).reshape(16, 16) / 255
    for name, cmap in COLORMAPS.items():
        ref = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(16, 16), cmap)
        assert np.array_equal(colorize(levels, name), ref), name


def test_colormap_id_resolves_names_and_ids():
    assert colormap_id("jet") == cv2.COLORMAP_JET
    assert colormap_id("Inferno") == cv2.COLORMAP_INFERNO
    assert colormap_id(cv2.COLORMAP_TURBO) == cv2.COLORMAP_TURBO
    assert colormap_id(np.int64(cv2.COLORMAP_VIRIDIS)) == cv2.COLORMAP_VIRIDIS
    with pytest.raises(OptionError, match=r"unknown colormap 'jett'\. Did you mean 'jet'\?"):
        colormap_id("jett")
    with pytest.raises(OptionError, match="Choose one of: .*jet"):
        colormap_id("zzzzzz")
    with pytest.raises(OptionError, match="unknown colormap id 999"):
        colormap_id(999)
    with pytest.raises(OptionError):
        colormap_id(True)


def test_jet_is_blue_at_zero_and_red_at_one():
    out = colorize(np.array([[0.0, 1.0]], np.float32), "jet")
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    blue, red = out[0, 0].astype(int), out[0, 1].astype(int)
    assert blue[0] > 100 and blue[0] > 2 * max(blue[1], blue[2])  # BGR: channel 0 dominant
    assert red[2] > 100 and red[2] > 2 * max(red[0], red[1])  # channel 2 dominant
    # same as OpenCV's own lookup of 0 and 255
    ref = cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_JET)
    assert np.array_equal(out, ref)


def test_colorize_clips_and_validates():
    heat = np.array([[-0.5, 0.5, 1.5]], np.float32)
    out = colorize(heat, "viridis")
    ref = cv2.applyColorMap(np.array([[0, 128, 255]], np.uint8), cv2.COLORMAP_VIRIDIS)
    assert np.array_equal(out, ref)
    with pytest.raises(ImageError, match=r"heatmap must be a float array \(H, W\).*got uint8"):
        colorize(np.zeros((3, 3), np.uint8))
    with pytest.raises(ImageError, match="finite"):
        colorize(np.array([[np.nan]], np.float32))
    with pytest.raises(ImageError, match=r"got float64 \(2, 3, 3\)"):
        colorize(np.zeros((2, 3, 3)))


# ----------------------------------------------------------------------------- HeatmapOverlay
def test_blend_extremes_and_no_mutation():
    img = photo()
    heat = np.random.default_rng(1).random(img.shape[:2]).astype(np.float32)
    img0, heat0 = img.copy(), heat.copy()
    assert np.array_equal(HeatmapOverlay(alpha=0.0).annotate(img, heat), img)
    full = HeatmapOverlay(colormap="inferno", alpha=1.0).annotate(img, heat)
    assert np.array_equal(full, colorize(heat, "inferno"))
    half = HeatmapOverlay(alpha=0.5).annotate(img, heat)
    expect = 0.5 * img.astype(float) + 0.5 * colorize(heat).astype(float)
    assert np.abs(half.astype(float) - expect).max() <= 1
    out = HeatmapOverlay(alpha=0.5).annotate(img, heat)
    assert out is not img and out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(img, img0) and np.array_equal(heat, heat0)


def test_hot_pixel_is_red_over_a_grey_image():
    img = np.full((10, 10, 3), 128, np.uint8)
    heat = np.zeros((10, 10), np.float32)
    heat[3, 4] = 1.0
    out = HeatmapOverlay(colormap="jet", alpha=0.7).annotate(img, heat)
    b, g, r = out[3, 4].astype(int)
    assert r > b + 60 and r > g + 60
    b, g, r = out[0, 0].astype(int)
    assert b > r + 60  # cold is blue


def test_mask_mode():
    img = photo()
    ones = np.ones(img.shape[:2], np.float32)
    zeros = np.zeros(img.shape[:2], np.float32)
    mask = HeatmapOverlay(mode="mask", alpha=1.0)
    assert np.array_equal(mask.annotate(img, ones), img)
    assert not mask.annotate(img, zeros).any()
    half = mask.annotate(img, np.full(img.shape[:2], 0.5, np.float32))
    assert np.abs(half.astype(int) - img.astype(int) // 2).max() <= 1
    # alpha is the strength: 0.5 keeps half of the image where the map is 0
    soft = HeatmapOverlay(mode="mask", alpha=0.5).annotate(img, zeros)
    assert np.abs(soft.astype(int) - img.astype(int) // 2).max() <= 1


def test_blur_spreads_a_one_hot_map_and_keeps_its_peak():
    img = np.full((40, 60, 3), 100, np.uint8)
    heat = np.zeros((40, 60), np.float32)
    heat[20, 30] = 1.0
    sharp = HeatmapOverlay(alpha=1.0).annotate(img, heat)
    soft = HeatmapOverlay(alpha=1.0, blur=0.1).annotate(img, heat)  # sigma 4 px
    cold = colorize(np.zeros((1, 1), np.float32))[0, 0]
    changed_sharp = (sharp != cold).any(axis=2).sum()
    changed_soft = (soft != cold).any(axis=2).sum()
    assert changed_sharp == 1 and changed_soft > 50
    assert np.array_equal(soft[20, 30], sharp[20, 30])  # the peak is rescaled back to 1
    # symmetric spread around the hot pixel
    assert np.array_equal(soft[20, 25], soft[20, 35]) and np.array_equal(soft[15, 30], soft[25, 30])


def test_wide_blur_matches_a_direct_gaussian():
    """Wide kernels are applied on a shrunk copy; the result must still look like the real thing."""
    img = np.zeros((300, 400, 3), np.uint8)
    heat = np.zeros((300, 400), np.float32)
    heat[100:140, 150:230] = 1.0
    sigma = 0.08 * 300  # 24 px
    direct = cv2.GaussianBlur(heat, (0, 0), sigma)
    direct *= 1.0 / direct.max()
    out = HeatmapOverlay(alpha=1.0, blur=0.08).annotate(img, heat)
    ref = colorize(direct)
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 1.0
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 24


def test_heatmap_overlay_validation():
    with pytest.raises(OptionError, match=r"alpha must be in \[0, 1\]; got 1.5"):
        HeatmapOverlay(alpha=1.5)
    with pytest.raises(OptionError, match="blur"):
        HeatmapOverlay(blur=-1)
    with pytest.raises(OptionError, match="Did you mean 'mask'"):
        HeatmapOverlay(mode="mask_")
    with pytest.raises(OptionError, match="Did you mean 'jet'"):
        HeatmapOverlay(colormap="jte")
    overlay = HeatmapOverlay()
    img = photo()
    with pytest.raises(ImageError, match=r"heatmap shape \(14, 14\) must match the image's \(H, W\) \(48, 64\)"):
        overlay.annotate(img, np.zeros((14, 14), np.float32))
    with pytest.raises(ImageError, match=r"image_bgr must be a BGR uint8 array"):
        overlay.annotate(img.astype(np.float32), np.zeros((48, 64), np.float32))
    # gray images are accepted and come back as BGR
    out = overlay.annotate(img[..., 0], np.zeros((48, 64), np.float32))
    assert out.shape == (48, 64, 3)


def test_overlay_golden_png():
    """Compares with tests/golden/overlay_jet_32x24.png (24 x 32, jet, alpha 0.6).

    Regenerate after an intended drawing change with ``python tests/golden/make_goldens.py``.
    """
    spec = importlib.util.spec_from_file_location("make_goldens", GOLDEN / "make_goldens.py")
    goldens = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(goldens)
    golden = cv2.imread(str(goldens.OVERLAY_PNG), cv2.IMREAD_COLOR)
    assert golden is not None and golden.shape == (24, 32, 3)
    out = goldens.render_overlay()
    assert np.abs(out.astype(int) - golden.astype(int)).max() <= 3
    # the golden itself is sane: hottest where the blob is, and red there
    image, heat, _ = goldens.overlay_case()
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert golden[y, x, 2] > golden[y, x, 0]


# ----------------------------------------------------------------------------- LabelOverlay
@pytest.mark.parametrize("position", ["top-left", "top-right", "bottom-left", "bottom-right"])
def test_label_lands_in_its_corner(position):
    img = np.full((120, 200, 3), 90, np.uint8)
    out = LabelOverlay(position=position).annotate(img, ["Samoyed 0.78", "rollout"])
    assert np.array_equal(img, np.full((120, 200, 3), 90, np.uint8))
    changed = np.argwhere((out != img).any(axis=2))
    assert len(changed) > 100
    top = position.startswith("top")
    left = position.endswith("left")
    assert (changed[:, 0].min() == 0) if top else (changed[:, 0].max() == 119)
    assert (changed[:, 1].min() == 0) if left else (changed[:, 1].max() == 199)
    # the box stays in its half of the image
    assert (changed[:, 0].max() < 60) if top else (changed[:, 0].min() >= 60)
    # white text on a see-through black box (60% opaque over the grey 90: 0.4 * 90 = 36)
    assert (out > 200).all(axis=2).sum() > 20 and (out == 36).all(axis=2).sum() > 100


def test_label_scales_with_the_image():
    small = LabelOverlay().annotate(np.zeros((100, 150, 3), np.uint8), ["zebra 0.87"])
    large = LabelOverlay().annotate(np.zeros((1000, 1500, 3), np.uint8), ["zebra 0.87"])
    h_small = np.flatnonzero(small.any(axis=(1, 2))).max()
    h_large = np.flatnonzero(large.any(axis=(1, 2))).max()
    assert h_large > 3 * h_small  # text height 3.2% of the shorter side, at least 8 px
    fixed = LabelOverlay(scale=0.5, color=(0, 255, 0), background=None).annotate(
        np.zeros((1000, 1500, 3), np.uint8), "one line")
    assert np.flatnonzero(fixed.any(axis=(1, 2))).max() < 40
    assert fixed[..., 1].max() > 200 and fixed[..., 2].max() == 0


def test_label_edge_cases_and_validation():
    img = photo(30, 40)
    assert np.array_equal(LabelOverlay().annotate(img, []), img)
    out = LabelOverlay().annotate(img, ["naïve café"])  # non-ASCII drawn as '?'
    assert out.shape == img.shape
    with pytest.raises(OptionError, match="Did you mean 'top-left'"):
        LabelOverlay(position="top_left")
    with pytest.raises(OptionError, match="scale must be positive"):
        LabelOverlay(scale=0)
    with pytest.raises(OptionError, match="color must be a BGR triple"):
        LabelOverlay(color=(0, 0, 300))
    with pytest.raises(OptionError, match="background must be a BGR triple"):
        LabelOverlay(background="black")


# ----------------------------------------------------------------------------- layer_head_grid
def test_grid_of_grids_layout_and_content():
    img = photo(60, 80)
    grids = np.zeros((5, 4, 4), np.float32)
    for k in range(5):
        grids[k, k % 4, k % 4] = 1.0
    out = layer_head_grid(img, grids, tile_width=40)
    th = round(60 * 40 / 80)  # 30
    assert out.shape == (2 * th + 2, 3 * 40 + 2 * 2, 3) and out.dtype == np.uint8
    # tile k is the overlay of the resized image and map, exactly
    tile_img = cv2.resize(img, (40, th), interpolation=cv2.INTER_AREA)
    for k in range(5):
        r, c = divmod(k, 3)
        tile = out[r * (th + 2):r * (th + 2) + th, c * 42:c * 42 + 40]
        heat = cv2.resize(grids[k], (40, th), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(tile, HeatmapOverlay().annotate(tile_img, heat))
    # the unused sixth slot and the gaps are dark grey
    assert (out[th + 2:, 2 * 42:] == 32).all()
    assert (out[th:th + 2] == 32).all()


def test_grid_of_image_size_maps_with_titles():
    img = photo(50, 100)
    maps = np.random.default_rng(3).random((3, 50, 100)).astype(np.float32)
    overlay = HeatmapOverlay(colormap="turbo", alpha=0.8)
    out = layer_head_grid(img, maps, titles=["layer 0", "layer 1", "layer 2"], cols=1, overlay=overlay,
                          tile_width=100)
    assert out.shape == (3 * 50 + 2 * 2, 100, 3)
    # tiles at the image's own size are the plain overlay, titled in the top-left corner
    plain = overlay.annotate(img, maps[1])
    tile = out[52:102]
    assert not np.array_equal(tile, plain)
    assert np.array_equal(tile[30:], plain[30:])  # below the title box nothing differs


def test_grid_validation():
    img = photo()
    with pytest.raises(ImageError, match=r"maps must be a float array \(K, H, W\)"):
        layer_head_grid(img, np.zeros((14, 14), np.float32))
    with pytest.raises(ImageError, match=r"maps must be"):
        layer_head_grid(img, np.zeros((0, 4, 4), np.float32))
    with pytest.raises(OptionError, match=r"titles must have one entry per map \(2\); got 1"):
        layer_head_grid(img, np.zeros((2, 4, 4), np.float32), titles=["a"])
    with pytest.raises(OptionError, match="cols must be >= 1"):
        layer_head_grid(img, np.zeros((2, 4, 4), np.float32), cols=0)
    with pytest.raises(ImageError, match="finite"):
        layer_head_grid(img, np.full((2, 4, 4), np.inf, np.float32))
