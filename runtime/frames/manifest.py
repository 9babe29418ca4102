"""SOURCE arguments and manifests turned into the inputs of a run (local or distributed).

A manifest is a ``.csv`` (with a header row) or ``.parquet`` file with a ``path`` column, one
image per row, for collections too large to glob. Relative paths are taken relative to the
manifest's folder, so a manifest travels with its images. Other columns are ignored.

Folders, globs and single images are listed as the local path lists them
(:func:`~attnmap.runtime.frames.sources.plan_inputs`); :func:`plan_with_manifests` is that
listing with manifests expanded (the local explain and evaluate). For a distributed run
(:func:`list_images`) manifest rows are not looked at on the driver (a million ``stat`` calls
would make the driver the bottleneck): a row whose file is missing becomes that image's failed
row when a worker reads it.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

from attnmap.runtime.core.errors import SourceError
from attnmap.runtime.frames import sources

MANIFEST_EXTS = (".csv", ".parquet", ".pq")
PATH_COLUMN = "path"
INSTALL_HINT = "pip install 'attnmap[distributed]'"

__all__ = ["MANIFEST_EXTS", "PATH_COLUMN", "expand_manifests", "is_manifest", "list_images", "plan_with_manifests",
           "read_manifest"]


def is_manifest(spec: str | os.PathLike) -> bool:
    """True when ``spec`` is an existing ``.csv`` / ``.parquet`` file (a manifest, not an image)."""
    path = Path(os.fspath(spec)).expanduser()
    return path.suffix.lower() in MANIFEST_EXTS and path.is_file()


def read_manifest(path: str | os.PathLike) -> list[str]:
    """The image paths a manifest lists, in its row order.

    Args:
        path: a ``.csv`` file with a header row, or a ``.parquet`` file; either has a ``path``
            column (strings). Blank cells are skipped.

    Returns:
        The paths; relative ones joined to the manifest's folder.

    Raises:
        SourceError: the file cannot be read, is not CSV / Parquet, has no ``path`` column (the
            columns it has are named), or lists no paths; reading Parquet without pyarrow
            (names the extra to install).
    """
    path = Path(os.fspath(path)).expanduser()
    if path.suffix.lower() == ".csv":
        values, columns = _read_csv(path)
    else:
        values, columns = _read_parquet(path)
    if values is None:
        raise SourceError(f"manifest {str(path)!r} has no {PATH_COLUMN!r} column; it has "
                          f"{', '.join(map(repr, columns)) or 'no columns'} (expected a header with {PATH_COLUMN!r})")
    base = path.parent
    paths = [str(base / v) if not os.path.isabs(v) else v for v in (str(v).strip() for v in values if v is not None) if v]
    if not paths:
        raise SourceError(f"manifest {str(path)!r} lists no image paths in its {PATH_COLUMN!r} column")
    return paths


def expand_manifests(specs: Sequence[str | os.PathLike]) -> tuple[list[str], list[tuple[str, SourceError]]]:
    """SOURCE arguments with every manifest replaced by the paths it lists.

    Returns:
        ``(specs, failures)``: the specs in order (a manifest's rows in its place), and
        ``(manifest, error)`` for each manifest that cannot be read.
    """
    out: list[str] = []
    failures: list[tuple[str, SourceError]] = []
    for spec in specs:
        if not is_manifest(spec):
            out.append(os.fspath(spec))
            continue
        try:
            out.extend(read_manifest(spec))
        except SourceError as exc:
            failures.append((os.fspath(spec), exc))
    return out, failures


def plan_with_manifests(specs: Sequence[str | os.PathLike],
                        **listing: Any) -> tuple[list, list[tuple[str, SourceError]]]:
    """:func:`~attnmap.runtime.frames.sources.plan_inputs` of the SOURCE arguments with their
    manifests expanded (the local path: a manifest's rows are checked like typed paths).

    Args:
        specs: the SOURCE arguments.
        **listing: ``videos`` and ``on_skip``, passed to ``plan_inputs``.

    Returns:
        ``(refs, failures)`` as ``plan_inputs`` gives them, unreadable manifests among the failures.
    """
    expanded, bad = expand_manifests(specs)
    refs, missing = sources.plan_inputs(expanded, **listing) if expanded else ([], [])
    return refs, bad + missing


def list_images(specs: Sequence[str | os.PathLike], *,
                on_skip: sources.SkipHandler | None = None) -> tuple[list[str], list[tuple[str, SourceError]]]:
    """Every still image the SOURCE arguments name, for a distributed run.

    Args:
        specs: image files, folders, globs and manifests.
        on_skip: called as ``on_skip(spec, note)`` once per folder or glob whose listing left
            files out (its videos among them: a distributed run takes still images), the note
            saying how many and of which kinds.

    Returns:
        ``(paths, failures)``: image paths in order without repeats (the first of each kept),
        and ``(spec, error)`` for specs that name nothing, manifests that cannot be read, and
        videos, sequences, cameras and streams (a distributed run takes still images).
    """
    paths: list[str] = []
    failures: list[tuple[str, SourceError]] = []
    for spec in specs:
        if is_manifest(spec):
            try:
                rows = read_manifest(spec)
            except SourceError as exc:
                failures.append((os.fspath(spec), exc))
                continue
            for row in rows:
                if Path(row).suffix.lower() in sources.VIDEO_EXTS:
                    failures.append((row, _not_still(row, "video")))
                else:
                    paths.append(row)
            continue
        refs, missing = sources.plan_inputs([spec], on_skip=on_skip)
        failures.extend(missing)
        for ref in refs:
            if ref.kind == "image":
                paths.append(ref.target)
            else:
                failures.append((ref.spec, _not_still(ref.spec, ref.kind)))
    seen: set[str] = set()
    unique = []
    for p in paths:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique, failures


def _not_still(spec: str, kind: str) -> SourceError:
    return SourceError(f"{spec!r} is a {kind}; the Ray engine explains still images (the local engine explains videos)")


def _read_csv(path: Path) -> tuple[list[str] | None, list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            if PATH_COLUMN not in columns:
                return None, columns
            key = (reader.fieldnames or [])[columns.index(PATH_COLUMN)]
            return [row.get(key) or "" for row in reader], columns
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"cannot read manifest {str(path)!r}: {exc}; expected a UTF-8 CSV with a "
                          f"{PATH_COLUMN!r} column") from exc


def _read_parquet(path: Path) -> tuple[list[str] | None, list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise SourceError(f"reading the Parquet manifest {str(path)!r} needs pyarrow: {INSTALL_HINT}") from exc
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise SourceError(f"cannot read manifest {str(path)!r} as Parquet: {exc}") from exc
    if PATH_COLUMN not in table.column_names:
        return None, list(table.column_names)
    return table.column(PATH_COLUMN).to_pylist(), list(table.column_names)
