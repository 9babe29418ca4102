"""Export side: timm ViT-family models to ONNX with attentions, weights, metadata, parity gate.

Every model here is a tiny random-init configuration (depth 2, width 32, 2 heads, 10 classes,
28..48 px inputs), so each export takes a couple of seconds on a CPU.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from extras import need

torch = need("torch", "export")
timm = need("timm", "export")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torch.nn.functional as F  # noqa: E402

from conftest import TINY_LABELS, TINY_VIT  # noqa: E402
from tiny_models import make_model  # noqa: E402
from attnmap.export import ViTWithAttention, describe_tokens, export_module, export_onnx  # noqa: E402
from attnmap.export.labels import default_labels, read_labels, resolve_labels  # noqa: E402
from attnmap.export.weights import load_checkpoint, read_state_dict  # noqa: E402
from attnmap.runtime.core.errors import ExportError  # noqa: E402
from attnmap.runtime.core.meta import ModelMeta  # noqa: E402

pytestmark = pytest.mark.export

QUIET = dict(log=lambda line: None)

# (id, timm name, create_model kwargs, prefix kinds in sequence order, grid (rows, cols), pooling)
FAMILIES = [
    ("vit", "vit_tiny_patch16_224", dict(img_size=32, patch_size=8), ("class",), (4, 4), "token"),
    ("deit_distilled", "deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8),
     ("class", "distillation"), (4, 4), "token"),
    ("registers_gap", "vit_base_patch16_reg4_gap_256", dict(img_size=32, patch_size=8),
     ("register",) * 4, (4, 4), "avg"),
    # DINOv2: layer scale, class + 4 registers, 518 px default overridden by img_size.
    ("dinov2_reg4", "vit_small_patch14_reg4_dinov2", dict(img_size=42),
     ("class",) + ("register",) * 4, (3, 3), "token"),
    ("eva02_rope", "eva02_tiny_patch14_224", dict(img_size=42), ("class",), (3, 3), "avg"),
    ("beit_relpos", "beit_base_patch16_224", dict(img_size=32, patch_size=8), ("class",), (4, 4), "avg"),
    # Class-token-free, on a non-square input so rows and columns cannot be swapped unnoticed.
    ("no_class_token", "vit_tiny_patch16_224",
     dict(img_size=(32, 48), patch_size=8, class_token=False, global_pool="avg"), (), (4, 6), "avg"),
]


def session(path) -> "ort.InferenceSession":
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def file_meta(path) -> ModelMeta:
    return ModelMeta.from_props(session(path).get_modelmeta().custom_metadata_map, str(path))


def reference_attention(attn, x, rope=None, shared_rel_pos_bias=None):
    """softmax(q kᵀ * scale + bias) and v of one timm attention module, written out by hand."""
    b, n, _ = x.shape
    if getattr(attn, "q_bias", None) is not None:
        qkv = F.linear(x, attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))
    else:
        qkv = attn.qkv(x)
    q, k, v = qkv.reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q) if hasattr(attn, "q_norm") else q, attn.k_norm(k) if hasattr(attn, "k_norm") else k
    if rope is not None:
        from timm.layers import apply_rot_embed_cat

        npt = attn.num_prefix_tokens
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope)], dim=2)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope)], dim=2)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    if getattr(attn, "relative_position_bias_table", None) is not None:
        scores = scores + attn._get_rel_pos_bias()
    if shared_rel_pos_bias is not None:
        scores = scores + shared_rel_pos_bias
    return scores.softmax(dim=-1), v


def record_blocks(model):
    """Hooks on each block's attention module: inputs (with kwargs) and outputs of a forward."""
    calls, handles = [], []
    for blk in model.blocks:
        def pre(mod, args, kwargs, store=calls):
            store.append({"x": args[0], **kwargs})
        def post(mod, args, kwargs, out, store=calls):
            store[-1]["out"] = out
        handles.append(blk.attn.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(blk.attn.register_forward_hook(post, with_kwargs=True))
    return calls, handles


# ----------------------------------------------------------------------------- families
@pytest.mark.parametrize("fid,name,kwargs,prefix,grid,pooling", FAMILIES, ids=[f[0] for f in FAMILIES])
@pytest.mark.slow
def test_family_exports_with_parity_and_layout(tmp_path, fid, name, kwargs, prefix, grid, pooling):
    model = make_model(name, **kwargs)
    assert describe_tokens(model) == (prefix, grid, pooling)
    out = tmp_path / f"{fid}.onnx"
    report = export_module(model, out, model_name=name, **QUIET)

    n = len(prefix) + grid[0] * grid[1]
    meta = file_meta(out)
    assert meta == report.meta
    assert (meta.prefix_tokens, meta.grid_size, meta.pooling) == (prefix, grid, pooling)
    assert (meta.num_layers, meta.num_heads, meta.num_classes, meta.num_tokens) == (2, 2, 10, n)
    img = kwargs["img_size"] if isinstance(kwargs["img_size"], tuple) else (kwargs["img_size"],) * 2
    assert meta.input_size == (3, *img)
    assert meta.outputs == ("logits", "attentions") and meta.inputs == ("input",)
    if fid == "dinov2_reg4":
        # img_size overrides the 518 px default; the rest of timm's DINOv2 eval config stays.
        assert model.pretrained_cfg["input_size"] == (3, 518, 518)
        assert (meta.crop_pct, meta.interpolation, meta.patch_size) == (1.0, "bicubic", (14, 14))
        assert meta.mean == pytest.approx((0.485, 0.456, 0.406)) and meta.std == pytest.approx((0.229, 0.224, 0.225))
    assert report.logits_max_abs <= 1e-4 and report.attentions_max_abs <= 1e-5
    assert report.size_bytes == out.stat().st_size and sorted(os.listdir(tmp_path)) == [out.name]

    # Independent check on a fresh batch of 3: the UNWRAPPED timm model (fused attention, as
    # timm ships it) gives the logits, and hand-written softmax(q kᵀ) from each block's input
    # gives the probabilities; each block's output must be proj(A @ v) with those A.
    x = torch.randn(3, *meta.input_size, generator=torch.Generator().manual_seed(7))
    logits, attn = session(out).run(None, {"input": x.numpy()})
    assert attn.shape == (3, 2, 2, n, n) and attn.dtype == np.float32
    calls, handles = record_blocks(model)
    try:
        with torch.no_grad():
            ref_logits = model(x)
            assert len(calls) == 2
            for layer, call in enumerate(calls):
                mod = model.blocks[layer].attn
                probs, v = reference_attention(mod, call["x"], call.get("rope"), call.get("shared_rel_pos_bias"))
                np.testing.assert_allclose(attn[:, layer], probs.numpy(), atol=2e-6)
                ctx = (torch.from_numpy(attn[:, layer]) @ v).transpose(1, 2).reshape(call["x"].shape[0], n, -1)
                if hasattr(mod, "norm"):
                    ctx = mod.norm(ctx)
                np.testing.assert_allclose(mod.proj(ctx).numpy(), call["out"].numpy(), atol=2e-5)
    finally:
        for h in handles:
            h.remove()
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)
    assert np.abs(logits).max() > 0.1, "logits near zero make this comparison vacuous"
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name,kwargs,expected", [
    ("deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8), ["class", "distillation"]),
    ("vit_small_patch14_reg4_dinov2", dict(img_size=28), ["class"] + ["register"] * 4),
    ("vit_base_patch16_reg4_gap_256", dict(img_size=32, patch_size=8), ["register"] * 4),
])
def test_prefix_kinds_follow_timm_concatenation_order(name, kwargs, expected):
    # Give each kind of token a distinct constant and no position embedding, then read what
    # timm's own _pos_embed put at each position of the sequence.
    model = make_model(name, **kwargs)
    marks = {"class": 7.0, "distillation": -5.0, "register": 3.0}
    with torch.no_grad():
        model.pos_embed.zero_()
        for attr, kind in (("cls_token", "class"), ("dist_token", "distillation"), ("reg_token", "register")):
            if getattr(model, attr, None) is not None:
                getattr(model, attr).fill_(marks[kind])
        seq = model._pos_embed(model.patch_embed(torch.randn(1, 3, *model.patch_embed.img_size)))
    found = [seq[0, i, 0].item() for i in range(len(expected))]
    assert found == [marks[k] for k in expected]
    assert list(describe_tokens(model)[0]) == expected


# ----------------------------------------------------------------------------- graph
def test_graph_names_dtypes_dynamic_batch_and_self_contained(exported_tiny_vit_onnx):
    model = onnx.load(str(exported_tiny_vit_onnx))
    onnx.checker.check_model(model)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    (inp,) = model.graph.input
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch = dims(inp)[0]
    assert isinstance(batch, str) and dims(inp)[1:] == [3, 32, 32]
    outs = {o.name: o for o in model.graph.output}
    assert list(outs) == ["logits", "attentions"]
    assert dims(outs["logits"]) == [batch, 10]
    assert dims(outs["attentions"]) == [batch, 2, 2, 17, 17]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in outs.values())
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    assert sorted(os.listdir(exported_tiny_vit_onnx.parent)) == [exported_tiny_vit_onnx.name]

    sess = session(exported_tiny_vit_onnx)
    for b in (1, 2, 5):
        logits, attn = sess.run(None, {"input": np.random.default_rng(b).standard_normal((b, 3, 32, 32), np.float32)})
        assert logits.shape == (b, 10) and attn.shape == (b, 2, 2, 17, 17)
        np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)


def test_metadata_round_trip_through_onnxruntime(exported_tiny_vit_onnx):
    meta = file_meta(exported_tiny_vit_onnx)
    graph_opset = next(o.version for o in onnx.load(str(exported_tiny_vit_onnx)).opset_import
                       if o.domain in ("", "ai.onnx"))
    assert meta.model_name == TINY_VIT["name"]
    assert meta.input_size == (3, 32, 32) and meta.patch_size == (8, 8) and meta.grid_size == (4, 4)
    # vit_tiny_patch16_224's timm eval config (augreg weights: mean = std = 0.5).
    assert (meta.mean, meta.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert (meta.interpolation, meta.crop_pct, meta.crop_mode) == ("bicubic", 0.9, "center")
    assert (meta.prefix_tokens, meta.pooling, meta.num_layers, meta.num_heads) == (("class",), "token", 2, 2)
    assert (meta.head_fusion, meta.num_classes, meta.label_names) == ("none", 10, TINY_LABELS)
    assert set(meta.exporter) == {"attnmap", "torch", "timm", "onnx", "opset"}
    assert meta.exporter["opset"] == str(graph_opset)
    assert meta.exporter["torch"] == torch.__version__ and meta.exporter["timm"] == timm.__version__
    assert meta.extra == {"weights": "random"}
    assert ModelMeta.from_props(meta.to_props()) == meta


@pytest.mark.parametrize("heads,opset", [("mean", None), ("max", None), ("min", 18)])
@pytest.mark.slow
def test_head_fusion_in_graph_equals_fused_torch_attention(tmp_path, heads, opset):
    model = make_model(TINY_VIT["name"], img_size=32, patch_size=8)
    out = tmp_path / f"{heads}.onnx"
    report = export_module(model, out, model_name=TINY_VIT["name"], heads=heads, opset=opset, **QUIET)
    assert report.meta.head_fusion == heads and report.meta.output_heads == 1 and report.meta.num_heads == 2
    graph_opset = next(o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx"))
    assert report.meta.exporter["opset"] == str(graph_opset) and (opset is None or graph_opset == opset)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    _, attn = session(out).run(None, {"input": x.numpy()})
    with ViTWithAttention(model) as wrapped, torch.no_grad():
        _, full = wrapped(x)
    reduce = {"mean": np.mean, "max": np.max, "min": np.min}[heads]
    assert attn.shape == (2, 2, 1, 17, 17)
    np.testing.assert_allclose(attn, reduce(full.numpy(), axis=2, keepdims=True), atol=1e-6)


@pytest.mark.slow
def test_logits_only_export_is_the_same_model_and_random_init_is_announced(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({str(i): [f"n{i:08d}", name] for i, name in enumerate(TINY_LABELS)}))
    out = tmp_path / "plain.onnx"
    lines = []
    torch.manual_seed(21)
    report = export_onnx(TINY_VIT["name"], out, img_size=32, model_kwargs=TINY_VIT["kwargs"], attentions=False,
                         labels=labels, log=lines.append)
    assert any("RANDOM weights" in line for line in lines) and any("parity" in line for line in lines)
    sess = session(out)
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    assert report.meta.outputs == ("logits",) and file_meta(out).outputs == ("logits",)
    assert report.meta.label_names == TINY_LABELS and report.attentions_max_abs == 0.0
    torch.manual_seed(21)  # export_onnx draws the same random weights as this
    model = timm.create_model(TINY_VIT["name"], img_size=32, **TINY_VIT["kwargs"]).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    (logits,) = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(logits, ref, atol=1e-5)


# ----------------------------------------------------------------------------- capture
def test_wrapper_captures_every_block_and_restores_the_model():
    model = make_model(TINY_VIT["name"], img_size=32, patch_size=8, depth=3)
    flags = [blk.attn.fused_attn for blk in model.blocks]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        with ViTWithAttention(model) as wrapped:
            assert all(blk.attn.fused_attn is False for blk in model.blocks)
            logits, attn = wrapped(x)
            bare = model(x)  # calling the bare model while wrapped captures nothing, changes nothing
            assert wrapped._captured == []
    assert attn.shape == (2, 3, 2, 17, 17)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(bare, plain, atol=1e-5, rtol=0)
    assert [blk.attn.fused_attn for blk in model.blocks] == flags
    assert all(len(blk.attn.attn_drop._forward_hooks) == 0 for blk in model.blocks)
    # timm's parameter names are untouched: a timm state dict still loads strictly while wrapped.
    other = make_model(TINY_VIT["name"], seed=3, img_size=32, patch_size=8, depth=3).state_dict()
    with ViTWithAttention(model) as wrapped:
        wrapped.model.load_state_dict(other, strict=True)


def test_deltas_hook_gives_gradients_with_respect_to_the_probabilities():
    # The hook point a later `gradients=True` export uses: block l runs on probs_l + delta_l,
    # so d logit / d delta_l is d logit / d probs_l. Checked against central differences.
    model = make_model(TINY_VIT["name"], img_size=32, patch_size=8).double()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = 4
    with ViTWithAttention(model) as wrapped:
        with pytest.raises(ExportError, match="needs 2 tensors"):
            wrapped.set_deltas([None])
        deltas = [torch.zeros(1, 2, 17, 17, dtype=torch.float64, requires_grad=True) for _ in range(2)]
        wrapped.set_deltas(deltas)
        logits, _ = wrapped(x)
        grads = torch.autograd.grad(logits[0, target], deltas)
        with torch.no_grad():
            for layer, (h, i, j) in ((0, (1, 0, 5)), (1, (0, 3, 0)), (1, (1, 0, 16))):
                eps = 1e-6
                bumped = [torch.zeros(1, 2, 17, 17, dtype=torch.float64) for _ in range(2)]
                bumped[layer][0, h, i, j] = eps
                wrapped.set_deltas(bumped)
                up = wrapped(x)[0][0, target]
                bumped[layer][0, h, i, j] = -eps
                down = wrapped(x)[0][0, target]
                numeric = ((up - down) / (2 * eps)).item()
                assert grads[layer][0, h, i, j].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)
        wrapped.set_deltas(None)
        with torch.no_grad():
            torch.testing.assert_close(wrapped(x)[0], model(x))
    assert any(g.abs().max() > 0 for g in grads)


# ----------------------------------------------------------------------------- outside the family
@pytest.mark.parametrize("name,kwargs,match", [
    ("swin_tiny_patch4_window7_224", dict(embed_dim=32, depths=(1, 1), num_heads=(1, 2), img_size=32,
                                          window_size=4, num_classes=10), "windows"),
    ("resnet18", dict(num_classes=10), "no attention layers"),
])
def test_models_outside_the_family_raise_export_error(tmp_path, name, kwargs, match):
    model = timm.create_model(name, pretrained=False, **kwargs)
    out = tmp_path / "x.onnx"
    with pytest.raises(ExportError, match=match) as err:
        export_module(model, out, model_name=name, **QUIET)
    assert name in str(err.value)
    with pytest.raises(ExportError, match=name):
        export_onnx(name, out, model_kwargs=kwargs, **QUIET)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_unsupported_pooling_and_missing_head_and_bad_options(tmp_path):
    out = tmp_path / "x.onnx"
    with pytest.raises(ExportError, match="pooling 'map'"):
        export_module(make_model(TINY_VIT["name"], img_size=32, patch_size=8, global_pool="map"), out,
                      model_name="vit_map", **QUIET)
    with pytest.raises(ExportError, match="no classifier head"):
        export_onnx(TINY_VIT["name"], out, img_size=32, model_kwargs={**TINY_VIT["kwargs"], "num_classes": 0}, **QUIET)
    with pytest.raises(ExportError, match="Did you mean 'mean'"):
        export_onnx(TINY_VIT["name"], out, heads="maen", **QUIET)
    with pytest.raises(ExportError, match="vit_tiny_patch16_224"):
        export_onnx("vit_tiny_patch16_244", out, **QUIET)
    with pytest.raises(ExportError, match="just one"):
        export_onnx(TINY_VIT["name"], out, pretrained=True, checkpoint=tmp_path / "w.pth", **QUIET)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- weights
def tiny_state_dict(seed=1):
    return make_model(TINY_VIT["name"], seed=seed, img_size=32, patch_size=8).state_dict()


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "ddp_in_model"])
def test_pth_containers_unwrap(tmp_path, wrap):
    sd = tiny_state_dict()
    obj = {"plain": sd, "model": {"model": sd, "epoch": 3}, "state_dict": {"state_dict": sd},
           "ddp_in_model": {"model": {f"module.{k}": v for k, v in sd.items()}}}[wrap]
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    got = read_state_dict(path)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


@pytest.mark.slow
def test_checkpoint_export_matches_source_model_and_infers_head_size(tmp_path):
    source = make_model(TINY_VIT["name"], seed=11, img_size=32, patch_size=8)
    ckpt = tmp_path / "trained.pth"
    torch.save({"model": source.state_dict()}, ckpt)
    out = tmp_path / "out" / "m.onnx"
    kwargs = {k: v for k, v in TINY_VIT["kwargs"].items() if k != "num_classes"}  # taken from the checkpoint
    report = export_onnx(TINY_VIT["name"], out, img_size=32, model_kwargs=kwargs, checkpoint=ckpt, **QUIET)
    assert report.meta.num_classes == 10 and report.meta.extra == {"weights": "checkpoint:trained.pth"}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    logits, _ = session(out).run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, source(x).numpy(), atol=1e-5)


def test_bad_checkpoints_raise_and_leave_no_file(tmp_path):
    from safetensors.torch import save_file

    out = tmp_path / "out.onnx"
    sd = tiny_state_dict()

    def attempt(ckpt, match, **kw):
        with pytest.raises(ExportError, match=match):
            export_onnx(TINY_VIT["name"], out, img_size=32, model_kwargs={**TINY_VIT["kwargs"], **kw},
                        checkpoint=ckpt, **QUIET)
        assert not out.exists()

    attempt(tmp_path / "absent.safetensors", "does not exist")
    (tmp_path / "w.ckpt").write_bytes(b"\0" * 64)
    attempt(tmp_path / "w.ckpt", "unsupported extension '.ckpt'")
    (tmp_path / "corrupt.pth").write_bytes(os.urandom(256))
    attempt(tmp_path / "corrupt.pth", "cannot be read")
    renamed = dict(sd)
    renamed["blocks.0.attn.qkv.kernel"] = renamed.pop("blocks.0.attn.qkv.weight")
    del renamed["norm.bias"]
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(ExportError) as err:
        export_onnx(TINY_VIT["name"], out, img_size=32, model_kwargs=TINY_VIT["kwargs"],
                    checkpoint=tmp_path / "renamed.safetensors", **QUIET)
    msg = str(err.value)
    assert "2 missing: blocks.0.attn.qkv.weight, norm.bias" in msg and "1 unexpected: blocks.0.attn.qkv.kernel" in msg
    save_file(sd, str(tmp_path / "ten.safetensors"))
    attempt(tmp_path / "ten.safetensors", r"wrong shape: head.bias \(10,\) vs model \(5,\)", num_classes=5)
    # weights_only=True: a pickled object other than tensors and containers is refused, not run.
    torch.save({"model": sd, "args": _PickledConfig()}, tmp_path / "pickled.pth")
    attempt(tmp_path / "pickled.pth", "cannot be read")
    # Only the inputs this test wrote: no output, no temporary file.
    assert sorted(os.listdir(tmp_path)) == ["corrupt.pth", "pickled.pth", "renamed.safetensors",
                                            "ten.safetensors", "w.ckpt"]


class _PickledConfig:
    """Stands for the argparse-like objects old training scripts pickled into checkpoints."""

    lr = 0.1


def _to_jax_npz(model, path):
    """Write a timm ViT in the original JAX/Flax (big_vision-free) .npz layout."""
    d = model.embed_dim
    h = model.blocks[0].attn.num_heads
    w = {"embedding/kernel": model.patch_embed.proj.weight.permute(2, 3, 1, 0),
         "embedding/bias": model.patch_embed.proj.bias, "cls": model.cls_token,
         "Transformer/posembed_input/pos_embedding": model.pos_embed,
         "Transformer/encoder_norm/scale": model.norm.weight, "Transformer/encoder_norm/bias": model.norm.bias,
         "head/kernel": model.head.weight.T, "head/bias": model.head.bias}
    for i, blk in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = blk.norm1.weight, blk.norm1.bias
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = blk.norm2.weight, blk.norm2.bias
        for n, (wq, bq) in zip(("query", "key", "value"),
                               zip(blk.attn.qkv.weight.chunk(3), blk.attn.qkv.bias.chunk(3))):
            w[p + f"MultiHeadDotProductAttention_1/{n}/kernel"] = wq.T.reshape(d, h, -1)
            w[p + f"MultiHeadDotProductAttention_1/{n}/bias"] = bq.reshape(h, -1)
        w[p + "MultiHeadDotProductAttention_1/out/kernel"] = blk.attn.proj.weight.reshape(d, h, -1).permute(1, 2, 0)
        w[p + "MultiHeadDotProductAttention_1/out/bias"] = blk.attn.proj.bias
        for r, fc in enumerate((blk.mlp.fc1, blk.mlp.fc2)):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"], w[p + f"MlpBlock_3/Dense_{r}/bias"] = fc.weight.T, fc.bias
    np.savez(path, **{k: v.detach().numpy() for k, v in w.items()})


def test_jax_npz_checkpoint_loads_through_timm(tmp_path):
    source = make_model(TINY_VIT["name"], seed=5, img_size=32, patch_size=8)
    _to_jax_npz(source, tmp_path / "vit.npz")
    target = make_model(TINY_VIT["name"], seed=6, img_size=32, patch_size=8)
    load_checkpoint(target, tmp_path / "vit.npz", log=lambda line: None)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), atol=1e-5, rtol=0)
    with pytest.raises(ExportError, match="10-class head; the model has 5 classes"):
        load_checkpoint(make_model(TINY_VIT["name"], img_size=32, patch_size=8, num_classes=5), tmp_path / "vit.npz")


def test_pretrained_without_hub_fails_fast_with_a_clear_error(tmp_path, monkeypatch):
    # .invalid never resolves (RFC 2606), so this is offline wherever it runs.
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ExportError, match=r"could not reach the model hub.*--checkpoint"):
        export_onnx("deit_tiny_patch16_224", tmp_path / "x.onnx", pretrained=True, **QUIET)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- parity gate
@pytest.mark.slow
def test_perturbed_graph_fails_parity_and_leaves_no_file(tmp_path, monkeypatch):
    import attnmap.export.to_onnx as to_onnx

    real_save = to_onnx._save

    def save_then_perturb(proto, meta, path):
        real_save(proto, meta, path)
        model = onnx.load(str(path))
        from onnx import numpy_helper

        noise = np.random.default_rng(0)
        heads = [init for init in model.graph.initializer if init.name.endswith("head.weight")]
        assert len(heads) == 1
        for init in heads:
                arr = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array(arr + noise.normal(0, 0.05, arr.shape).astype(np.float32),
                                                      init.name))
        onnx.save_model(model, str(path))

    monkeypatch.setattr(to_onnx, "_save", save_then_perturb)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match=r"parity check failed for tiny: logits max .*no file written"):
        export_module(make_model(TINY_VIT["name"], img_size=32, patch_size=8), out, model_name="tiny", **QUIET)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_parity_tolerance_is_enforced(tmp_path, monkeypatch):
    # The gate compares against the tolerances, not merely computes differences: with a
    # negative attention tolerance even a perfect export must be refused.
    import attnmap.export.to_onnx as to_onnx

    monkeypatch.setattr(to_onnx, "ATTN_ATOL", -1.0)
    with pytest.raises(ExportError, match="attentions max"):
        export_module(make_model(TINY_VIT["name"], img_size=32, patch_size=8), tmp_path / "m.onnx",
                      model_name="tiny", **QUIET)
    assert os.listdir(tmp_path) == []


def test_check_parity_on_a_finished_file(exported_tiny_vit_onnx):
    from attnmap.export import check_parity

    torch.manual_seed(0)
    model = timm.create_model(TINY_VIT["name"], img_size=32, **TINY_VIT["kwargs"])
    d_logits, d_attn = check_parity(model, exported_tiny_vit_onnx, file_meta(exported_tiny_vit_onnx), batch=3,
                                    seed=4)
    assert d_logits <= 1e-5 and d_attn <= 1e-6
    other = make_model(TINY_VIT["name"], seed=99, img_size=32, patch_size=8)
    d_logits, d_attn = check_parity(other, exported_tiny_vit_onnx, file_meta(exported_tiny_vit_onnx))
    assert d_logits > 1e-2 and d_attn > 1e-4  # a different model is told apart


# ----------------------------------------------------------------------------- labels
def test_labels_from_txt_json_and_lists(tmp_path):
    txt = tmp_path / "l.txt"
    txt.write_text("\n".join(TINY_LABELS) + "\n\n")
    assert resolve_labels(txt, 10) == TINY_LABELS
    keras = tmp_path / "k.json"
    keras.write_text(json.dumps({str(i): [f"n{i}", n] for i, n in reversed(list(enumerate(TINY_LABELS)))}))
    assert resolve_labels(keras, 10) == TINY_LABELS
    plain = tmp_path / "p.json"
    plain.write_text(json.dumps(list(TINY_LABELS)))
    assert read_labels(plain) == TINY_LABELS
    assert resolve_labels(list(TINY_LABELS), 10) == TINY_LABELS
    with pytest.raises(ExportError, match="has 10 names but the model has 12 classes"):
        resolve_labels(txt, 12)
    with pytest.raises(ExportError, match="has 2 names but the model has 10 classes"):
        resolve_labels(["a", "b"], 10)
    gap = tmp_path / "g.json"
    gap.write_text(json.dumps({"0": "a", "2": "c"}))
    with pytest.raises(ExportError, match="without gaps"):
        read_labels(gap)
    blank = tmp_path / "b.txt"
    blank.write_text("a\n\nb\n")
    with pytest.raises(ExportError, match="line 2 is blank"):
        read_labels(blank)
    csv = tmp_path / "l.csv"
    csv.write_text("a\n")
    with pytest.raises(ExportError, match="must be one of"):
        read_labels(csv)
    with pytest.raises(ExportError, match="does not exist"):
        read_labels(tmp_path / "absent.txt")
    assert resolve_labels(None, 10) == ()


def test_default_imagenet_labels_come_from_timm(shared_data):
    names = default_labels(1000)
    assert len(names) == 1000 and names[0] == "tench" and names[258] == "Samoyed"
    reference = (shared_data / "labels" / "imagenet_classes.txt").read_text().splitlines()
    assert list(names) == reference
