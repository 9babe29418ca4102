"""Captions: compact, see-through, in the corner where the heatmap is coldest, and safe on any
image size. Placement is checked on the drawn pixels, against corner sums computed here."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from attnmap.runtime.core.errors import ImageError, OptionError
from attnmap.runtime.draw.caption import MIN_TEXT_PX, POSITIONS, LabelOverlay, coldest_corner, near_coldest
from attnmap.runtime.draw.overlay import LabelOverlay as LabelOverlayFromOverlay

# What the live view draws at most (runtime/fronts/live/loop.py's _hud_lines, long values)
HUD = ["crescent 0.93",
       "grad_rollout  start_layer=0  head_fusion=mean  fit=letterbox",
       "29.8 fps  latency 135 ms  dropped 1234",
       "pre 1.2  inf 112.3  exp 10.5  draw 0.3  out 0.1 ms"]
CAPTION = ["Samoyed 0.78", "rollout"]


def _drawn_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive, of the pixels the caption changed."""
    ys, xs = np.nonzero((before != after).any(axis=2))
    assert ys.size, "nothing was drawn"
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _corner_of(box, hw) -> str:
    x0, y0, x1, y1 = box
    h, w = hw
    vert = "top" if y0 == 0 else "bottom" if y1 == h else "?"
    horiz = "left" if x0 == 0 else "right" if x1 == w else "?"
    return f"{vert}-{horiz}"


def _gray(h, w, v=90):
    return np.full((h, w, 3), v, np.uint8)


@pytest.mark.parametrize("cold", POSITIONS)
def test_caption_goes_to_the_one_cold_corner(cold):
    h, w = 256, 340
    heat = np.ones((h, w), np.float32)
    ys = slice(0, h // 2) if cold.startswith("top") else slice(h // 2, h)
    xs = slice(0, w // 2) if cold.endswith("left") else slice(w // 2, w)
    heat[ys, xs] = 0.0
    img = _gray(h, w)
    out = LabelOverlay().annotate(img, HUD, heatmap=heat)
    assert _corner_of(_drawn_box(img, out), (h, w)) == cold
    assert np.array_equal(img, _gray(h, w)) and heat[ys, xs].max() == 0.0 and heat.min() == 0.0  # inputs untouched


def test_caption_avoids_a_hot_blob_and_picks_the_least_heat_under_its_box():
    h, w = 224, 224
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(3)
    for trial in range(20):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        heat = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 40.0 ** 2)).astype(np.float32)
        heat += rng.uniform(0, 0.05, heat.shape).astype(np.float32)
        img = _gray(h, w)
        out = LabelOverlay().annotate(img, CAPTION, heatmap=heat)
        x0, y0, x1, y1 = _drawn_box(img, out)
        bw, bh = x1 - x0, y1 - y0
        # reference: mean heat under a box of the drawn size in each corner, in POSITIONS order
        means = [heat[:bh, :bw].mean(), heat[:bh, w - bw:].mean(), heat[h - bh:, :bw].mean(),
                 heat[h - bh:, w - bw:].mean()]
        chosen = POSITIONS.index(_corner_of((x0, y0, x1, y1), (h, w)))
        # the chosen corner is as cold as the coldest (within the tolerance), earlier ones are not
        low = min(means)
        assert means[chosen] <= low * 1.25 + 0.002, (trial, means, chosen)
        assert all(m > low * 1.25 + 0.002 for m in means[:chosen]), (trial, means, chosen)
        assert means[chosen] < max(means)


def _reference_corner(heat, bw, bh):
    """The rule spelled out on every pixel: the first corner as cold as the coldest, within tolerance."""
    h, w = heat.shape
    means = [heat[:bh, :bw].mean(dtype=np.float64), heat[:bh, w - bw:].mean(dtype=np.float64),
             heat[h - bh:, :bw].mean(dtype=np.float64), heat[h - bh:, w - bw:].mean(dtype=np.float64)]
    return next(p for p, m in zip(POSITIONS, means) if near_coldest(m, min(means)))


def test_the_corner_follows_the_heat_under_any_box_size_whatever_opencv_measures():
    # OpenCV 5.1 measures (and draws) the Hershey font 1 px wider per glyph than 5.0, so the
    # caption's box is a few pixels wider there. The choice must be the rule's for that box,
    # to the pixel: the hot-blob maps of the test above, and every box size between the two
    # versions' widths (57 and 62 px for CAPTION at 224 x 224) and beyond.
    h, w = 224, 224
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(20):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        heat = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 40.0 ** 2)).astype(np.float32)
        heat += rng.uniform(0, 0.05, heat.shape).astype(np.float32)
        for bw in range(50, 71):
            for bh in (22, 26, 30):
                assert coldest_corner(heat, bw, bh, (h, w)) == _reference_corner(heat, bw, bh), (bw, bh)
                checked += 1
    assert checked == 20 * 21 * 3


def test_a_grid_counts_the_cells_a_box_covers_by_the_part_it_covers():
    # A 4 x 4 grid over a 100 x 100 image: a 30 x 30 box covers 1.2 cells each way, so the
    # top-left mean is (1 * 1 + 0.2 * 2 + 0.2 * 2 + 0.04 * 4) / 1.44 with cells 1, 2, 2, 4.
    grid = np.ones((4, 4), np.float32)
    grid[0, 1] = grid[1, 0] = 2.0
    grid[1, 1] = 4.0
    want_top_left = (1 + 0.2 * 2 + 0.2 * 2 + 0.04 * 4) / 1.44  # 1.36: the only corner over 1
    full = cv2.resize(grid, (100, 100), interpolation=cv2.INTER_NEAREST)
    assert full[:30, :30].mean() == pytest.approx(want_top_left, abs=1e-6)
    assert coldest_corner(grid, 30, 30, (100, 100)) == coldest_corner(full, 30, 30, (100, 100)) == "top-right"
    # the top-left box is 1.36 against 1.0: out of tolerance (1.25 + 0.002) only through the part cells
    assert not near_coldest(want_top_left, 1.0)
    assert coldest_corner(grid * 0 + 1, 30, 30, (100, 100)) == "top-left"


def test_a_patch_grid_picks_the_same_corner_as_the_full_size_map():
    grid = np.random.default_rng(0).uniform(0, 1, (14, 14)).astype(np.float32)
    grid[10:, :4] = 0.0  # bottom-left patch block cold
    full = cv2.resize(grid, (340, 256), interpolation=cv2.INTER_NEAREST)
    lab = LabelOverlay()
    _, _, bw, bh = lab.box((256, 340), CAPTION)
    assert coldest_corner(grid, bw, bh, (256, 340)) == coldest_corner(full, bw, bh, (256, 340)) == "bottom-left"


def test_even_or_missing_heat_keeps_the_caption_top_left():
    img = _gray(120, 200)
    plain = LabelOverlay().annotate(img, CAPTION)
    assert _corner_of(_drawn_box(img, plain), (120, 200)) == "top-left"
    # the old call and a flat map draw exactly the same thing
    assert np.array_equal(plain, LabelOverlay().annotate(img, CAPTION, heatmap=np.full((120, 200), 0.3, np.float32)))
    assert np.array_equal(plain, LabelOverlayFromOverlay().annotate(img, CAPTION))


def test_a_fixed_position_ignores_the_heatmap():
    h, w = 120, 200
    heat = np.zeros((h, w), np.float32)
    heat[:60, 100:] = 1.0  # top-right is the hottest corner
    img = _gray(h, w)
    out = LabelOverlay(position="top-right").annotate(img, CAPTION, heatmap=heat)
    assert _corner_of(_drawn_box(img, out), (h, w)) == "top-right"


@pytest.mark.parametrize("hw, lines", [((256, 340), HUD), ((224, 224), CAPTION), ((256, 340), HUD[:2])],
                         ids=["live-hud-340x256", "caption-224", "two-hud-lines-340x256"])
def test_the_caption_box_stays_small(hw, lines):
    img = _gray(*hw)
    out = LabelOverlay().annotate(img, lines)
    x0, y0, x1, y1 = _drawn_box(img, out)
    covered = (x1 - x0) * (y1 - y0) / (hw[0] * hw[1])
    assert covered < 0.15, f"{covered:.1%}"
    assert (x1 - x0, y1 - y0) == LabelOverlay().box(hw, lines)[2:]
    # every line is there: the box is tall enough for len(lines) lines of legible text
    assert (y1 - y0) >= len(lines) * MIN_TEXT_PX


def test_the_box_is_see_through_with_text_on_top():
    img = _gray(120, 200, 90)
    out = LabelOverlay(opacity=0.6).annotate(img, ["x"])
    x0, y0, x1, y1 = _drawn_box(img, out)
    box = out[y0:y1, x0:x1]
    # 0.6 * black + 0.4 * 90 = 36 where no text is (the box's last row has none)
    assert (box[-1] == 36).all()
    assert box.max() > 200  # white text
    solid = LabelOverlay(opacity=1.0).annotate(img, ["x"])
    assert (solid[y1 - 1, x0:x1] == 0).all()
    assert np.array_equal(LabelOverlay(opacity=0.0, background=None).annotate(img, ["x"])[y1 - 1], img[y1 - 1])


def test_text_scales_with_the_image_and_fits_narrow_ones():
    small = LabelOverlay().box((100, 150), CAPTION)
    large = LabelOverlay().box((1000, 1500), CAPTION)
    assert large[3] > 3 * small[3] and large[2] > 3 * small[2]
    # a long line on a narrow image is shrunk to fit (down to the legible floor)
    x0, _, bw, _ = LabelOverlay().box((400, 120), ["a long line of caption text"])
    assert x0 == 0 and bw <= 120
    # more lines than the image has room for: the ones that fit, never a box taller than the image
    _, _, _, bh = LabelOverlay().box((30, 200), [f"line {i}" for i in range(10)])
    assert bh <= 30


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (1, 400), (400, 1), (9, 400), (5, 5), (12, 30), (20, 8)])
def test_tiny_images_do_not_crash(hw):
    img = np.random.default_rng(hw[0] * 7 + hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    keep = img.copy()
    heat = np.random.default_rng(1).uniform(0, 1, hw).astype(np.float32)
    for lab in (LabelOverlay(), LabelOverlay(position="bottom-right"), LabelOverlay(scale=2.0)):
        out = lab.annotate(img, HUD, heatmap=heat)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.array_equal(img, keep)
        placed = lab.box(hw, HUD, heat)
        if placed is None:  # no room for one line: the image comes back as it was
            assert np.array_equal(out, img)
        else:
            x0, y0, bw, bh = placed
            assert 0 <= x0 and 0 <= y0 and x0 + bw <= hw[1] and y0 + bh <= hw[0]
    assert LabelOverlay().box((1, 1), HUD) is None and LabelOverlay().box((1, 400), HUD) is None


def test_validation():
    with pytest.raises(OptionError, match="Did you mean 'auto'"):
        LabelOverlay(position="atuo")
    with pytest.raises(OptionError, match=r"opacity must be in \[0, 1\]"):
        LabelOverlay(opacity=1.5)
    img = _gray(40, 60)
    with pytest.raises(ImageError, match="must be finite"):
        LabelOverlay().annotate(img, CAPTION, heatmap=np.full((40, 60), np.nan, np.float32))
    with pytest.raises(ImageError, match="float array"):
        LabelOverlay().annotate(img, CAPTION, heatmap=np.zeros((40, 60), np.uint8))
    assert np.array_equal(LabelOverlay().annotate(img, []), img)


@pytest.mark.export
@pytest.mark.slow
def test_on_the_samoyed_the_caption_leaves_the_hot_head_alone(deit_tiny_onnx, shared_data):
    # DeiT-Tiny's rollout on the classic Samoyed at 340 x 256 is hottest on the head, near the
    # top-left corner, where the caption used to go.
    from attnmap import Explainer

    photo = cv2.imread(str(shared_data / "images" / "pytorchhub_dog.jpg"))
    photo = cv2.resize(photo, (340, 256), interpolation=cv2.INTER_AREA)
    result = Explainer(deit_tiny_onnx, provider="cpu").explain(photo)
    assert result.topk[0].label.startswith("Samoyed")
    heat = result.heatmap
    bare, labelled = result.overlay(label=False), result.overlay()
    x0, y0, x1, y1 = _drawn_box(bare, labelled)
    bw, bh = x1 - x0, y1 - y0
    h, w = heat.shape
    boxes = [(slice(0, bh), slice(0, bw)), (slice(0, bh), slice(w - bw, w)), (slice(h - bh, h), slice(0, bw)),
             (slice(h - bh, h), slice(w - bw, w))]
    means = [float(heat[b].mean()) for b in boxes]
    peaks = [float(heat[b].max()) for b in boxes]
    chosen = POSITIONS.index(_corner_of((x0, y0, x1, y1), (h, w)))
    assert near_coldest(means[chosen], min(means))
    assert chosen != 0 and peaks[0] > 0.5 > peaks[chosen]  # the top-left box would clip the head
    hy, hx = np.unravel_index(np.argmax(heat), heat.shape)
    assert not (x0 <= hx < x1 and y0 <= hy < y1)
