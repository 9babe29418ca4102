"""The types every frame source shares: :class:`Frame`, :class:`SourceRef` and :class:`Source`.

:mod:`attnmap.runtime.frames.sources` parses specs and opens the concrete sources; anything else that yields
frames (a test's synthetic camera, an application's own feed) subclasses :class:`Source` and
works with the live loop, the video pipeline and the benchmark alike.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterator

import numpy as np

KINDS = ("image", "directory", "glob", "files", "video", "camera", "stream", "sequence")
LIVE_KINDS = frozenset({"camera", "stream"})


@dataclass
class Frame:
    """One decoded frame.

    Attributes:
        index: position in the source, from 0 (for files in a folder: the file's position
            among those read, bad files included, so indices stay stable).
        image_bgr: (H, W, 3) BGR uint8 pixels.
        source: where the frame came from: the file path, or the source spec.
        timestamp: ``time.perf_counter()`` when the frame was decoded (or captured); the clock
            that capture-to-display latencies are measured on.
        error: why the frame could not be read (its ``image_bgr`` is then None); only sources
            opened with ``errors="yield"`` hand out such frames, so that a bad file keeps its
            place in the stream and is reported there.
    """

    index: int
    image_bgr: np.ndarray | None
    source: str
    timestamp: float
    error: BaseException | None = None


@dataclass(frozen=True)
class SourceRef:
    """A parsed source spec: what kind of input it is and where.

    Attributes:
        kind: one of :data:`KINDS`.
        spec: the spec as given (a path, pattern, URL or camera spec).
        target: what is opened: the path, glob pattern, URL, or the camera index as text.
    """

    kind: str
    spec: str
    target: str

    @property
    def is_live(self) -> bool:
        """True for cameras and network streams (frames arrive in real time, no end known)."""
        return self.kind in LIVE_KINDS

    @property
    def is_multi_image(self) -> bool:
        """True for sources that list several still images (directory, glob, files)."""
        return self.kind in ("directory", "glob", "files")


class Source(abc.ABC):
    """An open frame source. Iterate it for :class:`Frame` objects; close it when done.

    Subclasses implement ``__iter__`` (yield frames until the end, stop early once
    :attr:`closed`) and, when they hold a device or file, extend :meth:`close`.

    Attributes:
        ref: the parsed spec.
        fps: frames per second, None when unknown (cameras may not say; image files have none).
        frame_count: number of frames, None when unknown (cameras, streams).
        size: ``(width, height)`` of the frames in pixels, as ``cv2.VideoWriter`` wants it,
            or None when frames may differ in size (folders of images).
    """

    fps: float | None = None
    frame_count: int | None = None
    size: tuple[int, int] | None = None

    def __init__(self, ref: SourceRef):
        self.ref = ref
        self.closed = False

    @property
    def kind(self) -> str:
        """One of :data:`KINDS` (subclasses outside this module may add their own)."""
        return self.ref.kind

    @property
    def spec(self) -> str:
        """The spec this source was opened from."""
        return self.ref.spec

    @property
    def is_live(self) -> bool:
        """True when frames arrive in real time and cannot be waited for (camera, stream)."""
        return self.ref.is_live

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Frame]:
        """Yield the source's frames in order."""

    def close(self) -> None:
        """Release the underlying file or device; safe to call twice."""
        self.closed = True

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, spec={self.spec!r})"
