"""Which codec a video file is written with: by container, the most browser-playable one that
works in this OpenCV build, found by a probe run once per container and process.

What the opencv-python 5.0.0 wheel's FFmpeg encodes (Linux x86-64; each probed by writing the
340 x 256 mmaction2 clips and reading them back; encode time per frame, single-threaded, best of
three on a busy 2-core box):

=========  ======  =============================  ==========  ==================================
container  FourCC  codec                          ms / frame  web browsers
=========  ======  =============================  ==========  ==================================
.mp4       mp4v    MPEG-4 Part 2 (FFmpeg mpeg4)   0.9         none
.avi       MJPG    Motion JPEG                    1.1 - 1.8   none
.webm      VP80    VP8 (libvpx)                   16 - 26     Chrome, Edge, Firefox, Safari 14.1+
.mp4       vp09    VP9 (libvpx-vp9)               76 - 133    Chrome, Edge, Firefox
.webm      VP90    VP9 (libvpx-vp9)               108 - 118   Chrome, Edge, Firefox, Safari 14.1+
=========  ======  =============================  ==========  ==================================

No H.264 (``avc1``: only the V4L2 hardware encoder is built in, absent on a PC), HEVC or AV1
encoder is there. OpenCV passes no options to the encoder (``$OPENCV_FFMPEG_WRITER_OPTIONS``
only picks hardware), so libvpx cannot be told to encode in real time: VP9 costs about 100
times mp4v per frame, more than a DeiT-Tiny explanation (about 50 ms). Hence
:func:`candidates` puts such slow codecs last unless ``playable=True`` is asked for, and a
``.webm`` output (VP8) is the cheaper way to a video any browser plays. Where a build has an
H.264 encoder (system OpenCV, other wheels, a Raspberry Pi's V4L2 encoder), ``.mp4`` gets it.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from attnmap.runtime.core.logs import captured_stderr


@dataclass(frozen=True)
class Codec:
    """A video codec as OpenCV's ``VideoWriter`` knows it.

    Attributes:
        fourcc: the four-character code passed to ``cv2.VideoWriter_fourcc`` (``"vp09"``).
        name: a readable name (``"VP9"``).
        playable: web browsers play it in the containers it is listed for.
        slow: it costs tens of times mp4v's time per frame (libvpx's VP9 through OpenCV).
    """

    fourcc: str
    name: str
    playable: bool
    slow: bool = False


CODECS: dict[str, Codec] = {c.fourcc: c for c in (
    Codec("avc1", "H.264", playable=True),
    Codec("vp09", "VP9", playable=True, slow=True),   # the tag MP4 wants for VP9
    Codec("VP80", "VP8", playable=True),
    Codec("VP90", "VP9", playable=True, slow=True),
    Codec("mp4v", "MPEG-4 Part 2", playable=False),
    Codec("MJPG", "Motion JPEG", playable=False),
)}

# Container -> codecs, most browser-playable first (then cheaper first).
PREFERENCE: dict[str, tuple[str, ...]] = {
    ".mp4": ("avc1", "vp09", "mp4v"),
    ".m4v": ("avc1", "vp09", "mp4v"),
    ".mov": ("avc1", "mp4v"),
    ".webm": ("VP80", "VP90"),
    ".mkv": ("avc1", "mp4v"),  # not a web container: the cheap codec
    ".avi": ("MJPG", "mp4v"),
}
DEFAULT_PREFERENCE = ("mp4v", "MJPG")
WEB_CONTAINERS = (".mp4", ".m4v", ".mov", ".webm")

_PROBE_SIZE = (64, 48)
_PROBE_FRAMES = 3
_LOCK = threading.RLock()  # one probe or writer open at a time: they redirect descriptor 2


def candidates(ext: str, playable: bool = False) -> tuple[Codec, ...]:
    """The codecs to try for a container, in order, before probing.

    Args:
        ext: the container's extension, with its dot, any case (``".mp4"``).
        playable: put browser-playable codecs first even when slow (VP9 in ``.mp4``);
            False puts slow codecs last.

    Returns:
        The :class:`Codec` entries of :data:`PREFERENCE` (or :data:`DEFAULT_PREFERENCE`).
    """
    order = [CODECS[f] for f in PREFERENCE.get(ext.lower(), DEFAULT_PREFERENCE)]
    if not playable:
        order.sort(key=lambda c: c.slow)  # stable: otherwise the order stays
    return tuple(order)


def working_codecs(ext: str, playable: bool = False) -> tuple[Codec, ...]:
    """The :func:`candidates` that write a file this OpenCV reads back whole, in order.

    Each candidate of a container is probed once per process (cached): three 64 x 48 frames
    written to a temp folder and read back. What FFmpeg prints meanwhile (a missing H.264
    encoder's errors) is held back (see :func:`attnmap.runtime.core.logs.captured_stderr`).

    Args:
        ext: the container's extension, with its dot (``".mp4"``).
        playable: as in :func:`candidates`.

    Returns:
        The working codecs; empty when none works. All candidates, unverified, when no temp
        folder can be made for the probe.
    """
    works = _probe(ext.lower())
    return tuple(c for c in candidates(ext, playable) if works is None or c.fourcc in works)


@functools.lru_cache(maxsize=None)
def _probe(ext: str) -> frozenset[str] | None:
    """FourCCs of ``ext``'s candidates that round-trip here; None when the probe cannot run."""
    try:
        folder = Path(tempfile.mkdtemp(prefix="attnmap-codec-"))
    except OSError:
        return None
    try:
        return frozenset(c.fourcc for c in candidates(ext, True) if _round_trips(c, folder / f"probe_{c.fourcc}{ext}"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _round_trips(codec: Codec, path: Path) -> bool:
    w, h = _PROBE_SIZE
    frames = [np.full((h, w, 3), 40 + 60 * i, np.uint8) for i in range(_PROBE_FRAMES)]
    with _LOCK, captured_stderr():
        writer, _ = open_writer(path, codec.fourcc, 10.0, _PROBE_SIZE)
        if writer is None:
            return False
        for f in frames:
            writer.write(f)
        writer.release()
        cap = cv2.VideoCapture(str(path))
        try:
            got = []
            while cap.isOpened():
                ok, img = cap.read()
                if not ok:
                    break
                got.append(img)
        finally:
            cap.release()
    if len(got) != _PROBE_FRAMES or any(g.shape != (h, w, 3) for g in got):
        return False
    # the grey levels must survive (a codec that writes garbage frames fails here)
    return all(abs(float(g.mean()) - float(f.mean())) < 12 for g, f in zip(got, frames))


def open_writer(path: str | Path, fourcc: str, fps: float,
                size: tuple[int, int]) -> tuple[cv2.VideoWriter | None, str]:
    """Open a ``cv2.VideoWriter``, holding back what OpenCV and FFmpeg print meanwhile.

    Args:
        path: the file; its extension picks the container.
        fourcc: four characters (``"vp09"``).
        fps: frames per second.
        size: ``(width, height)``.

    Returns:
        ``(writer, printed)``: the open writer, or None when it did not open (released
        then); and the text OpenCV and FFmpeg wrote to stderr meanwhile (the reason, when the
        writer did not open).
    """
    raised = ""
    with _LOCK, captured_stderr() as said:
        try:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), tuple(size))
        except cv2.error as exc:
            writer, raised = None, str(exc).strip()
        if writer is not None and not writer.isOpened():
            writer.release()
            writer = None
    return writer, "\n".join(t for t in (said.text.strip(), raised) if t)


def codec_note(ext: str, codec: Codec | str, playable: bool = False) -> str | None:
    """A one-line note when a web container got a codec browsers do not play, else None.

    Args:
        ext: the container's extension (``".mp4"``).
        codec: the codec used (a :class:`Codec` or its FourCC).
        playable: whether browser-playable codecs were asked for first.

    Returns:
        E.g. ``"MPEG-4 Part 2 (mp4v) in .mp4 does not play in web browsers (no H.264 encoder in
        this OpenCV); .webm (VP8) does"``, or None. (Where the build has one, VP9 in ``.mp4``
        plays in browsers too, at tens of times the encode cost: ``VideoSink(playable=True)``.)
    """
    c = CODECS.get(codec) if isinstance(codec, str) else codec
    ext = ext.lower()
    if c is None or c.playable or ext not in WEB_CONTAINERS:
        return None
    return (f"{c.name} ({c.fourcc}) in {ext} does not play in web browsers (no H.264 encoder in this OpenCV); "
            ".webm (VP8) does")
