"""Models that lie are caught at load, and model-run errors say whose fault they are.

Every broken file is built in tmp_path: from the shipped torch-free model (its metadata or
outputs edited with onnx) or from tiny onnx.helper graphs whose output shapes onnxruntime
infers from the nodes. Each case asserts the error type, that the message names the file, and
the exact mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from attnmap import Explainer
from attnmap.runtime.core.errors import GraphMismatchError, InputError, MetadataError, ModelError
from attnmap.runtime.core.meta import PROPS_KEY, ModelMeta
from attnmap.runtime.model import providers, session
from attnmap.runtime.model.graph import check_against_graph
from attnmap.runtime.model.session import ORT_ERRORS, OnnxModel

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "shapes_vit.onnx"


# ----------------------------------------------------------------------------- file builders
@pytest.fixture(scope="module")
def shipped() -> onnx.ModelProto:
    return onnx.load(str(SHIPPED))


def copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def set_props(proto: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    return proto


def meta_json(proto: onnx.ModelProto) -> dict:
    return json.loads({p.key: p.value for p in proto.metadata_props}[PROPS_KEY])


def with_meta(proto: onnx.ModelProto, **changes) -> onnx.ModelProto:
    """A copy whose attnmap metadata has ``changes`` applied (None removes a field)."""
    data = meta_json(proto)
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return set_props(copy(proto), {PROPS_KEY: json.dumps(data)})


def save(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save(proto, str(path))
    return path


TINY_META = dict(model_name="tiny", input_size=[3, 16, 16], mean=[0.5] * 3, std=[0.5] * 3, interpolation="bilinear",
                 crop_pct=1.0, crop_mode="center", patch_size=[4, 4], grid_size=[4, 4], prefix_tokens=["class"],
                 pooling="token", num_layers=2, num_heads=2, head_fusion="none", num_classes=3,
                 label_names=["a", "b", "c"], outputs=["logits", "attentions"], inputs=["input"], schema_version=1)


def tiny_graph(outputs: dict[str, tuple] | None = None, image: tuple = ("batch", 3, 16, 16),
               image_type: int = TensorProto.FLOAT, extra_inputs: tuple[str, ...] = (), meta: dict | None = None,
               batch_one_only: bool = False) -> onnx.ModelProto:
    """``input`` -> every output ``Add(Reshape(ReduceMean(input)), zeros(1, *dims))``: shape (B, *dims).

    ``outputs`` maps a name to its dims after the batch (default: a graph that matches
    TINY_META). ``batch_one_only`` reshapes to a batch of 1, so a run of 2 images fails inside
    onnxruntime although the declared batch is symbolic.
    """
    outputs = outputs if outputs is not None else {"logits": (3,), "attentions": (2, 2, 17, 17)}
    source = "input"
    nodes, inits = [], []
    if image_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["input"], ["x32"], to=TensorProto.FLOAT))
        source = "x32"
    nodes.append(helper.make_node("ReduceMean", [source], ["m"], axes=list(range(1, len(image))), keepdims=1))
    for name, dims in outputs.items():
        shape = [1 if batch_one_only else -1] + [1] * len(dims)
        inits += [helper.make_tensor(f"{name}_shape", TensorProto.INT64, [len(shape)], shape),
                  helper.make_tensor(f"{name}_zeros", TensorProto.FLOAT, [1, *dims], [0.0] * int(np.prod(dims)))]
        nodes += [helper.make_node("Reshape", ["m", f"{name}_shape"], [f"{name}_m"]),
                  helper.make_node("Add", [f"{name}_m", f"{name}_zeros"], [name])]
    inputs = [helper.make_tensor_value_info("input", image_type, list(image))]
    inputs += [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch"]) for n in extra_inputs]
    declared = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [image[0], *dims]) for n, dims in outputs.items()]
    graph = helper.make_graph(nodes, "tiny", inputs, declared, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta is not None:
        set_props(model, {PROPS_KEY: json.dumps({**TINY_META, **meta})})
    return model


def load_error(path: Path, kind: type[Exception]) -> Exception:
    """The error OnnxModel(path) raises, checked to be ``kind`` and to name the file."""
    with pytest.raises(kind) as info:
        OnnxModel(path, provider="cpu")
    assert str(path) in str(info.value), str(info.value)
    return info.value


# ----------------------------------------------------------------------------- the controls
def test_the_shipped_model_and_a_matching_tiny_graph_load(tmp_path):
    model = OnnxModel(SHIPPED, provider="cpu")
    assert model.output_names == ("logits", "attentions") and model.meta.num_tokens == 145
    tiny = OnnxModel(save(tiny_graph(meta={}), tmp_path / "tiny.onnx"), provider="cpu")
    assert tiny.describe_outputs() == [{"name": "logits", "shape": ["batch", 3], "type": "tensor(float)"},
                                       {"name": "attentions", "shape": ["batch", 2, 2, 17, 17],
                                        "type": "tensor(float)"}]
    x = np.full((2, 3, 16, 16), 0.25, np.float32)
    out = tiny.run(x)
    np.testing.assert_array_equal(out.logits, np.full((2, 3), 0.25, np.float32))
    assert out.attentions.shape == (2, 2, 2, 17, 17)


def test_the_shipped_model_with_its_own_metadata_rewritten_still_loads(tmp_path, shipped):
    # the same JSON written back by the test's own helper: a control for every tampered copy below
    path = save(with_meta(shipped), tmp_path / "same.onnx")
    assert OnnxModel(path, provider="cpu").meta == OnnxModel(SHIPPED, provider="cpu").meta


# ----------------------------------------------------------------------------- not ONNX at all
def _truncated(at: float):
    def make(path: Path) -> None:
        data = SHIPPED.read_bytes()
        path.write_bytes(data[:int(len(data) * at)])
    return make


@pytest.mark.parametrize("write, reason, cause", [
    (lambda p: p.write_bytes(b""), "the file is empty", None),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "Error parsing message", DecodeError),
    (lambda p: p.write_text("# my notes\nthis is not a model\n", encoding="utf-8"), "Error parsing message",
     DecodeError),
    (_truncated(0.5), "Error parsing message", DecodeError),
    (_truncated(0.999), "Error parsing message", DecodeError),
    # a well-formed ModelProto header with no graph in it
    (lambda p: p.write_bytes(onnx.ModelProto(ir_version=8, producer_name="x").SerializeToString()),
     "holds no ONNX graph", None),
], ids=["zero-bytes", "random-bytes", "text-file", "truncated-half", "truncated-tail", "no-graph"])
def test_a_file_that_is_not_onnx_is_a_model_error_with_its_cause(tmp_path, write, reason, cause):
    path = tmp_path / "model.onnx"
    write(path)
    err = load_error(path, ModelError)
    assert not isinstance(err, MetadataError)
    assert "not an ONNX model" in str(err) and reason in str(err)
    if cause is None:
        assert err.__cause__ is None
    else:
        assert isinstance(err.__cause__, cause)


def test_the_public_api_reports_a_non_onnx_file_the_same_way(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(ModelError, match=r"cannot load model .*notes\.onnx'?: not an ONNX model"):
        Explainer(path, provider="cpu")


# ----------------------------------------------------------------------------- ONNX, but not attnmap's
def test_a_plain_onnx_graph_was_not_exported_by_attnmap(tmp_path):
    err = load_error(save(tiny_graph(), tmp_path / "plain.onnx"), MetadataError)
    assert "not exported by `attnmap export`" in str(err) and "has no metadata at all" in str(err)


def test_the_shipped_model_without_its_metadata_was_not_exported_by_attnmap(tmp_path, shipped):
    path = save(set_props(copy(shipped), {"author": "someone"}), tmp_path / "stripped.onnx")
    err = load_error(path, MetadataError)
    assert "not exported by `attnmap export`" in str(err) and "['author']" in str(err)
    with pytest.raises(MetadataError, match="not exported by `attnmap export`"):
        Explainer(path, provider="cpu")


# ----------------------------------------------------------------------------- unreadable metadata
@pytest.mark.parametrize("text, needle", [
    ("{not json", "attnmap metadata is not valid JSON"),
    ("[1, 2, 3]", "must be a JSON object; got list"),
    ('"deit"', "must be a JSON object; got str"),
], ids=["not-json", "json-list", "json-string"])
def test_metadata_that_is_not_a_json_object(tmp_path, shipped, text, needle):
    err = load_error(save(set_props(copy(shipped), {PROPS_KEY: text}), tmp_path / "m.onnx"), MetadataError)
    assert needle in str(err)
    if text == "{not json":
        assert isinstance(err.__cause__, json.JSONDecodeError)


@pytest.mark.parametrize("changes, needle", [
    (dict(schema_version=2), "schema_version 2 is not supported (this attnmap reads version 1); it was written "
                             "by a newer attnmap"),
    (dict(schema_version=None), "lacks 'schema_version'"),
    (dict(schema_version="1"), "schema_version '1' is not supported"),
    (dict(grid_size=None), "lacks required fields ['grid_size']"),
    (dict(num_layers=None, num_classes=None), "lacks required fields ['num_classes', 'num_layers']"),
    (dict(num_layers="4"), "field 'num_layers' must be an int; got \"4\""),
    (dict(num_classes=True), "field 'num_classes' must be an int; got true"),
    (dict(grid_size=[12]), "field 'grid_size' must be a list of 2 ints (rows, cols); got [12]"),
    (dict(input_size=[3, 96.0, 96]), "field 'input_size' must be a list of 3 ints (C, H, W)"),
    (dict(label_names=[1, 2, 3, 4, 5, 6, 7]), "field 'label_names' must be a list of strings"),
    (dict(crop_pct="1.0"), "field 'crop_pct' must be a finite number; got \"1.0\""),
    (dict(mean=[0.5, "0.5", 0.5]), "field 'mean' must be a list of finite numbers"),
    (dict(exporter=["torch"]), "field 'exporter' must be an object"),
    (dict(std=[0.5, 0.0, 0.5]), "std must be positive"),
    (dict(mean=[0.5, 0.5]), "mean needs 3 values"),
    (dict(num_heads=0), "num_heads must be positive; got 0"),
    (dict(outputs=["logits", "attentions", "attention_grads"]),
     "outputs has 'attention_grads', so inputs needs 'target'"),
    (dict(colour="red"), "unknown attnmap metadata fields ['colour']"),
])
def test_bad_metadata_fields_are_named(tmp_path, shipped, changes, needle):
    err = load_error(save(with_meta(shipped, **changes), tmp_path / "m.onnx"), MetadataError)
    assert not isinstance(err, GraphMismatchError)
    assert needle in str(err), str(err)


# ----------------------------------------------------------------------------- metadata that lies about the graph
@pytest.mark.parametrize("changes, needle", [
    (dict(grid_size=[5, 5]), "attentions output has N=145 tokens but the metadata's grid 5x5 + 1 prefix token "
                             "gives 26"),
    (dict(prefix_tokens=["class", "register"]), "attentions output has N=145 tokens but the metadata's grid 12x12 "
                                                "+ 2 prefix tokens gives 146"),
    (dict(num_layers=3), "attentions output has L=4 layers but the metadata has num_layers 3"),
    (dict(num_heads=2), "attentions output has H=3 heads but the metadata's num_heads 2 with head_fusion 'none' "
                        "gives 2"),
    (dict(head_fusion="mean"), "attentions output has H=3 heads but the metadata's num_heads 3 with head_fusion "
                               "'mean' gives 1"),
    (dict(num_classes=5, label_names=list("abcde")), "logits output has 7 classes but the metadata has "
                                                     "num_classes 5 and 5 label_names"),
    (dict(num_classes=8, label_names=[]), "logits output has 7 classes but the metadata has num_classes 8"),
    (dict(input_size=[3, 64, 96]), "input 'input' has H=96 but the metadata's input_size is 3x64x96"),
    (dict(input_size=[1, 96, 96], mean=[0.5], std=[0.5]), "input 'input' has C=3 but the metadata's input_size "
                                                          "is 1x96x96"),
    (dict(inputs=["pixels"]), "the metadata names input 'pixels' but the graph has inputs ['input']"),
    (dict(outputs=["logits", "attentions", "attention_grads"], inputs=["input", "target"]),
     "the metadata says the model has gradients, but the graph has no gradient output"),
])
def test_metadata_that_disagrees_with_the_shipped_graph(tmp_path, shipped, changes, needle):
    err = load_error(save(with_meta(shipped, **changes), tmp_path / "liar.onnx"), GraphMismatchError)
    assert isinstance(err, MetadataError) and isinstance(err, ModelError)
    assert "the attnmap metadata does not match the ONNX graph" in str(err)
    assert needle in str(err), str(err)


def test_a_gradients_flag_without_the_target_input_is_reported_too(tmp_path, shipped):
    path = save(with_meta(shipped, outputs=["logits", "attentions", "attention_grads"], inputs=["input", "target"]),
                tmp_path / "grads.onnx")
    assert "the metadata names input 'target' but the graph has inputs ['input']" in str(
        load_error(path, GraphMismatchError))


def _drop_output(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    out = copy(proto)
    keep = [o for o in out.graph.output if o.name != name]
    del out.graph.output[:]
    out.graph.output.extend(keep)
    return out


def test_the_shipped_graph_without_its_attentions_output(tmp_path, shipped):
    err = load_error(save(_drop_output(shipped, "attentions"), tmp_path / "noattn.onnx"), GraphMismatchError)
    assert "the metadata names output 'attentions' but the graph has outputs ['logits']" in str(err)
    # a logits-only file that says so is a valid model (the plain-inference baseline)
    path = save(with_meta(_drop_output(shipped, "attentions"), outputs=["logits"]), tmp_path / "plain.onnx")
    assert OnnxModel(path, provider="cpu").output_names == ("logits",)


def test_the_shipped_graph_with_its_logits_renamed(tmp_path, shipped):
    proto = copy(shipped)
    for node in proto.graph.node:
        node.output[:] = ["scores" if o == "logits" else o for o in node.output]
    next(o for o in proto.graph.output if o.name == "logits").name = "scores"
    err = load_error(save(proto, tmp_path / "scores.onnx"), GraphMismatchError)
    assert "the metadata names output 'logits' but the graph has outputs ['scores', 'attentions']" in str(err)


@pytest.mark.parametrize("graph, needle", [
    (dict(outputs={"logits": (1, 3), "attentions": (2, 2, 17, 17)}),
     "logits output has rank 3 (shape ['batch', 1, 3]) but must be rank 2 (batch, classes)"),
    (dict(outputs={"logits": (3,), "attentions": (2, 17, 17)}),
     "attentions output has rank 4 (shape ['batch', 2, 17, 17]) but must be rank 5 (batch, L, H, N, N)"),
    (dict(outputs={"logits": (3,), "attentions": (2, 2, 17, 26)}),
     "attentions output has N=26 tokens but the metadata's grid 4x4 + 1 prefix token gives 17"),
    (dict(image=("batch", 3, 16, 32)), "input 'input' has W=32 but the metadata's input_size is 3x16x16"),
    (dict(image=("batch", 3, 16)), "input 'input' has rank 3 (shape ['batch', 3, 16]) but must be rank 4"),
    (dict(image_type=TensorProto.UINT8), "input 'input' is tensor(uint8); attnmap feeds it preprocessed float images"),
    (dict(extra_inputs=("scale",)), "the graph takes inputs ['scale'] that the metadata does not name"),
], ids=["logits-rank-3", "attentions-rank-4", "attentions-N", "input-width", "input-rank", "input-uint8",
        "unnamed-input"])
def test_tiny_graphs_that_disagree_with_their_metadata(tmp_path, graph, needle):
    err = load_error(save(tiny_graph(meta={}, **graph), tmp_path / "tiny.onnx"), GraphMismatchError)
    assert needle in str(err), str(err)


def test_every_mismatch_is_listed_in_one_message(tmp_path, shipped):
    path = save(with_meta(shipped, num_layers=2, grid_size=[4, 4], num_classes=3, label_names=[]),
                tmp_path / "many.onnx")
    msg = str(load_error(path, GraphMismatchError))
    assert "L=4 layers but the metadata has num_layers 2" in msg
    assert "N=145 tokens but the metadata's grid 4x4 + 1 prefix token gives 17" in msg
    assert "logits output has 7 classes but the metadata has num_classes 3" in msg
    assert msg.count("N=145") == 1  # both token axes disagree; the problem is said once


def test_a_mismatch_through_the_public_api(tmp_path, shipped):
    path = save(with_meta(shipped, grid_size=[5, 5]), tmp_path / "liar.onnx")
    with pytest.raises(GraphMismatchError, match="gives 26"):
        Explainer(path, provider="cpu")


def test_symbolic_and_unknown_dims_are_not_checked():
    meta = ModelMeta.from_json(json.dumps(TINY_META))
    check_against_graph(meta, [{"name": "input", "shape": ["batch", 3, "h", "w"], "type": "tensor(float)"}],
                        [{"name": "logits", "shape": ["batch", "classes"], "type": "tensor(float)"},
                         {"name": "attentions", "shape": [], "type": "tensor(float)"}], "x.onnx")
    with pytest.raises(GraphMismatchError, match=r"x\.onnx: .*logits output has 4 classes"):
        check_against_graph(meta, [{"name": "input", "shape": [None, 3, 16, 16], "type": "tensor(float)"}],
                            [{"name": "logits", "shape": ["batch", 4], "type": "tensor(float)"},
                             {"name": "attentions", "shape": [], "type": "tensor(float)"}], "x.onnx")


# ----------------------------------------------------------------------------- another provider's path
@pytest.fixture()
def other_provider(monkeypatch):
    """Load as a non-CPU provider does: the file straight into onnxruntime, no onnx parse first."""
    # onnxruntime's wheel offers Azure's; onnxruntime-openvino (CI's openvino lane) OpenVINO's
    other = next((p for p in ("AzureExecutionProvider", "OpenVINOExecutionProvider")
                  if p in ort.get_available_providers()), None)
    if other is None:
        pytest.skip("this onnxruntime has no second provider to load with")
    monkeypatch.setattr(providers, "resolve_providers", lambda provider: [other, "CPUExecutionProvider"])


def test_the_non_cpu_path_reports_the_same_errors(tmp_path, shipped, other_provider):
    model = OnnxModel(SHIPPED, provider="cuda")
    assert model._pool is None and model.meta.num_tokens == 145
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(1).bytes(512))
    with pytest.raises(ModelError, match="not an ONNX model") as info:
        OnnxModel(garbage, provider="cuda")
    assert str(garbage) in str(info.value)
    plain = save(tiny_graph(), tmp_path / "plain.onnx")
    with pytest.raises(MetadataError, match="not exported by `attnmap export`"):
        OnnxModel(plain, provider="cuda")
    with pytest.raises(GraphMismatchError, match="gives 26"):
        OnnxModel(save(with_meta(shipped, grid_size=[5, 5]), tmp_path / "liar.onnx"), provider="cuda")


# ----------------------------------------------------------------------------- run errors
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> OnnxModel:
    return OnnxModel(save(tiny_graph(meta={}, batch_one_only=True), tmp_path_factory.mktemp("tiny") / "tiny.onnx"),
                     provider="cpu")


@pytest.mark.parametrize("x, needle", [
    (np.zeros((1, 3, 16, 16), np.uint8), "takes preprocessed float images (B, 3, 16, 16); got dtype uint8"),
    (np.zeros((1, 16, 16, 3), np.float32), "model input must be (B, 3, 16, 16) float32 with B >= 1; "
                                           "got shape (1, 16, 16, 3)"),
    (np.zeros((0, 3, 16, 16), np.float32), "got shape (0, 3, 16, 16)"),
    (np.zeros((3, 16, 16), np.float32), "got shape (3, 16, 16)"),
], ids=["uint8", "nhwc", "empty-batch", "no-batch-axis"])
def test_wrong_input_is_refused_before_onnxruntime_sees_it(tiny_model, x, needle):
    with pytest.raises(InputError) as info:
        tiny_model.run(x)
    assert needle in str(info.value) and info.value.__cause__ is None
    with pytest.raises(InputError):
        tiny_model.run_plain(x)


def test_float64_input_is_converted_and_runs(tiny_model):
    out = tiny_model.run(np.full((1, 3, 16, 16), 0.5))
    np.testing.assert_array_equal(out.logits, np.full((1, 3), 0.5, np.float32))


def test_an_onnxruntime_failure_is_a_model_error_that_keeps_its_cause(tiny_model):
    x = np.zeros((2, 3, 16, 16), np.float32)  # the graph reshapes to a batch of 1 inside
    with pytest.raises(ModelError, match=r"onnxruntime failed on 'tiny\.onnx': ") as info:
        tiny_model.run(x)
    assert not isinstance(info.value, InputError)
    assert isinstance(info.value.__cause__, ORT_ERRORS)
    assert type(info.value.__cause__).__module__.startswith("onnxruntime")


def test_an_attnmap_bug_during_a_run_is_not_blamed_on_onnxruntime(tiny_model, monkeypatch):
    def broken(names, feed, batch):
        raise KeyError("a bug in attnmap")

    monkeypatch.setattr(tiny_model, "_run_bound", broken)
    with pytest.raises(KeyError, match="a bug in attnmap"):
        tiny_model.run(np.zeros((1, 3, 16, 16), np.float32))


def test_a_static_batch_is_checked_up_front(tmp_path):
    model = OnnxModel(save(tiny_graph(meta={}, image=(1, 3, 16, 16)), tmp_path / "b1.onnx"), provider="cpu")
    assert model.run(np.zeros((1, 3, 16, 16), np.float32)).logits.shape == (1, 3)
    with pytest.raises(InputError, match="exported for batches of exactly 1; got 2 images"):
        model.run(np.zeros((2, 3, 16, 16), np.float32))


@pytest.fixture(scope="module")
def tiny_grads(tmp_path_factory) -> OnnxModel:
    """A tiny graph that takes ``target`` and emits ``attention_grads`` (zeros)."""
    graph = tiny_graph(outputs={"logits": (3,), "attentions": (2, 2, 17, 17), "attention_grads": (2, 2, 17, 17)},
                       extra_inputs=("target",), meta=dict(outputs=["logits", "attentions", "attention_grads"],
                                                           inputs=["input", "target"]))
    return OnnxModel(save(graph, tmp_path_factory.mktemp("grads") / "grads.onnx"), provider="cpu")


def test_a_gradient_models_target_is_checked_up_front(tiny_grads):
    x = np.zeros((2, 3, 16, 16), np.float32)
    x[1] = 1.0
    out = tiny_grads.run(x, target=np.array([2, -1], np.int32))
    assert out.targets.tolist() == [2, 0] and out.grads.shape == (2, 2, 2, 17, 17)
    for target, needle in [([0.5, 1.0], "target must hold integer class indices; got dtype float64"),
                           ([True, False], "target must hold integer class indices; got dtype bool"),
                           ([1], "target must hold one class per image (2); got 1"),
                           ([3, 0], "target classes must be < 3 (or -1 for the predicted class); got [3, 0]")]:
        with pytest.raises(InputError) as info:
            tiny_grads.run(x, target=target)
        assert needle in str(info.value)


def test_asking_for_what_the_model_lacks_is_an_input_error(tiny_model):
    x = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(InputError, match="exported without gradients, so it takes no target"):
        tiny_model.run(x, target=[0])
    with pytest.raises(InputError, match="has no output 'attention_grads'; it has"):
        tiny_model.run(x, outputs=["logits", "attention_grads"])


# ----------------------------------------------------------------------------- import side effects
def test_importing_the_model_modules_changes_no_process_wide_state():
    import subprocess
    import sys

    code = """
import logging, os, warnings, numpy as np, onnx, onnxruntime
def snapshot():
    mask = os.umask(0); os.umask(mask)
    return (dict(os.environ), mask, list(warnings.filters), np.geterr(), np.get_printoptions(),
            logging.root.level, list(logging.root.handlers), sys.getrecursionlimit(), os.getcwd())
import sys
before = snapshot()
import attnmap.runtime.core.errors, attnmap.runtime.core.meta, attnmap.runtime.model.graph
import attnmap.runtime.model.registry, attnmap.runtime.model.session
assert snapshot() == before, 'state changed at import'
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
