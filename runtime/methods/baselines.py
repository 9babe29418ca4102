"""What a removed part of the input takes instead: the baselines of perturbation.

Occlusion (:mod:`~attnmap.runtime.methods.perturbation`) paints its occluder with one, and the
faithfulness curves (:mod:`~attnmap.runtime.evaluation.curves`) fill every removed unit from
one, so both read the same definitions here. All live in the model's normalised input space.
"""

from __future__ import annotations

import cv2
import numpy as np

from attnmap.runtime.core.errors import OptionError
from attnmap.runtime.core.meta import ModelMeta

BASELINES = ("mean", "black", "blur")


def baseline_input(x_nchw: np.ndarray, meta: ModelMeta, kind: str = "mean", sigma: float = 10.0) -> np.ndarray:
    """The input every removed unit takes its pixels from, in the model's normalised space.

    Args:
        x_nchw: (B, 3, H, W) float32 normalised input.
        meta: the model's metadata (mean and std of the normalisation; only ``black`` reads it).
        kind: ``"mean"`` (zeros: the model's mean colour), ``"black"`` (pixel value 0) or
            ``"blur"`` (the input blurred with a Gaussian of ``sigma`` pixels; normalisation
            is affine per channel, so blurring the normalised input equals normalising the
            blurred image).
        sigma: the blur's standard deviation in input pixels.

    Returns:
        (B, 3, H, W) float32.

    Raises:
        OptionError: unknown kind or a non-positive sigma.
    """
    if kind not in BASELINES:
        raise OptionError(f"baseline must be one of {', '.join(BASELINES)}; got {kind!r}")
    x = np.asarray(x_nchw, dtype=np.float32)
    if kind == "mean":
        return np.zeros_like(x)
    if kind == "black":
        mean = np.asarray(meta.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(meta.std, np.float32).reshape(1, 3, 1, 1)
        return np.broadcast_to(-mean / std, x.shape).astype(np.float32)
    if not sigma > 0:
        raise OptionError(f"blur sigma must be > 0 pixels; got {sigma}")
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[b, c] = cv2.GaussianBlur(x[b, c], (0, 0), float(sigma), borderType=cv2.BORDER_REFLECT)
    return out


__all__ = ["BASELINES", "baseline_input"]
