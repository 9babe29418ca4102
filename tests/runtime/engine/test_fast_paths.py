"""The fast paths of a full explanation equal the plain definitions they replace.

Issue 18 made ``explain`` + ``overlay`` cheaper: rollout's layer step as one product over the
stacked heads, head fusion plane by plane, the discard cut by OpenCV's to-zero threshold,
float32 row sums as a product, one options check per call, top-k without lexsort
bookkeeping, the heatmap computed on the seen rectangle only and the overlay drawn once at
the output size, the resize as banded products over interleaved uint8 pixels (the column
pass on the image transposed) with the normalisation as a lookup, and the discard threshold
partitioned on the int32 view of non-negative values. Each is checked here against a
direct, slow transcription of what it computes, on real attentions (the committed tiny
model torch-free, and the real DeiT-Tiny weights where ../shared and torch are present),
within 1e-5; the resize against the whole transform in float64 (equal but at rounding ties).
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest

from attnmap import Explainer, OverlayStyle
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.draw.overlay import _APPLY_ABOVE, _apply_colormap
from attnmap.runtime.engine.explainer import top_indices
from attnmap.runtime.image.preprocess import _resized_size, _start, preprocess
from attnmap.runtime.image.resample import resize_matrix, to_uint8
from attnmap.runtime.methods import attention_maps
from attnmap.runtime.methods.base import fuse_heads, normalize_maps

PHOTOS = ("pytorchhub_dog.jpg", "vitexplain_both.png", "hc_el4.jpg")


# ------------------------------------------------------------------ plain definitions
def plain_fuse(a: np.ndarray, how: str) -> np.ndarray:
    """Head fusion of (H, N, N) in float32, heads combined in order (as a graph would)."""
    if how == "mean":
        return (a.astype(np.float32).sum(axis=0, dtype=np.float32) * np.float32(1.0 / a.shape[0])).astype(np.float32)
    return a.max(axis=0) if how == "max" else a.min(axis=0)


def plain_rollout(att: np.ndarray, layout: TokenLayout, how: str, ratio: float, residual: bool) -> np.ndarray:
    """Rollout by its definition, one image at a time, full N x N matrices in float64.

    Â_l = (F_l + I) (or F_l) with rows renormalised, R = Â_L ··· Â_1, the target's row of R
    over the patch columns, min-max normalised. The discard (vit-explain's, made per image):
    zero every unprotected entry of F_l strictly below the (k+1)-th smallest unprotected one,
    k = floor(ratio N²); protected: the target's own entry, or the diagonal without a target.
    """
    b, layers, _, n, _ = att.shape
    t = layout.target_row
    protected = np.eye(n, dtype=bool) if t is None else np.zeros((n, n), bool)
    if t is not None:
        protected[t, t] = True
    rows = []
    for i in range(b):
        r = np.eye(n)
        for layer in range(layers):
            f = plain_fuse(att[i, layer], how).astype(np.float64)
            if ratio > 0:
                k = min(int(ratio * n * n), n * n - int(protected.sum()))
                cut = np.sort(f[~protected])[k] if k < f[~protected].size else np.inf
                f[(f < cut) & ~protected] = 0.0
            a_hat = f + np.eye(n) if residual else f
            sums = a_hat.sum(axis=1, keepdims=True)
            a_hat = a_hat / np.where(sums > 0, sums, 1.0)
            r = a_hat @ r
        rows.append(r.mean(axis=0) if t is None else r[t])
    patches = np.array(rows)[:, layout.num_prefix:]
    lo, hi = patches.min(axis=1, keepdims=True), patches.max(axis=1, keepdims=True)
    return ((patches - lo) / (hi - lo)).reshape(b, *layout.grid)


def plain_overlay(image: np.ndarray, heat: np.ndarray, seen: tuple[int, int, int, int], style: OverlayStyle,
                  caption: list[str]) -> np.ndarray:
    """The overlay by its definition: draw over the whole frame, then dim what was not seen."""
    out = style.heatmap.annotate(image, heat)
    y0, y1, x0, x1 = seen
    if (y0, y1, x0, x1) != (0, image.shape[0], 0, image.shape[1]):
        kept = out[y0:y1, x0:x1].copy()
        out = (image // 2).astype(np.uint8)
        out[y0:y1, x0:x1] = kept
    if style.label:
        out = style.caption.annotate(out, caption, heatmap=heat)
    return out


def plain_preprocess(image: np.ndarray, meta, fit: str) -> np.ndarray:
    """timm's eval transform by its definition, in float64: the whole image resized with the
    dense Pillow weight matrices, each pass rounded and clipped to uint8 in Pillow's order
    (vertical first when the height loses more than twice the pixels the width loses), then
    the centre crop or pad (the mean colour for letterbox, ``round(255 mean)`` for a border
    crop, black otherwise), then RGB ``(v / 255 - mean) / std``. Returns (3, H, W)."""
    h, w = meta.image_size
    h0, w0 = image.shape[:2]
    hr, wr = _resized_size(h0, w0, h, w, float(meta.crop_pct), meta.crop_mode, fit)
    my, mx = resize_matrix(h0, hr, meta.interpolation), resize_matrix(w0, wr, meta.interpolation)

    def rows(x):
        return np.clip(np.rint(np.einsum("oi,iwc->owc", my, x)), 0, 255)

    def cols(x):
        return np.clip(np.rint(np.einsum("oj,hjc->hoc", mx, x)), 0, 255)

    x = image.astype(np.float64)
    resized = cols(rows(x)) if hr < h0 and wr != w0 and (h0 - hr) > 2 * (w0 - wr) else rows(cols(x))
    mean = np.array(meta.mean)
    if fit == "letterbox":
        pad = 255 * mean
    else:
        pad = np.round(255 * mean) if meta.crop_mode == "border" else np.zeros(3)
    canvas = np.empty((h, w, 3))
    canvas[:] = pad[::-1]  # BGR, like the image
    top, left = _start(hr, h), _start(wr, w)
    src = resized[max(0, top):max(0, top) + h, max(0, left):max(0, left) + w]
    canvas[max(0, -top):max(0, -top) + src.shape[0], max(0, -left):max(0, -left) + src.shape[1]] = src
    return ((canvas[..., ::-1] / 255 - mean) / np.array(meta.std)).transpose(2, 0, 1)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def photos(shared_data) -> list[np.ndarray]:
    images = [cv2.imread(str(shared_data / "images" / name)) for name in PHOTOS]
    assert all(img is not None for img in images)
    return images


@pytest.fixture(scope="module")
def tiny_explainer(tiny_vit_onnx) -> Explainer:
    return Explainer(tiny_vit_onnx, provider="cpu")


def _frames(rng: np.random.Generator) -> list[np.ndarray]:
    """A landscape, a portrait and a square frame, smooth enough to give structured attention."""
    frames = []
    for h, w in ((120, 160), (150, 90), (64, 64)):
        small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        frames.append(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
    return frames


CASES = [("mean", 0.0, True), ("mean", 0.5, True), ("max", 0.9, True), ("min", 0.3, True),
         ("mean", 0.0, False), ("max", 0.6, False)]


def _check_rollout(ex: Explainer, images: list[np.ndarray], atol: float) -> None:
    x, _ = ex.preprocess(images, fit="squash")
    out = ex.infer(x)
    att = np.array(out.attentions)  # the runtime hands a [B, L, ...] view of an [L, B, ...] buffer
    assert not out.attentions.flags.c_contiguous or len(images) == 1
    for how, ratio, residual in CASES:
        got = ex.maps(out, "rollout", head_fusion=how, discard_ratio=ratio, residual=residual)
        ref = plain_rollout(att, ex.meta.layout, how, ratio, residual)
        np.testing.assert_allclose(got, ref, atol=atol, err_msg=f"{how} {ratio} {residual}")
        assert got.max() == 1.0 and got.min() == 0.0
    # attention_maps() (one options check, the method called directly) gives the same maps
    for how, ratio, residual in CASES[:3]:
        results = ex.explain(images, fit="squash", head_fusion=how, discard_ratio=ratio, residual=residual)
        ref = plain_rollout(att, ex.meta.layout, how, ratio, residual)
        np.testing.assert_allclose(np.stack([r.grid for r in results]), ref, atol=atol)


def test_rollout_fast_paths_equal_the_definition_on_the_tiny_model(tiny_explainer):
    # Random weights give nearly uniform attention: the map's spread is small, so the min-max
    # normalisation magnifies float32 rounding (the runtime's vector is float32) about tenfold.
    _check_rollout(tiny_explainer, _frames(np.random.default_rng(3)), atol=1e-4)


@pytest.mark.export
@pytest.mark.slow
def test_rollout_fast_paths_equal_the_definition_on_real_deit_weights(deit_tiny_onnx, photos):
    _check_rollout(Explainer(deit_tiny_onnx, provider="cpu"), photos, atol=1e-5)


@pytest.mark.export
@pytest.mark.slow
def test_overlay_and_heatmap_equal_their_definitions_on_real_deit_weights(deit_tiny_onnx, photos):
    ex = Explainer(deit_tiny_onnx, provider="cpu")
    frame = cv2.resize(photos[0], (640, 480), interpolation=cv2.INTER_AREA)
    for fit in ("crop", "squash", "letterbox"):
        r = ex.explain(frame, fit=fit)
        _check_overlay(r)


def test_overlay_and_heatmap_equal_their_definitions(tiny_explainer):
    for frame in _frames(np.random.default_rng(5)):
        for fit in ("crop", "squash", "letterbox"):
            _check_overlay(tiny_explainer.explain(frame, fit=fit))


def _check_overlay(r) -> None:
    g = r.geometry
    wy, wx_t = g._map_weights(r.grid.shape, "linear")
    full = wy @ (r.grid @ wx_t)
    y0, y1, x0, x1 = seen = g.seen_region(r.grid.shape)
    full[:y0], full[y1:], full[:, :x0], full[:, x1:] = 0, 0, 0, 0
    np.testing.assert_allclose(r.heatmap, full, atol=1e-6)
    for style in (OverlayStyle(), OverlayStyle(colormap="inferno", alpha=0.3, label=False),
                  OverlayStyle(mode="mask", alpha=0.8), OverlayStyle(blur=0.05)):
        want = plain_overlay(r.image, r.heatmap, seen, style, r.caption())
        assert np.array_equal(r.overlay(style), want), (g.fit, style)


# ------------------------------------------------------------------ the small pieces
@pytest.mark.parametrize("how", ["mean", "max", "min"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_fuse_heads_equals_the_numpy_reduction(how, axis):
    a = np.random.default_rng(1).random((2, 3, 4, 5, 5)).astype(np.float32)
    got = fuse_heads(a, how, axis=axis)
    want = {"mean": np.mean, "max": np.max, "min": np.min}[how](a, axis=axis)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6)
    if how != "mean":
        assert np.array_equal(got, want)


def test_normalize_maps_equals_min_max_with_constant_maps_as_documented():
    rng = np.random.default_rng(2)
    maps = rng.normal(size=(4, 3, 5)).astype(np.float32)
    maps[1] = 0.25  # constant, positive -> ones
    maps[2] = -1.0  # constant, negative -> zeros
    maps[3] = 7.0 + rng.normal(size=(3, 5)) * 1e-7  # float32 noise on a constant -> ones
    got = normalize_maps(maps)
    x = maps[0].astype(np.float64)
    np.testing.assert_allclose(got[0], (x - x.min()) / (x.max() - x.min()), atol=1e-7)
    assert np.array_equal(got[1], np.ones((3, 5))) and np.array_equal(got[2], np.zeros((3, 5)))
    assert np.array_equal(got[3], np.ones((3, 5)))
    assert got.dtype == np.float32 and got.shape == maps.shape


def test_top_indices_equal_a_stable_sort_with_ties_by_index():
    rng = np.random.default_rng(4)
    scores = np.round(rng.random((6, 50)) * 8) / 8  # many ties
    for k in (1, 5, 17, 49, 50):
        got = top_indices(scores, k)
        want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        # equal scores may enter at the k-th place in either order; their values must agree,
        # and within the block the order is best first, ties by index
        assert np.array_equal(np.take_along_axis(scores, got, 1), np.take_along_axis(scores, want, 1))
        for row, s in zip(got, scores):
            keys = list(zip(-s[row], row))
            assert keys == sorted(keys)


@pytest.mark.slow  # a float64 reference of every fit on a real photo at four metadata
def test_preprocess_equals_its_definition(tiny_vit_onnx, shared_data):
    """Every fit, both pass orders, shrinking and enlarging, a one-pixel-wide sliver and an
    image already at the input size, for an area filter (the tiny model), the shipped model's
    metadata, and DeiT's bicubic with crop_pct 0.9 and a border crop. Values agree within
    float32 rounding except where the exact value lies on a rounding tie (x.5 grey levels),
    which float32 and float64 sums may settle either way: those differ by a grey level (two
    where the first pass's tie feeds a second one), and they are rare (the box filter of an
    area resize makes ties common, so it is allowed 3%)."""
    photo = cv2.imread(str(shared_data / "images" / PHOTOS[0]))
    rng = np.random.default_rng(11)
    tiny = Explainer(tiny_vit_onnx, provider="cpu").meta
    shipped = Explainer(provider="cpu").meta
    deit = dataclasses.replace(tiny, interpolation="bicubic", crop_pct=0.9, mean=(0.485, 0.456, 0.406),
                               std=(0.229, 0.224, 0.225))
    border = dataclasses.replace(deit, crop_mode="border", crop_pct=0.95)
    for meta in (tiny, shipped, deit, border):
        h, w = meta.image_size
        images = [cv2.resize(photo, (640, 480), interpolation=cv2.INTER_AREA),
                  cv2.resize(photo, (200, 900), interpolation=cv2.INTER_AREA),  # height first
                  cv2.resize(photo, (w * 2 // 3, h // 2), interpolation=cv2.INTER_AREA),  # enlarged
                  cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA),  # at the input size
                  rng.integers(0, 256, (97, 301, 3), dtype=np.uint8), rng.integers(0, 256, (500, 1, 3), dtype=np.uint8)]
        level = 1 / 255 / min(meta.std)
        for image in images:
            for fit in ("crop", "squash", "letterbox"):
                got = preprocess([image], meta, fit=fit)[0][0]
                diff = np.abs(got - plain_preprocess(image, meta, fit))
                where = f"{meta.interpolation} {meta.crop_mode} {image.shape} {fit}"
                assert diff.max() <= 2 * level + 1e-5, where
                ties = (diff > 1e-5).mean()
                assert ties <= (0.03 if meta.interpolation == "area" else 1e-3), f"{where}: {ties:.2%} differ"


def test_to_uint8_is_clip_of_rint():
    values = np.random.default_rng(2).normal(128, 150, (64, 333)).astype(np.float32)
    values.flat[:10] = [0.5, 1.5, 2.5, -0.5, -0.49, 254.5, 255.5, 255.49, -300.0, 1e9]
    want = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    assert np.array_equal(to_uint8(values.copy()), want)


@pytest.mark.parametrize("colormap", [cv2.COLORMAP_JET, cv2.COLORMAP_INFERNO, cv2.COLORMAP_TURBO])
def test_colormap_equals_opencv_below_and_above_the_size_switch(colormap):
    rng = np.random.default_rng(colormap)
    for shape in ((96, 128), (400, 400), (480, 640)):
        u8 = rng.integers(0, 256, shape, dtype=np.uint8)
        assert (u8.size > _APPLY_ABOVE) == (shape[0] >= 400)
        assert np.array_equal(_apply_colormap(u8, colormap), cv2.applyColorMap(u8, colormap))


def test_discard_cut_keeps_entries_equal_to_the_threshold():
    # F's entries [0.1, 0.2, 0.2, 0.2, ...]: k = 1 lowest unprotected; the three 0.2s tie at the
    # cut and all stay (ties are kept rather than split), as the definition says.
    layout = TokenLayout(1, (1, 2), 0, stochastic=False)
    f = np.array([[0.5, 0.1, 0.2], [0.2, 0.2, 0.2], [0.2, 0.2, 0.2]], np.float32)
    att = np.broadcast_to(f, (1, 1, 1, 3, 3)).copy()
    got = attention_maps("rollout", att, layout, discard_ratio=1 / 9 + 1e-6, residual=False)
    ref = plain_rollout(att, layout, "mean", 1 / 9 + 1e-6, False)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert math.isclose(float(got[0, 0, 0]), 0.0, abs_tol=1e-7)  # 0.1 discarded -> the lowest patch


@pytest.mark.parametrize("kind", ["probabilities", "with zeros of both signs", "negative", "nan"])
def test_discard_lowest_equals_the_sort_definition_on_both_partition_paths(kind):
    """Non-negative matrices take the int32 view of the partition, others the float one;
    both must zero exactly the entries strictly below the (k+1)-th smallest unprotected one
    (NaN: NumPy sorts it last, so it is never below the cut and stays)."""
    from attnmap.runtime.methods.rollout import discard_lowest

    rng = np.random.default_rng(7)
    n, ratio = 23, 0.9
    f = rng.dirichlet(np.full(n, 0.3), size=(2, n)).astype(np.float32)
    if kind == "with zeros of both signs":
        f[0, :5, :5], f[1, :4, :6] = 0.0, -0.0
    elif kind == "negative":
        f -= np.float32(0.02)
    elif kind == "nan":
        f[1, 3, 4] = np.nan
    for target in (0, None):
        got = f.copy()
        discard_lowest(got, ratio, target)
        for i in range(2):
            protected = np.eye(n, dtype=bool) if target is None else np.zeros((n, n), bool)
            if target is not None:
                protected[target, target] = True
            k = min(int(ratio * n * n), n * n - int(protected.sum()))
            cut = np.sort(f[i][~protected])[k]
            want = f[i].copy()
            want[(want < cut) & ~protected] = 0.0
            np.testing.assert_array_equal(got[i], want, err_msg=f"{kind} target={target} image {i}")


def test_kept_output_bindings_give_each_run_its_own_results(tiny_vit_onnx):
    """Outputs are bound once per pooled buffer set; every run still gets its own input's
    results, whether the caller drops them (the set and its binding are reused) or keeps them
    (another set is bound)."""
    import onnxruntime as ort

    from attnmap.runtime.model.session import OnnxModel

    model = OnnxModel(tiny_vit_onnx, provider="cpu")
    reference = ort.InferenceSession(str(tiny_vit_onnx), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    xs = [rng.normal(size=(1, *model.meta.input_size)).astype(np.float32) for _ in range(3)]
    want = [reference.run(["logits", "attentions"], {model.meta.inputs[0]: x}) for x in xs]
    for round_ in range(3):
        for x, (logits, att) in zip(xs, want):  # dropped at once: one set, one binding, reused
            out = model.run(x)
            np.testing.assert_allclose(out.logits, logits, atol=1e-6)
            np.testing.assert_allclose(out.attentions, att, atol=1e-6)
            del out
    assert len(model._bindings) == 1
    kept = [model.run(x) for x in xs]  # all kept: three sets, each bound once
    for out, (logits, att) in zip(kept, want):
        np.testing.assert_allclose(out.logits, logits, atol=1e-6)
        np.testing.assert_allclose(out.attentions, att, atol=1e-6)
    assert len(model._bindings) == 3


def test_kept_bindings_are_safe_with_runs_on_two_threads(tiny_vit_onnx):
    """The frame engine runs the model on two threads at once: each run, whichever pooled set
    and binding it gets, returns its own input's results."""
    from concurrent.futures import ThreadPoolExecutor

    import onnxruntime as ort

    from attnmap.runtime.model.session import OnnxModel

    model = OnnxModel(tiny_vit_onnx, provider="cpu", threads=1)
    reference = ort.InferenceSession(str(tiny_vit_onnx), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(11)
    xs = [rng.normal(size=(2, *model.meta.input_size)).astype(np.float32) for _ in range(6)]
    want = [reference.run(["logits"], {model.meta.inputs[0]: x})[0] for x in xs]

    def run(i: int) -> bool:
        out = model.run(xs[i % len(xs)])
        return bool(np.allclose(out.logits, want[i % len(xs)], atol=1e-6))

    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(run, range(120)))
