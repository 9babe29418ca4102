"""Acceptance tests of the shipped default model (models/registry.json's default entry).

Runtime-only: onnxruntime + NumPy + OpenCV, no torch. CI never retrains; it checks that the
file that ships classifies and localises freshly generated held-out shapes. The held-out seeds
here are plain ints; training batches are drawn from (seed, step, tag) entropy and can never
coincide with them (see export/train.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from attnmap.runtime.frames import synth
from attnmap.runtime.evaluation.localisation import box_mass_ratio, pointing_game
from attnmap.runtime.image.resample import resize_maps
from attnmap.runtime.methods import attention_maps
from attnmap.runtime.core.meta import ModelMeta

MODELS = Path(__file__).resolve().parents[3] / "models"
REGISTRY = MODELS / "registry.json"
HELDOUT_SEED = 90210
HELDOUT_N = 300

pytestmark = pytest.mark.skipif(not REGISTRY.is_file(), reason="models/registry.json is not there")


@pytest.fixture(scope="module")
def entry() -> dict:
    data = json.loads(REGISTRY.read_text())
    defaults = [m for m in data["models"] if m.get("default")]
    assert len(defaults) == 1, "exactly one shipped model must be the default"
    return defaults[0]


@pytest.fixture(scope="module")
def model(entry):
    path = MODELS / entry["file"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = ModelMeta.from_props(sess.get_modelmeta().custom_metadata_map, str(path))
    return sess, meta


def _run(model, images_bgr: np.ndarray, batch: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Logits (B, C) and attentions (B, L, H, N, N) of square images already at the input size."""
    sess, meta = model
    mean = np.asarray(meta.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(meta.std, np.float32).reshape(1, 3, 1, 1)
    logits, attns = [], []
    for i in range(0, len(images_bgr), batch):
        rgb = images_bgr[i:i + batch, :, :, ::-1].astype(np.float32) / 255.0
        x = (rgb.transpose(0, 3, 1, 2) - mean) / std
        out = sess.run(["logits", "attentions"], {"input": np.ascontiguousarray(x)})
        logits.append(out[0])
        attns.append(out[1])
    return np.concatenate(logits), np.concatenate(attns)


def _scores(model, seed: int, n: int) -> dict:
    _, meta = model
    size = meta.image_size[0]
    images, labels, _, boxes = synth.make_batch(seed, n, size)
    logits, attns = _run(model, images)
    grids = {"rollout": attention_maps("rollout", attns, meta.layout),
             "attention": attention_maps("attention", attns, meta.layout)}
    grids["random"] = np.random.default_rng(seed).random(grids["rollout"].shape, dtype=np.float32)
    out = {"accuracy": float((logits.argmax(1) == labels).mean())}
    for name, grid in grids.items():
        full = resize_maps(grid, (size, size))
        out[name] = {"pointing_game": float(pointing_game(full, boxes).mean()),
                     "box_mass_ratio": float(np.nanmean(box_mass_ratio(full, boxes)))}
    return out


@pytest.fixture(scope="module")
def heldout(model) -> dict:
    return _scores(model, HELDOUT_SEED, HELDOUT_N)


def test_registry_entry_describes_the_file(entry) -> None:
    path = MODELS / entry["file"]
    data = path.read_bytes()
    assert entry["size_bytes"] == len(data) <= 10 * 2**20
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["dataset"] == synth.DATASET_VERSION
    assert entry["labels"] == list(synth.CLASSES)
    assert entry["command"].startswith("python -m export.train ")
    assert isinstance(entry["seed"], int) and entry["training_seconds"] > 0
    assert {"attnmap", "torch", "timm", "onnx", "onnxruntime"} <= set(entry["versions"])
    for key in ("accuracy", "rollout", "attention", "random", "seed", "n"):
        assert key in entry["heldout"]
    assert HELDOUT_SEED not in (entry["heldout"]["seed"], entry["config"]["eval_seed"])


def test_metadata_matches_the_dataset(model) -> None:
    _, meta = model
    assert meta.label_names == synth.CLASSES
    assert meta.num_classes == len(synth.CLASSES)
    assert meta.has_class_token and meta.pooling == "token"
    assert meta.input_size[1] == meta.input_size[2] == meta.grid_size[0] * meta.patch_size[0]
    assert meta.crop_pct == 1.0
    assert meta.extra["training"]["dataset"] == synth.DATASET_VERSION


@pytest.mark.slow
def test_heldout_accuracy(heldout) -> None:
    assert heldout["accuracy"] >= 0.90, heldout


@pytest.mark.slow
def test_rollout_points_at_the_object(heldout) -> None:
    assert heldout["rollout"]["pointing_game"] >= 0.80, heldout


@pytest.mark.slow
def test_rollout_mass_concentrates_in_the_box(heldout) -> None:
    assert heldout["rollout"]["box_mass_ratio"] >= 2.0, heldout


@pytest.mark.slow
def test_random_maps_score_clearly_lower(heldout) -> None:
    rnd, roll = heldout["random"], heldout["rollout"]
    # A map blind to the object hits about as often as the boxes cover the image (~10 %) and
    # puts about as much mass in the box as the box's share: a ratio near 1.
    assert rnd["pointing_game"] <= 0.3 and 0.8 <= rnd["box_mass_ratio"] <= 1.25, rnd
    assert roll["pointing_game"] - rnd["pointing_game"] >= 0.5, heldout
    assert roll["box_mass_ratio"] - rnd["box_mass_ratio"] >= 1.0, heldout


@pytest.mark.slow
def test_registry_figures_are_reproducible(model, entry) -> None:
    """The figures recorded in registry.json come out again, computed here independently."""
    rec = entry["heldout"]
    again = _scores(model, rec["seed"], rec["n"])
    assert again["accuracy"] == pytest.approx(rec["accuracy"], abs=1e-9)
    for method in ("rollout", "attention", "random"):
        assert again[method]["pointing_game"] == pytest.approx(rec[method]["pointing_game"], abs=1e-9)
        assert again[method]["box_mass_ratio"] == pytest.approx(rec[method]["box_mass_ratio"], rel=1e-4)


@pytest.mark.slow
def test_larger_renders_resized_down_are_still_recognised(model) -> None:
    """The demo writes 192 px inputs; the runtime shrinks them (INTER_AREA, as the metadata
    says) to the input size. The generator scales with the image, so accuracy must hold."""
    _, meta = model
    assert meta.interpolation == "area"
    size = meta.image_size[0]
    images, labels, _, _ = synth.make_batch(HELDOUT_SEED + 1, 150, 2 * size)
    small = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])
    logits, _ = _run(model, small)
    assert (logits.argmax(1) == labels).mean() >= 0.85
