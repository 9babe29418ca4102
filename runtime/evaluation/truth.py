"""Ground truth for ``attnmap evaluate``: classes to explain, and object masks or boxes.

* ``--labels FILE``: a CSV of ``source,class`` rows; the class is an index or a label name of
  the model. The explained class of an image is then its label (the target-class setting)
  instead of its unperturbed top-1.
* ``--masks DIR``: binary masks named like the images (same stem, any image format), at the
  image's size; a non-zero pixel is object.
* ``--boxes FILE``: a CSV of ``source,x0,y0,x1,y1`` rows in image pixels, half-open
  (``x0 <= x < x1``); several rows for one image are united into one mask.
* ``--synthetic N``: N images of the project's shapes dataset with their exact masks.

A source is matched by its path as given, its resolved path, or its file name, in that order;
a header row (a first row whose class or coordinate fields are not numbers or known labels) is
skipped. A problem in a row names the file and line.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from attnmap.runtime.core.errors import InputError
from attnmap.runtime.engine.explainer import resolve_class
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.frames.synth import make_batch
from attnmap.runtime.image.decode import read_image

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".pgm")


def _keys(source: str) -> list[str]:
    """The names a source may be listed under: as given, resolved, file name."""
    keys = [source]
    try:
        keys.append(str(Path(source).resolve()))
    except OSError:
        pass
    keys.append(os.path.basename(source))
    return keys


def _rows(path: str | os.PathLike, fields: int, what: str) -> Iterator[tuple[int, list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for line, row in enumerate(csv.reader(fh), 1):
                row = [c.strip() for c in row]
                if not row or not any(row) or row[0].startswith("#"):
                    continue
                if len(row) != fields:
                    raise InputError(f"{path}:{line}: expected {what} ({fields} fields); got {len(row)} fields")
                yield line, row
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 CSV file ({exc.reason})") from exc


@dataclass
class GroundTruth:
    """Classes and object masks, looked up by an image's source.

    Attributes:
        labels: source key -> class index (from ``--labels``).
        boxes: source key -> list of half-open ``(x0, y0, x1, y1)`` boxes (from ``--boxes``).
        mask_dir: folder of masks named like the images (``--masks``).
        masks: source -> (H, W) bool mask given directly (``--synthetic``).
    """

    labels: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    mask_dir: Path | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def localises(self) -> bool:
        """Whether any object masks or boxes are known."""
        return bool(self.boxes or self.masks) or self.mask_dir is not None

    def label_of(self, source: str) -> int | None:
        """The listed class of ``source``, or None when no labels were given.

        Raises:
            InputError: labels were given but ``source`` is not among them.
        """
        if not self.labels:
            return None
        for key in _keys(source):
            if key in self.labels:
                return self.labels[key]
        raise InputError(f"{source}: no label for this image in the labels file")

    def mask_of(self, source: str, size: tuple[int, int]) -> np.ndarray | None:
        """The (H, W) bool object mask of ``source`` (None when no masks or boxes were given).

        Raises:
            InputError: no mask or box for this image, a mask of another size, or an empty one.
        """
        if not self.localises:
            return None
        mask = self.masks.get(source)
        if mask is None and self.boxes:
            mask = self._box_mask(source, size)
        if mask is None and self.mask_dir is not None:
            mask = self._read_mask(source)
        if mask is None:
            raise InputError(f"{source}: no mask or box for this image")
        if mask.shape != tuple(size):
            raise InputError(f"{source}: its mask is {mask.shape[1]}x{mask.shape[0]}, the image "
                             f"{size[1]}x{size[0]}; a mask must have the image's size")
        if not mask.any():
            raise InputError(f"{source}: its mask is empty; a localisation metric needs an object")
        return mask

    def _box_mask(self, source: str, size: tuple[int, int]) -> np.ndarray | None:
        boxes = next((self.boxes[k] for k in _keys(source) if k in self.boxes), None)
        if boxes is None:
            return None
        h, w = size
        mask = np.zeros((h, w), bool)
        for x0, y0, x1, y1 in boxes:
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                raise InputError(f"{source}: box {(x0, y0, x1, y1)} does not fit the {w}x{h} image; expected "
                                 f"0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}")
            mask[y0:y1, x0:x1] = True
        return mask

    def _read_mask(self, source: str) -> np.ndarray | None:
        stem = Path(source).stem
        for suffix in MASK_SUFFIXES:
            path = self.mask_dir / (stem + suffix)
            if path.is_file():
                image = read_image(path)
                return (image.max(axis=2) if image.ndim == 3 else image) > 0
        return None


def read_labels(path: str | os.PathLike, meta) -> dict[str, int]:
    """``source,class`` rows -> source key -> class index (see the module docstring).

    Raises:
        InputError: an unreadable file, a malformed row, an unknown class, or no rows.
    """
    out: dict[str, int] = {}
    for line, (source, cls) in _rows(path, 2, "source,class"):
        try:
            out[source] = resolve_class(meta, int(cls) if cls.lstrip("-").isdigit() else cls)
        except Exception as exc:  # noqa: BLE001 - a header row, or a bad class
            if not out and line == 1:
                continue
            raise InputError(f"{path}:{line}: {exc}") from exc
    if not out:
        raise InputError(f"{path}: no source,class rows")
    return out


def read_boxes(path: str | os.PathLike) -> dict[str, list[tuple[int, int, int, int]]]:
    """``source,x0,y0,x1,y1`` rows -> source key -> boxes (see the module docstring).

    Raises:
        InputError: an unreadable file, a malformed row, or no rows.
    """
    out: dict[str, list[tuple[int, int, int, int]]] = {}
    for line, row in _rows(path, 5, "source,x0,y0,x1,y1"):
        try:
            box = tuple(int(float(v)) for v in row[1:])
        except ValueError as exc:
            if not out and line == 1:
                continue
            raise InputError(f"{path}:{line}: box coordinates must be numbers; got {row[1:]}") from exc
        out.setdefault(row[0], []).append(box)  # type: ignore[arg-type]
    if not out:
        raise InputError(f"{path}: no source,x0,y0,x1,y1 rows")
    return out


def mask_folder(path: str | os.PathLike) -> Path:
    """The ``--masks`` folder, checked to exist."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{path}: expected a folder of masks named like the images")
    return folder


def synthetic_frames(n: int, size: int, seed: int = 0) -> tuple[list[Frame], dict[str, np.ndarray]]:
    """``n`` images of the shapes dataset (:mod:`attnmap.runtime.frames.synth`) and their masks.

    Returns:
        The frames (sources ``synthetic/0000`` ...) and source -> (size, size) bool mask.
    """
    if n < 1:
        raise InputError(f"synthetic must be >= 1 images; got {n}")
    images, _, masks, _ = make_batch(seed, n, size=max(32, int(size)))
    now = time.perf_counter()
    frames = [Frame(i, images[i], f"synthetic/{i:04d}", now) for i in range(n)]
    return frames, {f.source: masks[i] for i, f in enumerate(frames)}


__all__ = ["GroundTruth", "MASK_SUFFIXES", "mask_folder", "read_boxes", "read_labels", "synthetic_frames"]
