"""bf16 files: the conversion's graph (float32 islands), its rounding twin, where bf16 runs, the gate.

No CPU here computes bf16 (the project's machine is an AVX2-only EPYC), so what is tested is
what can be: the graph the conversion writes, the twin's numbers against independent references
(ml_dtypes' bfloat16 and plain NumPy products), the one-line refusal, and the gate refusing a
bf16 conversion whose maps break (with a provider pretended where none is).
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from attnmap.runtime.core.errors import FidelityError
from attnmap.runtime.core.meta import ModelMeta
from attnmap.runtime.precision import bf16 as b
from attnmap.runtime.precision import convert as c
from attnmap.runtime.precision.convert import ConvertOptions, convert_file, convert_options

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "shapes_vit.onnx"


def _quiet(_line: str) -> None:
    pass


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def test_round_to_bf16_matches_ml_dtypes_and_onnxruntime():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(5000) * 10.0 ** rng.integers(-30, 30, 5000),
                        [0.0, -0.0, 1.0, 65504.0, 3.4e38, np.inf, -np.inf]]).astype(np.float32)
    ours = b.round_to_bf16(x)
    assert np.array_equal(ours, x.astype(ml_dtypes.bfloat16).astype(np.float32))
    cast = helper.make_model(helper.make_graph(
        [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.BFLOAT16),
         helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(x)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [len(x)])]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert np.array_equal(_run(cast, {"x": x})[0], ours)


def _island_io(model: onnx.ModelProto) -> dict[str, list[bool]]:
    """op type -> for each node of it, whether it reads or writes a bf16 tensor."""
    out: dict[str, list[bool]] = {}
    for n in model.graph.node:
        out.setdefault(n.op_type, []).append(any(t.endswith("__bf16") for t in [*n.input, *n.output]))
    return out


def test_conversion_keeps_softmax_layernorm_and_outputs_float32(tiny_vit_grads_onnx):
    src = onnx.load(str(tiny_vit_grads_onnx))
    out = b.convert_bf16(src)
    onnx.checker.check_model(out, full_check=True)
    io = _island_io(out)
    assert not any(io["Softmax"]) and not any(io["LayerNormalization"]) and not any(io["ScatterElements"])
    assert any(io["MatMul"]) and any(io["Gelu"])
    # every graph output is float32 and produced by a float32 node (no output rounded to bf16)
    producer = {y: n for n in out.graph.node for y in n.output}
    for o in out.graph.output:
        assert o.type.tensor_type.elem_type == TensorProto.FLOAT
        n = producer[o.name]
        assert not (n.op_type == "Cast" and any(x.endswith("__bf16") for x in n.input)), o.name
    # a bf16 MatMul's weights are stored bf16 (the MatMuls producing gradient outputs stay float32)
    inits = {t.name: t for t in out.graph.initializer}
    weights = [x for n in out.graph.node if n.op_type == "MatMul" and n.output[0].endswith("__bf16")
               for x in n.input if x in inits]
    assert weights and all(inits[w].data_type == TensorProto.BFLOAT16 for w in weights)
    assert src.graph.node[0].input == onnx.load(str(tiny_vit_grads_onnx)).graph.node[0].input  # not mutated


def test_without_islands_softmax_and_the_attention_outputs_go_bf16(tiny_vit_onnx):
    io = _island_io(b.convert_bf16(onnx.load(str(tiny_vit_onnx)), islands=()))
    assert all(io["Softmax"]) and all(io["LayerNormalization"])


def test_the_twin_computes_bf16_storage_with_float32_accumulation():
    rng = np.random.default_rng(1)
    a, w = rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal((8, 5)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["p"]), helper.make_node("Relu", ["p"], ["y"])],
                          "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    converted = b.convert_bf16(model, islands=())  # Relu is the output's producer: no island at all
    twin = b.emulate_bf16(converted)
    r = lambda v: v.astype(ml_dtypes.bfloat16).astype(np.float32)  # noqa: E731
    expected = r(np.maximum(r(r(a).astype(np.float64) @ r(w).astype(np.float64)).astype(np.float32), 0))
    np.testing.assert_allclose(_run(twin, {"a": a})[0], expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert not np.array_equal(_run(twin, {"a": a})[0], np.maximum(a @ w, 0))


def test_support_names_the_missing_flags_and_counts_only_providers_that_run_the_probe(monkeypatch):
    none = b.bf16_support(flags=("avx2", "f16c"), available=["CPUExecutionProvider"])
    assert none.missing_flags == ("avx512_bf16", "amx_bf16") and none.cpu_flags == ()
    if "cpu" not in none.runners:  # onnxruntime's x86 CPU provider has no bf16 MatMul
        assert "lacks avx512_bf16 and amx_bf16" in none.line() and "cpu: onnxruntime" in none.line()
        assert "openvino: not installed" in none.line() and "\n" not in none.line()
    ov = ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(b, "_probe_bf16", lambda p: None if p == "OpenVINOExecutionProvider" else "has no kernel")
    some = b.bf16_support(flags=("avx2", "amx_bf16"), available=ov)
    assert some.runners == ("openvino",) and some.cpu_flags == ("amx_bf16",)
    assert some.line() == "bf16 runs here on: openvino"
    monkeypatch.setattr(b, "_probe_bf16", lambda p: "has no kernel")
    assert b.bf16_support(flags=("amx_bf16",), available=ov).runners == ()
    assert b.cpu_flags("/nonexistent") == ()


def _no_runner():
    return b.Bf16Support((), (), {"cpu": "has no bf16 MatMul kernel"})


def test_bf16_where_nothing_runs_it_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(c, "bf16_support", _no_runner)
    with pytest.raises(b.PrecisionUnavailable, match="lacks avx512_bf16 and amx_bf16") as exc:
        convert_options("bf16")
    assert "\n" not in str(exc.value)
    with pytest.raises(b.PrecisionUnavailable):
        convert_file(SHIPPED, tmp_path / "x.onnx", ConvertOptions("bf16"), log=_quiet)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture()
def pretend_runner(monkeypatch):
    monkeypatch.setattr(c, "bf16_support", lambda: b.Bf16Support(("amx_bf16",), ("openvino",)))


def test_a_bf16_file_that_passes_carries_its_figures(tmp_path, pretend_runner):
    report = convert_file(SHIPPED, tmp_path / "shapes_bf16.onnx", ConvertOptions("bf16"), log=_quiet)
    proto = onnx.load(str(report.path))
    meta = ModelMeta.from_props({p.key: p.value for p in proto.metadata_props}, str(report.path))
    assert meta.precision == "bf16" and meta.fidelity["top1_agreement"] >= 0.98
    assert meta.fidelity["maps"]["rollout"]["pearson_mean"] >= 0.98
    assert "softmax, layernorm, outputs" in meta.exporter["converter"]
    assert any(t.data_type == TensorProto.BFLOAT16 for t in proto.graph.initializer)
    assert report.size_bytes < 0.75 * report.source_size_bytes


def test_the_gate_refuses_a_bf16_conversion_that_breaks_maps(tmp_path, pretend_runner, monkeypatch):
    def broken_twin(model):  # bf16 with its weights scrambled: what a wrong rounding would do
        twin = b.emulate_bf16(model)
        rng = np.random.default_rng(0)
        for t in twin.graph.initializer:
            if t.data_type == TensorProto.FLOAT and len(t.dims) == 2:
                v = numpy_helper.to_array(t)
                t.CopyFrom(numpy_helper.from_array(rng.permutation(v.ravel()).reshape(v.shape), t.name))
        return twin

    monkeypatch.setattr(c, "emulate_bf16", broken_twin)
    with pytest.raises(FidelityError, match=r"top-1 agreement .* < 0.98|rollout correlation .* < 0.98"):
        convert_file(SHIPPED, tmp_path / "shapes_bf16.onnx", ConvertOptions("bf16"), log=_quiet)
    assert list(tmp_path.iterdir()) == []
