"""OnnxModel's CPU fast path: per-layer attention outputs (runtime/graph.py) bound into reused
buffers (runtime/buffers.py). Results must equal the file's own stacked outputs bit for bit,
and a result a caller keeps must never be overwritten by a later run.

Uses the shipped default model (onnxruntime + NumPy only) and small hand-built ONNX graphs.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from attnmap.runtime.model.buffers import BufferPool
from attnmap.runtime.model.graph import split_stacked_outputs
from attnmap.runtime.model import providers, session
from attnmap.runtime.core.errors import ProviderError
from attnmap.runtime.model.plan import throughput_plan
from attnmap.runtime.model.session import OnnxModel

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "shapes_vit.onnx"


@pytest.fixture(scope="module")
def model() -> OnnxModel:
    return OnnxModel(SHIPPED, provider="cpu")


@pytest.fixture(scope="module")
def raw() -> ort.InferenceSession:
    """The file exactly as written: one stacked `attentions` output."""
    return ort.InferenceSession(str(SHIPPED), providers=["CPUExecutionProvider"])


def _inputs(model: OnnxModel, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, *model.meta.image_size)).astype(np.float32)


def test_the_file_keeps_its_stacked_output_and_the_session_splits_it(model, raw):
    assert [o.name for o in raw.get_outputs()] == ["logits", "attentions"]
    assert model.output_names == ("logits", "attentions")
    parts = model._split["attentions"]
    assert len(parts) == model.meta.num_layers
    assert [o.name for o in model.session.get_outputs()] == ["logits", *parts]


def test_the_split_session_describes_the_files_own_outputs(model, raw):
    # the load-time metadata check reads these: they must be the file's shapes, not the layers'
    assert model.describe_outputs() == [{"name": o.name, "shape": o.shape, "type": o.type} for o in raw.get_outputs()]
    assert model.describe_outputs()[1]["shape"] == ["batch", 4, 3, 145, 145]


@pytest.mark.parametrize("batch", [1, 3])
def test_outputs_equal_the_files_stacked_outputs(model, raw, batch):
    x = _inputs(model, batch, seed=batch)
    logits, stacked = raw.run(["logits", "attentions"], {raw.get_inputs()[0].name: x})
    out = model.run(x)
    assert out.attentions.shape == stacked.shape == (batch, model.meta.num_layers, model.meta.output_heads,
                                                     model.meta.num_tokens, model.meta.num_tokens)
    np.testing.assert_array_equal(out.attentions, stacked)
    np.testing.assert_array_equal(out.logits, logits)
    # every layer is one contiguous block (what the explanation methods read), and batch 1 is
    # contiguous as a whole
    assert all(out.attentions[:, layer].flags.c_contiguous for layer in range(stacked.shape[1]))
    assert out.attentions.flags.c_contiguous == (batch == 1)


def test_the_unbound_path_stacks_the_split_outputs_back(model, raw):
    x = _inputs(model, 2, seed=7)
    stacked = raw.run(["attentions"], {raw.get_inputs()[0].name: x})[0]
    pool, model._pool = model._pool, None  # what a non-CPU provider runs
    try:
        out = model.run(x)
    finally:
        model._pool = pool
    assert out.attentions.flags.c_contiguous
    np.testing.assert_array_equal(out.attentions, stacked)


def test_a_kept_result_is_never_overwritten(model):
    first = model.run(_inputs(model, 1, seed=1))
    kept_view = first.attentions[0, -1]  # a view alone must protect its buffer too
    expected, expected_view = first.attentions.copy(), kept_view.copy()
    second = model.run(_inputs(model, 1, seed=2))
    np.testing.assert_array_equal(first.attentions, expected)
    assert not np.shares_memory(first.attentions, second.attentions)
    assert not np.array_equal(second.attentions, expected)
    del first
    model.run(_inputs(model, 1, seed=3))
    np.testing.assert_array_equal(kept_view, expected_view)


def test_buffers_are_reused_once_released(model):
    x = _inputs(model, 4, seed=4)  # a batch size no other test uses: a fresh pool key
    before = model._pool.allocations
    address = model.run(x).attentions.ctypes.data
    for _ in range(5):
        out = model.run(x)
        assert out.attentions.ctypes.data == address
        del out
    assert model._pool.allocations == before + 1


def test_concurrent_runs_get_their_own_results(model, raw):
    xs = [_inputs(model, 1, seed=100 + i) for i in range(4)]
    refs = [raw.run(["attentions"], {raw.get_inputs()[0].name: x})[0] for x in xs]
    failures = []

    def work(i: int) -> None:
        for _ in range(15):
            out = model.run(xs[i])
            if not np.array_equal(out.attentions, refs[i]):
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_pool_hands_out_a_held_set_never_and_keeps_at_most_per_key():
    pool = BufferPool(per_key=2, keys=1)
    spec = [((2, 3), np.dtype(np.float32))]
    a = pool.acquire(("k", 1), spec)
    b = pool.acquire(("k", 1), spec)
    c = pool.acquire(("k", 1), spec)  # both pooled sets held: a third, unpooled set
    assert len({id(a[0]), id(b[0]), id(c[0])}) == 3
    del c
    assert pool.acquire(("k", 1), spec)[0] is not a[0]  # a and b still held
    held, address = a[0], a[0].ctypes.data
    del a
    assert pool.acquire(("k", 1), spec)[0] is not held  # `held` still references it
    del held
    got = pool.acquire(("k", 1), spec)  # now free again: the first set comes back
    assert got[0].ctypes.data == address and pool.allocations == 5
    pool.acquire(("other", 1), spec)  # keys=1: the first key's sets are dropped
    assert list(pool._sets) == [("other", 1)]


# ----------------------------------------------------------------------------- the rewrite
def _stack_graph(axis: int = 1, unsqueeze_axis: int = 1, extra_reader: bool = False) -> onnx.ModelProto:
    """x (B, 2, 3) -> layer tensors a0 = Relu(x), a1 = Neg(x) -> attentions = Concat(Unsqueeze(a_l))."""
    nodes = [helper.make_node("Relu", ["x"], ["a0"]), helper.make_node("Neg", ["x"], ["a1"]),
             helper.make_node("Unsqueeze", ["a0", "ax"], ["u0"]), helper.make_node("Unsqueeze", ["a1", "ax"], ["u1"]),
             helper.make_node("Concat", ["u0", "u1"], ["attentions"], axis=axis),
             helper.make_node("ReduceSum", ["x"], ["logits"], keepdims=0)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B"]),
               helper.make_tensor_value_info("attentions", TensorProto.FLOAT, None)]
    if extra_reader:
        nodes.append(helper.make_node("Identity", ["attentions"], ["copy"]))
        outputs.append(helper.make_tensor_value_info("copy", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 2, 3])],
                              outputs, [helper.make_tensor("ax", TensorProto.INT64, [1], [unsqueeze_axis])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime 1.17, the oldest supported, reads
    return model


def test_split_makes_the_layers_outputs_and_ort_agrees():
    model = _stack_graph()
    x = np.random.default_rng(0).standard_normal((3, 2, 3)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(["attentions"], {"x": x})[0]
    assert split_stacked_outputs(model) == {"attentions": ("a0", "a1")}
    assert [o.name for o in model.graph.output] == ["logits", "a0", "a1"]
    assert not [n for n in model.graph.node if n.op_type in ("Concat", "Unsqueeze")]
    a0, a1 = ort.InferenceSession(model.SerializeToString()).run(["a0", "a1"], {"x": x})
    np.testing.assert_array_equal(np.stack([a0, a1], axis=1), before)


@pytest.mark.parametrize("graph", [dict(axis=0), dict(unsqueeze_axis=0), dict(extra_reader=True)],
                         ids=["concat-axis-0", "unsqueeze-axis-0", "stack-read-by-another-node"])
def test_split_leaves_other_patterns_alone(graph):
    model = _stack_graph(**graph)
    before = model.SerializeToString()
    assert split_stacked_outputs(model) == {}
    assert model.SerializeToString() == before


@pytest.mark.parametrize("cores, threads, workers, want", [
    (2, None, None, (1, 2)),  # the 2-core box: two single-threaded runs
    (8, None, None, (4, 2)),
    (1, None, None, (None, 1)),  # one core: nothing to share
    (8, 3, None, (3, 1)),  # threads asked for: one run on them
    (8, None, 4, (2, 4)),
    (8, 2, 3, (2, 3)),
])
def test_throughput_plan_splits_the_cores_between_runs(monkeypatch, cores, threads, workers, want):
    monkeypatch.setattr(session, "physical_cores", lambda: cores)
    plan = throughput_plan("cpu", threads, workers)
    assert (plan.threads, plan.workers) == want and plan.batch_size == 4
    assert throughput_plan("cpu", threads, workers, 16) == (*want, 16)
    # auto plans as the cpu where the CPU is what auto takes (not where an accelerator is offered:
    # CUDA, or OpenVINO in CI's openvino lane)
    auto_is_cpu = providers.resolve_providers("auto")[0] == providers.ORT_NAMES["cpu"]
    assert throughput_plan("auto", threads, workers) == plan or not auto_is_cpu


def test_throughput_plan_on_cuda_keeps_one_run_and_batch_8(monkeypatch):
    monkeypatch.setattr(providers, "resolve_providers",
                        lambda provider: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(session, "physical_cores", lambda: 8)
    assert throughput_plan("cuda") == (None, 1, 8)
    assert throughput_plan("cuda", 2, 3, 32) == (2, 3, 32)


def test_throughput_plan_refuses_an_unknown_provider():
    with pytest.raises(ProviderError, match="provider must be one of"):
        throughput_plan("tpu")
