"""Attention gradients inside the ONNX graph (``export_onnx(..., gradients=True)``).

The exported ``attention_grads`` are checked against a reference computed apart from the export
route: the model copied to float64, one image at a time, block l's probabilities shifted by a
zero ``delta_l`` (``ViTWithAttention.set_deltas``) and ``torch.autograd.grad`` of that image's
target logit with respect to the deltas. The export instead traces one batched backward of
``Σ_b logit[b, t_b]`` into the graph; agreement per image also shows that images do not leak
into each other's gradients. Models are tiny random-init configurations (depth 2, width 32,
2 heads, 10 classes, 32 or 42 px), so each export takes a few seconds.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
from extras import need

torch = need("torch", "export")
timm = need("timm", "export")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import tiny_models  # noqa: E402
from attnmap.export import ViTWithAttention, export_module, export_onnx  # noqa: E402
from attnmap.export.gradients import GRAD_RTOL, AttentionGradients, trace_gradients  # noqa: E402
from attnmap.runtime.core.errors import ExplainError, ExportError, ModelError  # noqa: E402
from attnmap.runtime.core.meta import ModelMeta  # noqa: E402

pytestmark = [pytest.mark.export, pytest.mark.slow]


def make_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """The shared tiny model (tests/tiny_models.py) at 32 px with 8 px patches."""
    return tiny_models.make_model(name, seed, **{"img_size": 32, "patch_size": 8, **kwargs})


QUIET = dict(log=lambda line: None)

# (id, timm name, extra kwargs, prefix kinds, N)
FAMILIES = [
    ("vit", "vit_tiny_patch16_224", {}, ("class",), 17),
    ("deit_distilled", "deit_tiny_distilled_patch16_224", {}, ("class", "distillation"), 18),
    # Four registers and average pooling: no class token, the map reads the mean row.
    ("registers", "vit_base_patch16_reg4_gap_256", {}, ("register",) * 4, 20),
    # Rotary embeddings and a SwiGLU MLP, whose silu_backward the ONNX translator lacks
    # (the trace decomposes it).
    ("eva02_rope_swiglu", "eva02_tiny_patch14_224", dict(img_size=42, patch_size=14), ("class",), 10),
]


def autograd_reference(model: torch.nn.Module, x: np.ndarray, targets) -> dict[str, np.ndarray]:
    """float64, image by image: logits, attentions, d logit[b, t_b] / d A_l and the classes t_b."""
    model64 = copy.deepcopy(model).double().eval()
    out = {"logits": [], "attentions": [], "grads": [], "targets": []}
    with ViTWithAttention(model64) as wrapped:
        for b in range(x.shape[0]):
            xb = torch.from_numpy(x[b:b + 1]).double()
            with torch.no_grad():
                _, probs = wrapped(xb)
            deltas = [torch.zeros_like(probs[:, l]).requires_grad_(True) for l in range(probs.shape[1])]
            wrapped.set_deltas(deltas)
            try:
                logits, attentions = wrapped(xb)
            finally:
                wrapped.set_deltas(None)
            t = int(targets[b]) if int(targets[b]) >= 0 else int(logits[0].argmax())
            grads = torch.autograd.grad(logits[0, t], deltas)
            out["logits"].append(logits.detach().numpy()[0])
            out["attentions"].append(attentions.detach().numpy()[0])
            out["grads"].append(torch.stack(grads, dim=1).numpy()[0])
            out["targets"].append(t)
    return {k: np.asarray(v) for k, v in out.items()}


def run(path, x: np.ndarray, targets) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, attentions, grads = sess.run(["logits", "attentions", "attention_grads"],
                                         {"input": x, "target": np.asarray(targets, dtype=np.int64)})
    return {"logits": logits, "attentions": attentions, "grads": grads}


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| relative to the largest |ref|."""
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def exported(tiny_gradient_export):
    """Each family's tiny model exported with gradients (once per session, shared with Grad-CAM's
    tests): id -> (model, path, report)."""
    return {fid: tiny_gradient_export(name, **kwargs) for fid, name, kwargs, _, _ in FAMILIES}


def images(batch: int, seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


# ----------------------------------------------------------------------------- parity with autograd
@pytest.mark.parametrize("fid,name,kwargs,prefix,tokens", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_exported_gradients_match_torch_autograd(exported, fid, name, kwargs, prefix, tokens):
    model, path, report = exported[fid]
    assert report.grads_max_rel <= GRAD_RTOL
    assert report.meta.prefix_tokens == prefix and report.meta.num_tokens == tokens
    size = kwargs.get("img_size", 32)
    # Batches of 3, 1 and 5 (the trace saw 2): explicit targets, -1 (predicted) and a mix.
    for x, targets in ((images(3, 1, size), [7, -1, 2]), (images(1, 2, size), [-1]),
                       (images(5, 3, size), [-1, 0, 9, -1, 4])):
        got = run(path, x, targets)
        ref = autograd_reference(model, x, targets)
        assert got["grads"].shape == (x.shape[0], 2, 2, tokens, tokens) == ref["grads"].shape
        assert got["grads"].dtype == np.float32
        np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-4)
        np.testing.assert_allclose(got["attentions"], ref["attentions"], atol=1e-5)
        assert np.array_equal(got["logits"].argmax(-1)[np.asarray(targets) < 0],
                              ref["targets"][np.asarray(targets) < 0])
        assert rel_err(got["grads"], ref["grads"]) <= 1e-4
        # Every image has a gradient of its own, in every block.
        assert (np.abs(ref["grads"]).max(axis=(2, 3, 4)) > 1e-6).all()


@pytest.mark.parametrize("fid", [f[0] for f in FAMILIES])
def test_gradient_files_are_written_inference_clean(exported, fid):
    """No training-form node (3-output LayerNormalization, Dropout, negative ArgMax axis): what
    OpenVINO and other inference runtimes refuse. The parity test above checks the rewritten
    graph against autograd, so the recomputed LayerNorm statistics are right too."""
    import onnx

    from attnmap.runtime.model.inference_graph import inference_problems

    proto = onnx.load(str(exported[fid][1]))
    assert inference_problems(proto) == []
    assert all(len([o for o in n.output if o]) == 1 for n in proto.graph.node if n.op_type == "LayerNormalization")


def test_gradients_are_class_specific_and_images_do_not_interact(exported):
    model, path, _ = exported["vit"]
    x = images(2, 5)
    predicted = run(path, x, [-1, -1])
    top = predicted["logits"].argmax(-1)
    other = (top + 1) % 10
    # -1, any negative value and the explicit predicted class are the same request.
    for same in ([-7, -1], top.tolist()):
        np.testing.assert_array_equal(run(path, x, same)["grads"], predicted["grads"])
    # Another class gives other gradients over the same attentions.
    swapped = run(path, x, other.tolist())
    np.testing.assert_array_equal(swapped["attentions"], predicted["attentions"])
    assert rel_err(swapped["grads"], predicted["grads"].astype(np.float64)) > 0.05
    # Image 0's gradient is the same alone as next to image 1, whatever image 1 asks for.
    alone = run(path, x[:1], [int(other[0])])["grads"][0]
    np.testing.assert_allclose(swapped["grads"][0], alone, rtol=0, atol=1e-6 * np.abs(alone).max())


# ----------------------------------------------------------------------------- graph and metadata
def test_graph_signature_metadata_and_a_single_forward(exported, tmp_path):
    model, path, report = exported["vit"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = ModelMeta.from_props(sess.get_modelmeta().custom_metadata_map, str(path))
    assert meta == report.meta
    assert meta.outputs == ("logits", "attentions", "attention_grads", "tokens", "token_grads")
    assert meta.inputs == ("input", "target")
    assert meta.has_gradients and meta.head_fusion == "none"
    ins = {i.name: i for i in sess.get_inputs()}
    outs = {o.name: o for o in sess.get_outputs()}
    assert list(ins) == ["input", "target"]
    assert list(outs) == ["logits", "attentions", "attention_grads", "tokens", "token_grads"]
    assert ins["target"].type == "tensor(int64)" and ins["input"].type == "tensor(float)"
    batch = ins["input"].shape[0]
    assert isinstance(batch, str) and ins["target"].shape == [batch]
    assert outs["attention_grads"].shape == [batch, 2, 2, 17, 17] and outs["attention_grads"].type == "tensor(float)"

    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    # The forward runs once: one patch embedding and one softmax per block. The backward
    # reuses the probabilities it saved instead of recomputing them.
    assert ops.count("Conv") == 1 and ops.count("Softmax") == 2
    plain = export_module(make_model("vit_tiny_patch16_224"), tmp_path / "plain.onnx", model_name="vit_tiny",
                          **QUIET)
    plain_graph = onnx.load(str(plain.path)).graph
    assert [n.op_type for n in plain_graph.node].count("Softmax") == 2
    # The backward adds nodes, not another forward: with L = 2 blocks the whole graph stays
    # within a few times the plain one (weights stored once: see test_class_specific).
    assert len(graph.node) < 6 * len(plain_graph.node)


def test_the_model_is_left_as_found(tmp_path):
    model = make_model("vit_tiny_patch16_224")
    model.train()
    model.blocks[1].attn.fused_attn = True
    model.pos_embed.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_module(model, tmp_path / "m.onnx", model_name="tiny", gradients=True, **QUIET)
    assert model.training and model.blocks[1].attn.fused_attn is True
    assert not model.pos_embed.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "pos_embed")
    assert all(not blk.attn.attn_drop._forward_hooks for blk in model.blocks)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- refusals and the gate
@pytest.mark.parametrize("options,match", [
    (dict(heads="mean"), r"gradients=True needs every head \(heads='none'\); got heads='mean'"),
    (dict(heads="max"), r"got heads='max'"),
    (dict(attentions=False), r"gradients=True needs attentions=True"),
])
def test_options_that_cannot_carry_gradients_are_refused(tmp_path, options, match):
    with pytest.raises(ExportError, match=match):
        export_module(make_model("vit_tiny_patch16_224"), tmp_path / "m.onnx", model_name="tiny", gradients=True,
                      **options, **QUIET)
    with pytest.raises(ExportError, match=match):
        export_onnx("vit_tiny_patch16_224", tmp_path / "m.onnx", gradients=True, **options, **QUIET)
    assert os.listdir(tmp_path) == []


def test_trace_needs_an_example_batch_of_two():
    with ViTWithAttention(make_model("vit_tiny_patch16_224")) as wrapped:
        with pytest.raises(ExportError, match=r"example batch \[B>=2, C, H, W\]; got shape \(1, 3, 32, 32\)"):
            trace_gradients(AttentionGradients(wrapped), torch.zeros(1, 3, 32, 32))
    with ViTWithAttention(make_model("vit_tiny_patch16_224"), heads="mean") as fused:
        with pytest.raises(ExportError, match="needs every head"):
            AttentionGradients(fused)


def test_parity_gate_catches_wrong_gradients_and_leaves_no_file(tmp_path, monkeypatch):
    # Scale only the gradients by 1 + 1e-3 (ten times the tolerance): the logits and attentions
    # still agree, so the gate can only refuse the file for its gradients.
    import attnmap.export.to_onnx as to_onnx

    real_save = to_onnx._save

    def save_with_scaled_grads(proto, meta, path):
        node = next(n for n in proto.graph.node if "attention_grads" in n.output)
        node.output[list(node.output).index("attention_grads")] = "attention_grads_exact"
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.001, np.float32), "grad_scale"))
        proto.graph.node.append(onnx.helper.make_node("Mul", ["attention_grads_exact", "grad_scale"],
                                                      ["attention_grads"]))
        real_save(proto, meta, path)

    monkeypatch.setattr(to_onnx, "_save", save_with_scaled_grads)
    with pytest.raises(ExportError, match=r"parity check failed for tiny: attention_grads max \|torch - onnx\| "
                                          r".* of the largest gradient .*no file written") as info:
        export_module(make_model("vit_tiny_patch16_224"), tmp_path / "m.onnx", model_name="tiny", gradients=True,
                      **QUIET)
    assert "logits max" not in str(info.value) and "attentions max" not in str(info.value)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- through the runtime
def test_runtime_feeds_targets_and_explains_a_chosen_class(exported):
    from attnmap import Explainer
    from attnmap.runtime.model.session import OnnxModel

    model, path, _ = exported["vit"]
    onnx_model = OnnxModel(path, provider="cpu")
    x = images(2, 9)
    out = onnx_model.run(x, target=[3, -1])
    ref = autograd_reference(model, x, [3, -1])
    assert out.targets.tolist() == ref["targets"].tolist() and out.targets[0] == 3
    assert rel_err(out.grads, ref["grads"]) <= 1e-4
    assert onnx_model.run(x).targets.tolist() == out.logits.argmax(-1).tolist()
    with pytest.raises(ModelError, match=r"target classes must be < 10 \(or -1 for the predicted class\); got \[10, 0\]"):
        onnx_model.run(x, target=[10, 0])
    with pytest.raises(ModelError, match="one class per image"):
        onnx_model.run(x, target=[1])

    ex = Explainer(path, provider="cpu")
    img = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    by_name = ex.explain(img, method="chefer", target="Cat")
    by_index = ex.explain(img, method="chefer", target=3)
    assert by_name.target == by_index.target == 3 and by_name.label_of_target == "cat"
    np.testing.assert_array_equal(by_name.grid, by_index.grid)
    assert by_name.grid.shape == (4, 4) and by_name.grid.min() == 0.0 and by_name.grid.max() == 1.0
    with pytest.raises(ExplainError, match="class-agnostic"):
        ex.explain(img, method="rollout", target=3)
