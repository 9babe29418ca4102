"""Shared fixtures. torch is imported lazily inside fixtures: runtime tests run without it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# ../shared/data beside the project root: real weights, labels, photos and videos.
SHARED_DATA = REPO.parent / "shared" / "data"
DEIT_TINY_CHECKPOINT = "weights/deit_tiny_patch16_224_in1k.safetensors"

# The tiny model every fast test shares (timm's test_vit sizes): 32x32 input, 8 px patches
# (a 4x4 grid plus the class token: N = 17), 2 blocks, 2 heads, width 32, 10 classes.
TINY_VIT = dict(name="vit_tiny_patch16_224", img_size=32,
                kwargs=dict(patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=10))
TINY_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found beside the project: real-data tests need it")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_vit_onnx(tmp_path_factory) -> Path:
    """A random-init tiny ViT (see TINY_VIT) exported once per session with attentions.

    Its weights are seeded (torch.manual_seed(0)), its labels are TINY_LABELS.
    """
    pytest.importorskip("torch", reason="exporting the tiny ViT needs torch")
    import torch

    from attnmap.export import export_onnx

    out = tmp_path_factory.mktemp("tiny_vit") / "tiny_vit.onnx"
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        export_onnx(TINY_VIT["name"], out, img_size=TINY_VIT["img_size"], model_kwargs=TINY_VIT["kwargs"],
                    labels=list(TINY_LABELS), log=lambda line: None)
    finally:
        torch.random.set_rng_state(state)
    return out


@pytest.fixture(scope="session")
def deit_tiny_onnx(tmp_path_factory, shared_data) -> Path:
    """The real DeiT-Tiny ImageNet checkpoint exported once per session with attentions."""
    pytest.importorskip("torch", reason="exporting DeiT-Tiny needs torch")
    from attnmap.export import export_onnx

    out = tmp_path_factory.mktemp("deit_tiny") / "deit_tiny_patch16_224.onnx"
    export_onnx("deit_tiny_patch16_224", out, checkpoint=shared_data / DEIT_TINY_CHECKPOINT, log=lambda line: None)
    return out


@pytest.fixture(scope="session")
def deit_tiny_grads_onnx(tmp_path_factory, shared_data) -> Path:
    """The real DeiT-Tiny ImageNet checkpoint exported once per session with attention gradients."""
    pytest.importorskip("torch", reason="exporting DeiT-Tiny needs torch")
    from attnmap.export import export_onnx

    out = tmp_path_factory.mktemp("deit_tiny_grads") / "deit_tiny_patch16_224_grads.onnx"
    export_onnx("deit_tiny_patch16_224", out, checkpoint=shared_data / DEIT_TINY_CHECKPOINT, gradients=True,
                log=lambda line: None)
    return out
