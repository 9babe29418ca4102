"""int8 and fp16 attnmap files, torch-free: conversion, the fidelity gate, no file on failure.

The shipped model (models/shapes_vit.onnx, trained on the synthetic shapes, so the default gate
images are its own kind) and the committed tiny models (random weights: their probabilities are
within 1e-3 of each other, near ties that flip under any rounding, so their top-1 gate is 0.9).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from attnmap.runtime.core.errors import ModelError, OptionConflict, OptionError
from attnmap.runtime.core.meta import ModelMeta
from attnmap.runtime.methods import attention_maps
from attnmap.runtime.model.session import OnnxModel
from attnmap.runtime.precision.convert import ConvertOptions, convert_file, synthetic_images
from attnmap.runtime.precision.fidelity import FidelityError, Thresholds
from attnmap.runtime.precision.quantize import float_matmuls, quantize_int8

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "shapes_vit.onnx"
LOOSE = Thresholds(min_top1=0.9)  # the random-weight tiny models (see the module docstring)


def _quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The shipped model as int8 (dynamic), fp16 and fp16 with half attentions."""
    d = tmp_path_factory.mktemp("precision")
    return {name: convert_file(SHIPPED, d / f"shapes_{name}.onnx", opts, log=_quiet) for name, opts in
            (("int8", ConvertOptions("int8")), ("fp16", ConvertOptions("fp16")),
             ("fp16a", ConvertOptions("fp16", attn_dtype="fp16")))}


def test_converted_files_carry_precision_and_fidelity_in_their_metadata(converted):
    for name, report in converted.items():
        proto = onnx.load(str(report.path))
        meta = ModelMeta.from_props({p.key: p.value for p in proto.metadata_props}, str(report.path))
        assert meta.precision == name[:4] and meta == report.meta
        assert meta.fidelity["images"] == 64 and meta.fidelity["source"] == "synthetic shapes"
        assert set(meta.fidelity["maps"]) == {"rollout", "attention"}  # what a file without gradients runs
        assert meta.fidelity["thresholds"] == {"min_top1": 0.98, "min_rollout_corr": 0.98, "max_prob_diff": 1.0}
        assert "onnxruntime" in meta.exporter["converter"]
        assert report.size_bytes == report.path.stat().st_size < report.source_size_bytes


def test_stored_fidelity_matches_an_independent_recomputation(converted):
    ref, cand = OnnxModel(SHIPPED, provider="cpu"), OnnxModel(converted["int8"].path, provider="cpu")
    x = synthetic_images(ref.meta)
    # one image per run, as the gate ran (its stored "batch"): a dynamic int8 file quantises each
    # activation with one scale over the whole batch, so a batch of 64 gives other figures
    assert converted["int8"].meta.fidelity["batch"] == 1
    a, b = ref.run(x), [cand.run(x[i:i + 1]) for i in range(len(x))]
    logits_b = np.concatenate([o.logits for o in b])
    top1 = float(np.mean(a.logits.argmax(-1) == logits_b.argmax(-1)))
    ma = attention_maps("rollout", a.attentions, ref.meta.layout)
    mb = attention_maps("rollout", np.concatenate([o.attentions for o in b]), ref.meta.layout)
    r = np.mean([np.corrcoef(ma[i].ravel(), mb[i].ravel())[0, 1] for i in range(len(x))])
    fid = converted["int8"].meta.fidelity
    assert fid["top1_agreement"] == pytest.approx(top1)
    assert fid["maps"]["rollout"]["pearson_mean"] == pytest.approx(r, abs=1e-5)
    assert r >= 0.98 and top1 >= 0.98


def test_a_dynamic_int8_explanation_does_not_depend_on_its_batch_companions(converted):
    """DynamicQuantizeLinear takes one scale over the whole batch; the runtime runs such a file
    one image at a time, so a batch explains each image exactly as it is explained alone."""
    from attnmap import Explainer
    from attnmap.runtime.frames.synth import make_batch

    images = list(make_batch(5, 6, size=96)[0])
    images[1] = np.full_like(images[1], 255)  # a companion that widens the batch's ranges
    explainer = Explainer(converted["int8"].path, provider="cpu")
    together = explainer.explain(images, method="rollout")
    for i, image in enumerate(images):
        alone = explainer.explain(image, method="rollout")
        np.testing.assert_array_equal(together[i].grid, alone.grid)
        np.testing.assert_array_equal(together[i].probs, alone.probs)
    x = explainer.preprocess(images)[0]
    plain = explainer.model.run_plain(x)
    np.testing.assert_array_equal(plain[2:3], explainer.model.run_plain(x[2:3]))
    # the graph itself does depend on the batch: run whole, the same images give other logits
    whole = explainer.model.session.run(["logits"], {explainer.meta.inputs[0]: x})[0]
    assert np.abs(whole - plain).max() > 1e-4


def test_int8_keeps_attention_scores_and_softmax_in_float(converted):
    src, q = onnx.load(str(SHIPPED)), onnx.load(str(converted["int8"].path))
    ops = [n.op_type for n in q.graph.node]
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    # every activation x activation MatMul of the fp32 graph is still a float MatMul, by name
    kept = {n.name for n in q.graph.node if n.op_type == "MatMul"}
    assert set(float_matmuls(src)) <= kept and len(float_matmuls(src)) == 2 * 4
    assert ops.count("Softmax") == 4 and "QLinearSoftmax" not in ops
    model = OnnxModel(converted["int8"].path, provider="cpu")
    out = model.run(synthetic_images(model.meta, n=2))
    assert out.attentions.dtype == np.float32 and out.logits.dtype == np.float32
    np.testing.assert_allclose(out.attentions.sum(-1), 1.0, atol=1e-5)


def test_fp16_keeps_float32_at_the_boundary_and_layernorm_in_float(converted):
    for name, attn_type in (("fp16", onnx.TensorProto.FLOAT), ("fp16a", onnx.TensorProto.FLOAT16)):
        proto = onnx.load(str(converted[name].path))
        types = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
        assert types == {"logits": onnx.TensorProto.FLOAT, "attentions": attn_type}
        assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
        # LayerNormalization is blocked: its inputs arrive through casts to float32
        producers = {o: n for n in proto.graph.node for o in n.output}
        for ln in (n for n in proto.graph.node if n.op_type == "LayerNormalization"):
            feed = producers.get(ln.input[0])
            assert feed is not None and feed.op_type == "Cast" and feed.attribute[0].i == onnx.TensorProto.FLOAT


def test_the_cpu_buffer_binding_works_or_falls_back_cleanly(converted):
    """int8 and half-attention files keep the per-layer split (their Concat stays as exported);
    an fp16 file with float32 attentions ends in a Cast, so it runs stacked, still bound."""
    x = synthetic_images(OnnxModel(SHIPPED, provider="cpu").meta, n=2)
    for name, split in (("int8", True), ("fp16a", True), ("fp16", False)):
        model = OnnxModel(converted[name].path, provider="cpu")
        assert bool(model._split) == split
        first = model.run(x)
        kept = first.attentions.copy()
        again = model.run(x)
        assert model._pool.allocations == 2  # two sets: the first result was still held
        np.testing.assert_array_equal(again.attentions, kept)
        np.testing.assert_array_equal(first.attentions, kept)  # and was not written over
        del first, again
        model.run(x)
        assert model._pool.allocations == 2  # released sets are reused


def test_half_attentions_come_out_of_the_runtime_as_float32_close_to_fp32(converted):
    ref = OnnxModel(SHIPPED, provider="cpu")
    x = synthetic_images(ref.meta, n=3)
    want = ref.run(x).attentions
    for name in ("fp16", "fp16a"):
        got = OnnxModel(converted[name].path, provider="cpu").run(x)
        assert got.attentions.dtype == np.float32 and got.attentions.shape == want.shape
        # fp16 rounds to 1 part in 2048 per op; four blocks of it leave about 2e-3 on values near 0.6
        np.testing.assert_allclose(got.attentions, want, atol=5e-3)
        assert np.abs(got.attentions - want).max() > 0  # it did run in half precision


def test_an_absurd_calibration_fails_the_gate_and_leaves_no_file(tmp_path):
    black = tmp_path / "black"
    black.mkdir()
    for i in range(4):
        cv2.imwrite(str(black / f"{i}.png"), np.zeros((96, 96, 3), np.uint8))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(FidelityError, match="fidelity gate failed") as info:
        convert_file(SHIPPED, out_dir / "bad.onnx", ConvertOptions("int8", mode="static", calibration=str(black)),
                     log=_quiet)
    assert "top-1 agreement" in str(info.value) and "68 images" in str(info.value)
    assert list(out_dir.iterdir()) == []


def test_a_good_calibration_passes_static_int8(tmp_path):
    images = tmp_path / "calib"
    images.mkdir()
    from attnmap.runtime.frames.synth import make_batch

    for i, img in enumerate(make_batch(99, 16, size=96)[0]):
        cv2.imwrite(str(images / f"{i:02d}.png"), img)
    report = convert_file(SHIPPED, tmp_path / "static.onnx",
                          ConvertOptions("int8", mode="static", calibration=str(images)), log=_quiet)
    ops = {n.op_type for n in onnx.load(str(report.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert report.fidelity.images == 64 + 16 and report.fidelity.maps["rollout"].pearson_mean >= 0.98


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_the_tiny_models_convert_with_and_without_gradients(tiny_vit_onnx, tiny_vit_grads_onnx, tmp_path, precision):
    for src in (tiny_vit_onnx, tiny_vit_grads_onnx):
        report = convert_file(src, tmp_path / f"{src.stem}_{precision}.onnx",
                              ConvertOptions(precision, thresholds=LOOSE), log=_quiet)
        maps = report.fidelity.maps
        want = {"rollout", "attention"} | ({"chefer", "grad_rollout", "gradsam", "product", "gradcam"}
                                           if "grads" in src.stem else set())
        assert set(maps) == want
        assert all(m.pearson_mean >= 0.98 for m in maps.values()), report.fidelity.summary()
        model = OnnxModel(report.path, provider="cpu")
        assert model.meta.precision == precision and model.meta.outputs == OnnxModel(src, provider="cpu").meta.outputs


def test_conversion_refusals(converted, tmp_path):
    with pytest.raises(ModelError, match="already an int8 file"):
        convert_file(converted["int8"].path, tmp_path / "again.onnx", ConvertOptions("int8"), log=_quiet)
    with pytest.raises(ModelError, match="is the input file"):
        convert_file(SHIPPED, SHIPPED, ConvertOptions("int8"), log=_quiet)
    # bad conversion options are option errors, not model errors
    with pytest.raises(OptionError, match="needs calibration images"):
        ConvertOptions("int8", mode="static")
    with pytest.raises(OptionConflict, match="attn_dtype fp16 applies to precision fp16 only"):
        ConvertOptions("int8", attn_dtype="fp16")
    with pytest.raises(ModelError, match="does not exist"):
        convert_file(tmp_path / "missing.onnx", tmp_path / "x.onnx", ConvertOptions("fp16"), log=_quiet)
    with pytest.raises(OptionError, match="unknown int8 parts"):
        quantize_int8(onnx.load(str(SHIPPED)), also=("gelu",))
    assert [p.name for p in tmp_path.iterdir()] == []


def test_old_files_without_the_new_fields_read_as_fp32():
    meta = OnnxModel(SHIPPED, provider="cpu").meta
    assert meta.precision == "fp32" and meta.fidelity == {}
    with pytest.raises(ValueError, match="precision must be one of"):
        meta.replace(precision="int4")
    with pytest.raises(ValueError, match="fidelity lacks"):
        meta.replace(precision="int8", fidelity={"images": 3})
