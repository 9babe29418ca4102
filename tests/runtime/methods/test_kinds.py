"""Method kinds are adapter objects: a kind registered in one place works on every path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from attnmap import Explainer, FrameEngine, Job
from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.fronts.serve.api import methods_document
from attnmap.runtime.methods import KINDS, METHODS, check_method_use, runs_on
from attnmap.runtime.methods.base import make_method, normalize_maps
from attnmap.runtime.methods.kinds import ATTENTION, CONTRIBUTION, DECOMPOSITION, FEATURES, NORMS, PERTURBATION, TAIL, Kind


class InputKind(Kind):
    """A kind that reads only the model input: what a method of it needs and how it is called."""

    name = "input"
    reads = ("input",)
    class_specific = True

    def check_model(self, method, meta, model):
        if meta.input_size[1] % meta.grid_size[0]:
            raise ExplainError(f"{model} has an input that the grid does not divide")

    def maps(self, method, outputs, layout, options, *, x=None, forward=None, classes=None):
        return method.fn(x, layout, **options)


def brightness(x, layout, *, gain: float = 1.0):
    """Mean input brightness per patch (an independent, obvious map)."""
    b, _, h, w = x.shape
    gh, gw = layout.grid
    cells = x.mean(axis=1).reshape(b, gh, h // gh, gw, w // gw).mean(axis=(2, 4))
    return normalize_maps(gain * cells)


@pytest.fixture
def fake_method(monkeypatch):
    from attnmap.runtime.core.options import OptionSpec

    m = make_method("brightness", brightness, "Mean input brightness per patch.",
                    {"gain": OptionSpec("gain", float, None, "Scale before normalising.", low=0.0, low_open=True)},
                    kind=InputKind())
    monkeypatch.setitem(METHODS, "brightness", m)
    return m


def test_a_new_kind_registered_in_one_place_runs_end_to_end(fake_method, tiny_vit_onnx):
    ex = Explainer(tiny_vit_onnx, provider="cpu")
    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert runs_on("brightness", ex.meta) and fake_method.class_specific and not fake_method.reruns_model
    x, _ = ex.preprocess([img])
    want = brightness(x, ex.meta.layout)
    got = ex.explain(img, method="brightness", gain=2.0)
    assert np.array_equal(got.grid, want[0]) and got.method == "brightness"
    assert got.target == int(np.argmax(got.probs))  # class-specific: it names the class it explains
    item = FrameEngine(ex, Job(method="brightness", target=3)).explain_batch([Frame(0, img, "a", 0.0)])[0]
    assert item.ok and np.array_equal(item.explanation.grid, want[0]) and item.explanation.target == 3
    assert np.array_equal(ex.maps(ex.infer(x), "brightness", x=x), want)
    listed = {m["name"]: m for m in methods_document(ex.meta)["methods"]}["brightness"]
    assert (listed["kind"], listed["class_specific"], listed["runs_on_model"]) == ("input", True, True)
    with pytest.raises(Exception, match="gain"):
        ex.explain(img, method="brightness", gain=-1.0)


def test_the_registered_kinds_say_what_they_read():
    assert KINDS == {"attention": ATTENTION, "perturbation": PERTURBATION, "features": FEATURES,
                     "decomposition": DECOMPOSITION, "norms": NORMS, "contribution": CONTRIBUTION, "tail": TAIL}
    assert NORMS.reads == ("attentions", "head_norms") and NORMS.splits and not NORMS.class_specific
    assert DECOMPOSITION.reads == ("attentions", "mix_grams", "mix_grams_ln") and DECOMPOSITION.splits
    assert CONTRIBUTION.class_specific and not DECOMPOSITION.class_specific
    assert {n for n, m in METHODS.items() if m.kind is ATTENTION} == {
        "rollout", "attention", "flow", "chefer", "grad_rollout", "gradsam", "product"}
    assert [n for n, m in METHODS.items() if m.reruns_model] == ["occlusion", "rise", "reciprocam", "beyond_intuition",
                                                                 "vit_cx"]
    assert TAIL.reads == ("tail_input",) and TAIL.reruns_tail and not PERTURBATION.reruns_tail
    # kinds of their own, in their methods' files: Beyond Intuition's integrated gradients, ViT-CX's token masks
    assert (METHODS["beyond_intuition"].kind.name, METHODS["vit_cx"].kind.name) == ("attention+feedback",
                                                                                    "token-masks")
    assert PERTURBATION.reads == ("input",) and FEATURES.reads == ("tokens", "token_grads")
    assert str(ATTENTION) == "attention" and ATTENTION.splits and not PERTURBATION.splits


def test_a_kind_checks_what_the_model_file_holds(tiny_vit_onnx, tiny_vit_grads_onnx):
    plain, grads = Explainer(tiny_vit_onnx, provider="cpu").meta, Explainer(tiny_vit_grads_onnx, provider="cpu").meta
    with pytest.raises(ExplainError, match="needs attention gradients, and 'tiny.onnx' has none"):
        check_method_use("gradcam", plain, model="'tiny.onnx'")
    older = dataclasses.replace(grads, outputs=tuple(o for o in grads.outputs if o not in ("tokens", "token_grads")))
    with pytest.raises(ExplainError, match="needs the token features"):
        check_method_use("gradcam", older, model="'old.onnx'")
    with pytest.raises(ExplainError, match="'tiny.onnx' has none"):
        check_method_use("chefer", plain, model="'tiny.onnx'")
    assert check_method_use("occlusion", plain).kind is PERTURBATION  # no gradients needed
    assert check_method_use("gradcam", grads).kind is FEATURES


def test_an_unknown_kind_name_is_a_programming_error():
    with pytest.raises(TypeError, match="kind must be"):
        make_method("x", brightness, "", {"gain": None}, kind="pixels")
