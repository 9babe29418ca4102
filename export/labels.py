"""Class names for an exported model: from a file, a list, or timm's ImageNet tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from attnmap.runtime.core.errors import ExportError

__all__ = ["read_labels", "default_labels", "resolve_labels"]

LABEL_SUFFIXES = (".txt", ".json")


def _from_json(data: object, path: Path) -> list[str]:
    """Names from a Keras-style ``{"0": [wnid, name]}`` index, ``{"0": name}`` or a list."""
    if isinstance(data, list):
        items = list(enumerate(data))
    elif isinstance(data, dict):
        try:
            items = sorted((int(k), v) for k, v in data.items())
        except ValueError as exc:
            raise ExportError(f"labels file {path}: keys must be class indices ('0', '1', ...); "
                              f"got {sorted(data)[:3]}") from exc
        expected = list(range(len(items)))
        if [i for i, _ in items] != expected:
            raise ExportError(f"labels file {path}: class indices must run 0..{len(items) - 1} without gaps")
    else:
        raise ExportError(f"labels file {path}: expected a JSON object or list; got {type(data).__name__}")
    names = []
    for index, value in items:
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            # Keras' imagenet_class_index.json stores [wnid, name]; the name is the last entry.
            names.append(value[-1])
        else:
            raise ExportError(f"labels file {path}: entry {index} must be a name or [wnid, name]; got {value!r}")
    return names


def read_labels(path: str | Path) -> tuple[str, ...]:
    """Read class names from a file.

    Args:
        path: a ``.txt`` file with one name per line (trailing blank lines ignored), or a
            ``.json`` file: Keras-style ``{"0": [wnid, name], ...}``, ``{"0": name}`` or a list.

    Returns:
        The names in class-index order.

    Raises:
        ExportError: the file is missing, has another extension, or is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"labels file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in LABEL_SUFFIXES:
        raise ExportError(f"labels file {path} must be one of {LABEL_SUFFIXES}; got {suffix or 'no extension'!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"labels file {path} cannot be read as UTF-8 text ({exc})") from exc
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ExportError(f"labels file {path} is not valid JSON ({exc})") from exc
        names = _from_json(data, path)
    else:
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()
        blank = [i for i, n in enumerate(names) if not n]
        if blank:
            raise ExportError(f"labels file {path}: line {blank[0] + 1} is blank; expected one name per line")
    return tuple(str(n).strip() for n in names)


def default_labels(num_classes: int) -> tuple[str, ...]:
    """ImageNet class names for a head of a known ImageNet size, else ``()``.

    Uses timm's bundled ImageNet tables (1k, and the 21k/22k/11k variants timm recognises by
    class count) and keeps the first lemma of each WordNet description (``"Samoyed, Samoyede"``
    becomes ``"Samoyed"``), the common short form of these names.

    Args:
        num_classes: size of the classifier head.

    Returns:
        One name per class, or an empty tuple when the count is not an ImageNet one.
    """
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": int(num_classes)})
    if subset is None:
        return ()
    descriptions = ImageNetInfo(subset).label_descriptions()
    return tuple(d.split(",")[0].strip() for d in descriptions)


def resolve_labels(labels: str | Path | Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    """Class names for a head of ``num_classes``: given ones, else :func:`default_labels`.

    Args:
        labels: a labels file (see :func:`read_labels`), a sequence of names, or None.
        num_classes: size of the classifier head.

    Returns:
        ``num_classes`` names, or ``()`` when none are given and no default applies.

    Raises:
        ExportError: the names do not number ``num_classes``, or a file cannot be read.
    """
    if labels is None:
        return default_labels(num_classes)
    if isinstance(labels, (str, Path)):
        names, source = read_labels(labels), f"labels file {labels}"
    else:
        names, source = tuple(str(n) for n in labels), "labels"
    if len(names) != num_classes:
        raise ExportError(f"{source} has {len(names)} names but the model has {num_classes} classes")
    return names
