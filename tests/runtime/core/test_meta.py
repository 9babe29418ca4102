"""ModelMeta: the one metadata schema. Round trips, derived layout, and clear errors."""

import json

import pytest

from attnmap.runtime.core.errors import MetadataError
from attnmap.runtime.core.meta import PROPS_KEY, SCHEMA_VERSION, ModelMeta, TokenLayout


def make_meta(**changes):
    base = dict(model_name="vit_test", input_size=(3, 32, 48), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                interpolation="bicubic", crop_pct=0.875, crop_mode="center", patch_size=(8, 8), grid_size=(4, 6),
                prefix_tokens=("class", "register", "register"), pooling="token", num_layers=3, num_heads=2,
                head_fusion="none", num_classes=3, label_names=("a", "b", "c"))
    base.update(changes)
    return ModelMeta(**base)


def test_round_trip_through_props_keeps_every_field():
    meta = make_meta(exporter={"torch": "2.15.0"}, extra={"training": {"seed": 1}})
    props = meta.to_props()
    assert list(props) == [PROPS_KEY]
    back = ModelMeta.from_props(props, "x.onnx")
    assert back == meta
    assert back.exporter == {"torch": "2.15.0"} and back.extra["training"]["seed"] == 1
    assert json.loads(props[PROPS_KEY])["schema_version"] == SCHEMA_VERSION


def test_derived_layout_uses_every_prefix_token_and_the_real_grid():
    meta = make_meta()
    assert meta.num_prefix_tokens == 3
    assert meta.num_patches == 24 and meta.num_tokens == 27
    assert meta.layout == TokenLayout(3, (4, 6), 0, stochastic=True)
    assert meta.layout.num_tokens == 27
    assert meta.image_size == (32, 48)
    assert meta.output_heads == 2 and make_meta(head_fusion="max").output_heads == 1
    # softmax rows sum to 1, and so do their mean's; a max or min over heads does not
    assert make_meta(head_fusion="mean").layout.stochastic
    assert not make_meta(head_fusion="max").layout.stochastic and not make_meta(head_fusion="min").layout.stochastic


def test_class_token_free_model_reads_the_mean_row():
    meta = make_meta(prefix_tokens=(), pooling="avg")
    assert meta.target_row is None and meta.layout.target_row is None and meta.num_tokens == 24


def test_labels_fall_back_to_class_index():
    assert make_meta().label(1) == "b"
    assert make_meta(label_names=()).label(2) == "class_2"


def test_gradients_flag_follows_the_outputs():
    assert not make_meta().has_gradients
    assert make_meta(outputs=("logits", "attentions", "attention_grads"), inputs=("input", "target")).has_gradients


@pytest.mark.parametrize("props, needle", [
    ({}, "no attnmap metadata"),
    ({PROPS_KEY: "{not json"}, "not valid JSON"),
    ({PROPS_KEY: "[1, 2]"}, "must be a JSON object"),
])
def test_unreadable_metadata_names_the_file(props, needle):
    with pytest.raises(MetadataError, match=needle) as info:
        ModelMeta.from_props(props, "model.onnx")
    assert "model.onnx" in str(info.value)


def test_unknown_schema_version_is_a_clear_error():
    data = json.loads(make_meta().to_json())
    data["schema_version"] = 99
    with pytest.raises(MetadataError, match=r"m\.onnx: .*schema_version 99 is not supported"):
        ModelMeta.from_props({PROPS_KEY: json.dumps(data)}, "m.onnx")


def test_unknown_and_missing_fields_are_reported():
    data = json.loads(make_meta().to_json())
    data["bogus"] = 1
    with pytest.raises(MetadataError, match="unknown attnmap metadata fields"):
        ModelMeta.from_json(json.dumps(data))
    data.pop("bogus")
    data.pop("grid_size")
    with pytest.raises(MetadataError, match=r"lacks required fields \['grid_size'\]"):
        ModelMeta.from_json(json.dumps(data))


@pytest.mark.parametrize("changes, needle", [
    (dict(label_names=("a",)), "label_names has 1 names for 3 classes"),
    (dict(pooling="token", prefix_tokens=()), "needs a class token"),
    (dict(head_fusion="median"), "head_fusion must be one of"),
    (dict(prefix_tokens=("class", "cls2")), "prefix_tokens kinds"),
    (dict(crop_pct=1.5), "crop_pct must be in"),
    (dict(outputs=("attentions",)), "must include 'logits'"),
])
def test_invalid_values_are_rejected(changes, needle):
    with pytest.raises(ValueError, match=needle):
        make_meta(**changes)
    data = json.loads(make_meta().to_json())
    data.update({k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()})
    with pytest.raises(MetadataError, match=needle):
        ModelMeta.from_json(json.dumps(data), "f.onnx")


def test_every_field_has_a_json_type_check():
    import dataclasses

    from attnmap.runtime.core import meta as meta_module

    assert set(meta_module._JSON_TYPES) == {f.name for f in dataclasses.fields(ModelMeta)}


@pytest.mark.parametrize("field, value, needle", [
    ("num_layers", 3.0, "field 'num_layers' must be an int; got 3.0"),
    ("num_heads", "2", "field 'num_heads' must be an int; got \"2\""),
    ("patch_size", [8, 8, 8], "field 'patch_size' must be a list of 2 ints (rows, cols); got [8, 8, 8]"),
    ("prefix_tokens", "class", "field 'prefix_tokens' must be a list of strings; got \"class\""),
    ("mean", [0.5, None, 0.5], "field 'mean' must be a list of finite numbers"),
    ("std", [0.25, float("nan"), 0.25], "field 'std' must be a list of finite numbers"),
    ("model_name", None, "field 'model_name' must be a string; got null"),
    ("extra", "notes", "field 'extra' must be an object"),
    ("label_names", ["a"] * 40, "label_names has 40 names for 3 classes"),
])
def test_wrong_json_types_name_the_field_and_the_file(field, value, needle):
    data = json.loads(make_meta().to_json())
    data[field] = value
    with pytest.raises(MetadataError) as info:
        ModelMeta.from_json(json.dumps(data), "bad.onnx")
    assert str(info.value).startswith("bad.onnx: ") and needle in str(info.value)


def test_schema_version_messages_say_which_way_to_go():
    data = json.loads(make_meta().to_json())
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(MetadataError, match="written by a newer attnmap: upgrade attnmap"):
        ModelMeta.from_json(json.dumps(data), "new.onnx")
    data["schema_version"] = 0
    with pytest.raises(MetadataError, match=r"schema_version 0 is not supported .*re-export the model with this"):
        ModelMeta.from_json(json.dumps(data), "old.onnx")
    data.pop("schema_version")
    with pytest.raises(MetadataError, match=r"lacks 'schema_version'"):
        ModelMeta.from_json(json.dumps(data), "none.onnx")


def test_a_range_error_keeps_its_cause_and_names_the_field():
    data = json.loads(make_meta(label_names=()).to_json())
    data["num_classes"] = 0
    with pytest.raises(MetadataError, match=r"f\.onnx: invalid attnmap metadata: num_classes must be positive; got 0") \
            as info:
        ModelMeta.from_json(json.dumps(data), "f.onnx")
    assert isinstance(info.value.__cause__, ValueError)


def test_a_gradients_meta_needs_the_target_input():
    with pytest.raises(ValueError, match="outputs has 'attention_grads', so inputs needs 'target'"):
        make_meta(outputs=("logits", "attentions", "attention_grads"))
    with pytest.raises(ValueError, match="outputs names a tensor twice"):
        make_meta(outputs=("logits", "logits"))
