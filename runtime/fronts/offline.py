"""Explaining a list of inputs into a folder: overlays, maps, tiles and one record per input.

The engine of ``attnmap explain`` (and ``attnmap demo``), free of any UI: what the CLI prints
(one text line or one JSON object per input, failures, progress) comes in as callbacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from attnmap.runtime.core.errors import AttnmapError
from attnmap.runtime.methods import explain as run_method
from attnmap.runtime.core.files import write_image, write_npz
from attnmap.runtime.draw.overlay import HeatmapOverlay, layer_head_grid
from attnmap.runtime.frames.sources import open_files
from attnmap.runtime.engine.engine import explain_stream
from attnmap.runtime.fronts.video import VideoProgress, explain_video


def _nothing(n: int) -> None:
    """The default ``advance``: no progress display."""


class ResultWriter:
    """Writes overlays, maps and tiles for explained inputs (never half-written files) and
    hands one result record per input to ``emit``.

    Args:
        out_dir: the folder the files go to.
        method: the explanation method (part of every file name).
        save_maps: also write an ``.npz`` per image (``grid``, ``heatmap``) or video.
        topk: predictions per record.
        style: overlay style: ``colormap``, ``alpha``, ``blur``, ``mode``, ``label``.
        tiles: ``"none"``, ``"layers"`` or ``"heads"``: an extra tiled image of raw attention.
        options: the method's options (``layer`` picks the layer of head tiles).
        emit: called as ``emit(record, line)`` per written input: a JSON-able dict and a
            one-line text summary.
        on_fail: called with a one-line message per input that failed (it is skipped).
    """

    def __init__(self, out_dir: Path, method: str, *, save_maps: bool, topk: int, style: dict[str, Any],
                 tiles: str, options: dict[str, Any], emit: Callable[[dict[str, Any], str], None],
                 on_fail: Callable[[str], None]):
        self.out_dir, self.method, self.save_maps = Path(out_dir), method, save_maps
        self.topk, self.style, self.tiles, self.options = topk, style, tiles, options
        self.emit, self.on_fail = emit, on_fail
        self.done = self.failures = 0
        self._names: set[str] = set()

    def fail(self, source: str, exc: Exception) -> None:
        """Count a failed input and report it."""
        self.failures += 1
        self.on_fail(f"error: {source}: {exc}" if source not in str(exc) else f"error: {exc}")

    def stem(self, source: str) -> str:
        """A file stem for ``source``, unique within this run (``dog_rollout``, ``dog_rollout_2``)."""
        base = Path(source).stem or "input"
        name, n = f"{base}_{self.method}", 1
        while name in self._names:
            n += 1
            name = f"{base}_{self.method}_{n}"
        self._names.add(name)
        return name

    def image(self, source: str, result, explainer, outputs_one=None) -> None:
        """Write one image's overlay (and maps, tiles) and emit its record."""
        stem = self.stem(source)
        overlay_path = write_image(self.out_dir / f"{stem}.png", result.overlay(**self.style))
        extra: dict[str, Any] = {}
        if self.save_maps:
            extra["maps"] = str(write_npz(self.out_dir / f"{stem}.npz", grid=result.grid, heatmap=result.heatmap))
        if self.tiles != "none" and outputs_one is not None:
            tiles = tile_image(explainer, result, outputs_one, self.tiles, self.options, self.style)
            extra["tiles"] = str(write_image(self.out_dir / f"{stem}_{self.tiles}.png", tiles))
        self.record(source, result, overlay=overlay_path, **extra)

    def record(self, source: str, result, *, overlay: Path, **extra: Any) -> None:
        """Build the record of a written overlay and hand it, with its text line, to ``emit``."""
        record: dict[str, Any] = {"source": source,
                                  "topk": [{"index": t.index, "label": t.label, "prob": round(t.prob, 6)}
                                           for t in result.topk[: self.topk]],
                                  "overlay": str(overlay)}
        if result.target is not None and "classes" not in extra:
            record["target"] = {"index": result.target, "label": result.label_of_target}
        record.update(extra)
        self.done += 1
        preds = ", ".join(f"{t.label} {t.prob:.3f}" for t in result.topk[: self.topk])
        explained = ""
        if "classes" in extra:
            explained = "  [maps: " + ", ".join(c["label"] for c in extra["classes"]) + "]"
        elif result.target is not None:
            explained = f"  [map: {result.label_of_target}]"
        self.emit(record, f"{source}: {preds}{explained}")


def tile_image(explainer, result, outputs_one, tiles: str, options: dict[str, Any], style: dict[str, Any]):
    """Raw attention of every layer (or every head of one layer) tiled over the image."""
    meta = explainer.meta
    attn = outputs_one.attentions
    if tiles == "layers":
        picks = [dict(layer=l) for l in range(meta.num_layers)]
        titles = [f"layer {l}" for l in range(meta.num_layers)]
    else:
        layer = int(options.get("layer", -1))
        layer = layer % meta.num_layers
        heads = attn.shape[2]
        picks = [dict(layer=layer, head=h) for h in range(heads)]
        titles = [f"layer {layer} head {h}" for h in range(heads)]
    grids = np.concatenate([run_method("attention", attn, meta.layout, **p) for p in picks])
    heatmaps = np.stack([result.geometry.to_image(g) for g in grids])
    overlay = HeatmapOverlay(colormap=style["colormap"], alpha=style["alpha"], blur=style["blur"], mode=style["mode"])
    return layer_head_grid(result.image, heatmaps, titles=titles, overlay=overlay)


def explain_images(explainer, refs, writer: ResultWriter, method: str, options: dict[str, Any],
                   fit: str, batch_size: int, topk: int, advance: Callable[[int], None] = _nothing,
                   workers: int = 1) -> None:
    """Explain still images in batches; a reader thread decodes and preprocesses ahead of inference.

    ``advance(1)`` is called per image done (for a progress bar); ``workers`` model runs go at once.
    """
    if not refs:
        return
    source = open_files([r.target for r in refs], on_error=writer.fail)
    for item in explain_stream(explainer, source, method=method, options=options, batch_size=batch_size,
                               fit=fit, topk=topk, workers=workers):
        writer.image(item.frame.source, item.explanation, explainer, item.outputs)
        advance(1)


def explain_classes(explainer, refs, writer: ResultWriter, method: str, options: dict[str, Any], fit: str,
                    fixed: int | None, top_n: int | None, advance: Callable[[int], None] = _nothing) -> None:
    """Class-specific maps: one given class per image, or the top N classes side by side."""
    if not refs:
        return
    with open_files([r.target for r in refs], on_error=writer.fail) as source:
        for frame in source:
            if top_n is None:
                result = explainer.explain(frame.image_bgr, method=method, fit=fit, target=fixed, **options)
                writer.image(frame.source, result, explainer)
            else:
                results = explainer.explain_topk(frame.image_bgr, top_n, method=method, fit=fit, **options)
                stem = writer.stem(frame.source) + f"_top{top_n}"
                path = write_image(writer.out_dir / f"{stem}.png",
                                   np.hstack([r.overlay(**writer.style) for r in results]))
                writer.record(frame.source, results[0], overlay=path,
                              classes=[{"index": r.target, "label": r.label_of_target,
                                        "prob": round(float(r.probs[r.target]), 6)} for r in results])
            advance(1)


def explain_video_into(explainer, ref, writer: ResultWriter, method, options, fit, batch_size,
                       progress: Callable[[VideoProgress], None] | None = None, workers: int = 1) -> None:
    """Explain every frame of a video (or image sequence) into an annotated video beside the overlays."""
    stem = writer.stem(ref.target if ref.kind == "video" else ref.spec.replace("%", "_"))
    out_path = writer.out_dir / f"{stem}.mp4"
    maps = writer.out_dir / f"{stem}.npz" if writer.save_maps else None
    try:
        report = explain_video(explainer, ref, out_path, method=method, options=options, batch_size=batch_size,
                               fit=fit, colormap=writer.style["colormap"], alpha=writer.style["alpha"],
                               blur=writer.style["blur"], mode=writer.style["mode"], label=writer.style["label"],
                               save_maps=maps, progress=progress, workers=workers)
    except AttnmapError as exc:
        writer.fail(ref.spec, exc)
        return
    writer.done += 1
    record = {"source": ref.spec, "video": str(report.out), "frames": report.frames, "fps": report.fps,
              "size": list(report.size), "throughput_fps": round(report.throughput_fps, 2)}
    if report.maps is not None:
        record["maps"] = str(report.maps)
    writer.emit(record, f"{ref.spec}: {report.frames} frames explained at {report.throughput_fps:.1f} frames/s "
                        f"-> {report.out}")
