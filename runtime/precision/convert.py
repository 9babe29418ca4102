"""fp32 attnmap file -> fp16, int8 or bf16 attnmap file, written only if it passes the fidelity gate.

:func:`convert_file` is what ``attnmap quantize`` and ``attnmap export --precision`` run:

1. read the fp32 file and its metadata (a file already converted is refused);
2. convert it (:func:`~attnmap.runtime.precision.quantize.quantize_int8`,
   :func:`~attnmap.runtime.precision.fp16.convert_fp16` or
   :func:`~attnmap.runtime.precision.bf16.convert_bf16`; bf16 only where a provider here
   computes in bf16, else a one-line PrecisionUnavailable before any work);
3. write it to a hidden temp file beside the target, load it with the runtime's own
   :class:`~attnmap.runtime.model.session.OnnxModel` and measure its fidelity against the fp32
   file (:func:`~attnmap.runtime.precision.fidelity.measure_fidelity`) on the ``--check``
   images, else :data:`SYNTHETIC_IMAGES` images of the project's synthetic shapes together
   with the calibration images (never the calibration images alone: a static quantisation
   fits its ranges to them, so an absurd calibration would pass a gate measured on itself);
   A bf16 file's fidelity is measured on its float32 twin that rounds every bf16 tensor
   (:func:`~attnmap.runtime.precision.bf16.emulate_bf16`): the same numbers, on any CPU.
4. below the thresholds: FidelityError and the temp file is removed (no file is left);
   else the figures go into the metadata (``precision``, ``fidelity``) and the file is moved
   into place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from attnmap.runtime.core.errors import ModelError, OptionConflict, OptionError, SourceError
from attnmap.runtime.core.files import commit, discard, temp_path
from attnmap.runtime.core.meta import ModelMeta
from attnmap.runtime.core.text import article, megabytes
from attnmap.runtime.model.graph import read_model
from attnmap.runtime.model.inference_graph import inference_graph
from attnmap.runtime.precision.bf16 import ISLANDS, PrecisionUnavailable, bf16_support, convert_bf16, emulate_bf16
from attnmap.runtime.precision.fidelity import Fidelity, Thresholds, check_fidelity, measure_fidelity
from attnmap.runtime.precision.fp16 import convert_fp16
from attnmap.runtime.precision.quantize import DEFAULT_CALIBRATION_IMAGES, INT8_MODES, quantize_int8

PRECISIONS = ("fp16", "int8", "bf16")  # what a conversion writes (fp32 is what export writes)
# 64, not 32: with 32 images a 0.98 top-1 gate allows no flip at all, and the shipped model's
# fp16 file flipped one near-tie (|dp| 0.003) of 32 synthetic images.
SYNTHETIC_IMAGES = 64
MAX_CHECK_IMAGES = 64


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert, and the gate to pass.

    Raises:
        OptionError: an unknown precision or mode, static int8 without calibration images,
            or fp16 attentions on an int8 file.

    Attributes:
        precision: ``"fp16"`` or ``"int8"``.
        mode: int8 only: ``"dynamic"`` (default) or ``"static"`` (QDQ, needs ``calibration``).
        calibration: image source for static int8 (folder, glob, video ...), or None.
        calibration_images: images read from ``calibration`` at most.
        check: image source for the fidelity gate, or None (calibration, else synthetic images).
        attn_dtype: fp16 only: ``"fp16"`` leaves the attentions output half.
        thresholds: the gate.
        islands: bf16 only: the parts kept float32 (:data:`~attnmap.runtime.precision.bf16.ISLANDS`).
    """

    precision: str = "int8"
    mode: str = "dynamic"
    calibration: str | None = None
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    check: str | None = None
    attn_dtype: str = "fp32"
    thresholds: Thresholds = field(default_factory=Thresholds)
    islands: tuple[str, ...] = ISLANDS

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise OptionError(f"precision must be one of {PRECISIONS} for a conversion; got {self.precision!r}")
        if self.mode not in INT8_MODES:
            raise OptionError(f"int8 mode must be one of {INT8_MODES}; got {self.mode!r}")
        if self.precision == "int8" and self.mode == "static" and not self.calibration:
            raise OptionError("static int8 needs calibration images: give calibration (a folder or glob)")
        if self.precision != "fp16" and self.attn_dtype != "fp32":
            raise OptionConflict([("attn_dtype", self.attn_dtype)], ("precision", "fp16"))
        unknown = [i for i in self.islands if i not in ISLANDS]
        if unknown:
            raise OptionError(f"bf16 islands must be among {ISLANDS}; got {unknown[0]!r}")
        if self.calibration_images < 1:
            raise OptionError(f"calibration_images must be >= 1; got {self.calibration_images}")


def convert_options(precision: str, *, calibration: str | None = None,
                    calibration_images: int = DEFAULT_CALIBRATION_IMAGES, check: str | None = None,
                    min_top1: float = 0.98, min_rollout_corr: float = 0.98,
                    attn_dtype: str = "fp32") -> ConvertOptions | None:
    """The :class:`ConvertOptions` of a requested precision, or None for fp32 (no conversion).

    Calibration images make int8 static (QDQ); without them it is dynamic (weights only).

    Raises:
        OptionConflict: a conversion parameter given for a precision it does not apply to
            (``calibration``, ``check`` or ``attn_dtype="fp16"`` with fp32, ``attn_dtype="fp16"``
            with int8, ``calibration`` with fp16 or bf16).
        PrecisionUnavailable: bf16 on a machine where no provider computes in bf16 (checked
            here, before an export or a conversion starts).
    """
    if precision == "bf16":
        support = bf16_support()
        if not support.runners:
            raise PrecisionUnavailable(support.line())
    if precision == "fp32":
        given = [(name, value) for name, value, used in (("calibration", None, calibration), ("check", None, check),
                                                          ("attn_dtype", "fp16", attn_dtype == "fp16")) if used]
        if given:
            raise OptionConflict(given, ("precision", "fp16 or int8"))
        return None
    if attn_dtype == "fp16" and precision != "fp16":
        raise OptionConflict([("attn_dtype", "fp16")], ("precision", "fp16"))
    if calibration and precision != "int8":
        raise OptionConflict([("calibration", None)], ("precision", "int8"), hint="{check} gives the gate's images")
    return ConvertOptions(precision, mode="static" if calibration else "dynamic", calibration=calibration,
                          calibration_images=calibration_images, check=check, attn_dtype=attn_dtype,
                          thresholds=Thresholds(min_top1=min_top1, min_rollout_corr=min_rollout_corr))


@dataclass(frozen=True)
class ConvertReport:
    """What a conversion wrote: the file, its metadata and fidelity, sizes and time."""

    path: Path
    meta: ModelMeta
    fidelity: Fidelity
    size_bytes: int
    source_size_bytes: int
    seconds: float


def load_images(source: str, meta: ModelMeta, limit: int) -> np.ndarray:
    """Up to ``limit`` images of ``source``, preprocessed for ``meta``'s model (crop fit).

    Args:
        source: any image source spec (image, folder, glob, video, image sequence).
        meta: the model's metadata.
        limit: images read at most.

    Returns:
        (B, 3, H, W) float32, 1 <= B <= limit.

    Raises:
        SourceError: the source cannot be opened, or yields no image.
    """
    from attnmap.runtime.frames.sources import open_source
    from attnmap.runtime.image.preprocess import preprocess

    images = []
    with open_source(source) as src:
        for frame in src:
            images.append(frame.image_bgr)
            if len(images) >= limit:
                break
    if not images:
        raise SourceError(f"image source {source!r} yielded no images to calibrate or check with")
    return preprocess(images, meta)[0]


def synthetic_images(meta: ModelMeta, n: int = SYNTHETIC_IMAGES, seed: int = 14) -> np.ndarray:
    """``n`` images of the project's synthetic shapes (runtime/frames/synth.py), preprocessed."""
    from attnmap.runtime.frames.synth import make_batch
    from attnmap.runtime.image.preprocess import preprocess

    images = make_batch(seed, n, size=max(96, max(meta.image_size)))[0]
    return preprocess(list(images), meta)[0]


def convert_proto(proto: onnx.ModelProto, options: ConvertOptions, calibration: np.ndarray | None) -> onnx.ModelProto:
    """The converted graph (metadata not yet updated), inference-clean whatever the source's age."""
    inference_graph(proto)
    if options.precision == "fp16":
        return convert_fp16(proto, attn_dtype=options.attn_dtype)
    if options.precision == "bf16":
        return convert_bf16(proto, islands=options.islands)
    return quantize_int8(proto, mode=options.mode, calibration=calibration)


def convert_file(src: str | Path, out: str | Path, options: ConvertOptions, *,
                 log: Callable[[str], None] = print, threads: int | None = None) -> ConvertReport:
    """Convert an fp32 attnmap file and write it, only if it passes the fidelity gate.

    Args:
        src: the fp32 ``.onnx`` file (written by ``attnmap export``).
        out: where to write the converted file (not ``src``).
        options: precision, int8 mode, calibration and check images, thresholds.
        log: receives progress lines and the fidelity figures.
        threads: CPU threads of the two sessions the gate runs (default: physical cores).

    Returns:
        :class:`ConvertReport`.

    Raises:
        ModelError: ``src`` is missing, not an attnmap file, already converted, or the
            conversion itself failed.
        SourceError: calibration or check images cannot be read.
        FidelityError: the converted file is below the thresholds (no file is written).
        OutputError: ``out`` cannot be written.
        PrecisionUnavailable: bf16, and no provider here computes in bf16 (the line names the
            CPU's missing flags); nothing is read or written.
    """
    from attnmap.runtime.engine.explainer import Explainer

    if options.precision == "bf16":
        support = bf16_support()
        if not support.runners:
            raise PrecisionUnavailable(support.line())
    started = time.perf_counter()
    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise ModelError(f"the output {str(out)!r} is the input file; write the converted model elsewhere")
    if not src.is_file():
        raise ModelError(f"model file {str(src)!r} does not exist; pass an .onnx file written by `attnmap export`")
    reference = Explainer(src, provider="cpu", threads=threads)
    meta = reference.meta
    if meta.precision != "fp32":
        raise ModelError(f"{str(src)!r} is already {article(meta.precision)} file; convert the fp32 file it came from")
    calibration = None
    if options.calibration:
        calibration = load_images(options.calibration, meta, options.calibration_images)
    if options.check:
        x_check, where = load_images(options.check, meta, MAX_CHECK_IMAGES), options.check
    elif calibration is not None:
        # Never the calibration images alone: static ranges fit them by construction, and an
        # absurd calibration (all-black images) passed a gate measured on itself.
        x_check = np.concatenate([synthetic_images(meta), calibration])
        where = f"synthetic shapes + calibration {options.calibration}"
    else:
        x_check, where = synthetic_images(meta), "synthetic shapes"
    what = options.precision + (f" ({options.mode})" if options.precision == "int8" else "")
    log(f"converting {src.name} to {what}" + (f" with {len(calibration)} calibration images" if
                                              calibration is not None and options.mode == "static" else ""))
    converted = convert_proto(read_model(src), options, calibration if options.mode == "static" else None)
    tmp = temp_path(out, ".onnx")
    try:
        # bf16: the gate runs the float32 twin that rounds as the bf16 file stores (bf16.py)
        onnx.save_model(emulate_bf16(converted) if options.precision == "bf16" else converted, str(tmp))
        candidate = Explainer(tmp, provider="cpu", threads=threads)
        fidelity = measure_fidelity(reference, candidate, x_check, source=where, thresholds=options.thresholds)
        del candidate
        log(f"fidelity against fp32: {fidelity.summary()}")
        check_fidelity(fidelity, options.thresholds, f"the {what} file")
        tool = "onnxruntime " + _ort_version() + (
            f" {options.mode} int8" if options.precision == "int8" else
            f" float16 (attentions {options.attn_dtype})" if options.precision == "fp16" else
            f" attnmap bfloat16 (float32 islands: {', '.join(options.islands) or 'none'})")
        new_meta = meta.replace(precision=options.precision, fidelity=fidelity.to_dict(),
                                exporter={**meta.exporter, "converter": tool})
        props = {p.key: p.value for p in converted.metadata_props}
        props.update(new_meta.to_props())
        onnx.helper.set_model_props(converted, props)
        onnx.save_model(converted, str(tmp))
        commit(tmp, out)
    finally:
        discard(tmp)
    size, source_size = out.stat().st_size, src.stat().st_size
    log(f"wrote {out} ({megabytes(size)}, {size / source_size:.2f}x the fp32 file)")
    return ConvertReport(out, new_meta, fidelity, size, source_size, time.perf_counter() - started)


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__
