"""An output folder that remembers which run wrote it: ``.attnmap-run.json``.

File names carry the input, the method and the class, not the model or the method's options,
so a second run into the same folder with another model or ``layer`` would replace the first
run's files one by one, leaving a mix. The first run writes its settings (model, method,
options, class, fit) into a small manifest in the folder; a later run compares its own and is
refused when they differ unless it may overwrite. The same settings again are fine (a rerun
replaces files with the same results).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from attnmap.runtime.core.errors import RunConflictError
from attnmap.runtime.core.files import write_bytes

RUN_MANIFEST = ".attnmap-run.json"
MANIFEST_VERSION = 1
# what decides the content of a file of a given name (the style, maps and tiles do not: a rerun
# with another colour map redraws the same explanation)
COMPARED = ("model", "method", "options", "class", "top_classes", "fit")


def run_settings(engine: Any) -> dict[str, Any]:
    """The settings of a run that decide what its files hold, JSON-able.

    Args:
        engine: a :class:`~attnmap.runtime.engine.engine.FrameEngine` (its explainer's file and
            its job).
    """
    job = engine.job
    path = Path(engine.explainer.path)
    return {"model": str(path.resolve()), "method": job.method,
            "options": {k: _plain(v) for k, v in sorted(dict(job.options).items())},
            "class": None if job.target is None else int(job.target),
            "top_classes": None if job.top_classes is None else int(job.top_classes), "fit": job.fit}


def claim_folder(out_dir: str | Path, settings: Mapping[str, Any], *, overwrite: bool = False) -> Path:
    """Check that a run may write into ``out_dir``, and record its settings there.

    Args:
        out_dir: the output folder (created when missing).
        settings: :func:`run_settings` of the run.
        overwrite: replace the results of a run with other settings.

    Returns:
        The manifest's path.

    Raises:
        RunConflictError: the folder's manifest records other settings and ``overwrite`` is False.
        OutputError: the manifest cannot be written.
    """
    path = Path(out_dir) / RUN_MANIFEST
    before = _read(path)
    if before is not None and not overwrite:
        diff = [k for k in COMPARED if before.get(k) != settings.get(k)]
        if diff:
            what = ", ".join(f"{k} {_show(k, before.get(k), settings.get(k))} there, "
                             f"{_show(k, settings.get(k), before.get(k))} now" for k in diff)
            conflict = (f"output folder {str(out_dir)!r} holds the files of a run with other settings ({what}); "
                        "this run would overwrite those of the same name")
            raise RunConflictError(f"{conflict}; pass overwrite=True to replace them, or choose another folder",
                                   conflict)
    record = {"version": MANIFEST_VERSION, **{k: settings.get(k) for k in COMPARED}}
    return write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def _read(path: Path) -> dict[str, Any] | None:
    """The recorded settings, or None when there are none this version reads (then the run claims it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == MANIFEST_VERSION else None


def _plain(value: Any) -> Any:
    """An option value as JSON keeps it (NumPy scalars and other objects as their Python value or text)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def _show(key: str, value: Any, other: Any) -> str:
    if key == "model" and isinstance(value, str):
        # the file name, unless both runs' files have the same name
        same = isinstance(other, str) and Path(other).name == Path(value).name
        return repr(value if same else Path(value).name)
    if key == "options":
        return "{" + ", ".join(f"{k}={v!r}" for k, v in (value or {}).items()) + "}" if value else "none"
    return "none" if value is None else repr(value)
