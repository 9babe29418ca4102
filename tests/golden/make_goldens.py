"""Regenerate the overlay golden image: ``python tests/golden/make_goldens.py``.

The inputs are analytic (no randomness, no files), so the golden changes only when the
overlay's drawing changes. Run this on purpose after such a change and review the new PNG.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

OVERLAY_PNG = HERE / "overlay_jet_32x24.png"


def overlay_case() -> tuple[np.ndarray, np.ndarray, dict]:
    """The golden's inputs: a 24 x 32 BGR image, a heatmap over it, and the overlay style."""
    ys, xs = np.mgrid[0:24, 0:32].astype(np.float32)
    image = np.dstack([xs * 8, ys * 10, 255 - xs * 4]).astype(np.uint8)
    heat = np.exp(-(((xs - 20) / 6) ** 2 + ((ys - 9) / 5) ** 2)).astype(np.float32)
    return image, heat, dict(colormap="jet", alpha=0.6, blur=0.0, mode="blend")


def render_overlay() -> np.ndarray:
    from attnmap.runtime.draw.overlay import HeatmapOverlay
    image, heat, style = overlay_case()
    return HeatmapOverlay(**style).annotate(image, heat)


def _write_png(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(buf.tobytes())
    os.chmod(tmp, 0o644)  # mkstemp makes it private
    os.replace(tmp, path)


if __name__ == "__main__":
    _write_png(OVERLAY_PNG, render_overlay())
    print(f"wrote {OVERLAY_PNG}")
