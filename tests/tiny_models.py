"""Seeded random-init tiny timm models for the export-side tests (needs torch and timm)."""

from __future__ import annotations

import timm
import torch

SMALL = dict(depth=2, embed_dim=32, num_heads=2, num_classes=10)


def make_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A seeded random-init tiny timm model, in eval mode, with its classifier heads redrawn.

    timm zero-initialises some classifier heads (EVA, BEiT, DINOv2), which would make a logits
    comparison vacuous, so the heads are redrawn to logits of order 1.
    """
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **{**SMALL, **kwargs}).eval()
    with torch.no_grad():
        for attr in ("head", "head_dist"):
            head = getattr(model, attr, None)
            if isinstance(head, torch.nn.Linear):
                head.weight.normal_(0.0, 0.5)
                head.bias.normal_(0.0, 0.1)
    return model


def randomise_layer_scales(model: torch.nn.Module, seed: int = 3) -> None:
    """Redraw every layer scale γ (timm's ``ls1``/``ls2``, BEiT's ``gamma_1``/``gamma_2``) in
    [0.5, 1.5): they start at 1e-5 (DINOv2) or 0.1 (BEiT), where they would hardly matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blk in model.blocks:
            for name in ("ls1", "ls2"):
                if hasattr(getattr(blk, name, None), "gamma"):
                    gamma = getattr(blk, name).gamma
                    gamma.copy_(0.5 + torch.rand(gamma.shape, generator=gen))
            for name in ("gamma_1", "gamma_2"):
                gamma = getattr(blk, name, None)
                if isinstance(gamma, torch.Tensor):
                    gamma.copy_(0.5 + torch.rand(gamma.shape, generator=gen))
