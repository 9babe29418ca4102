"""Held-out figures and the ``models/registry.json`` manifest of shipped models.

:func:`score_onnx` scores an exported file with onnxruntime and the runtime's own explainers
(no torch); :func:`update_registry` records a model entry. Used by ``python -m export.train``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from attnmap.runtime.frames import synth
from attnmap.runtime.core.files import file_sha256, write_bytes



def score_onnx(path: str | Path, seed: int, n: int, *, size: int | None = None,
               batch: int = 100) -> dict:
    """Score an exported model on ``make_batch(seed, n)`` with onnxruntime (no torch involved).

    Args:
        path: attnmap ``.onnx`` file with ``logits`` and ``attentions`` outputs.
        seed: int seed of the held-out set (never a training seed).
        n: number of samples.
        size: image side; None reads it from the metadata.
        batch: inference batch size.

    Returns:
        ``{"seed", "n", "accuracy", "rollout": {...}, "attention": {...}, "random": {...}}`` where
        each method holds ``pointing_game`` (hit rate, 0 px tolerance) and ``box_mass_ratio``
        (mean over samples), computed on maps resized to the image size.
    """
    import onnxruntime as ort

    from attnmap.runtime.evaluation.localisation import box_mass_ratio, pointing_game
    from attnmap.runtime.image.resample import resize_maps
    from attnmap.runtime.methods import attention_maps
    from attnmap.runtime.core.meta import ModelMeta

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = ModelMeta.from_props(sess.get_modelmeta().custom_metadata_map, str(path))
    size = size or meta.image_size[0]
    images, labels, _, boxes = synth.make_batch(seed, n, size)
    mean = np.asarray(meta.mean, np.float32)[:, None, None]
    std = np.asarray(meta.std, np.float32)[:, None, None]
    preds, maps = [], {"rollout": [], "attention": []}
    for i in range(0, n, batch):
        x = (images[i:i + batch, :, :, ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
             - mean) / std
        logits, attn = sess.run(["logits", "attentions"], {"input": x})
        preds.append(logits.argmax(1))
        for method in maps:
            maps[method].append(attention_maps(method, attn, meta.layout))
    out = {"seed": seed, "n": n,
           "accuracy": float((np.concatenate(preds) == labels).mean())}
    grid_maps = {k: np.concatenate(v) for k, v in maps.items()}
    grid_maps["random"] = np.random.default_rng(seed).random(grid_maps["rollout"].shape,
                                                             dtype=np.float32)
    for method, m in grid_maps.items():
        full = resize_maps(m, (size, size))
        out[method] = {"pointing_game": float(pointing_game(full, boxes).mean()),
                       "box_mass_ratio": float(np.nanmean(box_mass_ratio(full, boxes)))}
    return out



def update_registry(registry: str | Path, entry: dict) -> None:
    """Insert or replace (by ``name``) one model entry of ``models/registry.json``, atomically.

    When ``entry["default"]`` is true every other entry loses its default flag.
    """
    registry = Path(registry)
    data = json.loads(registry.read_text()) if registry.is_file() else {"models": []}
    models = [m for m in data.get("models", []) if m.get("name") != entry["name"]]
    if entry.get("default"):
        for m in models:
            m["default"] = False
    data["models"] = models + [entry]
    write_bytes(registry, (json.dumps(data, indent=2) + "\n").encode())

