"""The real DeiT-Tiny ImageNet checkpoint, exported, against timm's own torch model.

Needs ../shared/data (weights, labels, photos); every test skips with a reason without it.
"""

from __future__ import annotations

import numpy as np
import pytest
from extras import need

torch = need("torch", "export")
timm = need("timm", "export")
ort = pytest.importorskip("onnxruntime")
Image = need("PIL.Image", "test")

from conftest import DEIT_TINY_CHECKPOINT  # noqa: E402
from attnmap.runtime.core.meta import ModelMeta  # noqa: E402

pytestmark = [pytest.mark.export, pytest.mark.slow]

SAMOYED = 258


@pytest.fixture(scope="module")
def timm_deit(shared_data):
    """timm's DeiT-Tiny as timm ships it (fused attention, no wrapper), with the real weights."""
    from safetensors.torch import load_file

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    model.load_state_dict(load_file(str(shared_data / DEIT_TINY_CHECKPOINT)), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def photos(shared_data, timm_deit):
    """Every shared photo through timm's own eval transform: name -> float32 [3, 224, 224]."""
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config(model=timm_deit))
    paths = sorted((shared_data / "images").iterdir())
    assert len(paths) >= 10
    return {p.name: transform(Image.open(p).convert("RGB")) for p in paths}


@pytest.fixture(scope="module")
def deit_session(deit_tiny_onnx):
    return ort.InferenceSession(str(deit_tiny_onnx), providers=["CPUExecutionProvider"])


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_metadata_of_the_real_export(deit_session):
    meta = ModelMeta.from_props(deit_session.get_modelmeta().custom_metadata_map)
    assert meta.model_name == "deit_tiny_patch16_224" and meta.input_size == (3, 224, 224)
    assert meta.mean == pytest.approx((0.485, 0.456, 0.406)) and meta.std == pytest.approx((0.229, 0.224, 0.225))
    assert (meta.interpolation, meta.crop_pct, meta.crop_mode) == ("bicubic", 0.9, "center")
    assert (meta.grid_size, meta.prefix_tokens, meta.num_layers, meta.num_heads) == ((14, 14), ("class",), 12, 3)
    assert meta.num_classes == 1000 and meta.label(SAMOYED) == "Samoyed"
    assert meta.extra["weights"] == "checkpoint:deit_tiny_patch16_224_in1k.safetensors"


def test_samoyed_is_top1_through_onnxruntime(deit_session, photos):
    logits, attn = deit_session.run(None, {"input": photos["pytorchhub_dog.jpg"][None].numpy()})
    probs = softmax(logits[0].astype(np.float64))
    assert int(probs.argmax()) == SAMOYED
    assert probs[SAMOYED] == pytest.approx(0.775, abs=0.01)  # SOURCES.md: Samoyed 0.775 in timm
    assert attn.shape == (1, 12, 3, 197, 197)


def test_top5_probabilities_match_timm_on_every_photo(deit_session, photos, timm_deit):
    x = torch.stack(list(photos.values()))
    with torch.no_grad():
        ref = torch.softmax(timm_deit(x).double(), dim=-1).numpy()
    logits, _ = deit_session.run(None, {"input": x.numpy()})
    got = softmax(logits.astype(np.float64))
    for i, name in enumerate(photos):
        top5 = np.argsort(-ref[i])[:5]
        assert list(np.argsort(-got[i])[:5]) == list(top5), name
        np.testing.assert_allclose(got[i, top5], ref[i, top5], atol=1e-3, err_msg=name)


def timm_attentions(model, x):
    """[B, L, H, N, N] from the unwrapped timm model: each block's input, caught by a forward
    pre-hook on its attention module, turned into softmax(q kᵀ / sqrt(d)) by hand."""
    inputs = []
    handles = [blk.attn.register_forward_pre_hook(lambda mod, args: inputs.append(args[0])) for blk in model.blocks]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    maps = []
    with torch.no_grad():
        for blk, xin in zip(model.blocks, inputs):
            a = blk.attn
            b, n, _ = xin.shape
            q, k, _ = a.qkv(xin).reshape(b, n, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)
            maps.append(((q * a.scale) @ k.transpose(-2, -1)).softmax(-1))
    assert len(maps) == len(model.blocks) == 12
    return torch.stack(maps, dim=1).numpy()


def reference_rollout(attn: np.ndarray) -> np.ndarray:
    """Abnar & Zuidema rollout with full N x N products, later layers on the left.

    Â_l = 0.5 * mean_h(A_l) + 0.5 * I, rows renormalised; R = Â_L ··· Â_1; the map is the class
    token's row of R over the patch columns, as [B, 14, 14] (float64).
    """
    b, layers, _, n, _ = attn.shape
    out = np.empty((b, n - 1))
    for i in range(b):
        r = np.eye(n)
        for layer in range(layers):
            a_hat = 0.5 * attn[i, layer].astype(np.float64).mean(0) + 0.5 * np.eye(n)
            a_hat /= a_hat.sum(-1, keepdims=True)
            r = a_hat @ r
        out[i] = r[0, 1:]
    return out.reshape(b, 14, 14)


def test_rollout_from_onnx_attentions_matches_timm_reference(deit_session, photos, timm_deit):
    names = ["pytorchhub_dog.jpg", "vitexplain_both.png", "hc_el4.jpg"]
    x = torch.stack([photos[n] for n in names])
    _, attn = deit_session.run(None, {"input": x.numpy()})
    ref_attn = timm_attentions(timm_deit, x)
    # The reference runs timm's fused (SDPA) path, whose float32 rounding differs from the
    # explicit softmax path in the graph; over 12 blocks that reaches ~2e-5 on a few entries.
    np.testing.assert_allclose(attn, ref_attn, atol=5e-5)

    ref = reference_rollout(ref_attn)
    got = reference_rollout(attn)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert np.abs(ref).max() > 1e-3

    # The runtime's rollout (vector-matrix, normalised to [0, 1]) on the ONNX attentions
    # must equal the min-max normalised reference.
    from attnmap.runtime.methods import attention_rollout

    meta = ModelMeta.from_props(deit_session.get_modelmeta().custom_metadata_map)
    lo = ref.min(axis=(1, 2), keepdims=True)
    hi = ref.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(attention_rollout(attn, meta.layout), (ref - lo) / (hi - lo), atol=1e-4)


def test_checkpoint_loads_into_an_img_size_override(shared_data, timm_deit, photos):
    # The 224 px checkpoint into a 160 px model: strict loading fails on pos_embed, timm's
    # checkpoint_filter_fn resamples it, and the result still recognises the Samoyed.
    from attnmap.export.weights import load_checkpoint

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=160).eval()
    lines = []
    load_checkpoint(model, shared_data / DEIT_TINY_CHECKPOINT, log=lines.append)
    assert any("checkpoint_filter_fn" in line for line in lines)
    assert model.pos_embed.shape == (1, 1 + 10 * 10, 192)
    x = torch.nn.functional.interpolate(photos["pytorchhub_dog.jpg"][None], size=160, mode="bicubic")
    with torch.no_grad():
        assert int(model(x).argmax()) == SAMOYED
