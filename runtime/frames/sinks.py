"""Where annotated frames go: an OpenCV window, or a video file written whole.

The window is only opened after :func:`check_display` has said a GUI can work. OpenCV's Qt
backend does not fail politely without a display: it prints "could not connect to display"
and aborts the whole process, so the check must happen *before* the first ``cv2`` GUI call.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from attnmap.runtime.core.errors import DisplayError, OptionError, OutputError
from attnmap.runtime.core.files import commit as commit_file, discard, temp_path
from attnmap.runtime.frames.codecs import candidates, codec_note, open_writer, working_codecs

# What to do instead of a window, on every build and for every reason.
NO_WINDOW_HINT = ("run headless (`attnmap live SOURCE --no-show --out FILE.mp4`), or watch in a browser with "
                  "`attnmap serve`")

# Qt platform plugins that draw without any display server.
_HEADLESS_QPA = ("offscreen", "minimal", "vnc", "eglfs", "linuxfb")


@lru_cache(maxsize=1)
def gui_backend() -> str:
    """Name of the GUI backend OpenCV was built with (``"QT5"``, ``"GTK3"``, ``"WIN32UI"`` ...), or ``"NONE"``."""
    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "GUI":
            return value.strip() or "NONE"
    return "NONE"


def is_headless_build() -> bool:
    """Whether this OpenCV was built without a GUI (the ``opencv-python-headless`` wheel): its
    window calls raise instead of drawing, whatever display there is."""
    return gui_backend().upper() in ("NONE", "NO", "")


@lru_cache(maxsize=1)
def opencv_wheels() -> tuple[str, ...]:
    """The OpenCV distributions pip installed here, as ``"name version"`` (usually one)."""
    from importlib import metadata

    found = []
    for name in ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                 "opencv-contrib-python-headless"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return tuple(found)


def display_problem() -> str | None:
    """Why an OpenCV window cannot be opened here, or None when it can.

    Checks, without touching OpenCV's GUI: a GUI backend is compiled in (``-headless`` wheels
    have none), and on Linux and the BSDs that a display server is reachable
    (``$DISPLAY`` for X11, ``$WAYLAND_DISPLAY`` for Wayland) or that Qt was told to draw
    off-screen (``QT_QPA_PLATFORM=offscreen``) with that plugin present.

    Returns:
        A one-line reason, or None.
    """
    backend = gui_backend()
    if is_headless_build():
        wheels = opencv_wheels()
        # Two OpenCV wheels install the same cv2 files: the one pip installed last is what runs.
        which = (f" ({wheels[0]})" if len(wheels) == 1 else
                 f" ({' and '.join(wheels)} share cv2; the last installed wins)" if wheels else "")
        return f"this OpenCV is the headless build{which}, which has no GUI"
    if sys.platform in ("win32", "darwin"):
        return None
    qpa = os.environ.get("QT_QPA_PLATFORM", "").split(":")[0].strip().lower()
    if backend.upper().startswith("QT") and qpa:
        plugins = _qt_platform_plugins()
        if plugins is not None and qpa not in plugins:
            return (f"QT_QPA_PLATFORM={qpa!r} but OpenCV's Qt only has the platform plugins "
                    f"{', '.join(sorted(plugins)) or 'none'}")
        if qpa in _HEADLESS_QPA:
            return None
        if qpa == "wayland":
            return None if os.environ.get("WAYLAND_DISPLAY") else "QT_QPA_PLATFORM is wayland but $WAYLAND_DISPLAY is not set"
    if os.environ.get("DISPLAY"):
        return None
    if os.environ.get("WAYLAND_DISPLAY") and not backend.upper().startswith("QT"):
        return None
    if os.environ.get("WAYLAND_DISPLAY"):
        # OpenCV's Qt reaches Wayland only through XWayland ($DISPLAY) unless told otherwise.
        return "$WAYLAND_DISPLAY is set but OpenCV's Qt needs $DISPLAY (XWayland) or QT_QPA_PLATFORM=wayland"
    return "no display: neither $DISPLAY nor $WAYLAND_DISPLAY is set (a headless machine or an ssh session without -X?)"


def check_display() -> None:
    """Raise unless an OpenCV window can be opened here.

    Raises:
        DisplayError: naming the reason and suggesting headless output.
    """
    problem = display_problem()
    if problem is not None:
        raise DisplayError(f"cannot show a window: {problem}; {NO_WINDOW_HINT}")


def _qt_platform_plugins() -> set[str] | None:
    """Platform plugins bundled with OpenCV's Qt (``{"xcb"}`` ...), or None when unknown."""
    folder = Path(cv2.__file__).resolve().parent / "qt" / "plugins" / "platforms"
    if not folder.is_dir():
        return None
    names = set()
    for f in folder.iterdir():
        stem = f.name.split(".")[0]
        if stem.startswith("libq"):
            names.add(stem[4:])
    return names


class Window:
    """One OpenCV window; :meth:`show` draws a frame and returns the key pressed.

    Args:
        name: the window title.

    Raises:
        DisplayError: no display here (checked before any OpenCV GUI call).
    """

    def __init__(self, name: str = "attnmap"):
        check_display()
        self.name = name
        cv2.namedWindow(name, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
        self._open = True

    def show(self, image_bgr: np.ndarray, wait_ms: int = 1) -> int:
        """Draw ``image_bgr`` (H, W, 3) BGR uint8 and return the key pressed meanwhile, or -1."""
        cv2.imshow(self.name, image_bgr)
        return self.poll(wait_ms)

    def poll(self, wait_ms: int = 1) -> int:
        """Process window events for ``wait_ms``; return the key pressed, or -1.

        Closing the window with its close button reads as Esc (27).
        """
        key = cv2.waitKey(max(1, int(wait_ms)))
        try:
            if cv2.getWindowProperty(self.name, cv2.WND_PROP_VISIBLE) < 1:
                return 27
        except cv2.error:
            return 27
        return -1 if key < 0 else key & 0xFF

    def close(self) -> None:
        """Destroy the window (idempotent)."""
        if self._open:
            self._open = False
            try:
                cv2.destroyWindow(self.name)
                cv2.waitKey(1)
            except cv2.error:
                pass


class VideoSink:
    """A video file written through a temp file, so a reader never sees it half-written.

    Frames go to a hidden temp file in the output's folder (same extension, so the same
    container); :meth:`close` finalises the container and moves it into place
    (:mod:`attnmap.runtime.core.files`). Closing with ``commit=False`` deletes it instead.

    Unless ``fourcc`` is given, the codec is the first of the container's
    :func:`~attnmap.runtime.frames.codecs.working_codecs` (probed once per process) whose
    writer opens at this size: ``.mp4`` gets H.264 where this OpenCV can encode it, else
    mp4v (browsers do not play it: :attr:`note` says so); ``.webm`` gets VP8 (browsers play
    it); ``.avi`` Motion JPEG. ``playable=True`` takes a browser-playable codec even when it
    is slow to encode (VP9 in ``.mp4``: about 100 ms per 340 x 256 frame against mp4v's 1 ms).

    Args:
        path: output file; its extension picks the container and the codec.
        fps: frames per second (> 0).
        size: ``(width, height)`` of every frame.
        fourcc: a four-character codec code, e.g. ``"mp4v"``, to use that one only.
        playable: prefer browser-playable codecs even when slow (see above).

    Attributes:
        codec: the FourCC written (``"mp4v"``, ``"vp09"``, ``"VP80"`` ...); also ``fourcc``.
        note: a one-line note when a web container (.mp4, .webm ...) got a codec browsers do
            not play, else None.

    Raises:
        OutputError: no codec's writer opens (unknown container, codec missing, folder not
            writable); the message names the codecs tried and FFmpeg's last complaint.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int], fourcc: str | None = None,
                 *, playable: bool = False):
        self.path = Path(path)
        if not fps or fps <= 0:
            raise OutputError(f"output video {str(self.path)!r} needs fps > 0; got {fps!r}")
        self.fps = float(fps)
        self.size = (int(size[0]), int(size[1]))
        ext = self.path.suffix.lower()
        if not ext:
            raise OutputError(f"output video {str(self.path)!r} has no extension; expected e.g. .mp4, .webm or .avi")
        if fourcc is not None and (not isinstance(fourcc, str) or len(fourcc) != 4):
            raise OptionError(f"fourcc must be 4 characters such as 'mp4v'; got {fourcc!r}")
        tries = [fourcc] if fourcc is not None else [c.fourcc for c in working_codecs(ext, playable)]
        self._tmp = temp_path(self.path, suffix=f".partial{ext}")  # the extension picks the container
        self._writer, complaint = None, ""
        for code in tries:
            self._writer, said = open_writer(self._tmp, code, self.fps, self.size)
            if self._writer is not None:
                self.codec = self.fourcc = code
                break
            complaint = _last_line(said) or complaint
        if self._writer is None:
            discard(self._tmp)
            if not tries:
                probed = ", ".join(repr(c.fourcc) for c in candidates(ext, True))
                raise OutputError(f"cannot write {str(self.path)!r}: no codec of this OpenCV writes a readable {ext} "
                                  f"file (probed {probed}); try .mp4, .webm or .avi")
            why = f" (FFmpeg: {complaint})" if complaint else ""
            raise OutputError(f"cannot open a video writer for {str(self.path)!r} at {self.size[0]}x{self.size[1]}; "
                              f"tried {', '.join(repr(t) for t in tries)}{why}; try .mp4, .webm or .avi")
        self.note = None if fourcc is not None else codec_note(ext, self.codec, playable)
        self.frames = 0
        self.closed = False

    def write(self, image_bgr: np.ndarray) -> None:
        """Append one (height, width, 3) BGR uint8 frame of the sink's size."""
        h, w = image_bgr.shape[:2]
        if (w, h) != self.size or image_bgr.dtype != np.uint8 or image_bgr.ndim != 3:
            raise OutputError(f"frames for {str(self.path)!r} must be {self.size[1]}x{self.size[0]}x3 uint8; "
                               f"got shape {image_bgr.shape} {image_bgr.dtype}")
        self._writer.write(image_bgr)
        self.frames += 1

    def close(self, commit: bool = True) -> Path | None:
        """Finish the file.

        Args:
            commit: move the finished file into place (when it holds at least one frame);
                False discards it.

        Returns:
            The output path when a file was committed, else None.
        """
        if self.closed:
            return self.path if self._tmp is None else None
        self.closed = True
        self._writer.release()
        if commit and self.frames > 0:
            commit_file(self._tmp, self.path)
            self._tmp = None
            return self.path
        discard(self._tmp)
        return None

    def __enter__(self) -> "VideoSink":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        # A failed run keeps what it wrote: the frames before the failure form a valid video.
        self.close(commit=True)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


class RealTimeRecorder:
    """Writes a live view into a video that plays in real time, dropped frames and all.

    Each drawn frame goes to its time slot: its source index for a paced file (the output then
    has the input's frame count when nothing is dropped), else its capture time times the
    output fps. Slots of dropped frames repeat the previous drawn frame, as the screen did.
    The file is created at the first frame (its size) and committed by :meth:`close`.

    Args:
        path: output video.
        fps: output frame rate.
        by_index: place frames by ``Frame.index`` (paced files) instead of by timestamp.
        playable: passed to :class:`VideoSink` (browser-playable codecs even when slow; a
            live view has one frame interval to encode each frame).
    """

    def __init__(self, path: str | Path, fps: float, *, by_index: bool, playable: bool = False):
        self.path, self.fps, self.by_index, self.playable = Path(path), float(fps), by_index, playable
        self.sink: VideoSink | None = None
        self.first_slot: int | None = None
        self.t0: float | None = None
        self.next_slot = 0
        self.previous: np.ndarray | None = None

    @property
    def frames(self) -> int:
        """Frames written so far (repeats included)."""
        return 0 if self.sink is None else self.sink.frames

    @property
    def codec(self) -> str | None:
        """The FourCC being written (see :attr:`VideoSink.codec`), or None before the first frame."""
        return None if self.sink is None else self.sink.codec

    @property
    def note(self) -> str | None:
        """:attr:`VideoSink.note`, or None before the first frame."""
        return None if self.sink is None else self.sink.note

    def write(self, drawn: np.ndarray, frame) -> None:
        """Write ``drawn`` (H, W, 3) BGR uint8 for ``frame`` (a :class:`attnmap.runtime.frames.sources.Frame`)."""
        if self.sink is None:
            self.sink = VideoSink(self.path, self.fps, (drawn.shape[1], drawn.shape[0]), playable=self.playable)
            self.t0 = frame.timestamp
        slot = frame.index if self.by_index else int(round((frame.timestamp - self.t0) * self.fps))
        if self.first_slot is None:
            self.first_slot = slot
        slot -= self.first_slot
        if slot < self.next_slot:
            return  # two drawn frames in one slot: the screen would only have shown the later one
        while self.previous is not None and self.next_slot < slot:
            self.sink.write(self.previous)
            self.next_slot += 1
        self.sink.write(drawn)
        self.next_slot = slot + 1
        self.previous = drawn

    def close(self) -> Path | None:
        """Commit the video; returns its path, or None when no frame was written."""
        return None if self.sink is None else self.sink.close(commit=True)
