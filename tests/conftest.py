"""Shared fixtures. torch is imported lazily inside fixtures: runtime tests run without it."""

from __future__ import annotations

import os

# One BLAS thread, as the CLI sets before NumPy loads (and as Ray's workers, which inherit this
# environment, run): a float32 matrix product's rounding depends on how many threads share it,
# so the local path and the Ray actors would otherwise preprocess the same photo a few ulps
# apart, and the tests that compare them would compare BLAS schedules.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import shutil  # noqa: E402
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# ../shared/data beside the project root: real weights, labels, photos and videos.
SHARED_DATA = REPO.parent / "shared" / "data"
DEIT_TINY_CHECKPOINT = "weights/deit_tiny_patch16_224_in1k.safetensors"

# The tiny model every fast test shares (timm's test_vit sizes): 32x32 input, 8 px patches
# (a 4x4 grid plus the class token: N = 17), 2 blocks, 2 heads, width 32, 10 classes.
TINY_VIT = dict(name="vit_tiny_patch16_224", img_size=32,
                kwargs=dict(patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=10))
TINY_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# That model, committed (tests/models/make_tiny_models.py writes them): runtime tests need no torch.
TINY_MODELS = Path(__file__).resolve().parent / "models"
TINY_VIT_FILE = TINY_MODELS / "tiny_vit.onnx"
TINY_VIT_GRADS_FILE = TINY_MODELS / "tiny_vit_grads.onnx"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found beside the project: real-data tests need it")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_vit_onnx(tmp_path_factory) -> Path:
    """The committed tiny ViT (see TINY_VIT and TINY_LABELS) with attentions; no torch needed.

    A copy of ``tests/models/tiny_vit.onnx`` in a folder of its own, so a test may write beside
    it without touching the repository. Regenerate with ``tests/models/make_tiny_models.py``.
    """
    return _copy_committed(TINY_VIT_FILE, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_vit_grads_onnx(tmp_path_factory) -> Path:
    """The committed tiny ViT, same weights as ``tiny_vit_onnx``, exported with attention gradients.

    Inputs ``input`` and ``target``; outputs ``logits``, ``attentions``, ``attention_grads``,
    ``tokens`` and ``token_grads`` (Grad-CAM's token features and their gradients).
    """
    return _copy_committed(TINY_VIT_GRADS_FILE, tmp_path_factory)


@pytest.fixture(scope="session")
def exported_tiny_vit_onnx(tmp_path_factory) -> Path:
    """The tiny ViT exported in this session, the file exactly as ``export_onnx`` writes it.

    For the export tests: the same model as ``tiny_vit_onnx``, with the exporter's debug records
    and this session's torch and timm versions.
    """
    pytest.importorskip("torch", reason="exporting the tiny ViT needs torch")
    return export_tiny_vit_as_written(tmp_path_factory.mktemp("tiny_vit_export") / "tiny_vit.onnx")


def export_tiny_vit_as_written(out: Path, *, gradients: bool = False) -> Path:
    """Export TINY_VIT with ``export_onnx`` to ``out``, weights drawn after ``torch.manual_seed(0)``.

    Needs torch and timm. The global torch RNG state is restored afterwards.

    Args:
        out: the ``.onnx`` file to write.
        gradients: also export ``attention_grads``, ``tokens`` and ``token_grads`` for a ``target``
            input.

    Returns:
        ``out``.
    """
    import torch

    from attnmap.export import export_onnx

    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        export_onnx(TINY_VIT["name"], out, img_size=TINY_VIT["img_size"], model_kwargs=TINY_VIT["kwargs"],
                    labels=list(TINY_LABELS), gradients=gradients, log=lambda line: None)
    finally:
        torch.random.set_rng_state(state)
    return out


def _copy_committed(path: Path, tmp_path_factory) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"committed test model {path} is missing; regenerate it with "
                                "`.venv/bin/python tests/models/make_tiny_models.py`")
    out = tmp_path_factory.mktemp(path.stem) / path.name
    shutil.copyfile(path, out)
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


@pytest.fixture(scope="session")
def deit_tiny_tail_onnx(tmp_path_factory, shared_data) -> Path:
    """The real DeiT-Tiny ImageNet checkpoint exported once per session with ``tail=True``
    (``tail_input`` and the tail graph, for reciprocam)."""
    pytest.importorskip("torch", reason="exporting DeiT-Tiny needs torch")
    from attnmap.export import export_onnx

    out = tmp_path_factory.mktemp("deit_tiny_tail") / "deit_tiny_patch16_224_tail.onnx"
    export_onnx("deit_tiny_patch16_224", out, checkpoint=shared_data / DEIT_TINY_CHECKPOINT, tail=True,
                log=lambda line: None)
    return out


@pytest.fixture(scope="session")
def deit_tiny_decomp_onnx(tmp_path_factory, shared_data) -> Path:
    """The real DeiT-Tiny ImageNet checkpoint exported once per session with the decomposition outputs."""
    pytest.importorskip("torch", reason="exporting DeiT-Tiny needs torch")
    from attnmap.export import export_onnx

    out = tmp_path_factory.mktemp("deit_tiny_decomp") / "deit_tiny_patch16_224_decomp.onnx"
    export_onnx("deit_tiny_patch16_224", out, checkpoint=shared_data / DEIT_TINY_CHECKPOINT, decompositions=True,
                log=lambda line: None)
    return out


@pytest.fixture(scope="session")
def tiny_gradient_export(tmp_path_factory):
    """Export a seeded tiny timm model with attention gradients once per session, on demand.

    The gradient tests of the export side and Grad-CAM's tests export the same families
    (``tiny_models.make_model(name, 0, img_size=32, patch_size=8, **kwargs)``); each is exported
    once and shared. Needs torch and timm.

    Returns:
        ``get(name, **kwargs) -> (model, path, report)``: the torch model (eval mode), the
        ``.onnx`` file and ``export_module``'s report.
    """
    pytest.importorskip("torch", reason="needs the export extra: pip install -e '.[export]'")
    import tiny_models
    from attnmap.export import export_module

    root = tmp_path_factory.mktemp("tiny_gradient_exports")
    made: dict = {}

    def get(name: str, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in made:
            model = tiny_models.make_model(name, 0, **{"img_size": 32, "patch_size": 8, **kwargs})
            report = export_module(model, root / f"{name}-{len(made)}.onnx", model_name=name,
                                   labels=list(TINY_LABELS), gradients=True, log=lambda line: None)
            made[key] = (model, report.path, report)
        return made[key]

    return get
