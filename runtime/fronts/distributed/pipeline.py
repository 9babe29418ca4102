"""``attnmap explain --engine ray``: the offline explain of a collection, on Ray Data.

The pipeline::

    list (driver: folders, globs, manifests -> paths and unique file stems)
      -> read (Ray tasks: file bytes, SHA-256, resume check; with ``decode="task"`` the decode too)
      -> explain (an actor pool: each actor holds one model session and one FrameEngine, and runs
         its stages prepare -> infer -> explain -> draw, then writes the item's files with
         :func:`~attnmap.runtime.fronts.offline.write_item`, the local path's writer)
      -> rows (driver: printed as they arrive, then ``run.parquet``)

The model reaches the actors through Ray's object store (its bytes, put once by the driver),
not through a path: a node that lacks the file, or mounts it elsewhere, works the same. The
first actor on a node writes the bytes, whole, to a temp folder named by their hash, and every
actor there loads that copy with the model's metadata as usual. On a CPU each actor runs
onnxruntime on one thread (``actors`` sets how many run at once); with ``gpus_per_actor`` it
runs on its GPU.

The output folder must be reachable from every node under the same path (a local folder on one
machine; NFS or similar across machines): actors write the overlays, maps and row files there.
Reading and resume checks run as Ray tasks on the workers, so the driver never reads images.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from attnmap.runtime.core.errors import AttnmapError, ImageError, OptionError
from attnmap.runtime.core.files import write_bytes
from attnmap.runtime.core.text import plural
from attnmap.runtime.engine.engine import FrameEngine, ItemResult, Job
from attnmap.runtime.engine.record import OUTPUT_KEYS, record_line
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.frames.manifest import list_images
from attnmap.runtime.fronts.distributed.cluster import collect, ray_cluster
from attnmap.runtime.fronts.distributed.table import (TABLE_NAME, content_hash, finished_row, item_row,
                                                      record_from_row, settings_fingerprint, write_record, write_table)
from attnmap.runtime.fronts.interrupt import Interrupted
from attnmap.runtime.fronts.offline import FolderOutput, StemNames, drawing_engine, write_item
from attnmap.runtime.image.decode import decode_image

DECODES = ("actor", "task")
# providers that run on an NVIDIA GPU: Ray shows an actor only the GPUs it asked for
GPU_PROVIDERS = ("cuda", "tensorrt")

__all__ = ["DECODES", "ExplainActor", "ModelBytes", "RayOptions", "RayReport", "explain_on_ray", "frame_of",
           "read_batch"]


@dataclass(frozen=True)
class RayOptions:
    """How a run uses Ray.

    Attributes:
        address: None for a local Ray instance on this machine, ``"auto"`` for the cluster this
            machine joined with ``ray start``, ``"ray://host:10001"`` for Ray Client.
        actors: model actors (each one model session; on a CPU, one core each); None: one
            per CPU of the cluster (one per ``gpus_per_actor`` GPUs with GPUs).
        gpus_per_actor: GPUs each actor asks Ray for (0: CPU; fractions share a GPU).
        batch_size: images per model run in an actor (and per read task).
        provider: the actors' onnxruntime provider: ``"auto"`` (CUDA with ``gpus_per_actor``,
            else CPU; resolved here), or a provider name (``cpu``, ``cuda`` ...; ``cuda`` and
            ``tensorrt`` need ``gpus_per_actor``). The actors check it where they run.
        num_cpus: CPUs of a local instance (default: the machine's).
        decode: where images are decoded: ``"actor"`` (the read task ships the file's bytes) or
            ``"task"`` (the read task ships decoded pixels).
        verbose: Ray's own logs and progress bars on the terminal (else its errors only).

    Raises:
        OptionError: a count out of range, or an unknown ``decode``.
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.0
    batch_size: int = 4
    provider: str = "auto"
    num_cpus: int | None = None
    decode: str = "actor"
    verbose: bool = False

    def __post_init__(self) -> None:
        for name in ("actors", "batch_size", "num_cpus"):
            value = getattr(self, name)
            if value is None and name != "batch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise OptionError(f"{name} must be an integer >= 1; got {value!r}")
        gpus = self.gpus_per_actor
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not 0 <= gpus <= 64:
            raise OptionError(f"gpus_per_actor must be a number in [0, 64]; got {gpus!r}")
        if self.decode not in DECODES:
            raise OptionError(f"decode must be one of {', '.join(DECODES)}; got {self.decode!r}")
        if not isinstance(self.provider, str) or not self.provider:
            raise OptionError(f"provider must be an onnxruntime provider name such as auto or cpu; got {self.provider!r}")
        if self.provider in GPU_PROVIDERS and not gpus:
            raise OptionError(f"the {self.provider} provider on Ray needs GPUs for the actors: give gpus_per_actor "
                              "(1 for one GPU each), or Ray hides every GPU from them")
        # "auto" follows the actors' resources: an actor without a GPU runs on its CPU core.
        if self.provider == "auto":
            object.__setattr__(self, "provider", "cuda" if gpus else "cpu")

    def pool_size(self, resources: dict[str, float]) -> int:
        """``actors``, or by default one per CPU of the cluster (``resources`` as
        ``ray.cluster_resources()`` gives them), or one per ``gpus_per_actor`` of its GPUs."""
        if self.actors is not None:
            return int(self.actors)
        if self.gpus_per_actor:
            return max(1, int(resources.get("GPU", 0) // self.gpus_per_actor))
        return max(1, int(resources.get("CPU", 1)))


@dataclass
class RayReport:
    """What a distributed run did.

    Attributes:
        done: images explained and written in this run.
        skipped: images whose outputs were already complete (resumed).
        failed: ``(source, reason)`` for images (and SOURCE arguments) that failed.
        rows: the run table's rows, in input order.
        table: the ``run.parquet`` written (None when no image was listed).
        seconds: wall time of the pipeline (Ray start-up excluded).
    """

    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    table: Path | None = None
    seconds: float = 0.0


def explain_on_ray(engine: FrameEngine, specs: Sequence[str], output: FolderOutput, options: RayOptions, *,
                   on_record: Callable[[dict[str, Any], str], None],
                   on_fail: Callable[[str, str], None],
                   on_note: Callable[[str], None] | None = None) -> RayReport:
    """Explain every still image that ``specs`` name on Ray; write what the local path writes, plus the run table.

    Args:
        engine: the frame engine the driver built (its job and model are what the actors
            run; its explainer only supplies the model file and its metadata).
        specs: image files, folders, globs and manifests (``.csv`` / ``.parquet`` with a
            ``path`` column).
        output: the folder (reachable from every node) and what to write per image.
        options: Ray settings.
        on_record: called as ``on_record(record, line)`` per image explained or resumed, as rows
            arrive (driver thread): the same record (:mod:`attnmap.runtime.engine.record`) and
            line the local engine gives.
        on_fail: called as ``on_fail(source, reason)`` per failed image or SOURCE.
        on_note: called with one line for what the user should know and is no failure: the
            files (videos among them) a folder's listing left out, Ray processes a killed run
            had left and this one stopped.

    Returns:
        :class:`RayReport`; per-image failures are rows with their ``error``, never raised.
        An image's row comes back once even where Ray ran its batch twice (a batch retried
        after its actor or node died: the retry rewrites the same files, whole).

    Raises:
        ClusterError: Ray is missing, cannot start or connect, or the pipeline itself broke.
        OutputError: the run table cannot be written.
        Interrupted: Ctrl-C (SIGINT); the finished images' files and rows stay (a rerun skips
            them), ``summary`` says how many.
    """
    engine = drawing_engine(engine)
    # Workers do not share the driver's working directory: relative paths are the driver's.
    given_dir = Path(output.out_dir)
    output = dataclasses.replace(output, out_dir=given_dir.resolve())
    report = RayReport()
    note = on_note or (lambda line: None)
    paths, missing = list_images(specs, on_skip=lambda spec, why: note(f"{spec}: {why}"))
    for spec, exc in missing:
        report.failed.append((spec, str(exc)))
        on_fail(spec, str(exc))
    if not paths:
        return report
    names = StemNames()
    items = [{"index": i, "path": p, "stem": names.stem(p, engine.job.method)} for i, p in enumerate(paths)]
    model_bytes = engine.explainer.path.read_bytes()
    model_sha = content_hash(model_bytes)
    fingerprint = settings_fingerprint(model_sha, engine.job, save_maps=output.save_maps, tiles=output.tiles)
    try:
        _run(engine, items, output, given_dir, options, (model_bytes, model_sha), fingerprint, report, on_record,
             on_fail, note)
    except KeyboardInterrupt as exc:
        raise Interrupted(_interrupted(report, len(items) + len(missing), given_dir), cause=exc) from exc
    report.rows.sort(key=lambda r: r["index"])
    table = Path(output.out_dir) / TABLE_NAME
    write_table(report.rows, table)
    report.table = table
    return report


def _run(engine: FrameEngine, items: list[dict[str, Any]], output: FolderOutput, given_dir: Path,
         options: RayOptions, model_file: tuple[bytes, str], fingerprint: str, report: RayReport,
         on_record: Callable[[dict[str, Any], str], None], on_fail: Callable[[str, str], None],
         note: Callable[[str], None]) -> None:
    """The pipeline on Ray (``model_file``: the model's bytes and their hash), its rows into
    ``report`` (each image's once) and the callbacks."""
    model_bytes, model_sha = model_file
    with ray_cluster(options.address, num_cpus=options.num_cpus, verbose=options.verbose, on_note=note) as ray:
        model = ModelBytes(engine.explainer.path.name, model_sha, ray.put(model_bytes))
        ds = ray.data.from_items(items)
        ds = ds.map_batches(read_batch, batch_size=options.batch_size, batch_format="numpy",
                            fn_kwargs=dict(out_dir=str(output.out_dir), fingerprint=fingerprint,
                                           decode=options.decode, base=os.getcwd()))
        ds = ds.map_batches(ExplainActor, batch_size=options.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=options.pool_size(ray.cluster_resources())),
                            num_cpus=1, num_gpus=options.gpus_per_actor or None,
                            fn_constructor_kwargs=dict(model=model, provider=options.provider, job=engine.job,
                                                       output=output, fingerprint=fingerprint,
                                                       batch_size=options.batch_size))
        t0 = time.perf_counter()
        seen: set[int] = set()
        for out in collect(ds.iter_rows(), "pipeline", len(items)):
            row = json.loads(out["row"])
            if row["index"] in seen:  # a batch Ray ran again after a fault: its first row stands
                continue
            seen.add(row["index"])
            report.rows.append(row)
            if row["error"]:
                report.failed.append((row["source"], row["error"]))
                on_fail(row["source"], row["error"])
                continue
            if out["status"] == "skipped":
                report.skipped += 1
            else:
                report.done += 1
            record = record_from_row(row, engine.job)
            for key in OUTPUT_KEYS:  # under the folder as given, as the local path names them
                if key in record:
                    record[key] = str(given_dir / Path(record[key]).relative_to(output.out_dir))
            on_record(record, record_line(record))
        report.seconds = time.perf_counter() - t0


def _interrupted(report: RayReport, total: int, out_dir: Path) -> str:
    """The one line an interrupted Ray run ends with (as the local engine's)."""
    done = report.done + report.skipped
    text = f"{done} of {plural(total, 'input')} done in {str(out_dir)!r}"
    if report.skipped:
        text += f" ({report.skipped} from an earlier run)"
    left = total - done - len(report.failed)
    if left > 0:
        text += (f"; {left} not written (the finished images' files and rows are kept: a rerun does the rest "
                 "and skips them)")
    return text


# --------------------------------------------------------------------------- workers
@dataclass(frozen=True)
class ModelBytes:
    """An ONNX file's bytes in Ray's object store, with the file's name and content hash."""

    name: str
    sha256: str
    ref: Any

    def load(self, ray, provider: str):
        """Open the model as an :class:`~attnmap.runtime.engine.explainer.Explainer` on one CPU thread.

        The bytes are written once per node and model, whole, to
        ``<temp>/attnmap-ray-models/<hash>/<name>`` (the session may reopen its file later, for
        the logits-only graph); the actors of this run and of later runs share that copy.
        """
        from attnmap.runtime.engine.explainer import Explainer

        path = Path(tempfile.gettempdir()) / "attnmap-ray-models" / self.sha256[:16] / self.name
        if not path.is_file() or path.stat().st_size == 0:
            write_bytes(path, ray.get(self.ref))
        return Explainer(path, provider=provider, threads=1)


def read_batch(batch: dict[str, np.ndarray], *, out_dir: str, fingerprint: str, decode: str,
               base: str = "") -> dict[str, np.ndarray]:
    """Read task: each image's bytes and content hash, and whether its outputs are already complete.

    Args:
        batch: columns ``index`` (int), ``path`` and ``stem`` (str).
        out_dir: the output folder (resume check).
        fingerprint: the run's settings fingerprint; empty for no resume check.
        decode: ``"task"`` decodes here (pixels travel), ``"actor"`` leaves it to the actor
            (file bytes travel).
        base: the folder relative paths are relative to (the driver's working directory).

    Returns:
        The columns plus ``sha256``, ``data`` (file bytes, or BGR uint8 pixels with
        ``decode="task"``; empty when done or failed), ``shape`` (``"H,W,C"`` of decoded pixels),
        ``kept`` (the finished row as JSON, else empty) and ``error`` (empty when none).
    """
    out = {k: [] for k in ("sha256", "data", "shape", "kept", "error")}
    for path, stem in zip(batch["path"], batch["stem"]):
        sha = shape = kept = error = ""
        data = b""
        try:
            raw = (Path(base) / str(path)).read_bytes()
        except FileNotFoundError:
            error = f"image file {str(path)!r} does not exist"
        except OSError as exc:
            error = f"cannot read image file {str(path)!r}: {exc.strerror or exc}"
        else:
            sha = content_hash(raw)
            row = finished_row(out_dir, str(stem), sha, fingerprint) if fingerprint else None
            if row is not None:
                kept, raw = json.dumps(row), b""
            elif decode == "task":
                try:
                    img = decode_image(raw, str(path))
                    raw, shape = img.tobytes(), ",".join(map(str, img.shape))
                except AttnmapError as exc:
                    error, raw = str(exc), b""
            data = raw or b""
        for key, value in zip(out, (sha, data, shape, kept, error)):
            out[key].append(value)
    cols = {k: np.asarray(batch[k]) for k in ("index", "path", "stem")}
    cols.update({k: np.array(v, dtype=object) for k, v in out.items()})
    return cols


class ExplainActor:
    """One model session and one :class:`FrameEngine`, explaining batches of read images.

    Args:
        model: the model in the object store.
        provider: onnxruntime provider.
        job: the driver's (checked) job, with its overlay style.
        output: where and what to write.
        fingerprint: the run's settings fingerprint (kept with each finished row).
        batch_size: images per model run.
    """

    def __init__(self, model: ModelBytes, provider: str, job: Job, output: FolderOutput, fingerprint: str,
                 batch_size: int):
        import ray

        self.engine = FrameEngine(model.load(ray, provider), job, batch_size=batch_size)
        self.output, self.fingerprint = output, fingerprint

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        job = self.engine.job
        rows: dict[int, tuple[str, str]] = {}
        frames, stems, hashes = [], {}, {}
        for index, path, stem, sha, data, shape, kept, error in zip(
                batch["index"], batch["path"], batch["stem"], batch["sha256"], batch["data"], batch["shape"],
                batch["kept"], batch["error"]):
            index, path, stem = int(index), str(path), str(stem)
            if kept:
                rows[index] = (kept, "skipped")
            else:
                frames.append(frame_of(index, path, data, shape, error))
                stems[index], hashes[index] = stem, sha or None
        for item in self._explain(frames):
            write_item(self.engine, item, self.output, stems[item.index])
            row = item_row(item, job, index=item.index, sha256=hashes[item.index], stem=stems[item.index])
            if item.ok:
                try:
                    write_record(self.output.out_dir, row, self.fingerprint)
                except AttnmapError as exc:
                    row["error"] = str(exc)
            rows[item.index] = (_dumps(row), "done" if item.ok else "failed")
        order = sorted(rows)
        return {"index": np.array(order, np.int64), "row": np.array([rows[i][0] for i in order], dtype=object),
                "status": np.array([rows[i][1] for i in order], dtype=object)}

    def _explain(self, frames: list[Frame]) -> list[ItemResult]:
        """The engine's batch step on one batch, drawn (a model failure fails the batch's items, not the run)."""
        return self.engine.explain_batch(frames) if frames else []


def frame_of(index: int, path: str, data: bytes, shape: str, error: str = "") -> Frame:
    """A frame from a read task's output (see :func:`read_batch`): decoded here, rebuilt from
    shipped pixels, or, where reading or decoding failed, a frame with its ImageError."""
    now = time.perf_counter()
    if error:
        return Frame(index, None, path, now, error=ImageError(error))
    if shape:
        img = np.frombuffer(data, np.uint8).reshape(tuple(int(s) for s in shape.split(",")))
        return Frame(index, img, path, now)
    try:
        return Frame(index, decode_image(data, path), path, now)
    except AttnmapError as exc:
        return Frame(index, None, path, now, error=exc)


def _dumps(row: dict[str, Any]) -> str:
    return json.dumps(row, default=lambda v: v.item() if isinstance(v, np.generic) else str(v))
