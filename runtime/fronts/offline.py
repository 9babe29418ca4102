"""Offline explain: inputs in (files, folders, globs, videos), overlays and maps into a folder.

The front under ``attnmap explain`` and ``attnmap demo``, free of any UI: what the CLI prints
(one text line or one JSON object per input, failures, progress) comes in as callbacks. All
still images go through one run of the frame engine with a :class:`FolderSink`; each video
through :func:`~attnmap.runtime.fronts.video.explain_video`. Every input either gets its
record or its failure line; one bad input never stops the others.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from attnmap.runtime.core.errors import AttnmapError, OptionError
from attnmap.runtime.core.files import sweep_partials, write_image, write_npz
from attnmap.runtime.core.text import plural
from attnmap.runtime.draw.overlay import layer_head_grid
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.engine import FrameEngine, ItemResult
from attnmap.runtime.engine.record import record_line, record_of, video_record
from attnmap.runtime.frames.frame import SourceRef
from attnmap.runtime.frames.sources import open_files, plan_inputs
from attnmap.runtime.fronts.interrupt import Interrupted
from attnmap.runtime.fronts.out_folder import claim_folder, run_settings
from attnmap.runtime.fronts.video import VideoProgress, explain_video
from attnmap.runtime.methods import attention_maps as run_method

TILES = ("none", "layers", "heads")
VIDEO_FORMATS = ("mp4", "webm", "avi")


@dataclass(frozen=True)
class FolderOutput:
    """What ``attnmap explain`` writes per input, besides the overlay.

    Attributes:
        out_dir: the folder.
        save_maps: an ``.npz`` per image (``grid``, ``heatmap``) or per video.
        tiles: ``"none"``, ``"layers"`` or ``"heads"``: an extra tiled image of raw attention
            of every layer, or of every head of the method's ``layer`` (default the last).
        video_format: the container of annotated videos: ``"mp4"`` (H.264 where this OpenCV
            has an encoder for it, else MPEG-4 Part 2, fast but not played by browsers),
            ``"webm"`` (VP8: browsers play it; encoding costs more) or ``"avi"`` (Motion JPEG).
        overwrite: write into a folder that holds a run with other settings (model, method,
            options, class, fit), replacing its files of the same name; False refuses
            (see :mod:`attnmap.runtime.fronts.out_folder`).
    """

    out_dir: Path
    save_maps: bool = False
    tiles: str = "none"
    video_format: str = "mp4"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.tiles not in TILES:
            raise OptionError(f"tiles must be one of {', '.join(TILES)}; got {self.tiles!r}")
        if self.video_format not in VIDEO_FORMATS:
            raise OptionError(f"video_format must be one of {', '.join(VIDEO_FORMATS)}; got {self.video_format!r}")


@dataclass
class OfflineReport:
    """What an offline run did: ``done`` inputs written, ``failed`` inputs with their reasons,
    ``skipped`` inputs whose outputs an earlier run completed (the Ray engine resumes)."""

    done: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    skipped: int = 0


class FolderSink:
    """The engine's sink for still images: overlay PNG (and maps, tiles) per item, never half-written.

    File stems are unique within the run (``dog_rollout``, ``dog_rollout_2``). A file that
    cannot be written fails its item, not the run.
    """

    def __init__(self, engine: FrameEngine, output: FolderOutput, names: "StemNames"):
        self.engine, self.output, self.names = engine, output, names

    def write(self, item: ItemResult) -> None:
        if item.ok:
            write_item(self.engine, item, self.output, self.names.stem(item.source, self.engine.job.method))


def write_item(engine: FrameEngine, item: ItemResult, output: FolderOutput, stem: str) -> None:
    """Write one drawn item's files into ``output.out_dir``, each whole or not at all.

    The one writer of per-image outputs: :class:`FolderSink` (the local path) and the Ray
    actors of :mod:`attnmap.runtime.fronts.distributed` both call it, so both write the same
    files under the same names: ``{stem}.png`` (the overlay, ``item.drawn``), with
    ``save_maps`` ``{stem}.npz`` (``grid`` (gh, gw) and ``heatmap`` (H0, W0), float32 in
    [0, 1]), with ``tiles`` ``{stem}_{tiles}.png``. With ``Job.top_classes`` the stem gets
    ``_topN``. The written paths go into ``item.extra`` (``overlay``, ``maps``, ``tiles``).

    Args:
        engine: the engine that explained the item (its job and model metadata).
        item: an explained and drawn item; a failed one is left as it is.
        output: where and what to write.
        stem: the file stem, unique within the run (``dog_rollout``).

    A file that cannot be written becomes the item's ``error``; it is never raised.
    """
    if not item.ok:
        return
    try:
        stem = stem + class_suffix(engine.job)
        item.extra["overlay"] = str(write_image(output.out_dir / f"{stem}.png", item.drawn))
        if output.save_maps:
            r = item.explanation
            item.extra["maps"] = str(write_npz(output.out_dir / f"{stem}.npz", grid=r.grid, heatmap=r.heatmap))
        if output.tiles != "none" and item.outputs is not None:
            tiles = tile_image(engine, item, output.tiles)
            item.extra["tiles"] = str(write_image(output.out_dir / f"{stem}_{output.tiles}.png", tiles))
    except Exception as exc:  # noqa: BLE001 - one file that cannot be written fails its item
        item.error = exc


def class_suffix(job: Any) -> str:
    """What a file stem adds for the class explained: ``_class{index}`` for a chosen class,
    ``_top{N}`` for the top N classes side by side, ``""`` for the predicted class."""
    if job.top_classes:
        return f"_top{job.top_classes}"
    return "" if job.target is None else f"_class{int(job.target)}"


class StemNames:
    """Unique file stems for one run's outputs."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def stem(self, source: str, method: str) -> str:
        base = Path(source).stem or "input"
        name, n = f"{base}_{method}", 1
        while name in self._used:
            n += 1
            name = f"{base}_{method}_{n}"
        self._used.add(name)
        return name


def tile_image(engine: FrameEngine, item: ItemResult, tiles: str) -> np.ndarray:
    """Raw attention of every layer (or every head of one layer) tiled over the item's image."""
    meta = engine.explainer.meta
    attn = item.outputs.attentions
    result = item.explanation
    if tiles == "layers":
        picks = [dict(layer=layer) for layer in range(meta.num_layers)]
        titles = [f"layer {layer}" for layer in range(meta.num_layers)]
    else:
        layer = int(engine.job.options.get("layer", -1)) % meta.num_layers
        if meta.head_fusion != "none":
            picks, titles = [dict(layer=layer)], [f"layer {layer}, heads fused at export ({meta.head_fusion})"]
        else:
            picks = [dict(layer=layer, head=h) for h in range(attn.shape[2])]
            titles = [f"layer {layer} head {h}" for h in range(attn.shape[2])]
    grids = np.concatenate([run_method("attention", attn, meta.layout, **p) for p in picks])
    heatmaps = np.stack([result.geometry.to_image(g) for g in grids])
    style = engine.job.style or OverlayStyle()
    return layer_head_grid(result.image, heatmaps, titles=titles, overlay=style.heatmap)


def count_inputs(planned: tuple[list[SourceRef], list]) -> tuple[int, int]:
    """``(still images, videos and image sequences)`` among :func:`plan_inputs`' refs (what the
    throughput plan, :func:`~attnmap.runtime.model.plan.plan_for_inputs`, needs to know)."""
    refs, _ = planned
    return sum(r.kind == "image" for r in refs), sum(r.kind in ("video", "sequence") for r in refs)


def drawing_engine(engine: FrameEngine) -> FrameEngine:
    """``engine``, or one with the default :class:`OverlayStyle` where its job draws nothing
    (offline explain always writes an overlay)."""
    if engine.job.style is not None:
        return engine
    return engine.with_job(dataclasses.replace(engine.job, style=OverlayStyle()))


def explain_inputs(engine: FrameEngine, specs: Sequence[str] | tuple[list[SourceRef], list],
                   output: FolderOutput, *,
                   on_record: Callable[[dict[str, Any], str], None],
                   on_fail: Callable[[str, str], None],
                   on_image: Callable[[], None] | None = None,
                   on_video: Callable[[str, VideoProgress], None] | None = None,
                   on_note: Callable[[str], None] | None = None) -> OfflineReport:
    """Explain every input into ``output.out_dir``.

    Args:
        engine: the frame engine (explainer, job with the overlay style, batching).
        specs: SOURCE arguments (image files, directories, globs, videos, image sequences), or
            what :func:`~attnmap.runtime.frames.sources.plan_inputs` made of them (so a caller
            that already listed the folders does not list them again; list them with
            ``videos=True`` so that a folder's videos are explained too). Inputs that do not
            exist, cameras and streams are failures, reported in order.
        output: where and what to write.
        on_record: called as ``on_record(record, line)`` per written input (caller's thread): its
            record (:mod:`attnmap.runtime.engine.record`) and the record's text line.
        on_fail: called as ``on_fail(source, reason)`` per failed input.
        on_image: called once per still image done (written or failed), for a progress bar.
        on_video: called with each video's progress.
        on_note: called with one line for what the user should know but is no failure: the
            files a folder holds that were left out, the codec note of the videos (once).

    Returns:
        :class:`OfflineReport`.

    Raises:
        RunConflictError: ``output.out_dir`` holds a run with other settings and
            ``output.overwrite`` is False (nothing is written then).
        Interrupted: Ctrl-C (or SIGTERM under
            :func:`~attnmap.runtime.fronts.interrupt.terminate_as_interrupt`); what was written
            stays, the input in progress leaves nothing behind, and ``summary`` says which.
    """
    engine = drawing_engine(engine)
    report = OfflineReport()
    note = on_note or (lambda line: None)

    def fail(source: str, reason: str) -> None:
        report.failed.append((source, reason))
        on_fail(source, reason)

    refs, missing = specs if isinstance(specs, tuple) else plan_inputs(
        specs, videos=True, on_skip=lambda spec, why: note(f"{spec}: {why}"))
    for spec, exc in missing:
        fail(spec, str(exc))
    images = [r for r in refs if r.kind == "image"]
    for ref in refs:
        if ref.is_live:
            fail(ref.spec, f"{ref.spec!r} is a {ref.kind}; explain it live with `attnmap live {ref.spec}`")
    names = StemNames()
    once = _Once(note)
    videos = [r for r in refs if r.kind in ("video", "sequence")]
    if images or videos:  # a run that writes nothing leaves the folder as it was
        claim_folder(output.out_dir, run_settings(engine), overwrite=output.overwrite)
        swept = sweep_partials(output.out_dir)
        if swept:
            note(f"removed {plural(len(swept), 'partial video')} an interrupted run left in "
                 f"{str(output.out_dir)!r} ({', '.join(p.name for p in swept)})")
    current = ""
    try:
        if images:
            current = "the still images"
            sink = FolderSink(engine, output, names)
            items = engine.run(open_files([r.target for r in images], errors="yield"), sink=sink)
            try:
                for item in items:
                    if item.ok:
                        report.done += 1
                        record = record_of(item, engine.job.topk)
                        on_record(record, record_line(record))
                    else:
                        fail(item.source, item.reason())
                    if on_image is not None:
                        on_image()
            finally:
                items.close()  # stops the engine's threads now, also when the loop body was interrupted
        for ref in videos:
            current = ref.spec
            _video(engine, ref, output, names, report, on_record, fail, on_video, once)
        current = ""
    except KeyboardInterrupt as exc:
        total = len(images) + len(videos) + len(missing) + sum(r.is_live for r in refs)
        raise Interrupted(_interrupted(report, total, current, output.out_dir), cause=exc) from exc
    return report


def _interrupted(report: OfflineReport, total: int, current: str, out_dir: Path) -> str:
    """The one line an interrupted run ends with: what was written, what was not."""
    left = total - report.done - len(report.failed)
    text = f"{report.done} of {plural(total, 'input')} written to {str(out_dir)!r}"
    if left <= 0:
        return text
    text += f"; {left} not written"
    if current:
        text += f" (in progress: {current}; nothing of it is left half-written)"
    return text


class _Once:
    """Passes each distinct line on once per run (the codec note would repeat for every video)."""

    def __init__(self, note: Callable[[str], None]):
        self.note, self.said = note, set()

    def __call__(self, line: str) -> None:
        if line not in self.said:
            self.said.add(line)
            self.note(line)


def _video(engine: FrameEngine, ref: SourceRef, output: FolderOutput, names: StemNames, report: OfflineReport,
           on_record, fail, on_video, note: Callable[[str], None]) -> None:
    stem = names.stem(ref.target if ref.kind == "video" else ref.spec.replace("%", "_"), engine.job.method)
    stem += class_suffix(engine.job)
    out_path = output.out_dir / f"{stem}.{output.video_format}"
    maps = output.out_dir / f"{stem}.npz" if output.save_maps else None
    progress = None if on_video is None else (lambda p: on_video(ref.spec, p))
    try:
        r = explain_video(engine, ref, out_path, save_maps=maps, progress=progress)
    except AttnmapError as exc:
        fail(ref.spec, str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - an unexpected failure ends this video, not the run
        fail(ref.spec, f"{type(exc).__name__}: {exc}")
        return
    record = video_record(ref.spec, r)
    on_record(record, record_line(record))
    if r.codec_note:
        note(r.codec_note)
    if not r.failed:
        report.done += 1
    else:
        first, why = r.failed[0]
        fail(ref.spec, f"{len(r.failed)} of {plural(r.frames, 'frame')} could not be explained and were written plain "
                       f"(first: frame {first}: {why})")
