"""Grad-CAM on the last block's token features (runtime/methods/gradcam.py, export/gradients.py).

Torch-free tests read the committed ``tests/models/tiny_vit_grads.onnx`` and check the method
against a NumPy reference written from the paper's two equations with explicit loops. The
export tests (marker ``export``) compare, for tiny random-init models, the exported ``tokens``
and ``token_grads`` and the resulting map with a reference computed apart from the export
route: the model copied to float64, one image at a time, a forward hook on ``blocks[-1].norm1``
whose output gets a tensor hook, and ``.backward()`` of that image's target logit.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import onnx
import pytest
from extras import need

from attnmap.runtime.core.errors import ExplainError, GraphMismatchError
from attnmap.runtime.core.meta import PROPS_KEY, ModelMeta, TokenLayout
from attnmap.runtime.methods import METHODS
from attnmap.runtime.methods.gradcam import gradcam
from attnmap.runtime.model.graph import check_against_graph, prune_to_outputs
from attnmap.runtime.model.session import OnnxModel

REEXPORT = r"re-export with `attnmap export --gradients`"


def numpy_gradcam(tokens: np.ndarray, grads: np.ndarray, prefix: int, grid: tuple[int, int]) -> np.ndarray:
    """Selvaraju et al. eqs. (1)-(2), loop by loop in float64, then min-max to [0, 1]."""
    gh, gw = grid
    maps = np.zeros((tokens.shape[0], gh, gw))
    for b in range(tokens.shape[0]):
        a = tokens[b, prefix:].astype(np.float64)          # (Z, D): Z = gh * gw patch positions
        g = grads[b, prefix:].astype(np.float64)
        z, d = a.shape
        alpha = [g[:, k].sum() / z for k in range(d)]
        cam = np.zeros(z)
        for k in range(d):
            cam += alpha[k] * a[:, k]
        cam = np.maximum(cam, 0.0)
        if cam.max() > cam.min():
            cam = (cam - cam.min()) / (cam.max() - cam.min())
        maps[b] = cam.reshape(gh, gw)
    return maps


def images(batch: int, seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


# ----------------------------------------------------------------------------- the committed file
def test_committed_file_carries_tokens_and_gradcam_matches_numpy(tiny_vit_grads_onnx):
    import onnxruntime as ort

    model = OnnxModel(tiny_vit_grads_onnx, provider="cpu")
    meta = model.meta
    assert meta.has_gradients and meta.has_token_grads
    assert meta.outputs == ("logits", "attentions", "attention_grads", "tokens", "token_grads")
    x = images(3, 4)
    out = model.run(x, target=[7, -1, 2])
    assert out.tokens.shape == out.token_grads.shape == (3, 17, 32)
    assert out.tokens.dtype == out.token_grads.dtype == np.float32
    # The bound CPU buffers hold what plain onnxruntime returns.
    sess = ort.InferenceSession(str(tiny_vit_grads_onnx), providers=["CPUExecutionProvider"])
    raw = dict(zip([o.name for o in sess.get_outputs()],
                   sess.run(None, {"input": x, "target": np.array([7, -1, 2], np.int64)})))
    np.testing.assert_array_equal(out.tokens, raw["tokens"])
    np.testing.assert_array_equal(out.token_grads, raw["token_grads"])
    # Not vacuous: the patch tokens' gradients are far from zero (they would be exactly zero at
    # the last block's output, which only the class token leaves for the head).
    assert np.abs(out.token_grads[:, 1:]).max() > 1e-3

    maps = gradcam(out.tokens, out.token_grads, meta.layout)
    ref = numpy_gradcam(out.tokens, out.token_grads, meta.num_prefix_tokens, meta.grid_size)
    assert maps.shape == (3, 4, 4) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, ref, rtol=0, atol=1e-5)
    assert all(m.max() == 1.0 and m.min() == 0.0 for m in maps)  # three non-constant maps
    assert out.select(1).tokens.shape == (1, 17, 32)
    np.testing.assert_array_equal(out.select(1).token_grads, out.token_grads[1:2])


def test_class_given_versus_predicted(tiny_vit_grads_onnx):
    model = OnnxModel(tiny_vit_grads_onnx, provider="cpu")
    layout = model.meta.layout
    x = images(2, 5)
    predicted = model.run(x)
    top = predicted.logits.argmax(-1)
    assert predicted.targets.tolist() == top.tolist()
    explicit_top = model.run(x, target=top)
    np.testing.assert_array_equal(explicit_top.token_grads, predicted.token_grads)
    np.testing.assert_array_equal(gradcam(explicit_top.tokens, explicit_top.token_grads, layout),
                                  gradcam(predicted.tokens, predicted.token_grads, layout))

    other = (top + 1) % 10
    given = model.run(x, target=other)
    assert given.targets.tolist() == other.tolist()
    # Same features, other class: other gradients, other map, each matching the reference.
    np.testing.assert_array_equal(given.tokens, predicted.tokens)
    assert np.abs(given.token_grads - predicted.token_grads).max() > 1e-3
    for out in (given, predicted):
        np.testing.assert_allclose(gradcam(out.tokens, out.token_grads, layout),
                                   numpy_gradcam(out.tokens, out.token_grads, 1, (4, 4)), rtol=0, atol=1e-5)
    assert np.abs(gradcam(given.tokens, given.token_grads, layout)
                  - gradcam(predicted.tokens, predicted.token_grads, layout)).max() > 0.1


def test_registered_as_a_feature_method():
    m = METHODS["gradcam"]
    assert m.kind.name == "features" and m.needs_gradients and m.class_specific and dict(m.options) == {}
    assert m.fn is gradcam


# ----------------------------------------------------------------------------- old files refused
def _without_token_outputs(src, dst) -> None:
    """``src`` as an attnmap file written before the token outputs: graph and metadata."""
    proto = onnx.load(str(src))
    keep = [o for o in proto.graph.output if o.name not in ("tokens", "token_grads")]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    proto = prune_to_outputs(proto)
    for p in proto.metadata_props:
        if p.key == PROPS_KEY:
            data = json.loads(p.value)
            data["outputs"] = ["logits", "attentions", "attention_grads"]
            p.value = json.dumps(data)
    onnx.save_model(proto, str(dst))


def test_old_gradient_file_loads_and_gradcam_asks_for_a_reexport(tiny_vit_grads_onnx, tmp_path):
    old = tmp_path / "old_grads.onnx"
    _without_token_outputs(tiny_vit_grads_onnx, old)
    model = OnnxModel(old, provider="cpu")
    assert model.meta.has_gradients and not model.meta.has_token_grads
    out = model.run(images(2, 6), target=[3, -1])
    assert out.grads.shape == (2, 2, 2, 17, 17) and out.tokens is None and out.token_grads is None
    with pytest.raises(ExplainError, match=REEXPORT):
        gradcam(out.tokens, out.token_grads, model.meta.layout)


def test_file_without_gradients_gives_no_tokens(tiny_vit_onnx):
    model = OnnxModel(tiny_vit_onnx, provider="cpu")
    out = model.run(images(1, 7))
    assert out.tokens is None and out.token_grads is None and not model.meta.has_token_grads
    with pytest.raises(ExplainError, match=REEXPORT):
        gradcam(out.tokens, out.token_grads, model.meta.layout)


# ----------------------------------------------------------------------------- metadata and graph
def test_metadata_needs_tokens_and_target_with_token_grads(tiny_vit_grads_onnx):
    meta = OnnxModel(tiny_vit_grads_onnx, provider="cpu").meta
    with pytest.raises(ValueError, match="outputs has 'token_grads', so outputs needs 'tokens'"):
        meta.replace(outputs=("logits", "attentions", "attention_grads", "token_grads"))
    with pytest.raises(ValueError, match="inputs needs 'target'"):
        meta.replace(outputs=("logits", "tokens", "token_grads"), inputs=("input",))
    # A document without the token outputs (every file written before them) still parses.
    old = json.loads(meta.to_json())
    old["outputs"] = ["logits", "attentions", "attention_grads"]
    assert not ModelMeta.from_json(json.dumps(old)).has_token_grads


def test_graph_check_refuses_token_outputs_the_metadata_does_not_describe(tiny_vit_grads_onnx):
    model = OnnxModel(tiny_vit_grads_onnx, provider="cpu")
    described = model.describe_outputs()
    assert [o["shape"][1:] for o in described if o["name"] in ("tokens", "token_grads")] == [[17, 32], [17, 32]]
    bad = [dict(o, shape=["batch", 18, 32]) if o["name"] == "tokens" else
           dict(o, shape=["batch", 17, 16]) if o["name"] == "token_grads" else o for o in described]
    with pytest.raises(GraphMismatchError, match=r"tokens output has N=18 tokens but the metadata's grid 4x4 "
                                                 r"\+ 1 prefix token gives 17.*same channels D"):
        check_against_graph(model.meta, model.session.get_inputs(), bad, "f.onnx")
    missing = [o for o in described if o["name"] != "token_grads"]
    with pytest.raises(GraphMismatchError, match="names output 'token_grads' but the graph has outputs"):
        check_against_graph(model.meta, model.session.get_inputs(), missing, "f.onnx")


# ----------------------------------------------------------------------------- the method alone
LAYOUT = TokenLayout(num_prefix=2, grid=(2, 3))


def test_synthetic_truths_and_no_mutation():
    rng = np.random.default_rng(0)
    tokens = np.zeros((2, 8, 4), np.float32)
    grads = np.zeros((2, 8, 4), np.float32)
    # Image 0: channel 1 is active at patch 4 only, and the class gains with channel 1.
    tokens[0, 2 + 4, 1] = 3.0
    grads[0, :, 1] = 0.5
    # Prefix tokens carry large features and gradients that must not count.
    tokens[:, :2] = 100.0
    grads[:, :2] = -100.0
    # Image 1: the only evidence is negative (the class loses with channel 2): ReLU gives nothing.
    tokens[1, 2:, 2] = rng.uniform(1.0, 2.0, 6)
    grads[1, 2:, 2] = -1.0
    before = (tokens.copy(), grads.copy())
    maps = gradcam(tokens, grads, LAYOUT)
    expect0 = np.zeros((2, 3), np.float32)
    expect0[1, 1] = 1.0
    np.testing.assert_array_equal(maps[0], expect0)
    np.testing.assert_array_equal(maps[1], np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(tokens, before[0])
    np.testing.assert_array_equal(grads, before[1])


@pytest.mark.parametrize("tokens, grads, match", [
    (np.zeros((1, 8, 4)), None, REEXPORT),
    (np.zeros((1, 7, 4)), np.zeros((1, 7, 4)), r"tokens has N=7 tokens but the layout expects 8 \(2 prefix \+ 2x3"),
    (np.zeros((1, 8)), np.zeros((1, 8)), r"tokens must be a non-empty 3-D array \(B, N, D\); got shape \(1, 8\)"),
    (np.zeros((1, 8, 4)), np.zeros((1, 8, 5)), r"token_grads must have the shape of tokens \(1, 8, 4\); got"),
    (np.zeros((1, 8, 4), complex), np.zeros((1, 8, 4)), "tokens must be real numbers"),
    (np.full((1, 8, 4), np.nan), np.ones((1, 8, 4)), "NaN or inf"),
], ids=["no-grads", "wrong-N", "rank", "shape", "complex", "nan"])
def test_bad_inputs_are_refused(tokens, grads, match):
    with pytest.raises(ExplainError, match=match):
        gradcam(tokens, grads, LAYOUT)


# ----------------------------------------------------------------------------- against torch (export)
# (id, timm name, prefix tokens, N): a class token; class + distillation; four registers and
# average pooling (no class token).
FAMILIES = [
    ("vit", "vit_tiny_patch16_224", 1, 17),
    ("deit_distilled", "deit_tiny_distilled_patch16_224", 2, 18),
    ("registers", "vit_base_patch16_reg4_gap_256", 4, 20),
]


def torch_gradcam_reference(model, x: np.ndarray, targets) -> dict[str, np.ndarray]:
    """float64, image by image: norm1's output A, dA from a tensor hook, the class, the CAM."""
    import torch

    model64 = copy.deepcopy(model).double().eval()
    store: dict = {}

    def keep(_module, _inputs, output):
        store["A"] = output
        output.register_hook(lambda grad: store.__setitem__("G", grad))

    handle = model64.blocks[-1].norm1.register_forward_hook(keep)
    out = {"tokens": [], "token_grads": [], "targets": []}
    try:
        for b in range(x.shape[0]):
            xb = torch.from_numpy(x[b:b + 1]).double().requires_grad_(True)
            logits = model64(xb)
            t = int(targets[b]) if int(targets[b]) >= 0 else int(logits[0].argmax())
            logits[0, t].backward()
            out["tokens"].append(store["A"].detach().numpy()[0])
            out["token_grads"].append(store["G"].numpy()[0])
            out["targets"].append(t)
    finally:
        handle.remove()
    return {k: np.asarray(v) for k, v in out.items()}


def torch_cam(tokens: np.ndarray, grads: np.ndarray, prefix: int, grid) -> np.ndarray:
    """The CAM in torch ops on the reference tensors, min-max normalised."""
    import torch

    a, g = torch.from_numpy(tokens[:, prefix:]), torch.from_numpy(grads[:, prefix:])
    cam = torch.relu(torch.einsum("bpd,bd->bp", a, g.mean(dim=1)))
    lo, hi = cam.min(dim=1, keepdim=True).values, cam.max(dim=1, keepdim=True).values
    return ((cam - lo) / (hi - lo)).reshape(-1, *grid).numpy()


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def exported(tiny_gradient_export):
    """Each family's tiny model exported with gradients (once per session, shared with the export
    side's gradient tests): id -> (model, path, report)."""
    return {fid: tiny_gradient_export(name) for fid, name, _, _ in FAMILIES}


@pytest.mark.export
@pytest.mark.parametrize("fid,name,prefix,tokens", FAMILIES, ids=[f[0] for f in FAMILIES])
@pytest.mark.slow
def test_exported_tokens_and_gradcam_match_torch(exported, fid, name, prefix, tokens):
    from attnmap.export.gradients import GRAD_RTOL

    model, path, report = exported[fid]
    assert report.token_grads_max_rel <= GRAD_RTOL and report.meta.num_prefix_tokens == prefix
    onnx_model = OnnxModel(path, provider="cpu")
    layout = onnx_model.meta.layout
    # Batches of 3 and 1 (the trace saw 2); explicit classes and -1 (predicted) mixed.
    for x, targets in ((images(3, 11), [7, -1, 2]), (images(1, 12), [-1])):
        out = onnx_model.run(x, target=targets)
        ref = torch_gradcam_reference(model, x, targets)
        assert out.targets.tolist() == ref["targets"].tolist()
        assert out.tokens.shape == (x.shape[0], tokens, 32) == ref["tokens"].shape
        assert rel_err(out.tokens, ref["tokens"]) <= 1e-5
        assert rel_err(out.token_grads, ref["token_grads"]) <= 1e-4
        assert np.abs(ref["token_grads"][:, prefix:]).max() > 1e-4  # patch gradients are not zero
        want = torch_cam(ref["tokens"], ref["token_grads"], prefix, layout.grid)
        got = gradcam(out.tokens, out.token_grads, layout)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
        assert all(np.ptp(w) == 1.0 for w in want)  # non-constant reference maps


def _scaled_output(proto, name: str) -> None:
    """Make graph output ``name`` read 1.001 times what the graph computes (other readers unchanged)."""
    exact = f"{name}_exact"
    for node in proto.graph.node:
        node.output[:] = [exact if o == name else o for o in node.output]
        node.input[:] = [exact if i == name else i for i in node.input]
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.001, np.float32), f"{name}_scale"))
    proto.graph.node.append(onnx.helper.make_node("Mul", [exact, f"{name}_scale"], [name]))


@pytest.mark.export
@pytest.mark.parametrize("name", ["tokens", "token_grads"])
@pytest.mark.slow
def test_parity_gate_catches_wrong_token_outputs(tmp_path, monkeypatch, name):
    need("torch", "export")
    import tiny_models
    import attnmap.export.to_onnx as to_onnx
    from attnmap.runtime.core.errors import ExportError

    real_save = to_onnx._save

    def save_scaled(proto, meta, path):
        _scaled_output(proto, name)
        real_save(proto, meta, path)

    monkeypatch.setattr(to_onnx, "_save", save_scaled)
    model = tiny_models.make_model("vit_tiny_patch16_224", 0, img_size=32, patch_size=8)
    with pytest.raises(ExportError, match=rf"parity check failed for tiny: {name} max \|torch - onnx\| .*"
                                          r"no file written") as info:
        to_onnx.export_module(model, tmp_path / "m.onnx", model_name="tiny", gradients=True,
                              log=lambda line: None)
    assert "logits max" not in str(info.value) and "attention_grads max" not in str(info.value)
    assert os.listdir(tmp_path) == []
