"""Hugging Face transformers ViTs through `attnmap export`: the same contract as timm models.

Every model is a small random-init configuration (hidden 32, 2 layers, 2 heads, 32 px input,
8 px patches) written with ``save_pretrained`` into a temporary folder; no downloads. The
weights are scaled up after init so that the attention is far from uniform (transformers
initialises with std 0.02, which makes every attention row nearly flat and a rollout test weak).
References are computed with transformers itself: eager attention, ``output_attentions=True``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from extras import need

torch = need("torch", "export")
transformers = need("transformers", "export")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from attnmap.cli import main as cli_main  # noqa: E402
from attnmap.export.hf_meta import processor_data_config  # noqa: E402
from attnmap.export.to_onnx import export_onnx  # noqa: E402
from attnmap.runtime.core.errors import ExportError  # noqa: E402
from attnmap.runtime.image.preprocess import preprocess, read_image  # noqa: E402
from attnmap.runtime.methods import attention_maps  # noqa: E402
from attnmap.runtime.model.session import OnnxModel  # noqa: E402

pytestmark = [pytest.mark.export, pytest.mark.slow]

QUIET = dict(log=lambda line: None)
PHOTOS = sorted(Path("/work/shared/data/images").glob("*"))
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
             patch_size=8, num_labels=10, id2label={i: f"thing {i}" for i in range(10)})
T = transformers


def _deit_processor():
    return T.DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32})


def _bit_processor():
    return T.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


# id -> (config, class, processor, prefix kinds, pooling)
CASES = {
    "vit": (lambda: T.ViTConfig(**SMALL), "ViTForImageClassification",
            lambda: T.ViTImageProcessor(size={"height": 32, "width": 32}), ("class",), "token"),
    "deit": (lambda: T.DeiTConfig(**SMALL), "DeiTForImageClassification", _deit_processor,
             ("class", "distillation"), "token"),
    "deit_teacher": (lambda: T.DeiTConfig(**SMALL), "DeiTForImageClassificationWithTeacher", _deit_processor,
                     ("class", "distillation"), "token"),
    "beit": (lambda: T.BeitConfig(**SMALL, use_relative_position_bias=True, use_mean_pooling=True,
                                  layer_scale_init_value=0.1), "BeitForImageClassification",
             lambda: T.BeitImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False, resample=2,
                                          image_mean=[0.5] * 3, image_std=[0.5] * 3), ("class",), "avg"),
    "dinov2": (lambda: T.Dinov2Config(**SMALL), "Dinov2ForImageClassification", _bit_processor, ("class",), "token"),
    "dinov2_reg": (lambda: T.Dinov2WithRegistersConfig(**SMALL, num_register_tokens=4),
                   "Dinov2WithRegistersForImageClassification", _bit_processor,
                   ("class", "register", "register", "register", "register"), "token"),
}


def make_model(case: str, seed: int = 0):
    """A random-init model of ``case`` with spread-out weights, and its processor."""
    config, arch, proc, _, _ = CASES[case]
    torch.manual_seed(seed)
    model = getattr(T, arch)(config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                continue
            p.add_(torch.randn_like(p) * (0.3 if "relative_position_bias_table" not in name else 1.0))
    return model, proc()


def save(case: str, folder: Path, seed: int = 0):
    model, proc = make_model(case, seed)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return model, proc


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """case -> (folder, onnx path, report, the transformers model with eager attention)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for case in CASES:
        folder = root / case
        save(case, folder)
        report = export_onnx(str(folder), root / f"{case}.onnx", **QUIET)
        model = getattr(T, CASES[case][1]).from_pretrained(folder, attn_implementation="eager").eval()
        out[case] = (folder, report.path, report, model)
    return out


def seed_rollout(attentions) -> np.ndarray:
    """The seed's recipe in torch: heads averaged, 0.5 A + 0.5 I composed over layers, class-token row."""
    n = attentions[0].shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    result = eye.expand(attentions[0].shape[0], n, n)
    for a in attentions:
        a_hat = 0.5 * a.double().mean(dim=1) + 0.5 * eye
        result = a_hat @ result
    return result[:, 0].numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_runtime_rollout_and_outputs_match_transformers(exported, case):
    folder, path, report, model = exported[case]
    onnx_model = OnnxModel(path)
    meta = onnx_model.meta
    images = [read_image(p) for p in PHOTOS[:3]]
    x, _ = preprocess(images, meta)
    out = onnx_model.run(x)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x), output_attentions=True)
    np.testing.assert_allclose(out.logits, ref.logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(out.attentions, torch.stack(ref.attentions, 1).numpy(), atol=1e-5)
    rows = seed_rollout(ref.attentions)[:, meta.num_prefix_tokens:].reshape(len(images), *meta.grid_size)
    lo, hi = rows.min(axis=(1, 2), keepdims=True), rows.max(axis=(1, 2), keepdims=True)
    expected = (rows - lo) / (hi - lo)
    got = attention_maps("rollout", out.attentions, meta.layout)
    assert expected.std() > 0.05  # the maps carry a ranking, not a flat field
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert report.logits_max_abs < 1e-4 and report.attentions_max_abs < 1e-5


@pytest.mark.parametrize("case", list(CASES))
def test_metadata_comes_from_the_model_configs(exported, case):
    folder, path, _, model = exported[case]
    meta = OnnxModel(path).meta
    cfg, (_, arch, _, prefix, pooling) = model.config, CASES[case]
    proc = T.AutoImageProcessor.from_pretrained(folder)
    assert meta.prefix_tokens == prefix and meta.pooling == pooling
    assert (meta.num_layers, meta.num_heads, meta.num_classes) == (2, 2, 10)
    assert meta.patch_size == (8, 8) and meta.grid_size == (4, 4) and meta.input_size == (3, 32, 32)
    assert meta.label_names == tuple(cfg.id2label[i] for i in range(10))
    np.testing.assert_allclose(np.array(meta.mean) * 255 * proc.rescale_factor, proc.image_mean, rtol=1e-12)
    np.testing.assert_allclose(np.array(meta.std) * 255 * proc.rescale_factor, proc.image_std, rtol=1e-12)
    expected = {"vit": ("bilinear", "squash", 1.0), "beit": ("bilinear", "squash", 1.0),
                "deit": ("bicubic", "squash", 32 / 36), "deit_teacher": ("bicubic", "squash", 32 / 36),
                "dinov2": ("bicubic", "center", 32 / 36), "dinov2_reg": ("bicubic", "center", 32 / 36)}[case]
    assert (meta.interpolation, meta.crop_mode) == expected[:2]
    assert meta.crop_pct == pytest.approx(expected[2], rel=1e-12)
    assert meta.extra["architecture"] == arch and meta.exporter["transformers"] == transformers.__version__
    assert meta.outputs == ("logits", "attentions") and meta.inputs == ("input",)


# Real processor settings at real sizes: ViT-L/32 384 (plain bilinear resize), DeiT (256 -> centre
# 224, bicubic), BEiT (bilinear, mean 0.5), DINOv2's BitImageProcessor (shortest edge 256 -> 224).
REAL_PROCESSORS = {
    "vit": lambda: T.ViTImageProcessor(size={"height": 384, "width": 384}),
    "deit": lambda: T.DeiTImageProcessor(),
    "beit": lambda: T.BeitImageProcessor(size={"height": 224, "width": 224}, do_center_crop=False, resample=2,
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3),
    "dinov2": lambda: T.BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                          image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
}


@pytest.mark.parametrize("name", list(REAL_PROCESSORS))
def test_preprocessing_matches_the_image_processor_on_photos(exported, name):
    proc = REAL_PROCESSORS[name]()
    data = processor_data_config(proc, name)
    h, w = data["input_size"][1:]
    meta = OnnxModel(exported["vit"][1]).meta.replace(
        input_size=data["input_size"], mean=data["mean"], std=data["std"], interpolation=data["interpolation"],
        crop_pct=data["crop_pct"], crop_mode=data["crop_mode"], patch_size=(16, 16), grid_size=(h // 16, w // 16))
    level = 1 / 255 / min(proc.image_std)  # one uint8 step, normalised
    assert len(PHOTOS) >= 8
    for photo in PHOTOS:
        img = read_image(photo)
        ours = preprocess(img, meta)[0][0]
        # The same decoded pixels for both, so only the transforms are compared.
        theirs = proc(images=np.ascontiguousarray(img[..., ::-1]), return_tensors="np")["pixel_values"][0]
        if name == "dinov2":
            ours, theirs = _without_known_crop_offset(img.shape[:2], ours, theirs)
        diff = np.abs(ours - theirs)
        assert diff.max() <= 2.01 * level, (photo.name, diff.max() / level)
        assert diff.mean() <= 0.05 * level, (photo.name, diff.mean() / level)


def _without_known_crop_offset(hw, ours, theirs):
    """The one known difference: transformers crops at floor(d / 2), the runtime at round(d / 2).

    When the resized long side exceeds 224 by d with d % 4 == 3, the runtime's crop starts one
    pixel later along that side: ours[i] == theirs[i + 1]. Returns the overlapping parts.
    """
    h0, w0 = hw
    d = int(256 * max(h0, w0) / min(h0, w0)) - 224
    if d % 4 != 3:
        return ours, theirs
    if w0 > h0:
        return ours[:, :, :-1], theirs[:, :, 1:]
    return ours[:, :-1], theirs[:, 1:]


@pytest.mark.parametrize("case", ["vit", "deit"])
def test_top5_on_photos_equals_transformers_with_its_processor(exported, case):
    folder, path, _, model = exported[case]
    onnx_model = OnnxModel(path)
    proc = T.AutoImageProcessor.from_pretrained(folder)
    images = [read_image(p) for p in PHOTOS]
    x, _ = preprocess(images, onnx_model.meta)
    ours = onnx_model.run(x).logits
    pixels = proc(images=[np.ascontiguousarray(i[..., ::-1]) for i in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        theirs = model(pixel_values=pixels).logits.numpy()
    assert [list(np.argsort(-r)[:5]) for r in ours] == [list(np.argsort(-r)[:5]) for r in theirs]


def test_gradients_export_for_beit(tmp_path):
    folder = tmp_path / "beit"
    save("beit", folder)
    report = export_onnx(str(folder), tmp_path / "g.onnx", gradients=True, **QUIET)
    assert report.meta.has_token_grads and report.grads_max_rel < 1e-4 and report.token_grads_max_rel < 1e-4
    model = T.BeitForImageClassification.from_pretrained(folder, attn_implementation="eager").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = OnnxModel(report.path).run(x.numpy(), target=np.array([3, -1]))
    # Independent reference: autograd through transformers' own eager attention, whose returned
    # probabilities are the very tensors it multiplies with v.
    ref = model(pixel_values=x, output_attentions=True)
    chosen = [3, int(ref.logits[1].argmax())]
    grads = torch.autograd.grad(ref.logits[0, chosen[0]] + ref.logits[1, chosen[1]], ref.attentions)
    expected = torch.stack(grads, 1).numpy()
    np.testing.assert_allclose(out.logits, ref.logits.detach().numpy(), atol=1e-4)
    assert list(out.targets) == chosen
    np.testing.assert_allclose(out.grads, expected, atol=1e-4 * np.abs(expected).max())


def test_cli_exports_a_folder_with_fused_heads(exported, tmp_path):
    folder, _, _, model = exported["deit_teacher"]
    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(cli_main, ["export", str(folder), "-o", str(out), "--heads", "mean"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    got = OnnxModel(out).run(x)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x), output_attentions=True)
    np.testing.assert_allclose(got.attentions, torch.stack(ref.attentions, 1).mean(2, keepdim=True).numpy(),
                               atol=1e-5)


def test_pytorch_model_bin_loads_with_weights_only(exported, tmp_path):
    folder, _, _, model = exported["vit"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (bin_dir / name).write_bytes((folder / name).read_bytes())
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    report = export_onnx(str(bin_dir), tmp_path / "bin.onnx", **QUIET)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(OnnxModel(report.path).run(x).logits, ref, atol=1e-4)
    # A pickle that would run code is refused by weights_only, and no file is written.
    (bin_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ExportError, match="could not load"):
        export_onnx(str(bin_dir), tmp_path / "evil.onnx", **QUIET)
    assert not (tmp_path / "evil.onnx").exists()


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_incomplete_checkpoint_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "vit"
    save("vit", folder)
    weights = load_file(folder / "model.safetensors")
    head = next(k for k in weights if k.startswith("classifier."))
    del weights[head]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ExportError, match="missing or mis-shaped") as err:
        export_onnx(str(folder), tmp_path / "x.onnx", **QUIET)
    assert "classifier" in str(err.value)


def test_unsupported_class_is_named_in_one_line(tmp_path):
    folder = tmp_path / "swin"
    model = T.SwinForImageClassification(T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                      num_heads=[1, 2], window_size=4, num_labels=3))
    model.save_pretrained(folder)
    T.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    with pytest.raises(ExportError) as err:
        export_onnx(str(folder), tmp_path / "swin.onnx", **QUIET)
    msg = str(err.value)
    assert "\n" not in msg and "SwinForImageClassification" in msg and "windows" in msg


def test_neither_timm_name_nor_folder(tmp_path):
    with pytest.raises(ExportError, match="neither a timm model nor a folder"):
        export_onnx(str(tmp_path / "nope"), tmp_path / "x.onnx", **QUIET)


def test_hub_unreachable_fails_with_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(ExportError) as err:
        export_onnx("hf:google/vit-large-patch32-384", tmp_path / "x.onnx", **QUIET)
    msg = str(err.value)
    assert "\n" not in msg and "could not reach the Hugging Face hub" in msg and "127.0.0.1:9" in msg


def test_parity_beyond_tolerance_writes_no_file(exported, tmp_path):
    folder = exported["vit"][0]
    with pytest.raises(ExportError, match="parity check failed"):
        export_onnx(str(folder), tmp_path / "strict.onnx", atol=1e-15, **QUIET)
    assert not (tmp_path / "strict.onnx").exists()


def test_options_that_do_not_apply_are_refused(exported, tmp_path):
    with pytest.raises(ExportError, match="do not apply to the transformers model"):
        export_onnx(str(exported["vit"][0]), tmp_path / "x.onnx", img_size=64, **QUIET)
