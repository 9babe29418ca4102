"""Train the shipped default model: a small timm ViT on the procedural shapes dataset.

Run ``python -m export.train --help``. The recipe that made ``models/shapes_vit.onnx`` is
recorded in ``models/registry.json`` (``command``) and ``models/README.md``.

Data is generated on the fly by :mod:`attnmap.runtime.frames.synth` (the generator *is* the augmentation),
one fresh batch per step, in the training process: on a 2-core machine a DataLoader with
workers only steals the cores the matmuls need. Training batch ``step`` of run seed ``s`` is
``make_batch((s, step, _TRAIN_TAG), ...)``; a held-out set is ``make_batch(int_seed, ...)``.
NumPy's SeedSequence pads short entropy with zeros, so the non-zero trailing tag guarantees a
training batch never equals a held-out set made from a plain int seed.

Recipe (each choice measured on a shared 2-core box; see models/README.md):

* ViT with a class token, 4 blocks, 3 heads, width 96, 96 px input, 8 px patches: a 12 x 12
  token grid, fine enough for maps that land on objects 20-55 px across.
* Convolutional patch embedding (:class:`export.conv_stem.ConvStemEmbed`). With timm's linear
  patch projection the loss stayed at chance (ln 7) for 300+ steps even on clutter-free
  images; with the stem, held-out accuracy passes 95 % within ~800 steps.
* Clutter curriculum: the first 30 % of steps ramp the generator's ``clutter`` from 0 to 1.
* AdamW, lr 2e-3 (60 warm-up steps, cosine to 1 %), weight decay 0.05, batch 64, label
  smoothing 0.1, gradient clipping at 1.0.
* No auxiliary losses: a mean-patch-token classification head was tried to speed up early
  training; it did not raise the final accuracy, and it spread class information over all
  patch tokens, which pulled rollout's pointing game from ~0.95 down to 0.78.

Reproducibility: torch, NumPy and the data are seeded, and CPU kernels with a fixed thread
count give the same numbers run after run on one machine. Across machines (other CPU
instruction sets, other thread counts) float reductions may round differently, so losses can
drift in the last digits and the final accuracy by a fraction of a percent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from attnmap.runtime.frames import synth
from attnmap.runtime.core.files import atomic_path, write_bytes

from .conv_stem import ConvStemEmbed
from .registry import file_sha256, score_onnx, update_registry

_TRAIN_TAG = 0x5EED
_CHOICES = {"stem": ("conv", "patch")}
DEFAULT_CKPT_DIR = Path("/tmp/attnmap_train")


@dataclass
class TrainConfig:
    """Everything that decides the trained weights (and a few things that only decide speed).

    Attributes:
        seed: seeds torch (init), and the training data stream.
        steps: optimiser steps.
        batch_size: images per step.
        lr: peak AdamW learning rate, reached after ``warmup`` steps, then cosine to 1% of it.
        weight_decay: AdamW weight decay (not applied to norms, biases and token embeddings).
        warmup: linear warm-up steps.
        label_smoothing: cross-entropy label smoothing.
        curriculum: fraction of the steps over which the generator's ``clutter`` ramps
            linearly from 0 (flat background, no distractors) to 1 (the dataset proper);
            0 trains on full clutter from the start.
        img_size: input side in pixels (images are generated at this size).
        patch_size: ViT patch side; ``img_size // patch_size`` is the grid side.
        embed_dim: token width.
        depth: transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / embed_dim.
        stem: ``"conv"`` (:class:`ConvStemEmbed`) or ``"patch"`` (timm's linear patch projection).
        threads: torch intra-op threads.
        eval_seed: int seed of the held-out set scored during and after training.
        eval_n: held-out set size.
        eval_every: steps between held-out evaluations (0: only at the end).
    """

    seed: int = 0
    steps: int = 1400
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 60
    label_smoothing: float = 0.1
    curriculum: float = 0.3
    img_size: int = 96
    patch_size: int = 8
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 3
    mlp_ratio: float = 3.0
    stem: str = "conv"
    threads: int = 2
    eval_seed: int = 1000
    eval_n: int = 500
    eval_every: int = 250

    @property
    def data_config(self) -> dict:
        """timm-style data config of the trained model (what the exporter stores in ModelMeta)."""
        return {"input_size": (3, self.img_size, self.img_size), "mean": (0.5, 0.5, 0.5),
                "std": (0.5, 0.5, 0.5), "interpolation": "area", "crop_pct": 1.0,
                "crop_mode": "center"}

    @property
    def model_name(self) -> str:
        """Name recorded in the metadata (the architecture is a resized ``vit_tiny``)."""
        return f"shapes_vit_p{self.patch_size}_{self.img_size}"


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        config: the configuration used.
        losses: training loss of every step.
        evals: ``(step, held-out accuracy)`` pairs.
        accuracy: final held-out accuracy.
        seconds: wall time of the training loop (data generation included, evaluation not).
        checkpoint: safetensors file of the trained state_dict, or None.
    """

    config: TrainConfig
    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    accuracy: float = float("nan")
    seconds: float = 0.0
    checkpoint: Path | None = None


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """Create the (random-init) timm ViT of ``cfg``: class token, token pooling, learned pos-embed.

    Args:
        cfg: training configuration.

    Returns:
        A ``timm.models.vision_transformer.VisionTransformer`` with ``len(synth.CLASSES)`` outputs.
    """
    import timm

    kwargs = {"embed_layer": ConvStemEmbed} if cfg.stem == "conv" else {}
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=len(synth.CLASSES),
        img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim,
        depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, **kwargs)


def to_tensor(images_bgr: np.ndarray) -> torch.Tensor:
    """BGR uint8 (B, H, W, 3) -> normalised RGB float32 (B, 3, H, W), mean = std = 0.5."""
    x = torch.from_numpy(images_bgr[..., ::-1].copy()).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


def _clutter_at(step: int, cfg: TrainConfig) -> float:
    ramp = cfg.curriculum * cfg.steps
    return 1.0 if ramp <= 0 else min(1.0, step / ramp)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # Norm scales, biases and the token / position embeddings are not shrunk, as in timm.
        (no_decay if p.ndim <= 1 or name in ("cls_token", "pos_embed") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def accuracy(model: torch.nn.Module, seed: int, n: int, size: int, batch: int = 250) -> float:
    """Top-1 accuracy of ``model`` on ``n`` held-out samples ``make_batch(seed, n, size)``."""
    images, labels, _, _ = synth.make_batch(seed, n, size)
    model.eval()
    correct = 0
    for i in range(0, n, batch):
        logits = model(to_tensor(images[i:i + batch]))
        correct += int((logits.argmax(1).numpy() == labels[i:i + batch]).sum())
    return correct / n


def train(cfg: TrainConfig, *, ckpt_dir: Path | None = DEFAULT_CKPT_DIR,
          log: Callable[[str], None] = print,
          log_every: int = 50) -> tuple[torch.nn.Module, TrainResult]:
    """Train a ViT on freshly generated shapes batches.

    Args:
        cfg: the recipe.
        ckpt_dir: where to save ``<model_name>_seed<seed>.safetensors`` (+ ``.json`` config);
            None to skip saving.
        log: progress sink.
        log_every: steps between loss lines (0: none).

    Returns:
        ``(model, result)``: the trained model in eval mode and its :class:`TrainResult`.
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build_model(cfg)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                            betas=(0.9, 0.999))
    result = TrainResult(cfg)
    train_seconds = 0.0
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        images, labels, _, _ = synth.make_batch((cfg.seed, step, _TRAIN_TAG), cfg.batch_size,
                                                cfg.img_size, _clutter_at(step, cfg))
        model.train()
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        loss = F.cross_entropy(model(to_tensor(images)), torch.from_numpy(labels),
                               label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        result.losses.append(loss.item())
        last = step + 1 == cfg.steps
        if log_every and (step + 1) % log_every == 0:
            log(f"step {step + 1}/{cfg.steps}  loss {np.mean(result.losses[-log_every:]):.4f}  "
                f"clutter {_clutter_at(step, cfg):.2f}  "
                f"{train_seconds + time.perf_counter() - t0:.0f}s")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and not last:
            train_seconds += time.perf_counter() - t0
            acc = accuracy(model, cfg.eval_seed, cfg.eval_n, cfg.img_size)
            result.evals.append((step + 1, acc))
            log(f"step {step + 1}/{cfg.steps}  loss {np.mean(result.losses[-50:]):.4f}  "
                f"held-out acc {acc:.3f}  {train_seconds:.0f}s")
            t0 = time.perf_counter()
    train_seconds += time.perf_counter() - t0
    result.seconds = train_seconds
    result.accuracy = accuracy(model, cfg.eval_seed, cfg.eval_n, cfg.img_size)
    result.evals.append((cfg.steps, result.accuracy))
    model.eval()
    log(f"done: {cfg.steps} steps in {train_seconds:.0f}s, final loss "
        f"{np.mean(result.losses[-50:]):.4f}, held-out acc {result.accuracy:.4f} (n={cfg.eval_n})")
    if ckpt_dir is not None:
        result.checkpoint = save_checkpoint(model, cfg, Path(ckpt_dir))
        log(f"checkpoint: {result.checkpoint}")
    return model, result


def save_checkpoint(model: torch.nn.Module, cfg: TrainConfig, ckpt_dir: Path) -> Path:
    """Save the state_dict (safetensors) and the config (JSON) atomically; return the weights path."""
    from safetensors.torch import save_file

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"{cfg.model_name}_seed{cfg.seed}.safetensors"
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    write_bytes(path.with_suffix(".json"), json.dumps(asdict(cfg), indent=2).encode())
    return path


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, TrainConfig]:
    """Rebuild the model of a :func:`save_checkpoint` file (its ``.json`` config beside it)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = TrainConfig(**json.loads(path.with_suffix(".json").read_text()))
    model = build_model(cfg)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval(), cfg


def _load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.train",
        description="Train a small ViT on the procedural shapes dataset and export it for attnmap.")
    p.add_argument("--out", type=Path, default=Path("models/shapes_vit.onnx"),
                   help="ONNX file to write (default: %(default)s)")
    p.add_argument("--no-export", action="store_true", help="train and save the checkpoint only")
    p.add_argument("--ckpt-dir", type=Path, default=DEFAULT_CKPT_DIR,
                   help="where the trained state_dict goes (default: %(default)s)")
    p.add_argument("--registry", type=Path, default=None,
                   help="models/registry.json to record the exported model in (default: none)")
    p.add_argument("--name", default="shapes-vit", help="registry name (default: %(default)s)")
    p.add_argument("--default", action="store_true", help="mark the registry entry as the default")
    p.add_argument("--norms", action="store_true",
                   help="also emit head_norms for the forward-only head-norm map (see export/norms.py)")
    p.add_argument("--score-seed", type=int, default=4242,
                   help="held-out seed for the registry figures (default: %(default)s)")
    p.add_argument("--score-n", type=int, default=500,
                   help="held-out samples for the registry figures (default: %(default)s)")
    for f in dataclasses.fields(TrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       choices=_CHOICES.get(f.name), help="(default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> TrainResult:
    """Command line entry point; see ``python -m export.train --help``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise SystemExit(f"--steps and --batch-size must be >= 1; got {cfg.steps}, {cfg.batch_size}")
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    load_before = _load_average()
    log(f"training {cfg.model_name}: {asdict(cfg)}; load average {load_before}")
    model, result = train(cfg, ckpt_dir=args.ckpt_dir, log=log)
    load_after = _load_average()
    if args.no_export:
        return result
    from .to_onnx import export_module

    extra = {"training": {"dataset": synth.DATASET_VERSION, "seed": cfg.seed, "steps": cfg.steps,
                          "heldout_accuracy": result.accuracy, "heldout_seed": cfg.eval_seed,
                          "heldout_n": cfg.eval_n, "seconds": round(result.seconds, 1),
                          "timm_model": "vit_tiny_patch16_224",
                          "timm_kwargs": {"img_size": cfg.img_size, "patch_size": cfg.patch_size,
                                          "embed_dim": cfg.embed_dim, "depth": cfg.depth,
                                          "num_heads": cfg.num_heads, "mlp_ratio": cfg.mlp_ratio,
                                          "num_classes": len(synth.CLASSES)}}}
    report = export_module(model, args.out, model_name=cfg.model_name, labels=list(synth.CLASSES),
                           extra=extra, data_config=cfg.data_config, norms=args.norms, log=log)
    if args.registry is None:
        return result
    scores = score_onnx(report.path, args.score_seed, args.score_n)
    log(f"held-out (seed {args.score_seed}, n {args.score_n}): {json.dumps(scores)}")
    registry = Path(args.registry)
    try:
        file = str(report.path.resolve().relative_to(registry.parent.resolve()))
    except ValueError:
        file = str(report.path.resolve())
    import onnx
    import onnxruntime
    import timm

    update_registry(registry, {
        "name": args.name, "file": file, "default": bool(args.default),
        "description": f"ViT ({cfg.depth} blocks, {cfg.num_heads} heads, dim {cfg.embed_dim}, "
                       f"patch {cfg.patch_size}, {cfg.img_size} px) trained from scratch on the "
                       f"procedural shapes dataset; classes: {', '.join(synth.CLASSES)}",
        "labels": list(synth.CLASSES),
        "command": "python -m export.train " + shlex.join(argv),
        "seed": cfg.seed, "dataset": synth.DATASET_VERSION, "config": asdict(cfg),
        "heldout": scores,
        "training_seconds": round(result.seconds, 1),
        "training_machine": {"threads": cfg.threads, "cpu_count": os.cpu_count(),
                             "load_average_before": load_before, "load_average_after": load_after},
        "size_bytes": report.size_bytes, "sha256": file_sha256(report.path),
        "licence": "Apache-2.0 (the project's licence)",
        "versions": {"attnmap": report.meta.exporter.get("attnmap", "unknown"),
                     "torch": torch.__version__, "timm": timm.__version__,
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "opset": report.meta.exporter.get("opset", "unknown")},
    })
    log(f"recorded {args.name} in {registry}")
    return result


if __name__ == "__main__":
    main()
