"""The result record: what ``attnmap explain --json`` prints per input, on every engine.

One JSON object per line, the same keys whether the local engine or Ray explained the input.
The schema is versioned: ``schema_version`` is in every record, and any change to the keys
below (a key removed or renamed, a meaning changed) raises :data:`RECORD_SCHEMA_VERSION`;
a key added is no change for readers that ignore unknown keys.

Still image (version 1)::

    schema_version  int     1
    source          str     the input as listed (a file path)
    topk            list    [{index: int, label: str, prob: float (6 decimals)}], best first
    target          object  {index, label}: the class the map explains (class-specific
                            methods, one map); absent for class-agnostic methods
    classes         list    [{index, label, prob}]: the classes of the maps side by side
                            (``topk:N``), instead of ``target``
    overlay         str     the overlay PNG written
    maps            str     the .npz with ``grid`` and ``heatmap`` (only when maps are saved)
    tiles           str     the tiled attention PNG (only when tiles are asked for)

Video or image sequence (version 1, local engine only)::

    schema_version, source, video (str: the file written), frames (int), fps (float),
    size ([width, height]), codec (str), throughput_fps (float), and where they apply
    codec_note (str), maps (str), failed_frames ([{index, error}]).
"""

from __future__ import annotations

from typing import Any

from attnmap.runtime.core.text import plural
from attnmap.runtime.engine.job import ItemResult

RECORD_SCHEMA_VERSION = 1
# the files an image record may name, in this order
OUTPUT_KEYS = ("overlay", "maps", "tiles")

__all__ = ["OUTPUT_KEYS", "RECORD_SCHEMA_VERSION", "image_record", "record_line", "record_of", "video_record"]


def image_record(source: str, topk: list[dict[str, Any]], *, target: dict[str, Any] | None = None,
                 classes: list[dict[str, Any]] | None = None, outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A still image's record from its parts (the one place the keys are spelled).

    Args:
        source: the input.
        topk: ``[{index, label, prob}]``, best first (probabilities are rounded to 6 decimals here).
        target: ``{index, label}`` of the one class the map explains, or None.
        classes: ``[{index, label, prob}]`` of the classes explained side by side, or None.
        outputs: written file paths by :data:`OUTPUT_KEYS` name; None values are left out.
    """
    record: dict[str, Any] = {"schema_version": RECORD_SCHEMA_VERSION, "source": source,
                              "topk": [_entry(t) for t in topk]}
    if classes:
        record["classes"] = [_entry(c) for c in classes]
    elif target is not None:
        record["target"] = {"index": int(target["index"]), "label": target["label"]}
    for key in OUTPUT_KEYS:
        if (outputs or {}).get(key) is not None:
            record[key] = str(outputs[key])
    return record


def _entry(t: dict[str, Any]) -> dict[str, Any]:
    return {"index": int(t["index"]), "label": t["label"], "prob": round(float(t["prob"]), 6)}


def record_of(item: ItemResult, topk: int) -> dict[str, Any]:
    """The record of an explained (and written) image item.

    Args:
        item: an item the engine explained; ``item.extra`` holds the written files.
        topk: predictions to keep.
    """
    r = item.explanation
    preds = [{"index": t.index, "label": t.label, "prob": t.prob} for t in r.topk[:topk]]
    classes = [{"index": a.target, "label": a.label_of_target, "prob": float(a.probs[a.target])}
               for a in item.alternatives]
    target = {"index": r.target, "label": r.label_of_target} if r.target is not None else None
    return image_record(item.source, preds, target=target, classes=classes, outputs=item.extra)


def video_record(source: str, result: Any) -> dict[str, Any]:
    """The record of an explained video (``result``: a :class:`~attnmap.runtime.fronts.video.VideoResult`)."""
    r = result
    record = {"schema_version": RECORD_SCHEMA_VERSION, "source": source, "video": str(r.out), "frames": r.frames,
              "fps": r.fps, "size": list(r.size), "codec": r.codec, "throughput_fps": round(r.throughput_fps, 2)}
    if r.codec_note:
        record["codec_note"] = r.codec_note
    if r.maps is not None:
        record["maps"] = str(r.maps)
    if r.failed:
        record["failed_frames"] = [{"index": i, "error": e} for i, e in r.failed]
    return record


def record_line(record: dict[str, Any]) -> str:
    """The one-line text summary of a record (what ``explain`` prints without ``--json``)."""
    if "video" in record:  # the codec note is the caller's to print, once per run
        return (f"{record['source']}: {plural(record['frames'], 'frame')} explained at "
                f"{record['throughput_fps']:.1f} frames/s -> {record['video']} ({record['codec']})")
    preds = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in record["topk"])
    if record.get("classes"):
        return f"{record['source']}: {preds}  [maps: " + ", ".join(c["label"] for c in record["classes"]) + "]"
    if "target" in record:
        return f"{record['source']}: {preds}  [map: {record['target']['label']}]"
    return f"{record['source']}: {preds}"
