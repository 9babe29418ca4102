"""The package's two resizes: ``resize_maps`` (saliency maps) against the image filters of
``resize_matrix``, each against its independent reference (OpenCV, Pillow)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from attnmap.runtime.image.resample import resize_maps, resize_matrix

Image = pytest.importorskip("PIL.Image", reason="the Pillow reference needs the test extra: pip install 'attnmap[test]'")


def _pillow(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(grid, "F").resize((size[1], size[0]), Image.BILINEAR))


def _matrix(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return resize_matrix(grid.shape[0], size[0], "bilinear") @ grid.astype(np.float64) \
        @ resize_matrix(grid.shape[1], size[1], "bilinear").T


@pytest.mark.parametrize("grid, size", [((12, 12), (96, 96)), ((5, 7), (37, 23)), ((14, 14), (224, 224)),
                                        ((3, 3), (3, 3))])
def test_on_an_upsample_the_map_resize_is_the_bilinear_filter(grid, size):
    # a patch grid brought up to pixels: one interpolation, whichever library computes it
    g = np.random.default_rng(sum(size)).random(grid).astype(np.float32)
    out = resize_maps(g[None], size)[0]
    np.testing.assert_allclose(out, cv2.resize(g, (size[1], size[0]), interpolation=cv2.INTER_LINEAR), atol=1e-6)
    np.testing.assert_allclose(out, _pillow(g, size), atol=1e-6)
    np.testing.assert_allclose(out, _matrix(g, size), atol=1e-6)


def test_on_a_shrink_the_map_resize_samples_where_the_image_filter_averages():
    # why there are two: the image filter antialiases a shrink (as Pillow), the map resize
    # point-samples (as cv2.INTER_LINEAR); a checkerboard shows the difference plainly
    g = (np.indices((12, 12)).sum(axis=0) % 2).astype(np.float32)
    size = (4, 4)
    maps = resize_maps(g[None], size)[0]
    np.testing.assert_allclose(maps, cv2.resize(g, size[::-1], interpolation=cv2.INTER_LINEAR), atol=1e-6)
    images = _matrix(g, size)
    np.testing.assert_allclose(images, _pillow(g, size), atol=1e-6)
    assert np.ptp(images) < 0.2 < np.ptp(maps)  # averaged to grey against sampled cells
