"""Images of every size from 1 x 1 up and every aspect ratio, in every fit mode, through the
shipped model: the heatmap and the overlay have the image's shape, and the heatmap equals a
reference computed without Geometry where one exists.

References: ``squash`` resizes the whole image to the input, so drawing the grid back is a plain
``cv2.resize(grid, (W0, H0), INTER_LINEAR)`` (grid cell centres and pixel centres line up the
same way). A 1 x 1 image fills the whole input in every fit, so its one pixel sits at the input's
centre, between the four central grid cells: its heat is their mean. A 1 x N letterbox is one
input row, placed at row (96 - 1) // 2 = 47 (timm's CenterCropOrPad pads the top by the floor).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from attnmap.runtime.core.errors import ImageError
from attnmap.runtime.draw.overlay import HeatmapOverlay, colorize
from attnmap.runtime.image.decode import check_image
from attnmap.runtime.image.preprocess import FITS, preprocess

MODEL = Path(__file__).resolve().parents[3] / "models" / "shapes_vit.onnx"
SIZES = [(1, 1), (1, 2), (2, 1), (2, 3), (3, 5), (7, 7), (1, 4000), (4000, 1), (13, 1000), (95, 97)]


@pytest.fixture(scope="module")
def ex():
    from attnmap import Explainer
    return Explainer(MODEL, provider="cpu")


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# Cropping a 1 x 4000 (or 4000 x 1) strip with an area filter peaks at 12 GB today:
def _sizes_and_fits():
    return [pytest.param(hw, fit, id=f"{hw[0]}x{hw[1]}-{fit}") for hw in SIZES for fit in FITS]


@pytest.mark.parametrize("hw, fit", _sizes_and_fits())
def test_explain_and_overlay_keep_the_image_shape(ex, hw, fit):
    img = noise(*hw, seed=hw[0] * 31 + hw[1])
    result = ex.explain(img, fit=fit)
    (gh, gw) = ex.meta.grid_size
    assert result.grid.shape == (gh, gw) and np.isfinite(result.grid).all()
    assert result.heatmap.shape == hw and result.heatmap.dtype == np.float32
    assert result.overlay().shape == img.shape
    for mode in ("blend", "mask"):
        for blur in (0.0, 0.2):
            out = result.overlay(label=False, mode=mode, blur=blur)
            assert out.shape == img.shape and out.dtype == np.uint8


@pytest.mark.parametrize("hw", SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_squash_heatmap_is_a_plain_resize_of_the_grid(ex, hw):
    result = ex.explain(noise(*hw), fit="squash")
    ref = cv2.resize(result.grid.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    assert np.abs(result.heatmap - ref).max() < 1e-5


@pytest.mark.parametrize("fit", FITS)
def test_one_pixel_image_reads_the_four_central_cells(ex, fit):
    result = ex.explain(np.full((1, 1, 3), 200, np.uint8), fit=fit)
    gh, gw = result.grid.shape
    centre = result.grid[gh // 2 - 1:gh // 2 + 1, gw // 2 - 1:gw // 2 + 1].mean()
    assert result.heatmap[0, 0] == pytest.approx(centre, abs=1e-6)
    # and the model saw one flat colour: the input is that colour everywhere
    x, _ = preprocess(np.full((1, 1, 3), 200, np.uint8), ex.meta, fit=fit)
    assert np.ptp(x) == 0


def test_one_row_letterbox_is_input_row_47(ex):
    result = ex.explain(noise(1, 4000), fit="letterbox")
    grid = result.grid.astype(np.float32)
    t = (47 + 0.5) / 8 - 0.5  # grid row coordinate of input row 47: between rows 5 and 6
    r = int(np.floor(t))
    rows = [cv2.resize(grid[k:k + 1], (4000, 1), interpolation=cv2.INTER_LINEAR)[0] for k in (r, r + 1)]
    ref = (1 - (t - r)) * rows[0] + (t - r) * rows[1]
    assert np.abs(result.heatmap[0] - ref).max() < 1e-5


@pytest.mark.parametrize("hw", [(1, 4000), (4000, 1), (1, 2), (3, 5)],
                         ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_crop_of_a_sliver_sees_only_its_middle(ex, hw):
    """Centre crop of a 1 x 4000 sliver: the shorter side goes to 96, so the 96-pixel window
    covers original columns [1999.5, 2000.5) in edge coordinates: pixels 1999 and 2000."""
    result = ex.explain(noise(*hw), fit="crop")
    h, w = hw
    n, short = max(h, w), min(h, w)
    # the square window is `short` original pixels long on the long axis, centred
    lo, hi = (n - short) / 2, (n + short) / 2
    seen = [i for i in range(n) if lo <= i + 0.5 <= hi]
    region = result.geometry.seen_region(result.grid.shape)
    along = (region[0], region[1]) if h > w else (region[2], region[3])
    assert list(range(*along)) == seen
    heat = result.heatmap if h <= w else result.heatmap.T
    outside = np.ones(n, bool)
    outside[seen] = False
    assert (heat[:, outside] == 0).all()


def test_uniform_grid_gives_uniform_heat_where_seen():
    from attnmap.runtime.model.session import OnnxModel
    meta = OnnxModel(MODEL, provider="cpu").meta
    for hw in SIZES:
        for fit in FITS:
            _, (geom,) = preprocess(noise(*hw), meta, fit=fit)
            heat = geom.to_image(np.full(meta.grid_size, 0.375, np.float32))
            y0, y1, x0, x1 = geom.seen_region(meta.grid_size)
            assert heat.shape == hw and y1 > y0 and x1 > x0, (hw, fit)
            assert np.allclose(heat[y0:y1, x0:x1], 0.375, atol=1e-6)
            assert heat.sum() == pytest.approx(0.375 * (y1 - y0) * (x1 - x0), rel=1e-5)


# ----------------------------------------------------------------------------- drawing one pixel
@pytest.mark.parametrize("mode", ["blend", "mask"])
@pytest.mark.parametrize("blur", [0.0, 0.3])
@pytest.mark.parametrize("heat_value", [-0.2, 0.0, 0.37, 1.0, 1.4])
def test_one_pixel_overlay_equals_any_pixel_of_a_flat_image(mode, blur, heat_value):
    """Drawing is per pixel (and blurring a flat map keeps it flat), so a 1 x 1 image must come
    out as every pixel of an 8 x 8 image of the same colour and heat."""
    overlay = HeatmapOverlay(colormap="inferno", alpha=0.6, blur=blur, mode=mode)
    px = np.array([[[30, 140, 250]]], np.uint8)
    one = overlay.annotate(px, np.full((1, 1), heat_value, np.float32))
    flat = overlay.annotate(np.tile(px, (8, 8, 1)), np.full((8, 8), heat_value, np.float32))
    assert one.shape == (1, 1, 3) and (flat == flat[0, 0]).all()
    assert np.array_equal(one[0, 0], flat[0, 0])


@pytest.mark.parametrize("hw", [(1, 1), (1, 5), (5, 1)])
def test_colorize_tiny_maps(hw):
    heat = np.linspace(0, 1, hw[0] * hw[1], dtype=np.float32).reshape(hw)
    out = colorize(heat, "jet")
    ref = cv2.applyColorMap(np.rint(heat * 255).astype(np.uint8).reshape(-1, 1).repeat(2, axis=1), cv2.COLORMAP_JET)
    assert out.shape == (*hw, 3) and np.array_equal(out.reshape(-1, 3), ref[:, 0])


def test_one_pixel_explanation_overlay_matches_a_flat_image(ex):
    img = np.full((1, 1, 3), 90, np.uint8)
    result = ex.explain(img, fit="squash")
    out = result.overlay(label=False)
    flat = HeatmapOverlay().annotate(np.full((8, 8, 3), 90, np.uint8), np.full((8, 8), result.heatmap[0, 0]))
    assert np.array_equal(out[0, 0], flat[0, 0])


# ----------------------------------------------------------------------------- arrays in
def test_check_image_tiny_forms():
    gray = np.array([[77]], np.uint8)
    for form in (gray, gray[..., None], np.dstack([gray] * 3), np.dstack([gray] * 3 + [np.zeros_like(gray)])):
        out = check_image(form)
        assert out.shape == (1, 1, 3) and (out == 77).all()


@pytest.mark.parametrize("bad", [None, "x", 3, [[1, 2]], np.zeros((1, 0, 3), np.uint8)])
def test_bad_arrays_raise_image_error(ex, bad):
    with pytest.raises(ImageError, match=r"must be a BGR uint8|is empty"):
        check_image(bad)
    if bad is None:
        with pytest.raises(ImageError, match="got NoneType"):
            ex.explain(None)
        with pytest.raises(ImageError, match=r"images\[1\] must be a BGR uint8 numpy array .*got NoneType"):
            ex.explain([noise(4, 4), None])
