"""Preprocessing: timm parity, exact geometry, image reading and validation.

The geometry tests do not trust :class:`Geometry` to check itself: positions are read back
from the pixels (a bright dot found in the model input, ramps whose values encode the
original coordinate), then compared with what the Geometry claims.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from extras import need

from attnmap.runtime.core.errors import ImageError, MetadataError, OptionError
from attnmap.runtime.core.meta import ModelMeta
from attnmap.runtime.image.preprocess import FITS, Geometry, check_image, preprocess, preprocess_one, read_image

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
IMAGES = sorted((DATA / "images").glob("*")) if (DATA / "images").is_dir() else []
WEIGHTS = DATA / "weights" / "deit_tiny_patch16_224_in1k.safetensors"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# two grey levels after normalising: Pillow's fixed-point weights round a few pixels differently
GREY2 = 2 / 255 / min(STD) + 1e-6


def make_meta(size=(224, 224), patch=(16, 16), **kw) -> ModelMeta:
    fields = dict(model_name="deit_tiny_patch16_224", input_size=(3, *size), mean=MEAN, std=STD,
                  interpolation="bicubic", crop_pct=0.9, crop_mode="center", patch_size=patch,
                  grid_size=(size[0] // patch[0], size[1] // patch[1]), prefix_tokens=("class",),
                  pooling="token", num_layers=2, num_heads=2, head_fusion="none", num_classes=10)
    fields.update(kw)
    return ModelMeta(**fields)


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def unnormalise(x_chw: np.ndarray) -> np.ndarray:
    """(3, H, W) normalised RGB -> (H, W, 3) float RGB in [0, 255]."""
    return (x_chw.transpose(1, 2, 0) * np.array(STD) + np.array(MEAN)) * 255


# ----------------------------------------------------------------------------- timm parity
def _timm_reference(img_bgr: np.ndarray, meta: ModelMeta) -> np.ndarray:
    from PIL import Image
    from timm.data import create_transform
    tf = create_transform(input_size=meta.input_size, interpolation=meta.interpolation, mean=meta.mean,
                          std=meta.std, crop_pct=meta.crop_pct, crop_mode=meta.crop_mode)
    return tf(Image.fromarray(np.ascontiguousarray(img_bgr[:, :, ::-1]))).numpy()


PARITY_CASES = [
    dict(),
    dict(crop_mode="squash"),
    dict(crop_mode="border"),
    dict(crop_pct=1.0),
    dict(crop_pct=0.875, interpolation="bilinear"),
    dict(interpolation="lanczos"),
    dict(interpolation="nearest"),
    dict(size=(48, 64), patch=(8, 8), crop_pct=0.95),
    dict(size=(64, 48), patch=(8, 8), crop_mode="border", crop_pct=1.0),
    dict(size=(64, 48), patch=(8, 8), crop_mode="squash", interpolation="bilinear"),
]


@pytest.mark.export
@pytest.mark.parametrize("case", PARITY_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "deit")
@pytest.mark.parametrize("hw", [(256, 340), (177, 284), (300, 120), (224, 224), (31, 45), (500, 410)])
def test_crop_matches_timm_eval_transform_on_noise(case, hw):
    """Noise is the hardest input for a resampler: every filter tap shows."""
    need("timm", "export")
    meta = make_meta(**case)
    img = noise(*hw, seed=hw[0] * 7 + hw[1])
    x, (geom,) = preprocess(img, meta, fit="crop")
    ref = _timm_reference(img, meta)
    diff = np.abs(x[0] - ref)
    assert diff.max() <= GREY2, f"max diff {diff.max()}"
    assert diff.mean() < 2e-3
    assert geom.fit == "crop" and geom.image_size == hw and geom.input_size == meta.image_size


@pytest.mark.export
@pytest.mark.skipif(not IMAGES, reason=f"shared photos in {DATA / 'images'} are absent")
def test_real_photos_match_timm_and_keep_deit_top5():
    """Real photos through the real DeiT-Tiny: same tensor (within 2 grey levels), same top-5."""
    torch = need("torch", "export")
    timm = need("timm", "export")
    if not WEIGHTS.is_file():
        pytest.skip(f"DeiT-Tiny weights {WEIGHTS} are absent")
    model = timm.create_model("deit_tiny_patch16_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(WEIGHTS))).eval()
    meta = make_meta()
    refs, imgs = [], []
    for path in IMAGES:
        img = read_image(path)
        imgs.append(img)
        refs.append(_timm_reference(img, meta))
    x, geoms = preprocess(imgs, meta)
    ref = np.stack(refs)
    assert np.abs(x - ref).max() <= GREY2
    assert np.abs(x - ref).mean() < 1e-4
    assert [g.image_size for g in geoms] == [im.shape[:2] for im in imgs]
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).softmax(-1)
        theirs = model(torch.from_numpy(ref)).softmax(-1)
    assert ours.topk(5).indices.tolist() == theirs.topk(5).indices.tolist()
    assert (ours - theirs).abs().max().item() < 2e-3


@pytest.mark.export
def test_squash_and_letterbox_match_torchvision_resize():
    need("timm", "export")
    from PIL import Image
    from torchvision.transforms import functional as F
    meta = make_meta(size=(64, 48), patch=(8, 8))
    img = noise(90, 200, seed=3)
    pil = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1]))
    x, _ = preprocess(img, meta, fit="squash")
    ref = F.normalize(F.to_tensor(F.resize(pil, [64, 48], F.InterpolationMode.BICUBIC)), MEAN, STD).numpy()
    assert np.abs(x[0] - ref).max() <= GREY2
    # letterbox: 200 wide -> 48, 90 high -> round(90 * 48 / 200) = 22 rows, 21 padded above
    x, (geom,) = preprocess(img, meta, fit="letterbox")
    ref = F.normalize(F.to_tensor(F.resize(pil, [22, 48], F.InterpolationMode.BICUBIC)), MEAN, STD).numpy()
    assert np.abs(x[0, :, 21:43] - ref).max() <= GREY2
    assert np.all(x[0, :, :21] == 0) and np.all(x[0, :, 43:] == 0)
    assert geom.scale == pytest.approx((22 / 90, 48 / 200))


# ----------------------------------------------------------------------------- exact geometry
GEOMETRY_SIZES = [(256, 340), (340, 256), (100, 400), (400, 90), (57, 61), (224, 224), (600, 130)]
GEOMETRY_METAS = {"deit": dict(), "nonsquare": dict(size=(48, 64), patch=(8, 8), crop_pct=0.875),
                  "border": dict(crop_mode="border")}


def _dot_centroid(x_chw: np.ndarray) -> tuple[float, float]:
    """Sub-pixel (x, y) centroid of the bright blob in a model input."""
    v = unnormalise(x_chw).mean(axis=2)
    v = np.clip(v - 0.6 * v.max(), 0, None)  # above the letterbox padding (mean grey)
    ys, xs = np.indices(v.shape)
    return float((v * xs).sum() / v.sum()), float((v * ys).sum() / v.sum())


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("hw", GEOMETRY_SIZES)
@pytest.mark.parametrize("meta_kind", list(GEOMETRY_METAS))
def test_bright_square_lands_where_geometry_says_and_maps_back(fit, hw, meta_kind):
    meta = make_meta(**GEOMETRY_METAS[meta_kind])
    h0, w0 = hw
    (ph, pw), (h, w) = meta.patch_size, meta.image_size
    rng = np.random.default_rng(h0 * 1000 + w0)
    # a rectangle about 3 model-input pixels on each side (rough scale, from the fit's definition)
    fy, fx = h / h0, w / w0
    if fit == "crop":
        fy = fx = (min if meta.crop_mode == "border" else max)(fy, fx) / meta.crop_pct
    elif fit == "letterbox":
        fy = fx = min(fy, fx)
    sy, sx = max(3, round(3 / fy)), max(3, round(3 / fx))
    placed = 0
    for _ in range(40):
        cy, cx = int(rng.uniform(0, h0 - sy)), int(rng.uniform(0, w0 - sx))
        img = np.full((h0, w0, 3), 20, np.uint8)
        img[cy:cy + sy, cx:cx + sx] = 250
        x, (geom,) = preprocess(img, meta, fit=fit)
        # keep placements the crop shows whole: the bright blob stays clear of the input's border
        bright = np.argwhere(unnormalise(x[0]).mean(axis=2) > 170)  # dot 250; letterbox pad ~115
        if len(bright) == 0 or bright.min() < 2 or (bright.max(axis=0) > np.array([h, w]) - 3).any():
            continue
        placed += 1
        centre = np.array([cx + (sx - 1) / 2, cy + (sy - 1) / 2])
        # where the pixels say the square went, against where the geometry says it went
        found = np.array(_dot_centroid(x[0]))
        assert np.abs(geom.image_to_input_points(centre) - found).max() < 0.5
        # one-hot grid at the patch the square landed in, drawn back onto the image
        grid = np.zeros(meta.grid_size, np.float32)
        # input coordinate u lies on pixel round(u): pixel centres are at integers
        r, c = int((found[1] + 0.5) // ph), int((found[0] + 0.5) // pw)
        grid[r, c] = 1
        near = geom.to_image(grid, interpolation="nearest")
        lin = geom.to_image(grid)
        assert near.shape == lin.shape == (h0, w0) and lin.dtype == np.float32
        square = (slice(cy, cy + sy), slice(cx, cx + sx))
        assert (lin[square] > 0).all()
        assert lin[int(round(centre[1])), int(round(centre[0]))] >= 0.25 - 1e-3
        # peak of the tent: within half a patch (in original pixels) of the square's centre. Edge
        # cells replicate to the border and a letterboxed cell's centre may lie in the padding,
        # so the peak can be a plateau or sit on the image border: take its nearest pixel.
        peak_yx = np.argwhere(lin >= lin.max() - 1e-6)
        half = 0.5 * np.array([ph / geom.scale[0], pw / geom.scale[1]])
        gap = np.abs(peak_yx - centre[::-1])
        on_border = (peak_yx == 0) | (peak_yx == np.array([h0, w0]) - 1)
        assert ((gap <= half + 1) | on_border).all(axis=1).any()
        # the nearest-neighbour support is exactly the original pixels that map into the patch
        in_xy = geom.image_to_input_points(np.stack(np.meshgrid(np.arange(w0), np.arange(h0)), -1))
        inside = ((np.floor((in_xy[..., 0] + 0.5) / pw) == c) & (np.floor((in_xy[..., 1] + 0.5) / ph) == r))
        edge = (np.abs((in_xy[..., 0] + 0.5) / pw - np.round((in_xy[..., 0] + 0.5) / pw)) < 0.01) | \
               (np.abs((in_xy[..., 1] + 0.5) / ph - np.round((in_xy[..., 1] + 0.5) / ph)) < 0.01)
        assert np.array_equal((near > 0.5)[~edge], inside[~edge])
        if placed == 3:
            break
    assert placed == 3


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("hw", [(200, 250), (250, 200), (120, 256), (256, 70), (224, 224)])
def test_ramps_read_back_the_original_coordinates(fit, hw):
    """An image whose blue channel is its column index and green its row index: every model
    input pixel then holds the original coordinate it came from (resampling keeps ramps)."""
    meta = make_meta()
    h0, w0 = hw
    img = np.zeros((h0, w0, 3), np.uint8)
    img[..., 0] = np.arange(w0)[None, :]
    img[..., 1] = np.arange(h0)[:, None]
    x, (geom,) = preprocess(img, meta, fit=fit)
    rgb = unnormalise(x[0])
    h, w = meta.image_size
    us, vs = np.meshgrid(np.arange(w), np.arange(h))
    claimed = geom.input_to_image_points(np.stack([us, vs], -1))
    # the filter is truncated within a few pixels of the image border, and padding is not image
    ok = ((claimed[..., 0] > 3) & (claimed[..., 0] < w0 - 4) & (claimed[..., 1] > 3) & (claimed[..., 1] < h0 - 4))
    assert ok.mean() > 0.15  # a 256 x 70 letterbox fills a quarter of the input
    assert np.abs(rgb[..., 2][ok] - claimed[..., 0][ok]).max() <= 0.5 + 1e-3
    assert np.abs(rgb[..., 1][ok] - claimed[..., 1][ok]).max() <= 0.5 + 1e-3
    # round trip of arbitrary points
    pts = np.random.default_rng(1).uniform(-10, 400, (50, 2))
    assert np.allclose(geom.image_to_input_points(geom.input_to_image_points(pts)), pts, atol=1e-9)


def test_crop_zeroes_pixels_outside_the_crop():
    meta = make_meta()  # 256 x 340 -> 248 x 329, crop 224 x 224 at (12, 52)
    img = np.zeros((256, 340, 3), np.uint8)
    img[..., 0] = np.minimum(np.arange(340), 255)[None, :]
    x, (geom,) = preprocess(img, meta)
    heat = geom.to_image(np.ones(meta.grid_size, np.float32))
    # left edge of the crop read from the ramp: input column 0 shows original column x_first
    x_first = unnormalise(x[0])[100, 0, 2]
    seen_cols = np.flatnonzero(heat[128] > 0)
    half_input_px = 0.5 * 340 / 329
    assert abs(seen_cols[0] - (x_first - half_input_px)) <= 1
    assert seen_cols[-1] == pytest.approx(339 - seen_cols[0], abs=1)  # symmetric crop
    rows = np.flatnonzero(heat[:, 170] > 0)
    assert rows[0] == pytest.approx(12 * 256 / 248, abs=1) and rows[-1] == pytest.approx(255 - rows[0], abs=1)
    assert np.all(heat[:, :seen_cols[0]] == 0) and np.all(heat[:, seen_cols[-1] + 1:] == 0)
    assert np.all(heat[:rows[0]] == 0) and np.all(heat[rows[-1] + 1:] == 0)
    assert np.all(heat[rows[0]:rows[-1] + 1, seen_cols[0]:seen_cols[-1] + 1] == 1)


@pytest.mark.parametrize("fit", ["squash", "letterbox"])
def test_whole_frame_fits_see_every_pixel(fit):
    meta = make_meta()
    _, (geom,) = preprocess(noise(130, 333), meta, fit=fit)
    assert geom.seen_region(meta.grid_size) == (0, 130, 0, 333)
    heat = geom.to_image(np.full(meta.grid_size, 0.7, np.float32))
    assert np.allclose(heat, 0.7, atol=1e-6)


@pytest.mark.parametrize("fit", FITS)
def test_to_image_samples_the_grid_where_each_pixel_maps(fit):
    """Reference built from the Geometry's own point map and np.interp (float64, edge cells
    repeated): each original pixel's input coordinate u gives grid coordinate (u + 0.5) / p - 0.5."""
    meta = make_meta()
    _, (geom,) = preprocess(noise(130, 333), meta, fit=fit)
    grid = np.random.default_rng(2).random(meta.grid_size)
    (h0, w0), (gh, gw) = geom.image_size, meta.grid_size
    xs = geom.image_to_input_points(np.stack([np.arange(w0), np.zeros(w0)], -1))[:, 0]
    ys = geom.image_to_input_points(np.stack([np.zeros(h0), np.arange(h0)], -1))[:, 1]
    gx, gy = (xs + 0.5) / 16 - 0.5, (ys + 0.5) / 16 - 0.5
    along_x = np.stack([np.interp(gx, np.arange(gw), row) for row in grid])  # (gh, w0)
    ref = np.stack([np.interp(gy, np.arange(gh), col) for col in along_x.T], axis=1)  # (h0, w0)
    iy, ix = np.clip(np.floor(gy + 0.5), 0, gh - 1).astype(int), np.clip(np.floor(gx + 0.5), 0, gw - 1).astype(int)
    near = grid[iy][:, ix]
    y0, y1, x0, x1 = geom.seen_region(meta.grid_size)
    unseen = np.ones((h0, w0), bool)
    unseen[y0:y1, x0:x1] = False
    ref[unseen] = near[unseen] = 0
    lin = geom.to_image(grid.astype(np.float32))
    assert lin.dtype == np.float32 and lin.shape == (h0, w0)
    assert np.abs(lin - ref).max() < 1e-5
    assert np.array_equal(geom.to_image(grid, interpolation="nearest"), near.astype(np.float32))
    # cubic against OpenCV's INTER_CUBIC (same kernel, a = -0.75), which samples at positions
    # rounded to 1/32 of a cell
    (sy, sx), (oy, ox) = geom.scale, geom.offset
    m = np.array([[sx / 16, 0.0, (ox + 0.5) / 16 - 0.5], [0.0, sy / 16, (oy + 0.5) / 16 - 0.5]])
    cv = cv2.warpAffine(grid.astype(np.float32), m, (w0, h0), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                        borderMode=cv2.BORDER_REPLICATE)
    cv = np.clip(cv, grid.min(), grid.max())
    cv[unseen] = 0
    cub = geom.to_image(grid, interpolation="cubic")
    assert np.abs(cub - cv).max() < 0.03 and np.abs(cub - cv).mean() < 3e-3


def test_to_image_interpolation_modes_and_errors():
    meta = make_meta()
    _, (geom,) = preprocess(noise(120, 160), meta)
    grid = np.random.default_rng(0).random(meta.grid_size).astype(np.float32)
    lin = geom.to_image(grid)
    cub = geom.to_image(grid, interpolation="cubic")
    y0, y1, x0, x1 = geom.seen_region(meta.grid_size)
    assert cub[y0:y1, x0:x1].min() >= grid.min() - 1e-6 and cub.max() <= grid.max() + 1e-6
    assert np.abs(cub - lin).max() < 0.5 and np.abs(cub - lin).max() > 0
    with pytest.raises(OptionError, match="Did you mean 'linear'"):
        geom.to_image(grid, interpolation="linar")
    with pytest.raises(ImageError, match=r"\(14, 14\).*got shape \(7, 7\)"):
        geom.to_image(grid[:7, :7])
    with pytest.raises(ImageError, match="finite"):
        geom.to_image(np.full(meta.grid_size, np.nan))
    with pytest.raises(ImageError, match="2-D"):
        geom.to_image(grid[None])
    with pytest.raises(OptionError, match=r"\(\.\.\., 2\)"):
        geom.image_to_input_points(np.zeros((4, 3)))
    # a Geometry built by hand infers the patch size from the grid when it divides the input
    hand = Geometry((10, 20), (28, 28), (2.8, 1.4), (0.9, 0.2), "squash")
    assert hand.to_image(np.ones((7, 7))).shape == (10, 20)
    with pytest.raises(ImageError, match="does not divide"):
        hand.to_image(np.ones((5, 5)))


# ----------------------------------------------------------------------------- API behaviour
def test_preprocess_batches_reuses_out_and_never_mutates():
    meta = make_meta()
    a, b = noise(256, 340, 1), noise(120, 90, 2)
    a0, b0 = a.copy(), b.copy()
    x, geoms = preprocess([a, b], meta)
    assert x.shape == (2, 3, 224, 224) and x.dtype == np.float32
    assert [g.image_size for g in geoms] == [(256, 340), (120, 90)]
    assert np.array_equal(a, a0) and np.array_equal(b, b0)
    buf = np.zeros_like(x)
    y, _ = preprocess([a, b], meta, out=buf)
    assert y is buf and np.array_equal(y, x)
    one, g1 = preprocess_one(b, meta)
    assert np.array_equal(one, x[1]) and g1 == geoms[1]
    stacked, _ = preprocess(np.stack([a, a]), meta)
    assert np.array_equal(stacked[0], x[0]) and np.array_equal(stacked[1], x[0])
    with pytest.raises(OptionError, match=r"float32 array \(2, 3, 224, 224\); got float64"):
        preprocess([a, b], meta, out=np.zeros((2, 3, 224, 224)))
    with pytest.raises(OptionError, match="Did you mean 'letterbox'"):
        preprocess(a, meta, fit="letterbx")
    with pytest.raises(ImageError, match="empty"):
        preprocess([], meta)
    with pytest.raises(ImageError, match=r"images_bgr\[1\] must be a BGR uint8 array"):
        preprocess([a, b.astype(np.float32)], meta)


def test_padding_values():
    img = np.full((40, 200, 3), 255, np.uint8)
    x, _ = preprocess(img, make_meta(), fit="letterbox")
    # 40 x 200 -> 45 x 224, 89 rows of padding above and 90 below
    assert np.all(x[0, :, :89] == 0) and np.all(x[0, :, 134:] == 0)  # the mean colour normalises to 0
    assert np.allclose(x[0, :, 89:134], ((1 - np.array(MEAN)) / np.array(STD))[:, None, None], atol=1e-5)
    # timm's "border" crop mode pads with round(255 * mean), as CenterCropOrPad does
    x, _ = preprocess(img, make_meta(crop_mode="border"), fit="crop")
    expect = (np.round(255 * np.array(MEAN)) / 255 - np.array(MEAN)) / np.array(STD)
    assert np.allclose(x[0, :, 0, 0], expect, atol=1e-6)


def test_identity_resize_is_a_plain_copy():
    """A 224 x 224 image squashed to 224 x 224 is not resampled at all."""
    img = noise(224, 224, 5)
    x, (geom,) = preprocess(img, make_meta(), fit="squash")
    assert np.allclose(unnormalise(x[0]), img[:, :, ::-1], atol=1e-3)
    assert geom.scale == (1.0, 1.0) and geom.offset == (0.0, 0.0)


def test_three_channel_models_only():
    meta = make_meta(input_size=(1, 224, 224), mean=(0.5,), std=(0.5,))
    with pytest.raises(MetadataError, match="3-channel"):
        preprocess(noise(10, 10), meta)


# ----------------------------------------------------------------------------- images
def test_check_image_forms():
    bgr = noise(6, 7)
    assert check_image(bgr) is bgr
    gray = bgr[..., 0].copy()
    for form in (gray, gray[..., None]):
        out = check_image(form)
        assert out.shape == (6, 7, 3) and all(np.array_equal(out[..., i], gray) for i in range(3))
    bgra = np.dstack([bgr, np.zeros((6, 7), np.uint8)])
    assert np.array_equal(check_image(bgra), bgr)
    with pytest.raises(ImageError, match=r"image must be a BGR uint8 array \(H, W, 3\); got float64 \(10, 10\)"):
        check_image(np.zeros((10, 10)))
    with pytest.raises(ImageError, match=r"got uint8 \(4, 4, 2\)"):
        check_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageError, match=">> 8"):
        check_image(np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(ImageError, match="empty"):
        check_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ImageError, match="got list"):
        check_image([[1, 2]], "frame")


def test_read_image_formats(tmp_path):
    bgr = noise(9, 11)
    assert cv2.imwrite(str(tmp_path / "c.png"), bgr)
    assert np.array_equal(read_image(tmp_path / "c.png"), bgr)
    assert cv2.imwrite(str(tmp_path / "g.png"), bgr[..., 1])
    g = read_image(str(tmp_path / "g.png"))
    assert g.shape == (9, 11, 3) and np.array_equal(g[..., 2], bgr[..., 1])
    # alpha is composited over white (see test_decode.py): opaque keeps the colour exactly
    assert cv2.imwrite(str(tmp_path / "a.png"), np.dstack([bgr, np.full((9, 11), 255, np.uint8)]))
    assert np.array_equal(read_image(tmp_path / "a.png"), bgr)
    assert cv2.imwrite(str(tmp_path / "t.png"), np.dstack([bgr, np.zeros((9, 11), np.uint8)]))
    assert (read_image(tmp_path / "t.png") == 255).all()
    # 16-bit scales by 255 / 65535, so the low byte 0x7F never carries the high byte over
    deep = (bgr.astype(np.uint16) << 8) | 0x7F
    assert cv2.imwrite(str(tmp_path / "d16.png"), deep)
    assert np.array_equal(read_image(tmp_path / "d16.png"), bgr)
    uni = tmp_path / "ünï cödé.png"
    uni.write_bytes((tmp_path / "c.png").read_bytes())
    assert np.array_equal(read_image(uni), bgr)


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="nope.png' does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path)
    (tmp_path / "notes.jpg").write_text("not an image at all")
    with pytest.raises(ImageError, match="cannot decode image .*notes.jpg.*: it is not a PNG, JPEG"):
        read_image(tmp_path / "notes.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png"):
        read_image(tmp_path / "empty.png")


@pytest.mark.skipif(not IMAGES, reason=f"shared photos in {DATA / 'images'} are absent")
def test_read_image_matches_opencv_on_real_photos():
    for path in IMAGES[:4]:
        assert np.array_equal(read_image(path), cv2.imread(str(path), cv2.IMREAD_COLOR))


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "area", "lanczos"])
@pytest.mark.parametrize("n_in, n_out, rows", [(400, 38400, (19152, 19248)), (7, 3, (1, 3)), (640, 224, (0, 224)),
                                               (97, 1013, (0, 1)), (97, 1013, (1012, 1013))])
def test_a_band_of_resize_rows_equals_those_rows_of_the_whole_matrix(interpolation, n_in, n_out, rows):
    """A crop keeps a band of a resize's rows; building only that band gives the same weights
    (a 1 x 4000 strip cropped to 96 once built all 384,000 rows: 12 GB)."""
    from attnmap.runtime.image.resample import resize_matrix

    whole = resize_matrix(n_in, n_out, interpolation)
    band = resize_matrix(n_in, n_out, interpolation, rows=rows)
    assert band.shape == (rows[1] - rows[0], n_in)
    np.testing.assert_array_equal(band, whole[rows[0]:rows[1]])
