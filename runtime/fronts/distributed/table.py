"""The run table of a distributed explain, and resuming by content hash.

Every image gets one row: where it came from, the SHA-256 of its bytes, its predictions, the
class its map explains, the method and options, statistics of the map, the files written, and
the error when it failed. The rows of a run are written together as ``run.parquet`` in the
output folder, atomically, at the end.

Resuming: after an image's overlay (and maps) are written, its row is written too, as
``.attnmap/<stem>.json`` in the output folder (atomically, last). A rerun skips an image
whose row is there with the same content hash and the same settings fingerprint, and whose
listed files all exist; a changed file (another hash), other settings or a deleted output is
redone. A run killed midway leaves only whole files, so its rows say exactly what is done, and
the table can be rebuilt from them. Failed images leave no row file: a rerun tries them again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from attnmap.runtime.core.errors import OutputError
from attnmap.runtime.core.files import write_bytes
from attnmap.runtime.engine.job import ItemResult, Job
from attnmap.runtime.engine.record import OUTPUT_KEYS, image_record, record_of

RECORDS_DIR = ".attnmap"
TABLE_NAME = "run.parquet"
# column -> pyarrow type name; the order is the table's
COLUMNS = {"index": "int64", "source": "string", "sha256": "string", "stem": "string", "method": "string",
           "options": "string", "fit": "string", "topk_index": "list<int64>", "topk_label": "list<string>",
           "topk_prob": "list<double>", "classes": "list<int64>", "class_labels": "list<string>",
           "class_probs": "list<double>",
           "map_mean": "double", "map_std": "double", "map_max": "double", "map_peak_row": "int64",
           "map_peak_col": "int64", "overlay": "string", "maps": "string", "tiles": "string", "error": "string"}

__all__ = ["COLUMNS", "RECORDS_DIR", "TABLE_NAME", "content_hash", "failed_row", "finished_row", "item_row",
           "read_table", "record_from_row", "record_path", "settings_fingerprint", "write_record", "write_table"]


def content_hash(data: bytes | memoryview) -> str:
    """SHA-256 of a file's bytes, as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def settings_fingerprint(model_sha256: str, job: Job, **output: Any) -> str:
    """16 hex digits naming everything that changes an image's outputs: the model file's hash,
    the job (method, options, fit, top-k, target, top classes, overlay style) and the output
    settings (``save_maps``, ``tiles`` ...). Rows made under another fingerprint are redone."""
    settings = {"model": model_sha256, "method": job.method, "options": dict(job.options), "fit": job.fit,
                "topk": job.topk, "target": job.target, "top_classes": job.top_classes,
                "style": _style_fields(job.style), "output": output}
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _style_fields(style) -> dict[str, Any] | None:
    """The style's public fields (not the annotator it builds from them)."""
    if style is None:
        return None
    return {f.name: getattr(style, f.name) for f in dataclasses.fields(style) if not f.name.startswith("_")}


def record_path(out_dir: str | Path, stem: str) -> Path:
    """Where the row of the image with file stem ``stem`` is kept between runs."""
    return Path(out_dir) / RECORDS_DIR / f"{stem}.json"


def write_record(out_dir: str | Path, row: dict[str, Any], fingerprint: str) -> Path:
    """Keep a finished image's row (atomically), marking its outputs complete.

    Raises:
        OutputError: the file cannot be written.
    """
    data = json.dumps({"fingerprint": fingerprint, "row": row}, default=_plain).encode("utf-8")
    return write_bytes(record_path(out_dir, row["stem"]), data)


def finished_row(out_dir: str | Path, stem: str, sha256: str, fingerprint: str) -> dict[str, Any] | None:
    """The kept row of an image that is already done, or None when it must be (re)done.

    Done means: the row file exists and parses, its content hash and fingerprint are these,
    and every file it lists exists.
    """
    try:
        kept = json.loads(record_path(out_dir, stem).read_text(encoding="utf-8"))
        row = kept["row"]
        if kept["fingerprint"] != fingerprint or row["sha256"] != sha256 or row.get("error"):
            return None
        if any(column not in row for column in COLUMNS):  # kept by an older version: redo it
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(os.path.isfile(row[k]) for k in OUTPUT_KEYS if row.get(k)):
        return None
    return row


def item_row(item: ItemResult, job: Job, *, index: int, sha256: str, stem: str) -> dict[str, Any]:
    """The table row of an item the engine explained (and :func:`~attnmap.runtime.fronts.offline.write_item` wrote).

    Map statistics are of the (gh, gw) grid in [0, 1] (of the first class, with top classes):
    mean, standard deviation, maximum and the row and column of its peak.
    """
    if not item.ok:
        return failed_row(item.source, item.reason(), index=index, sha256=sha256, stem=stem, job=job)
    record = record_of(item, job.topk)
    explained = record.get("classes") or ([record["target"]] if "target" in record else [])
    grid = np.asarray(item.explanation.grid, dtype=np.float64)
    peak = np.unravel_index(int(np.argmax(grid)), grid.shape)
    row = _base_row(item.source, index=index, sha256=sha256, stem=stem, job=job)
    row.update(topk_index=[t["index"] for t in record["topk"]], topk_label=[t["label"] for t in record["topk"]],
               topk_prob=[float(t["prob"]) for t in record["topk"]], classes=[c["index"] for c in explained],
               class_labels=[c["label"] for c in explained], class_probs=_class_probs(item),
               map_mean=float(grid.mean()), map_std=float(grid.std()),
               map_max=float(grid.max()), map_peak_row=int(peak[0]), map_peak_col=int(peak[1]),
               **{k: item.extra.get(k) for k in OUTPUT_KEYS})
    return row


def record_from_row(row: dict[str, Any], job: Job) -> dict[str, Any]:
    """The result record (:mod:`attnmap.runtime.engine.record`) of a finished row: the same
    record the local engine gives the same image under the same ``job``."""
    topk = [{"index": i, "label": lb, "prob": p}
            for i, lb, p in zip(row["topk_index"], row["topk_label"], row["topk_prob"])]
    explained = [{"index": i, "label": lb, "prob": p}
                 for i, lb, p in zip(row["classes"], row["class_labels"], row["class_probs"])]
    if job.top_classes:
        return image_record(row["source"], topk, classes=explained, outputs=row)
    return image_record(row["source"], topk, target=explained[0] if explained else None, outputs=row)


def _class_probs(item: ItemResult) -> list[float]:
    """The probabilities of the classes an item's maps explain (``classes`` of its row)."""
    r = item.explanation
    if item.alternatives:
        return [round(float(a.probs[a.target]), 6) for a in item.alternatives]
    return [round(float(r.probs[r.target]), 6)] if r.target is not None else []


def failed_row(source: str, error: str, *, index: int, sha256: str | None, stem: str, job: Job) -> dict[str, Any]:
    """The table row of an image that could not be read, explained or written."""
    row = _base_row(source, index=index, sha256=sha256, stem=stem, job=job)
    row["error"] = error
    return row


def write_table(rows: Iterable[dict[str, Any]], path: str | Path) -> bool:
    """Write the run table as Parquet, atomically, rows ordered by ``index``.

    Returns:
        True when written; False when ``path`` already holds exactly these rows (a rerun that
        changed nothing writes nothing).

    Raises:
        OutputError: the file cannot be written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    ordered = sorted(rows, key=lambda r: r["index"])
    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in ordered], schema=_schema())
    if Path(path).is_file():
        try:
            if pq.read_table(path).equals(table):
                return False
        except (OSError, ValueError):
            pass  # unreadable or another schema: replace it
    buf = io.BytesIO()
    try:
        pq.write_table(table, buf)
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot encode the run table for {str(path)!r}: {exc}") from exc
    write_bytes(path, buf.getvalue())
    return True


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a run table, in order (each a dict of :data:`COLUMNS`)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _base_row(source: str, *, index: int, sha256: str | None, stem: str, job: Job) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(index=int(index), source=source, sha256=sha256, stem=stem, method=job.method,
               options=json.dumps(dict(job.options), sort_keys=True, default=_plain), fit=job.fit,
               topk_index=[], topk_label=[], topk_prob=[], classes=[], class_labels=[], class_probs=[])
    return row


def _schema():
    import pyarrow as pa

    types = {"int64": pa.int64(), "string": pa.string(), "double": pa.float64(),
             "list<int64>": pa.list_(pa.int64()), "list<string>": pa.list_(pa.string()),
             "list<double>": pa.list_(pa.float64())}
    return pa.schema([(name, types[t]) for name, t in COLUMNS.items()])


def _plain(value: Any) -> Any:
    """JSON for NumPy scalars and arrays in options."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
