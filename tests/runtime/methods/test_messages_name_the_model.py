"""Errors about what a model file can do name the file (issue 24: 'this model' said nothing)."""

import numpy as np
import pytest

from attnmap import Explainer
from attnmap.runtime.core.errors import ExplainError, MethodOptionError
from attnmap.runtime.methods import check_method_use, check_options


@pytest.fixture(scope="module")
def tiny(tiny_vit_onnx):
    return Explainer(tiny_vit_onnx, provider="cpu")


def test_a_layer_out_of_range_names_the_file_and_its_layer_count(tiny):
    n = tiny.meta.num_layers
    with pytest.raises(MethodOptionError) as info:
        check_options("attention", {"layer": n + 3}, tiny.meta, model=repr(tiny.path.name))
    assert str(info.value) == (f"option 'layer' of method 'attention' must be in [{-n}, {n}) for "
                               f"{tiny.path.name!r} with {n} layers; got {n + 3}")
    # without a name the message still reads
    with pytest.raises(MethodOptionError, match=f"for a model with {n} layers"):
        check_options("attention", {"layer": n}, tiny.meta)


def test_a_gradient_method_on_a_file_without_gradients_names_the_file(tiny):
    assert not tiny.meta.has_gradients
    with pytest.raises(ExplainError,
                       match=f"method 'chefer' needs attention gradients, and {tiny.path.name!r} has none"):
        check_method_use("chefer", tiny.meta, model=repr(tiny.path.name))
    with pytest.raises(ExplainError, match=f"and {tiny.path.name!r} has none"):
        tiny.explain(np.zeros((32, 32, 3), np.uint8), method="chefer")
