"""A batch explained in parts on several threads equals the batch explained on one.

``Explainer.explain`` computes a large batch's attention maps in contiguous parts on
``map_threads`` threads (runtime/engine/parts.py). Each image's map, prediction and geometry must
be exactly what one thread computes, for every attention method, with images of different sizes
in one batch (the tiny models' tensors are under the size worth a thread, so these tests lower
it); ``parts_for`` must split only batches large enough; and ``in_parts`` itself must keep the
parts' order, finish every part before it returns or raises, leave no thread behind, and raise
the error a loop in order would raise.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from attnmap import Explainer
from attnmap.runtime.engine import parts as parts_module
from attnmap.runtime.engine.parts import MIN_PART_BYTES, bounds, in_parts, parts_for
from attnmap.runtime.methods import METHODS, runs_on
from frames_fakes import attnmap_threads

PHOTOS = ("pytorchhub_dog.jpg", "vitexplain_both.png", "hc_el4.jpg")


# --------------------------------------------------------------------------- in_parts
@pytest.mark.parametrize("n, parts", [(1, 1), (1, 4), (2, 2), (5, 2), (8, 2), (8, 3), (7, 16)])
def test_bounds_cover_the_range_in_parts_of_near_equal_size(n, parts):
    got = bounds(n, parts)
    assert len(got) == min(parts, n)
    assert [a for a, _ in got] == [0] + [b for _, b in got[:-1]] and got[-1][1] == n  # contiguous, all of it
    sizes = [b - a for a, b in got]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_in_parts_returns_the_parts_in_order_the_first_on_the_callers_thread():
    names: dict[tuple[int, int], str] = {}

    def fn(a, b):
        names[(a, b)] = threading.current_thread().name
        return list(range(a, b))

    assert in_parts(fn, 7, 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert names[(0, 3)] == threading.current_thread().name
    assert all(names[r].startswith("attnmap-parts") for r in ((3, 5), (5, 7)))
    assert attnmap_threads() == []  # the parts' threads ended with the call
    assert in_parts(fn, 4, 1) == [[0, 1, 2, 3]] and names[(0, 4)] == threading.current_thread().name


def test_in_parts_raises_the_earliest_failure_once_every_part_has_finished():
    finished = []

    def fn(a, b):
        if a == 0:
            raise ValueError("part 0")
        time.sleep(0.2)  # still running when part 0 fails
        finished.append(a)
        if a == 2:
            raise KeyError("part 2")
        return a

    with pytest.raises(ValueError, match="part 0"):
        in_parts(fn, 3, 3)
    assert sorted(finished) == [1, 2] and attnmap_threads() == []  # no part left reading the caller's arrays

    def later(a, b):
        if a >= 1:
            raise ValueError(f"part {a}")
        return a

    with pytest.raises(ValueError, match="part 1"):  # as a loop over the parts in order would
        in_parts(later, 3, 3)


def test_only_batches_with_enough_to_read_are_split():
    deit_b8 = 8 * 12 * 3 * 197 * 197 * 4  # DeiT-Tiny's attentions at batch 8: 45 MB
    assert parts_for(deit_b8, 8, 2) == 2 and parts_for(deit_b8, 8, 16) == deit_b8 // MIN_PART_BYTES
    assert parts_for(deit_b8, 1, 2) == 1  # one image is never split
    assert parts_for(8 * 4 * 3 * 145 * 145 * 4, 8, 2) == 1  # the shipped model's, 8 MB: not worth a thread
    assert parts_for(deit_b8, 8, 1) == 1 and parts_for(0, 8, 2) == 1


# --------------------------------------------------------------------------- Explainer.explain
def _batch(shared) -> list[np.ndarray]:
    """Five images of different sizes: real photos where ../shared is present, else noise."""
    rng = np.random.default_rng(5)
    photos = [cv2.imread(str(shared / "images" / p)) for p in PHOTOS] if shared is not None else []
    photos = [p for p in photos if p is not None] or [rng.integers(0, 256, (300, 400, 3), np.uint8)]
    sizes = [(224, 224), (480, 640), (200, 333), (517, 389), (96, 96)]
    return [cv2.resize(photos[i % len(photos)], (w, h), interpolation=cv2.INTER_AREA)
            for i, (h, w) in enumerate(sizes)]


@pytest.fixture(scope="module")
def images():
    from conftest import SHARED_DATA

    return _batch(SHARED_DATA if SHARED_DATA.is_dir() else None)


@pytest.fixture()
def split_small(monkeypatch):
    """Any batch of two or more images is split: the tiny models' tensors are a few kB."""
    monkeypatch.setattr(parts_module, "MIN_PART_BYTES", 1)


def _explain_both(model, images, method, fit, **options):
    one = Explainer(model, provider="cpu", threads=1)
    parts = Explainer(model, provider="cpu", threads=1)
    parts.map_threads = 3
    return (one.explain(images, method=method, fit=fit, **options),
            parts.explain(images, method=method, fit=fit, **options))


def _assert_same(serial, split):
    assert len(serial) == len(split)
    for s, p in zip(serial, split):
        np.testing.assert_array_equal(p.grid, s.grid)
        np.testing.assert_array_equal(p.probs, s.probs)
        assert p.topk == s.topk and p.geometry == s.geometry and p.target == s.target


@pytest.mark.parametrize("fit", ["crop", "squash", "letterbox"])
def test_every_fit_gives_the_same_explanations_in_parts(tiny_vit_onnx, images, fit, split_small, monkeypatch):
    calls = []
    real = parts_module.in_parts
    monkeypatch.setattr("attnmap.runtime.engine.explainer.in_parts",
                        lambda fn, n, k: calls.append((n, k)) or real(fn, n, k))
    _assert_same(*_explain_both(tiny_vit_onnx, images, "rollout", fit))
    assert calls == [(5, 3)]  # the second explainer split its batch of 5 into 3 parts; the first did not


def test_every_attention_method_gives_the_same_maps_in_parts(tiny_vit_grads_onnx, images, split_small):
    meta = Explainer(tiny_vit_grads_onnx, provider="cpu", threads=1).meta
    names = [n for n, m in METHODS.items() if m.kind.name == "attention" and runs_on(n, meta)]
    assert {"rollout", "attention", "chefer", "grad_rollout"} <= set(names)
    for name in names:
        _assert_same(*_explain_both(tiny_vit_grads_onnx, images, name, "crop"))
    # options that change the path: max fusion with the discard cut, a chosen class per image
    _assert_same(*_explain_both(tiny_vit_grads_onnx, images, "rollout", "crop", head_fusion="max", discard_ratio=0.9))
    serial, split = (Explainer(tiny_vit_grads_onnx, provider="cpu", threads=1) for _ in range(2))
    split.map_threads = 2
    targets = [3, 1, 4, 1, 5]
    _assert_same(serial.explain(images, method="chefer", target=targets),
                 split.explain(images, method="chefer", target=targets))


@pytest.mark.export
@pytest.mark.slow
def test_real_weights_give_the_same_maps_in_parts(deit_tiny_onnx, images):
    # DeiT-Tiny's 5.6 MB per image: a batch of 5 is split at the real size threshold
    _assert_same(*_explain_both(deit_tiny_onnx, images, "rollout", "crop"))
    _assert_same(*_explain_both(deit_tiny_onnx, images, "rollout", "squash", head_fusion="max", discard_ratio=0.9))


def test_map_threads_follow_the_session_threads(tiny_vit_onnx):
    from attnmap.runtime.model.session import physical_cores

    assert Explainer(tiny_vit_onnx, provider="cpu", threads=1).map_threads == 1
    assert Explainer(tiny_vit_onnx, provider="cpu", threads=3).map_threads == 3
    assert Explainer(tiny_vit_onnx, provider="cpu").map_threads == physical_cores()
