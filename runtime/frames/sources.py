"""Frame sources: one SOURCE grammar for images, folders, globs, videos, cameras and streams.

Every command reads its input through :func:`open_source` (or :func:`iter_frames`), so a
spec means the same thing everywhere:

==========================  ==========  ======================================================
spec                        kind        notes
==========================  ==========  ======================================================
``dog.jpg``                 image       one image file
``photos/``                 directory   its image files, sorted by name (not recursive)
``"shots/*.png"``           glob        matching image files, sorted (``**`` recurses)
``clip.mp4``                video       any container OpenCV's FFmpeg backend reads
``0``, ``cam:1``            camera      a local camera by index
``rtsp://…``, ``http(s)://…`` stream    a network stream, through OpenCV's FFmpeg backend
``frames/img_%04d.png``     sequence    a numbered image sequence (OpenCV's image-sequence reader)
==========================  ==========  ======================================================

A source is a context manager; iterating it yields :class:`Frame` objects. An unreadable file
inside a directory or glob does not end the iteration: it is passed to ``on_error`` and
skipped (or raised, when no ``on_error`` is given), so ``attnmap explain`` can carry on past
one bad file and still fail at the end.
"""

from __future__ import annotations

import difflib
import glob as _glob
import os
import re
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2

from attnmap.runtime.core.errors import ImageError, SourceError
from attnmap.runtime.core.text import plural
from attnmap.runtime.image.decode import read_image
from attnmap.runtime.frames.frame import KINDS, LIVE_KINDS, Frame, Source, SourceRef
from attnmap.runtime.frames.listing import IMAGE_EXTS, VIDEO_EXTS, Listing, file_kind, list_files

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")

# How long a network stream may take to open or to deliver a frame before it counts as dead.
STREAM_TIMEOUT_MS = 5000

_CAMERA = re.compile(r"(?:cam:)?(\d+)")
_PRINTF = re.compile(r"%0?\d*d")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")

ErrorHandler = Callable[[str, SourceError], None]
SkipHandler = Callable[[str, str], None]

__all__ = ["CaptureSource", "ErrorHandler", "Frame", "IMAGE_EXTS", "ImageFilesSource", "KINDS", "LIVE_KINDS",
           "Listing", "SkipHandler", "Source", "SourceRef", "VIDEO_EXTS", "expand_sources", "file_kind",
           "iter_frames", "list_files", "open_files", "open_source", "parse_source", "plan_inputs"]


def parse_source(spec: str | os.PathLike) -> SourceRef:
    """Classify a source spec without opening it.

    Args:
        spec: a path, directory, glob, video, camera (``0``, ``cam:1``), URL or
            printf-style image-sequence pattern.

    Returns:
        The :class:`SourceRef`.

    Raises:
        SourceError: the spec names nothing that exists (close file names are suggested).
    """
    text = os.fspath(spec).strip() if not isinstance(spec, str) else spec.strip()
    if not text:
        raise SourceError("source is empty; expected an image, directory, glob, video, camera index or URL")
    cam = _CAMERA.fullmatch(text)
    if cam and not Path(text).exists():
        return SourceRef("camera", text, cam.group(1))
    scheme = _SCHEME.match(text)
    if scheme:
        if scheme.group(1).lower() in STREAM_SCHEMES:
            return SourceRef("stream", text, text)
        if scheme.group(1).lower() == "file":
            return parse_source(text[len("file://"):])
        raise SourceError(f"source {text!r}: unsupported URL scheme {scheme.group(1)!r}; "
                          f"expected one of {', '.join(STREAM_SCHEMES)}")
    path = Path(text).expanduser()
    if path.is_dir():
        return SourceRef("directory", text, str(path))
    if path.is_file():
        kind = file_kind(path)
        if kind is not None:
            return SourceRef(kind, text, str(path))
        # An unknown extension: let OpenCV's own format sniffing decide.
        kind = "image" if cv2.haveImageReader(str(path)) else "video"
        return SourceRef(kind, text, str(path))
    if _PRINTF.search(path.name):
        return SourceRef("sequence", text, str(path))
    if _glob.has_magic(text):
        return SourceRef("glob", text, str(path))
    raise SourceError(f"source {text!r} does not exist; expected an image, directory, glob, video, "
                      f"camera index (0, cam:1) or stream URL.{_sibling_hint(path)}")


def open_source(spec: "str | os.PathLike | SourceRef", *, on_error: ErrorHandler | None = None,
                errors: str = "raise") -> "Source":
    """Open a source for reading.

    Args:
        spec: a source spec (see the module docstring) or a parsed :class:`SourceRef`.
        on_error: for directories and globs, called as ``on_error(path, error)`` for each
            file that cannot be read, which is then skipped. None raises the error instead.
        errors: ``"yield"``: a file of an image, directory or glob source that cannot be read
            comes out as a :class:`Frame` with ``error`` set (and no image) in its place, and a
            lone image that cannot be read does too, instead of failing at open. ``"raise"``:
            as ``on_error`` says.

    Returns:
        An open :class:`Source`; use it as a context manager so cameras are released.

    Raises:
        SourceError: the source cannot be opened (names it and says what was expected).
    """
    if errors not in ("raise", "yield"):
        raise ValueError(f"errors must be 'raise' or 'yield'; got {errors!r}")
    ref = spec if isinstance(spec, SourceRef) else parse_source(spec)
    if ref.kind == "image":
        return ImageFilesSource(ref, [ref.target], on_error=None, errors=errors)
    if ref.kind in ("directory", "glob"):
        return ImageFilesSource(ref, _list_images(ref), on_error=on_error, errors=errors)
    return CaptureSource(ref)


def open_files(paths: Sequence[str | os.PathLike], *, on_error: ErrorHandler | None = None,
               spec: str | None = None, errors: str = "raise") -> "Source":
    """Open an explicit list of image files as one source (kind ``"files"``).

    This is how ``attnmap explain a.jpg photos/ "shots/*.png"`` reads all its images in one
    batched, prefetched stream: :func:`expand_sources` the arguments, then open the image refs
    together. Files are read lazily, so a bad one is reported (``on_error``) when reached.

    Args:
        paths: image files, in reading order.
        on_error: called as ``on_error(path, error)`` for unreadable files, which are skipped;
            None raises at the bad file.
        spec: the name the source goes by in messages (default ``"<n> files"``).
        errors: ``"yield"`` hands unreadable files out as frames with ``error`` set (see
            :func:`open_source`).

    Returns:
        An open :class:`Source`.

    Raises:
        SourceError: ``paths`` is empty.
    """
    files = [os.fspath(p) for p in paths]
    if not files:
        raise SourceError("no image files to read: got an empty list")
    name = spec or plural(len(files), "file")
    return ImageFilesSource(SourceRef("files", name, name), files, on_error=on_error, errors=errors)


def iter_frames(spec: "str | os.PathLike | SourceRef", *, on_error: ErrorHandler | None = None) -> Iterator[Frame]:
    """Yield the frames of a source, releasing it when the iteration ends or is abandoned.

    Args:
        spec: a source spec or :class:`SourceRef`.
        on_error: see :func:`open_source`.

    Yields:
        :class:`Frame` objects, BGR uint8.
    """
    with open_source(spec, on_error=on_error) as src:
        yield from src


def expand_sources(specs: Sequence[str | os.PathLike], *, videos: bool = False,
                   on_skip: SkipHandler | None = None) -> list[SourceRef]:
    """Expand the SOURCE arguments of ``attnmap explain`` into single inputs.

    Directories and globs become one ``image`` ref per image file (sorted; a still GIF is an
    image, an animated one a video), and with ``videos`` one ``video`` ref per video file
    after the images; videos, image sequences, cameras and streams given by name stay as one
    ref each. Duplicates are dropped, keeping the first occurrence, so ``explain a.jpg *.jpg``
    explains ``a.jpg`` once. Open the image refs together with :func:`open_files` to explain
    them in one batched stream.

    Args:
        specs: source specs, as typed on the command line.
        videos: take the videos a directory or glob holds too (else they are skipped).
        on_skip: called as ``on_skip(spec, note)`` once per directory or glob that holds files
            left out (neither images nor, with ``videos``, videos), the note saying how many
            and of which kinds (see :meth:`Listing.skip_note`). Hidden files are not counted.

    Returns:
        The refs in command-line order.

    Raises:
        SourceError: a spec names nothing, or a directory/glob holds nothing to explain.
    """
    out: list[SourceRef] = []
    for spec in specs:
        ref = parse_source(spec)
        if not ref.is_multi_image:
            out.append(ref)
            continue
        listing = list_files(ref)
        took = listing.images + (listing.videos if videos else [])
        if not took:
            raise SourceError(listing.empty_reason(videos))
        out.extend(SourceRef("image", p, p) for p in listing.images)
        if videos:
            out.extend(SourceRef("video", p, p) for p in listing.videos)
        note = listing.skip_note(videos)
        if note and on_skip is not None:
            on_skip(ref.spec, note)
    return _unique(out)


def _unique(refs: list[SourceRef]) -> list[SourceRef]:
    """``refs`` without repeats (the same file or target twice), keeping the first of each."""
    out: list[SourceRef] = []
    seen: set[tuple[str, str]] = set()
    for ref in refs:
        key = (ref.kind, os.path.abspath(ref.target) if ref.kind in ("image", "video") else ref.target)
        if key not in seen:
            seen.add(key)
            out.append(ref)
    return out


def plan_inputs(specs: Sequence[str | os.PathLike], *, videos: bool = False,
                on_skip: SkipHandler | None = None) -> tuple[list[SourceRef], list[tuple[str, SourceError]]]:
    """Like :func:`expand_sources`, but a spec that names nothing (or an empty folder) is a
    failure of its own instead of ending the whole list.

    Args:
        specs: source specs, as typed on the command line.
        videos: as in :func:`expand_sources`.
        on_skip: as in :func:`expand_sources`.

    Returns:
        ``(refs, failures)``: the refs of the specs that name something, in order, and
        ``(spec, error)`` for each that does not.
    """
    refs: list[SourceRef] = []
    failures: list[tuple[str, SourceError]] = []
    for spec in specs:
        try:
            refs.extend(expand_sources([spec], videos=videos, on_skip=on_skip))
        except SourceError as exc:
            failures.append((os.fspath(spec), exc))
    return _unique(refs), failures


class ImageFilesSource(Source):
    """Still images read one by one with ``cv2.imread`` (image, directory and glob sources).

    Args:
        ref: the parsed spec.
        paths: the files, in reading order.
        on_error: called as ``on_error(path, error)`` for unreadable files, which are then
            skipped; None raises :class:`ImageError` at the bad file.
        errors: ``"yield"``: unreadable files come out as frames with ``error`` set instead
            (``on_error`` is then not used), a lone image included.
    """

    def __init__(self, ref: SourceRef, paths: Sequence[str], on_error: ErrorHandler | None = None,
                 errors: str = "raise"):
        super().__init__(ref)
        self.paths = list(paths)
        self.on_error = on_error
        self.errors = errors
        self.frame_count = len(self.paths)
        self._first = None
        if ref.kind == "image" and errors == "raise":
            # A lone image is opened eagerly so that a bad file fails at open, like a bad video.
            self._first = read_image(self.paths[0])
            h, w = self._first.shape[:2]
            self.size = (w, h)

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            if self.closed:
                return
            if index == 0 and self._first is not None:
                img, self._first = self._first, None
            else:
                try:
                    img = read_image(path)
                except ImageError as exc:
                    if self.errors == "yield":
                        yield Frame(index, None, path, time.perf_counter(), error=exc)
                        continue
                    if self.on_error is None:
                        raise
                    self.on_error(path, exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - an unexpected failure on one file
                    if self.errors != "yield":
                        raise
                    yield Frame(index, None, path, time.perf_counter(), error=exc)
                    continue
            yield Frame(index, img, path, time.perf_counter())


class CaptureSource(Source):
    """Frames from ``cv2.VideoCapture``: video files, image sequences, cameras and streams.

    Video files and sequences end at their last frame. A camera that stops delivering frames
    raises :class:`SourceError` (it was unplugged or taken by another program); a stream that
    stops simply ends.
    """

    def __init__(self, ref: SourceRef):
        super().__init__(ref)
        self.cap = _open_capture(ref)
        fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.0 < fps < 1000.0 else None
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 and not ref.is_live else None
        w, h = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.size = (w, h) if w > 0 and h > 0 else None
        self._read_count = 0

    def __iter__(self) -> Iterator[Frame]:
        while not self.closed:
            ok, img = self.cap.read()
            if not ok or img is None:
                if self.ref.kind == "camera" and not self.closed:
                    raise SourceError(f"camera {self.ref.spec!r} stopped delivering frames after "
                                      f"{self._read_count} frames; is it unplugged or in use by another program?")
                return
            if img.ndim == 2:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
            elif img.shape[2] == 4:
                img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
            frame = Frame(self._read_count, img, self.ref.spec, time.perf_counter())
            self._read_count += 1
            yield frame

    def close(self) -> None:
        """Release the capture (the camera light goes off here)."""
        if not self.closed:
            self.closed = True
            self.cap.release()


# --------------------------------------------------------------------------- helpers
def _list_images(ref: SourceRef) -> list[str]:
    listing = list_files(ref)
    if not listing.images:
        raise SourceError(listing.empty_reason(videos=False))
    return listing.images


def _open_capture(ref: SourceRef) -> cv2.VideoCapture:
    if ref.kind == "camera":
        cap = cv2.VideoCapture(int(ref.target))
        if cap.isOpened():
            # Keep the driver queue short: a frame held there is a frame of latency.
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            return cap
        cap.release()
        raise SourceError(f"camera {ref.spec!r} cannot be opened (no camera with index {ref.target}, "
                          "or it is in use); list devices with `ls /dev/video*` or try another index")
    if ref.kind == "stream":
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
        cap = cv2.VideoCapture(ref.target, cv2.CAP_FFMPEG, params)
        if cap.isOpened():
            return cap
        cap.release()
        raise SourceError(f"stream {ref.spec!r} cannot be opened within {STREAM_TIMEOUT_MS / 1000:g} s "
                          "(expected a reachable rtsp/http(s) video stream)")
    if ref.kind == "sequence":
        cap = cv2.VideoCapture(ref.target, cv2.CAP_IMAGES)
        if cap.isOpened():
            return cap
        cap.release()
        raise SourceError(f"image sequence {ref.spec!r} cannot be opened (expected files such as "
                          f"{_PRINTF.sub(lambda m: '0' * max(1, int(m.group()[1:-1] or 1)), ref.target, count=1)!r})")
    # One decoder thread: the model already runs on every core, and FFmpeg's default (a
    # thread per core) only adds contention. On the 2-core box it cost 15-65% more CPU per
    # 340x256 H.264 frame (0.65-0.95 ms against 0.57) for the same decoding speed.
    cap = cv2.VideoCapture(ref.target, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    if cap.isOpened():
        return cap
    cap.release()
    raise SourceError(f"video {ref.spec!r} cannot be opened (expected a video file OpenCV's FFmpeg backend "
                      "can decode: mp4, avi, mkv, mov, webm ...)")


def _sibling_hint(path: Path) -> str:
    parent = path.parent
    try:
        names = os.listdir(parent)
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.5)
    if not close:
        return ""
    # Keep the folder in the suggestion so that it can be pasted back as it is.
    shown = [n if str(parent) == "." else str(parent / n) for n in close]
    return " Did you mean " + " or ".join(repr(n) for n in shown) + "?"
