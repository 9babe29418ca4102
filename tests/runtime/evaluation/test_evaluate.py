"""Pointing game, box-mass ratio and map resizing on hand-made maps (runtime: NumPy only)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.evaluation.localisation import box_mass_ratio, box_masks, pointing_game
from attnmap.runtime.image.resample import resize_maps


def _peak_map(h: int, w: int, y: int, x: int) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[y, x] = 1.0
    return m


def test_pointing_game_hits_inside_and_misses_outside() -> None:
    box = (10, 20, 30, 40)  # x in [10, 30), y in [20, 40)
    peaks = [(20, 10, True), (39, 29, True), (25, 15, True),  # corners and middle
             (19, 15, False), (40, 15, False), (25, 9, False), (25, 30, False)]  # just outside
    maps = np.stack([_peak_map(64, 48, y, x) for y, x, _ in peaks])
    boxes = np.array([box] * len(peaks))
    hits = pointing_game(maps, boxes)
    assert hits.dtype == bool and hits.shape == (len(peaks),)
    assert hits.tolist() == [hit for _, _, hit in peaks]


def test_pointing_game_tolerance_is_euclidean_distance_to_box() -> None:
    box = np.array([[10, 10, 20, 20]])  # last pixel inside is (19, 19)
    # A peak at (y=23, x=23) is sqrt(4^2 + 4^2) = 5.66 px from the box's corner pixel.
    m = _peak_map(32, 32, 23, 23)[None]
    assert not pointing_game(m, box, tolerance_px=5.6)[0]
    assert pointing_game(m, box, tolerance_px=5.7)[0]
    # Straight below: (y=24, x=15) is exactly 5 px from pixel (19, 15).
    m = _peak_map(32, 32, 24, 15)[None]
    assert pointing_game(m, box, tolerance_px=5)[0]
    assert not pointing_game(m, box, tolerance_px=4.99)[0]


def test_pointing_game_uses_the_global_maximum() -> None:
    m = np.full((1, 16, 16), 0.5, np.float32)
    m[0, 2, 2] = 0.9  # inside the box, but not the maximum
    m[0, 12, 12] = 1.0
    assert not pointing_game(m, np.array([[0, 0, 5, 5]]))[0]
    assert pointing_game(m, np.array([[10, 10, 14, 14]]))[0]


def test_box_mass_ratio_hand_computed() -> None:
    h = w = 10
    box = np.array([[0, 0, 5, 5]])  # a quarter of the image
    uniform = np.ones((1, h, w))
    np.testing.assert_allclose(box_mass_ratio(uniform, box), [1.0])
    inside_only = box_masks(box, (h, w)).astype(np.float64)
    np.testing.assert_allclose(box_mass_ratio(inside_only, box), [4.0])
    outside_only = 1.0 - inside_only
    np.testing.assert_allclose(box_mass_ratio(outside_only, box), [0.0])
    # 3 units inside (pixel (1, 1)) and 1 outside (pixel (9, 9)): 0.75 / 0.25 = 3.
    m = np.zeros((1, h, w))
    m[0, 1, 1], m[0, 9, 9] = 3.0, 1.0
    np.testing.assert_allclose(box_mass_ratio(m, box), [3.0])


def test_box_mass_ratio_matches_a_loop_reference() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((5, 12, 17))
    boxes = np.array([[0, 0, 17, 12], [3, 2, 9, 7], [16, 11, 17, 12], [0, 5, 4, 12], [5, 0, 6, 1]])
    expected = []
    for m, (x0, y0, x1, y1) in zip(maps, boxes):
        inside = sum(m[y, x] for y in range(y0, y1) for x in range(x0, x1))
        expected.append((inside / m.sum()) / ((x1 - x0) * (y1 - y0) / m.size))
    np.testing.assert_allclose(box_mass_ratio(maps, boxes), expected, rtol=1e-12)
    assert box_mass_ratio(maps, boxes)[0] == pytest.approx(1.0)  # the whole image


def test_box_mass_ratio_all_zero_map_is_nan_and_negative_maps_are_refused() -> None:
    out = box_mass_ratio(np.zeros((2, 8, 8)) + np.array([0.0, 1.0])[:, None, None],
                         np.array([[0, 0, 4, 4]] * 2))
    assert np.isnan(out[0]) and out[1] == pytest.approx(1.0)
    with pytest.raises(ExplainError, match="non-negative"):
        box_mass_ratio(-np.ones((1, 8, 8)), np.array([[0, 0, 4, 4]]))


@pytest.mark.parametrize("maps, boxes, match", [
    (np.zeros((8, 8)), np.zeros((1, 4)), "3-D"),
    (np.zeros((2, 8, 8)), np.array([[0, 0, 4, 4]]), r"\(B, 4\)"),
    (np.zeros((1, 8, 8)), np.array([[4, 0, 4, 4]]), "box 0"),
    (np.zeros((1, 8, 8)), np.array([[0, 0, 9, 4]]), "x1 <= 8"),
    (np.full((1, 8, 8), np.nan), np.array([[0, 0, 4, 4]]), "finite"),
])
def test_bad_inputs_raise_typed_errors(maps, boxes, match) -> None:
    for fn in (pointing_game, box_mass_ratio):
        with pytest.raises(ExplainError, match=match):
            fn(maps, boxes)


def test_inputs_are_not_mutated() -> None:
    rng = np.random.default_rng(1)
    maps = rng.random((3, 9, 9)).astype(np.float32)
    boxes = np.array([[1, 1, 5, 5]] * 3)
    before_m, before_b = maps.copy(), boxes.copy()
    pointing_game(maps, boxes, tolerance_px=2)
    box_mass_ratio(maps, boxes)
    resize_maps(maps, (18, 18))
    np.testing.assert_array_equal(maps, before_m)
    np.testing.assert_array_equal(boxes, before_b)


@pytest.mark.parametrize("grid, size", [((12, 12), (96, 96)), ((3, 5), (24, 40)), ((4, 4), (37, 23)),
                                        ((6, 6), (6, 6))])
def test_resize_maps_matches_cv2_inter_linear(grid, size) -> None:
    rng = np.random.default_rng(2)
    maps = rng.random((2,) + grid).astype(np.float32)
    out = resize_maps(maps, size)
    assert out.shape == (2,) + size and out.dtype == np.float32
    for b in range(2):
        ref = cv2.resize(maps[b], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(out[b], ref, atol=1e-5)


def test_resized_one_cell_peak_lands_in_its_patch() -> None:
    # Patch (row 2, col 7) of a 12 x 12 grid at patch size 8 covers y in [16, 24), x in [56, 64).
    grid = np.zeros((1, 12, 12), np.float32)
    grid[0, 2, 7] = 1.0
    full = resize_maps(grid, (96, 96))
    assert pointing_game(full, np.array([[56, 16, 64, 24]]))[0]
    assert not pointing_game(full, np.array([[48, 16, 56, 24]]))[0]
