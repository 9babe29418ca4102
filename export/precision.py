"""``attnmap export --precision fp16|int8``: export fp32 with its parity gate, then convert.

The fp32 file is exported as always (parity against torch) to a hidden temp file beside the
target, converted by the runtime's precision package (torch-free, the same code as ``attnmap
quantize``), gated on fidelity against that fp32 file, and only then written; the temp fp32
file is removed whatever happens, so a failed gate leaves no file at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from attnmap.runtime.core.files import discard, temp_path
from attnmap.runtime.precision.convert import ConvertOptions, ConvertReport, convert_file

from .to_onnx import ExportReport, export_onnx

__all__ = ["PrecisionExport", "export_with_precision"]


@dataclass(frozen=True)
class PrecisionExport:
    """The fp32 export's report (parity figures; its path is gone) and the conversion's."""

    export: ExportReport
    convert: ConvertReport

    @property
    def path(self) -> Path:
        """The written file."""
        return self.convert.path


def export_with_precision(model_name: str, out: str | Path, options: ConvertOptions, *,
                          log: Callable[[str], None] = print, **export_kwargs: Any) -> PrecisionExport:
    """Export ``model_name`` at fp32, convert it to ``options.precision`` and gate it.

    Args:
        model_name: as :func:`export.to_onnx.export_onnx` takes it.
        out: where to write the fp16 or int8 file.
        options: precision, int8 mode, calibration and check images, thresholds.
        log: receives progress lines (parity, then fidelity figures).
        **export_kwargs: :func:`export_onnx`'s other arguments (checkpoint, heads, gradients ...).

    Returns:
        :class:`PrecisionExport`.

    Raises:
        ExportError: the fp32 export or its parity gate failed.
        FidelityError: the converted file is below the thresholds (no file is written).
        ModelError, SourceError: the conversion, or its calibration or check images, failed.
    """
    out = Path(out)
    fp32 = temp_path(out, ".fp32.onnx")
    try:
        report = export_onnx(model_name, fp32, log=log, **export_kwargs)
        converted = convert_file(fp32, out, options, log=log)
    finally:
        discard(fp32)
    return PrecisionExport(report, converted)
