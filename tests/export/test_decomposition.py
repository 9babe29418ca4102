"""Forward-only decompositions: the exported file's maps against independent torch references.

Each map attnmap computes from a file exported with ``decompositions=True`` (the ONNX graph's
small outputs, then NumPy) must equal the reference written from the papers' formulas with hooks
on the real model (``decomposition_reference.py``), within 1e-4: on the real DeiT-Tiny and on
random-init tiny models of every family the export supports. The class-specific contributions
must add up, with their bias part, to the logits (completeness).
"""

from __future__ import annotations

import numpy as np
import pytest
from extras import need

torch = need("torch", "export")
timm = need("timm", "export")

import decomposition_reference as ref  # noqa: E402
from tiny_models import make_model  # noqa: E402

from attnmap.runtime.core.errors import ExportError  # noqa: E402
from attnmap.runtime.methods import METHODS  # noqa: E402
from attnmap.runtime.model.session import OnnxModel  # noqa: E402

pytestmark = [pytest.mark.export]

QUIET = dict(log=lambda line: None)
# (id, timm name, kwargs, class contributions exported)
FAMILIES = [
    ("vit", "vit_tiny_patch16_224", dict(img_size=32, patch_size=8), True),
    ("deit_distilled", "deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8), False),
    ("registers_gap", "vit_base_patch16_reg4_gap_256", dict(img_size=32, patch_size=8), False),
    ("dinov2_reg4", "vit_small_patch14_reg4_dinov2", dict(img_size=42), True),
    ("eva02_rope", "eva02_tiny_patch14_224", dict(img_size=42), False),
    ("eva02_unfused", "eva02_tiny_patch14_224", dict(img_size=42, qkv_fused=False), False),  # values: v_proj's
    ("beit_relpos", "beit_base_patch16_224", dict(img_size=32, patch_size=8), False),
    ("no_class_token", "vit_tiny_patch16_224",
     dict(img_size=(32, 48), patch_size=8, class_token=False, global_pool="avg"), False),
]


def _randomise_layer_scales(model) -> None:
    """Layer scales start at 1e-5 (DINOv2) or 0.1 (BEiT): redraw them so they matter."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for blk in model.blocks:
            for index in (1, 2):
                gamma = ref.layer_scale(blk, index)
                if gamma is not None:
                    src = blk.ls1.gamma if index == 1 and hasattr(blk, "ls1") else (
                        blk.ls2.gamma if hasattr(blk, "ls2") else getattr(blk, f"gamma_{index}"))
                    src.copy_(0.5 + torch.rand(src.shape, generator=gen))


def _maps(path, x: np.ndarray, classes=None) -> tuple[dict, object]:
    model = OnnxModel(path, provider="cpu")
    out = model.run(x)
    layout = model.meta.layout
    got = {}
    for name in ("attn-norm", "globenc", "decompx"):
        m = METHODS[name]
        if name == "decompx" and not model.meta.has_class_contributions:
            continue
        options = {**m.defaults, "start_layer": 0} if name == "decompx" else m.defaults  # the carry-back
        got[name] = m.kind.maps(m, out, layout, options, classes=classes)
        if name == "decompx":  # its default: the last block's contributions as they are
            got["decompx-last"] = m.kind.maps(m, out, layout, m.defaults, classes=classes)
    return got, out, model.meta


def _references(model, x: torch.Tensor, meta, classes) -> dict:
    rec = ref.capture(model, x)
    blocks = list(model.blocks)
    target = meta.target_row
    grid, prefix = meta.grid_size, meta.num_prefix_tokens
    norm = [ref.attn_norm_matrix(b, r) for b, r in zip(blocks, rec["blocks"])]
    glob = [ref.globenc_matrix(b, r) for b, r in zip(blocks, rec["blocks"])]
    want = {"attn-norm": ref.minmax_patches(ref.rollout_row(norm, target), prefix, grid),
            "globenc": ref.minmax_patches(ref.rollout_row(glob, target), prefix, grid)}
    if meta.has_class_contributions:
        parts, bias = ref.class_contributions(model, rec)
        logits = rec["logits"].double()
        # completeness: the token parts and the bias part add up to the logits
        assert torch.allclose(parts.sum(dim=1) + bias, logits, atol=1e-4 * max(1.0, logits.abs().max().item()))
        v = parts[torch.arange(parts.shape[0]), :, torch.as_tensor(classes)]
        want["decompx"] = ref.minmax_patches(ref.rollout_row(glob[:-1], target, v=v), prefix, grid)
        want["decompx-last"] = ref.minmax_patches(v, prefix, grid)
        want["parts"] = parts
    return want


def _check(path, model, x, classes=None, atol=1e-4):
    got, out, meta = _maps(path, x.numpy(), classes)
    chosen = out.logits.argmax(1) if classes is None else np.asarray(classes)
    with torch.no_grad():
        want = _references(model, x, meta, chosen)
    if meta.has_class_contributions:
        parts = want.pop("parts").numpy()
        scale = max(1.0, float(np.abs(parts).max()))
        assert np.abs(out.class_contributions - parts).max() <= 1e-4 * scale
    assert set(got) == set(want)
    for name in want:
        diff = np.abs(got[name] - want[name].numpy()).max()
        assert diff <= atol, (name, diff)
    return got


@pytest.mark.parametrize("fid,name,kwargs,contributions", FAMILIES, ids=[f[0] for f in FAMILIES])
@pytest.mark.slow  # an export per family (as test_export.py's family test)
def test_family_maps_equal_the_torch_reference(tmp_path, fid, name, kwargs, contributions):
    from attnmap.export import export_module

    model = make_model(name, **kwargs)
    _randomise_layer_scales(model)
    out = tmp_path / f"{fid}.onnx"
    report = export_module(model, out, model_name=name, decompositions=True, **QUIET)
    assert report.meta.has_decompositions
    assert report.meta.has_class_contributions == contributions
    c, h, w = report.meta.input_size
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(1))
    _check(out, model, x)
    if contributions:  # a chosen class, not the prediction, for each image
        _check(out, model, x, classes=[1, 7])


def test_decompositions_refuse_fused_heads_and_gradients(tmp_path):
    from attnmap.export import export_module

    model = make_model("vit_tiny_patch16_224", img_size=32, patch_size=8)
    with pytest.raises(ExportError, match="heads='none'"):
        export_module(model, tmp_path / "a.onnx", model_name="vit", heads="mean", decompositions=True, **QUIET)
    with pytest.raises(ExportError, match="gradients"):
        export_module(model, tmp_path / "b.onnx", model_name="vit", gradients=True, decompositions=True, **QUIET)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_real_deit_tiny_maps_equal_the_torch_reference(deit_tiny_decomp_onnx, shared_data):
    from safetensors.torch import load_file

    from conftest import DEIT_TINY_CHECKPOINT

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    model.load_state_dict(load_file(str(shared_data / DEIT_TINY_CHECKPOINT)), strict=True)
    model.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    _check(deit_tiny_decomp_onnx, model, x)
    _check(deit_tiny_decomp_onnx, model, x, classes=[258, 1])
