"""Inference-clean graphs (runtime/model/inference_graph.py) and load errors that name the node
(runtime/model/ort_errors.py), on every provider onnxruntime offers here."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from attnmap.runtime.core.errors import ModelError
from attnmap.runtime.model.graph import read_model
from attnmap.runtime.model.inference_graph import inference_graph, inference_problems
from attnmap.runtime.model.ort_errors import describe_ort_error
from attnmap.runtime.model.providers import ORT_NAMES, short_name
from attnmap.runtime.model.session import OnnxModel

PRESENT = [short_name(p) for p in ort.get_available_providers() if short_name(p) in ORT_NAMES]
CPU = ["CPUExecutionProvider"]


def _training_layer_norm(opset: int = 20) -> onnx.ModelProto:
    """X (2, 5, 8) -> LayerNormalization with Y, Mean and InvStdDev all read, and an ArgMax(axis=-1)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 8])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "scale"),
             numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "bias")]
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y", "mean", "inv"], name="ln",
                              axis=-1, epsilon=1e-5),
             helper.make_node("Mul", ["mean", "inv"], ["stats"], name="stats"),
             helper.make_node("ArgMax", ["y"], ["arg"], name="argmax", axis=-1, keepdims=0),
             helper.make_node("Dropout", ["y"], ["y_out"], name="dropout")]
    outs = [helper.make_tensor_value_info(n, t, shape) for n, t, shape in
            (("y_out", TensorProto.FLOAT, [2, 5, 8]), ("mean", TensorProto.FLOAT, [2, 5, 1]),
             ("inv", TensorProto.FLOAT, [2, 5, 1]), ("stats", TensorProto.FLOAT, [2, 5, 1]),
             ("arg", TensorProto.INT64, [2, 5]))]
    graph = helper.make_graph(nodes, "training_ln", [x], outs, inits)
    # IR 10, as torch's exporter writes: older onnxruntime builds (1.24) refuse onnx's newest IR
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


@pytest.mark.parametrize("opset", [17, 20])
def test_a_training_layer_norm_becomes_one_output_with_the_same_statistics(opset):
    model = _training_layer_norm(opset)
    assert len(inference_problems(model)) == 3  # the 3-output LayerNorm, the Dropout, the negative axis
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(2, 5, 8)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=CPU).run(None, {"x": x})
    clean = inference_graph(model)
    onnx.checker.check_model(clean, full_check=True)
    assert inference_problems(clean) == []
    ln = [n for n in clean.graph.node if n.op_type == "LayerNormalization"]
    assert len(ln) == 1 and list(ln[0].output) == ["y"]
    argmax = next(n for n in clean.graph.node if n.op_type == "ArgMax")
    assert next(a.i for a in argmax.attribute if a.name == "axis") == 2  # -1 of rank 3
    for provider in PRESENT:
        got = OnnxModelFree(clean, provider).run(x)
        for name, a, b in zip(("y", "mean", "inv", "stats", "arg"), got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"{name} on {provider}")
    # and an independent reference: the ONNX definition in NumPy
    mean = x.mean(-1, keepdims=True)
    np.testing.assert_allclose(want[1], mean, rtol=1e-5)
    np.testing.assert_allclose(want[2], 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5), rtol=1e-5)


class OnnxModelFree:
    """A bare onnxruntime session on one provider (the graph has no attnmap metadata)."""

    def __init__(self, model: onnx.ModelProto, provider: str):
        from attnmap.runtime.model.providers import resolve_providers

        self.session = ort.InferenceSession(model.SerializeToString(), providers=resolve_providers(provider))
        assert self.session.get_providers()[0] == ORT_NAMES[provider]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {"x": x})


def test_the_rewrite_changes_no_output_and_a_rewritten_graph_is_left_as_it_is(tiny_vit_onnx):
    proto = read_model(tiny_vit_onnx)
    once = inference_graph(read_model(tiny_vit_onnx)).SerializeToString()
    assert inference_graph(onnx.load_from_string(once)).SerializeToString() == once
    x = np.random.default_rng(3).normal(size=(2, 3, 32, 32)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=CPU).run(None, {"input": x})
    got = ort.InferenceSession(once, providers=CPU).run(None, {"input": x})
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_the_committed_gradient_file_rewritten_gives_the_same_outputs(tiny_vit_grads_onnx):
    proto = read_model(tiny_vit_grads_onnx)
    clean = inference_graph(read_model(tiny_vit_grads_onnx))
    assert inference_problems(clean) == []
    x = np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype(np.float32)
    feed = {"input": x, "target": np.array([-1, 3], np.int64)}
    want = ort.InferenceSession(proto.SerializeToString(), providers=CPU).run(None, feed)
    got = ort.InferenceSession(clean.SerializeToString(), providers=CPU).run(None, feed)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(b).max())))


def _unloadable(tiny_vit_onnx, tmp_path) -> str:
    """The tiny model with its head's weight one column short: Gemm cannot multiply (B, 32) by it."""
    proto = read_model(tiny_vit_onnx)
    gemm = [n for n in proto.graph.node if n.op_type == "Gemm"][-1]
    weight = next(i for i in proto.graph.initializer if i.name == gemm.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight)[:, :-1].copy(), weight.name))
    path = tmp_path / "broken_head.onnx"
    onnx.save_model(proto, str(path))
    return gemm.name


@pytest.mark.parametrize("provider", PRESENT)
def test_a_file_a_provider_cannot_run_names_the_node_and_the_reason(tiny_vit_onnx, tmp_path, provider):
    node = _unloadable(tiny_vit_onnx, tmp_path)
    # the CPU provider loads it and fails at its first run; OpenVINO refuses it at load
    with pytest.raises(ModelError) as info:
        OnnxModel(tmp_path / "broken_head.onnx", provider=provider).run(np.zeros((1, 3, 32, 32), np.float32))
    message = str(info.value)
    assert f"node {node!r} (Gemm): " in message, message
    assert "\n" not in message and "onnxruntime::" not in message and "[ONNXRuntimeError]" not in message
    reason = message.split(f"node {node!r} (Gemm): ", 1)[1]
    assert "32" in reason and "31" in reason, message  # the two sizes that do not match
    assert info.value.__cause__ is not None  # onnxruntime's whole message stays on the cause


@pytest.mark.skipif("openvino" not in PRESENT, reason="needs onnxruntime-openvino (CI's openvino lane)")
def test_openvino_s_refusal_of_a_training_graph_names_every_node_and_why(tiny_vit_grads_onnx):
    """The committed gradient file as it is, without the rewrite OnnxModel applies."""
    with pytest.raises(Exception) as info:
        ort.InferenceSession(str(tiny_vit_grads_onnx), providers=["OpenVINOExecutionProvider", *CPU])
    described = describe_ort_error(info.value)
    layer_norms = [n.name for n in read_model(tiny_vit_grads_onnx).graph.node
                   if n.op_type == "LayerNormalization" and len(n.output) > 1]
    assert f"node {layer_norms[0]!r} (LayerNormalization): LayerNormalization expects 1 output" in described
    assert "more node" in described or len(layer_norms) < 5
    assert "Check '" not in described and "onnxruntime::" not in described
