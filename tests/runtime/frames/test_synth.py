"""The procedural shapes dataset (runtime: NumPy + OpenCV only)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from attnmap.runtime.frames import synth
from attnmap.runtime.frames.synth import CLASSES, DATASET_VERSION, Sample, make_batch, make_sample, write_demo_inputs


@pytest.fixture(scope="module")
def batch():
    return make_batch(123, 400, 96)


def test_constants() -> None:
    assert len(CLASSES) >= 6 and len(set(CLASSES)) == len(CLASSES)
    assert DATASET_VERSION.startswith("shapes-v")


def test_batch_shapes_and_dtypes(batch) -> None:
    images, labels, masks, boxes = batch
    assert images.shape == (400, 96, 96, 3) and images.dtype == np.uint8
    assert labels.shape == (400,) and labels.dtype == np.int64
    assert masks.shape == (400, 96, 96) and masks.dtype == bool
    assert boxes.shape == (400, 4) and boxes.dtype == np.int32


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = make_batch(7, 16, 64)
    b = make_batch(7, 16, 64)
    c = make_batch(8, 16, 64)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    # Sequence seeds (what training uses) are deterministic too and differ from int seeds.
    d = make_batch((7, 0, 99), 16, 64)
    np.testing.assert_array_equal(d[0], make_batch((7, 0, 99), 16, 64)[0])
    assert not np.array_equal(d[0], a[0])


def test_make_batch_is_make_sample_in_sequence() -> None:
    images, labels, masks, boxes = make_batch(5, 3, 64)
    rng = np.random.default_rng(5)
    for i in range(3):
        s = make_sample(rng, 64)
        assert isinstance(s, Sample)
        np.testing.assert_array_equal(s.image_bgr, images[i])
        np.testing.assert_array_equal(s.mask, masks[i])
        assert s.label == labels[i] and s.box == tuple(boxes[i])


def test_every_class_appears_roughly_evenly(batch) -> None:
    counts = np.bincount(batch[1], minlength=len(CLASSES))
    assert counts.shape == (len(CLASSES),)
    expected = 400 / len(CLASSES)
    assert counts.min() > 0.5 * expected and counts.max() < 1.5 * expected, counts


def test_box_is_the_tight_half_open_box_of_the_mask(batch) -> None:
    _, _, masks, boxes = batch
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        ys, xs = np.nonzero(m)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert m[y0:y1, x0:x1].sum() == m.sum()  # nothing outside the box
    assert boxes[:, :2].min() >= 0 and boxes[:, 2:].max() <= 96


def test_objects_have_sensible_sizes(batch) -> None:
    _, _, masks, boxes = batch
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    area = masks.mean(axis=(1, 2))
    # Radius 16-26 % of the side (x 0.9-1.1 aspect jitter): never a speck, never the whole image.
    assert side.min() >= 0.2 * 96 and side.max() <= 2 * 0.26 * 1.1 * 96 + 1
    assert area.min() > 0.01 and area.max() < 0.2


def test_objects_stand_out_from_their_surroundings(batch) -> None:
    """The object's mean colour differs clearly from a band of pixels just around it."""
    images, _, masks, _ = batch
    kernel = np.ones((7, 7), np.uint8)
    gaps = []
    for img, m in zip(images.astype(np.float32), masks):
        band = cv2.dilate(m.astype(np.uint8), kernel).astype(bool) & ~m
        gaps.append(np.linalg.norm(img[m].mean(0) - img[band].mean(0)))
    gaps = np.array(gaps)
    assert np.median(gaps) > 60 and np.percentile(gaps, 5) > 25, np.percentile(gaps, [5, 50])


def test_backgrounds_are_cluttered(batch) -> None:
    """Full clutter: the pixels outside the object vary a lot (no flat backdrop to cheat with)."""
    images, _, masks, _ = batch
    stds = np.array([img[~m].astype(np.float32).std(0).mean() for img, m in zip(images, masks)])
    assert np.median(stds) > 25


def test_clutter_zero_gives_a_flat_background() -> None:
    images, _, masks, _ = make_batch(3, 50, 96, clutter=0.0)
    kernel = np.ones((5, 5), np.uint8)  # leave out the object's anti-aliased rim as well
    away = [~cv2.dilate(m.astype(np.uint8), kernel).astype(bool) for m in masks]
    stds = np.array([img[a].astype(np.float32).std(0).mean() for img, a in zip(images, away)])
    assert stds.max() < 3  # only the small residual pixel noise remains


def test_class_templates_are_distinct_under_any_rotation() -> None:
    """No class shape can be rotated onto another: the label is never ambiguous."""
    size, center, radius = 128, np.array([64.0, 64.0]), 40.0
    angles = np.deg2rad(np.arange(0, 360, 5))
    for i in range(len(CLASSES)):
        a = synth._object_alpha(i, size, center, radius, 0.0, 1.0) >= 128
        for j in range(i + 1, len(CLASSES)):
            best = 0.0
            for ang in angles:
                b = synth._object_alpha(j, size, center, radius, ang, 1.0) >= 128
                best = max(best, (a & b).sum() / (a | b).sum())
            assert best < 0.85, (CLASSES[i], CLASSES[j], best)


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 16}, "size must be an int >= 32"),
    ({"clutter": 1.5}, "clutter must be in"),
])
def test_bad_arguments_raise(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_sample(np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError, match="n must be >= 1"):
        make_batch(0, 0)


def test_write_demo_inputs(tmp_path) -> None:
    images, video = write_demo_inputs(tmp_path / "demo", seed=1, n_images=4, video_frames=20, size=128)
    assert [p.name for p in images] == [f"shapes_{i:02d}.png" for i in range(4)]
    for p in images:
        img = cv2.imread(str(p))
        assert img is not None and img.shape == (128, 128, 3)
    cap = cv2.VideoCapture(str(video))
    try:
        assert cap.isOpened()
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    assert len(frames) == 20 and frames[0].shape == (128, 128, 3)
    # The object moves: first and last frames differ well beyond codec noise.
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 5
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == sorted(
        [p.name for p in images] + ["shapes_demo.mp4"])  # no temp files left behind
