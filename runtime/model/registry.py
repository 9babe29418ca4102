"""Where models come from: a path, the name of a shipped model, or the shipped default.

The project ships its models in ``models/`` beside this package, listed in
``models/registry.json`` as ``{"models": [{"name": ..., "file": ..., "default": true, ...}]}``.
``ATTNMAP_MODEL`` (a path or a shipped name) overrides the default.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from attnmap.runtime.core.errors import ModelError, suggest, suggest_path

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
REGISTRY = MODELS_DIR / "registry.json"
ENV_VAR = "ATTNMAP_MODEL"


def shipped_models() -> list[dict[str, Any]]:
    """The entries of ``models/registry.json`` (an empty list when there is none)."""
    if not REGISTRY.is_file():
        return []
    try:
        data = json.loads(REGISTRY.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{REGISTRY}: cannot read the model registry ({exc})") from exc
    entries = data.get("models", []) if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "name" in e and "file" in e
                                                for e in entries):
        raise ModelError(f"{REGISTRY}: expected {{'models': [{{'name': ..., 'file': ...}}, ...]}}")
    return entries


def resolve_model(spec: str | Path | None = None) -> Path:
    """Turn a model spec into the path of an ``.onnx`` file.

    Args:
        spec: a path to an ``.onnx`` file, the name of a shipped model, or None for
            ``$ATTNMAP_MODEL`` or else the shipped default.

    Raises:
        ModelError: the spec names neither an existing file nor a shipped model.
    """
    if spec is None or str(spec) == "":
        spec = os.environ.get(ENV_VAR) or None
    entries = shipped_models()
    if spec is None:
        defaults = [e for e in entries if e.get("default")] or entries[:1]
        if not defaults:
            raise ModelError(f"no model given and no shipped default in {REGISTRY}; give a model file (.onnx)")
        path = MODELS_DIR / defaults[0]["file"]
        if not path.is_file():
            raise ModelError(f"the shipped default model {str(path)!r} is missing; reinstall attnmap "
                             "or give a model file (.onnx)")
        return path
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    by_name = {e["name"]: e for e in entries}
    if path.suffix.lower() == ".onnx" or len(path.parts) > 1:
        raise ModelError(f"model file {str(spec)!r} does not exist; pass an .onnx file written by "
                         f"`attnmap export`, or a shipped model name (see `attnmap models`).{suggest_path(path)}"
                         .rstrip("."))
    if str(spec) in by_name:
        return MODELS_DIR / by_name[str(spec)]["file"]
    hint = suggest(str(spec), by_name) if by_name else ""
    raise ModelError(f"model {str(spec)!r} is neither an existing .onnx file nor a shipped model "
                     f"(shipped: {', '.join(by_name) or 'none'}).{hint}".rstrip("."))


def default_choice(spec: str | Path | None = None) -> str | None:
    """Which model an unnamed spec stands for, in words, or None when ``spec`` names one.

    A run without a model gives results of whatever the default is (the shipped demo model
    knows ten shapes, not dogs), so a caller says which one it took.

    Args:
        spec: the model spec as given (None or ``""`` when the user named none).

    Returns:
        ``"shapes-vit (the shipped default)"``, ``"'my.onnx' (from $ATTNMAP_MODEL)"``, or None.
    """
    if spec is not None and str(spec) != "":
        return None
    env = os.environ.get(ENV_VAR)
    if env:
        return f"{env!r} (from ${ENV_VAR})"
    entries = shipped_models()
    defaults = [e for e in entries if e.get("default")] or entries[:1]
    return f"{defaults[0]['name']} (the shipped default)" if defaults else None
