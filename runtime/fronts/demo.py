"""``attnmap demo``: generated inputs explained with the shipped model, and a contact sheet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from attnmap.runtime.core.errors import SourceError
from attnmap.runtime.core.files import write_image
from attnmap.runtime.engine.engine import FrameEngine
from attnmap.runtime.frames.synth import write_demo_inputs
from attnmap.runtime.fronts.offline import FolderOutput, explain_inputs
from attnmap.runtime.image.decode import read_image


@dataclass
class DemoReport:
    """What the demo wrote: the overlays folder, its PNGs, the video's overlay and the sheet."""

    overlays: Path
    images: list[Path]
    video: Path
    sheet: Path


def run_demo(engine: FrameEngine, out_dir: Path, *, seed: int = 0,
             on_record: Callable[[dict[str, Any], str], None] = lambda r, line: None) -> DemoReport:
    """Generate images and a short video, explain them into ``out_dir/overlays``, and tile the
    image overlays into ``out_dir/overview.png``.

    Raises:
        AttnmapError: an input failed (the demo's inputs are generated, so that is a bug).
    """
    images, video = write_demo_inputs(out_dir / "inputs", seed=seed)
    overlays = out_dir / "overlays"
    failures: list[str] = []
    report = explain_inputs(engine, [str(p) for p in images] + [str(video)], FolderOutput(overlays, overwrite=True),
                            on_record=on_record, on_fail=lambda src, why: failures.append(f"{src}: {why}"))
    if report.failed:
        raise SourceError(f"{len(report.failed)} demo inputs failed: {'; '.join(failures)}")
    pngs = sorted(overlays.glob("*.png"))
    sheet = write_image(out_dir / "overview.png", contact_sheet([read_image(p) for p in pngs], cols=3))
    return DemoReport(overlays, pngs, overlays / f"{video.stem}_{engine.job.method}.mp4", sheet)


def contact_sheet(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    """Tiles of one size in rows of ``cols`` (the last row padded with black)."""
    if not tiles:
        raise SourceError("no images to tile")
    blank = np.zeros_like(tiles[0])
    rows = [np.hstack(tiles[i:i + cols] + [blank] * (cols - len(tiles[i:i + cols])))
            for i in range(0, len(tiles), cols)]
    return np.vstack(rows)


__all__ = ["DemoReport", "contact_sheet", "run_demo"]
