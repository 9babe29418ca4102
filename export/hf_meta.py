"""Hugging Face image processor settings as attnmap's preprocessing metadata.

A transformers image processor (``preprocessor_config.json``) describes the eval transform with
its own fields; attnmap's runtime reads timm's (:class:`attnmap.runtime.core.meta.ModelMeta`).
:func:`processor_data_config` maps one onto the other, exactly, or refuses:

====================================================  =============================================
processor                                             ModelMeta
====================================================  =============================================
``size {height, width}``, no centre crop (ViT, BEiT)  ``crop_mode "squash"``, ``crop_pct 1``: both
                                                      sides resized to the input size
``size {height, width}`` + ``crop_size`` (DeiT:       ``crop_mode "squash"``, ``crop_pct = crop /
256 x 256, then the centre 224 x 224)                 size``: both sides to ``floor(crop / crop_pct)``
                                                      = size, then the centre crop
``size {shortest_edge}`` + square ``crop_size``       ``crop_mode "center"``, ``crop_pct = crop /
(DINOv2's BitImageProcessor: 256, then 224)           shortest_edge``: torchvision's ``Resize(int)``
                                                      rule, then the centre crop
``resample`` (PIL codes 0, 1, 2, 3, 4)                ``nearest``, ``lanczos``, ``bilinear``,
                                                      ``bicubic``, ``area`` (Pillow's BOX)
``rescale_factor r``, ``image_mean m``, ``image_std   ``mean = m / (255 r)``, ``std = s / (255 r)``
s`` (``do_rescale`` / ``do_normalize`` off: r = 1,    (the runtime divides by 255; the fold is exact)
m = 0, s = 1)
====================================================  =============================================

One known difference remains: where the resized image exceeds the crop by an odd number of
pixels ``d`` with ``d % 4 == 3``, transformers starts the crop at ``floor(d / 2)`` and the runtime
(torchvision's ``CenterCrop``) at ``round(d / 2)``, one pixel further. Only the shortest-edge
rule can give such sizes (DINOv2 on some aspect ratios); squash resizes give the same start.
"""

from __future__ import annotations

import math
from typing import Any

from attnmap.runtime.core.errors import ExportError

__all__ = ["PIL_RESAMPLE", "processor_data_config"]

# PIL.Image.Resampling codes -> ModelMeta.interpolation (HAMMING, 5, has no runtime filter).
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "area"}


def _size(value: Any) -> dict[str, int]:
    """A processor ``size``/``crop_size`` (dict, SizeDict or int) as a dict of its set keys."""
    if value is None:
        return {}
    if isinstance(value, int):
        return {"height": value, "width": value}
    items = value.items() if hasattr(value, "items") else vars(value).items()
    return {str(k): int(v) for k, v in items if v is not None}


def _resample(value: Any, source: str) -> str:
    code = getattr(value, "value", value)
    name = getattr(value, "name", None)
    if isinstance(code, str) and name is None:  # a torchvision InterpolationMode's value ("bilinear")
        by_name = {v: v for v in PIL_RESAMPLE.values()} | {"box": "area"}
        if code.lower() in by_name:
            return by_name[code.lower()]
    if isinstance(code, int) and code in PIL_RESAMPLE:
        return PIL_RESAMPLE[code]
    raise ExportError(f"{source}: image processor resample {value!r} has no runtime equivalent; attnmap "
                      f"reproduces PIL codes {sorted(PIL_RESAMPLE)} ({', '.join(PIL_RESAMPLE.values())})")


def _crop_pct(crop: int, resized: int) -> float:
    """The largest crop_pct with ``floor(crop / crop_pct) == resized`` (the runtime's rule)."""
    pct = crop / resized
    while math.floor(crop / pct) > resized:
        pct = math.nextafter(pct, 1.0)
    while math.floor(crop / pct) < resized:
        pct = math.nextafter(pct, 0.0)
    return pct


def processor_data_config(processor: Any, source: str) -> dict[str, Any]:
    """The eval preprocessing of a transformers image processor, in ModelMeta's fields.

    Args:
        processor: a loaded transformers image processor (``ViTImageProcessor``,
            ``DeiTImageProcessor``, ``BeitImageProcessor``, ``BitImageProcessor`` ...), either backend.
        source: the model's name, for error messages.

    Returns:
        ``{"input_size": (3, H, W), "mean", "std", "interpolation", "crop_pct", "crop_mode",
        "processor": {...}}``; the last entry records the processor's own settings for
        ``ModelMeta.extra``.

    Raises:
        ExportError: a transform the runtime cannot reproduce exactly (no resize, a
            shortest-edge resize without a crop, a non-square crop after a shortest-edge resize,
            a crop that does not fit inside the resize, a resample filter without equivalent).
    """
    kind = type(processor).__name__
    if not getattr(processor, "do_resize", True):
        raise ExportError(f"{source}: {kind} has do_resize=False, so its input size depends on the image; "
                          "attnmap exports graphs with one fixed input size")
    size = _size(getattr(processor, "size", None))
    crop = _size(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False) else {}
    if crop and set(crop) != {"height", "width"}:
        raise ExportError(f"{source}: {kind} crop_size {crop} must give height and width")
    if set(size) == {"height", "width"}:
        h, w = (crop["height"], crop["width"]) if crop else (size["height"], size["width"])
        if crop and (h > size["height"] or w > size["width"]):
            raise ExportError(f"{source}: {kind} crops {h}x{w} out of a {size['height']}x{size['width']} resize; "
                              "a crop larger than the resized image (padding) is not reproduced")
        pct_h = _crop_pct(h, size["height"])
        if math.floor(w / pct_h) != size["width"]:
            raise ExportError(f"{source}: {kind} resizes to {size['height']}x{size['width']} and crops {h}x{w}; "
                              "the runtime's one crop_pct needs the same crop fraction on both sides")
        crop_pct, crop_mode = pct_h, "squash"
    elif set(size) == {"shortest_edge"}:
        if not crop:
            raise ExportError(f"{source}: {kind} resizes the shortest edge to {size['shortest_edge']} without a "
                              "centre crop, so its input size depends on the image; attnmap needs a fixed size")
        h, w = crop["height"], crop["width"]
        if h != w or h > size["shortest_edge"]:
            raise ExportError(f"{source}: {kind} crops {h}x{w} after resizing the shortest edge to "
                              f"{size['shortest_edge']}; the runtime reproduces a square crop no larger than that")
        crop_pct, crop_mode = _crop_pct(h, size["shortest_edge"]), "center"
    else:
        raise ExportError(f"{source}: {kind} size {size} is not one the runtime reproduces: "
                          "{height, width} or {shortest_edge} (with a centre crop)")
    r = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0
    if getattr(processor, "do_normalize", True):
        mean, std = tuple(map(float, processor.image_mean)), tuple(map(float, processor.image_std))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    fold = 255.0 * r
    fold = 1.0 if abs(fold - 1.0) < 1e-9 else fold  # 255 * (1/255) is 0.999... in floats
    interpolation = _resample(getattr(processor, "resample", 2), source)
    settings = {"image_processor_type": kind, "size": size, "crop_size": crop or None,
                "resample": interpolation, "rescale_factor": r, "image_mean": list(mean), "image_std": list(std)}
    return {"input_size": (3, int(h), int(w)), "mean": tuple(m / fold for m in mean),
            "std": tuple(s / fold for s in std), "interpolation": interpolation, "crop_pct": float(crop_pct),
            "crop_mode": crop_mode, "processor": settings}
