"""The engine's one batch step (``FrameEngine.explain_batch``): what every front calls.

Its results are compared against the stages run by hand (preprocess -> model -> the method's
own function -> softmax), and ``Explainer.explain`` against it, bit for bit, on the committed
tiny models and the shipped model.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import attnmap
from attnmap import Explainer, FrameEngine, Job, OverlayStyle
from attnmap.runtime.core.errors import ImageError, MethodOptionError, OptionError
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.methods import METHODS, attention_maps
from attnmap.runtime.methods.base import softmax

PACKAGE = Path(attnmap.__file__).resolve().parent


def photo(seed: int, h: int = 37, w: int = 53) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def frames_of(images) -> list[Frame]:
    return [Frame(i, img, f"img{i}", 0.0) for i, img in enumerate(images)]


def by_hand(ex: Explainer, images, method: str, target=None, **options):
    """(probs, grids) of the stages run by hand, the method called directly on the outputs."""
    x, _ = ex.preprocess(images, fit="crop")
    t = None if target is None else np.asarray(target, np.int64)
    out = ex.infer(x, target=t)
    m = METHODS[method]
    if m.kind.name == "attention":
        grids = attention_maps(method, out.attentions, ex.meta.layout, grads=out.grads, **options)
    elif m.kind.name == "perturbation":
        classes = out.logits.argmax(axis=1) if t is None else t
        grids = m.fn(x, ex.probabilities, classes, ex.meta.layout, **{**m.defaults, **options})
    else:
        grids = m.fn(out.tokens, out.token_grads, ex.meta.layout, **{**m.defaults, **options})
    return softmax(out.logits), grids


CASES = [("tiny_vit_onnx", "rollout", {}), ("tiny_vit_onnx", "attention", {"layer": 0}),
         ("tiny_vit_grads_onnx", "chefer", {}), ("tiny_vit_grads_onnx", "gradcam", {}),
         ("tiny_vit_grads_onnx", "occlusion", {"stride": 8})]


@pytest.mark.parametrize("fixture, method, options", CASES, ids=[c[1] for c in CASES])
def test_the_batch_step_and_explain_equal_the_stages_by_hand_bit_for_bit(request, fixture, method, options):
    ex = Explainer(request.getfixturevalue(fixture), provider="cpu", threads=1)
    images = [photo(i) for i in range(3)]
    probs, grids = by_hand(ex, images, method, **options)
    items = FrameEngine(ex, Job(method=method, options=options)).explain_batch(frames_of(images))
    got = ex.explain(images, method=method, **options)
    for i, item in enumerate(items):
        assert item.ok and item.index == i
        for e in (item.explanation, got[i]):
            assert np.array_equal(e.grid, grids[i]) and e.grid.dtype == np.float32
            assert np.array_equal(e.probs, probs[i])
            assert e.topk[0].index == int(np.argmax(probs[i]))


def test_the_shipped_model_explains_alike_through_the_step_explain_and_by_hand():
    ex = Explainer(provider="cpu")
    images = [photo(7, 300, 260), photo(8, 120, 400)]
    probs, grids = by_hand(ex, images, "rollout")
    items = FrameEngine(ex, Job()).explain_batch(frames_of(images))
    single = [ex.explain(img) for img in images]
    for i in range(2):
        for e in (items[i].explanation, single[i]):
            assert np.array_equal(e.grid, grids[i]) and np.array_equal(e.probs, probs[i])


def test_one_bad_item_never_ends_the_batch(tiny_vit_onnx):
    ex = Explainer(tiny_vit_onnx, provider="cpu")
    good = [photo(i) for i in range(3)]
    frames = frames_of(good)
    frames.insert(1, Frame(9, None, "broken.jpg", 0.0, error=ImageError("broken.jpg is not an image")))
    frames.insert(3, Frame(5, np.zeros((4, 4), np.float64), "floats", 0.0))  # preprocessing refuses it
    items = FrameEngine(ex, Job()).explain_batch(frames)
    assert [it.frame for it in items] == frames  # the order of the frames, failed ones in their place
    assert [it.ok for it in items] == [True, False, True, False, True]
    assert isinstance(items[1].error, ImageError) and "broken.jpg" in items[1].reason()
    alone = FrameEngine(ex, Job()).explain_batch(frames_of(good))
    for it, ref in zip([items[0], items[2], items[4]], alone):
        assert np.array_equal(it.explanation.grid, ref.explanation.grid)


def test_a_model_failure_fails_the_items_of_the_batch_not_the_caller(tiny_vit_onnx, monkeypatch):
    ex = Explainer(tiny_vit_onnx, provider="cpu")

    def broken(x, target=None):
        raise RuntimeError("the model broke")

    monkeypatch.setattr(ex, "infer", broken)
    items = FrameEngine(ex, Job()).explain_batch(frames_of([photo(0), photo(1)]))
    assert [it.reason() for it in items] == ["RuntimeError: the model broke"] * 2


def test_explain_raises_the_typed_error_of_a_failed_image(tiny_vit_onnx):
    ex = Explainer(tiny_vit_onnx, provider="cpu")
    with pytest.raises(ImageError):
        ex.explain([photo(0), np.zeros((5, 5, 4, 2), np.uint8)])


def test_per_frame_targets_and_drawing(tiny_vit_grads_onnx):
    ex = Explainer(tiny_vit_grads_onnx, provider="cpu")
    images = [photo(1), photo(2)]
    engine = FrameEngine(ex, Job(method="chefer", style=OverlayStyle()))
    items = engine.explain_batch(frames_of(images), targets=[4, 1])
    assert [it.explanation.target for it in items] == [4, 1]
    assert all(it.drawn.shape == img.shape for it, img in zip(items, images))
    _, grids = by_hand(ex, images, "chefer", target=[4, 1])
    assert all(np.array_equal(it.explanation.grid, g) for it, g in zip(items, grids))
    assert engine.explain_batch(frames_of(images), draw=False)[0].drawn is None
    with pytest.raises(OptionError, match="one class per frame"):
        engine.explain_batch(frames_of(images), targets=[4])
    with pytest.raises(MethodOptionError, match="class-agnostic"):
        FrameEngine(ex, Job()).explain_batch(frames_of(images), targets=[4, 1])


def test_the_top_classes_are_one_path_explain_topk_is_the_engines(tiny_vit_grads_onnx):
    ex = Explainer(tiny_vit_grads_onnx, provider="cpu")
    img = photo(3)
    alts = ex.explain_topk(img, 3, method="gradsam")
    item = FrameEngine(ex, Job(method="gradsam", top_classes=3)).explain_batch(frames_of([img]))[0]
    top = [int(c) for c in np.argsort(-by_hand(ex, [img], "rollout")[0][0], kind="stable")[:3]]
    assert [e.target for e in alts] == [e.target for e in item.alternatives] == top
    assert all(np.array_equal(a.grid, b.grid) for a, b in zip(alts, item.alternatives))


def test_a_checked_job_is_checked_once(tiny_vit_onnx, monkeypatch):
    ex = Explainer(tiny_vit_onnx, provider="cpu")
    job = Job(method="attention", options={"layer": np.int64(-1)}).checked(ex.meta)
    assert type(job.options["layer"]) is int and job.checked(ex.meta) is job
    calls = []
    monkeypatch.setattr("attnmap.runtime.engine.job.check_options", lambda *a, **k: calls.append(a) or {})
    engine = FrameEngine(ex, job)
    engine.explain_batch(frames_of([photo(0)]))
    engine.explain_batch(frames_of([photo(1)]))
    assert calls == [] and engine.job is job


def test_no_module_outside_the_engine_touches_its_batch_or_privates():
    private = re.compile(r"\b_Batch\b|\.(_prepare|_infer|_explain_items|_explain_all|_method)\(|"
                         r"engine\.(prepare|infer|explain)\(")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(("runtime/engine/", "tests/")) or "/.venv/" in rel:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if private.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []


def test_explain_checks_each_new_set_of_arguments_even_after_a_like_one(tiny_vit_onnx):
    ex = Explainer(tiny_vit_onnx, provider="cpu")
    img = photo(4)
    ex.explain(img, method="rollout", residual=True)
    with pytest.raises(MethodOptionError, match="residual"):
        ex.explain(img, method="rollout", residual=1)  # equal to True, and still refused
    ex.explain(img, method="attention", layer=1)
    with pytest.raises(MethodOptionError, match="layer"):
        ex.explain(img, method="attention", layer=1.0)
    with pytest.raises(OptionError, match="topk"):
        ex.explain(img, method="attention", layer=1, topk=True)
    assert ex.explain(img, method="attention", layer=1, topk=2).topk[1].index >= 0
