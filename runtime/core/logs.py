"""OpenCV's and FFmpeg's own messages on stderr: quieted by the entry point, kept with --debug.

OpenCV prints through two channels that attnmap's typed errors make redundant:

- its logger (``[ WARN:0@0.018] global cap_v4l.cpp:914 open VIDEOIO(V4L2:/dev/video7): can't
  open camera by index``, ``[ERROR:0@0.023] ... Camera index out of range``), set at run time
  with ``cv2.utils.logging.setLogLevel``;
- FFmpeg's ``av_log`` (``[image2 @ 0x55...] Could find no file or sequence with path ...``,
  ``[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55...] moov atom not found``), whose level OpenCV reads from
  ``$OPENCV_FFMPEG_LOGLEVEL`` once, when its FFmpeg backend first opens a file, camera or
  writer in the process.

Neither is changed at import: :func:`quiet_opencv` is called once by the entry point (the
CLI), before any capture or writer is opened.

A third kind, lines such as ``OpenCV: FFMPEG: tag 0x30385056/'VP80' is not supported with
codec id 139 and format 'webm / WebM'``, is a plain ``fprintf(stderr)`` in OpenCV that no
level reaches; :func:`captured_stderr` holds such output back around one native call.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator

# FFmpeg's AV_LOG_QUIET: OpenCV passes this value to av_log_set_level and installs its own
# callback, which then prints nothing.
_FFMPEG_QUIET = "-8"

_state = {"debug": False, "set_ffmpeg_env": False}


def quiet_opencv(debug: bool = False) -> None:
    """Silence OpenCV's logger and FFmpeg's messages, or (``debug=True``) leave them on.

    Call once from the entry point, before the first ``cv2.VideoCapture`` or ``VideoWriter``:
    FFmpeg's level is read when OpenCV's FFmpeg backend starts, so later calls only change
    OpenCV's own logger. A level the user chose in ``$OPENCV_LOG_LEVEL`` or
    ``$OPENCV_FFMPEG_LOGLEVEL`` is kept (NOTE with the latter set, OpenCV's FFmpeg log
    callback prints to *stdout*, e.g. ``[OPENCV:FFMPEG:16] moov atom not found``; debug mode
    therefore leaves it unset, and FFmpeg's default errors-only level writes to stderr).

    Args:
        debug: True keeps OpenCV's default (warnings and errors) and FFmpeg's default (errors);
            False silences both, since attnmap raises its own error for every failure they
            would describe (a missing camera, an empty image sequence, a truncated video).

    Side effects:
        Sets OpenCV's process-wide log level and, when ``debug`` is False, the environment
        variable ``OPENCV_FFMPEG_LOGLEVEL`` (unless already set).
    """
    import cv2

    _state["debug"] = bool(debug)
    if debug:
        if _state["set_ffmpeg_env"]:
            os.environ.pop("OPENCV_FFMPEG_LOGLEVEL", None)
            _state["set_ffmpeg_env"] = False
        if "OPENCV_LOG_LEVEL" not in os.environ:
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_WARNING)
        return
    if "OPENCV_FFMPEG_LOGLEVEL" not in os.environ:
        os.environ["OPENCV_FFMPEG_LOGLEVEL"] = _FFMPEG_QUIET
        _state["set_ffmpeg_env"] = True
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def opencv_debug() -> bool:
    """Whether :func:`quiet_opencv` was last called with ``debug=True``: then what
    :func:`captured_stderr` held back is written to stderr too (otherwise it is only kept for
    error messages; OpenCV's logger is untouched until :func:`quiet_opencv` is called)."""
    return _state["debug"]


class CapturedText:
    """What :func:`captured_stderr` held back; :attr:`text` is filled when the block ends."""

    def __init__(self) -> None:
        self.text = ""


@contextlib.contextmanager
def captured_stderr() -> Iterator[CapturedText]:
    """Hold back what native code writes to file descriptor 2 during the block.

    For one short native call (opening a video writer) whose ``fprintf(stderr)`` no log level
    controls. The text is kept in the yielded :class:`CapturedText` (to put in an error
    message) and, when :func:`opencv_debug` is True, written to stderr afterwards.

    NOTE: descriptor 2 is process-wide, so another thread's stderr output during the block is
    held back too (and replayed only in debug mode); keep the block to one call.

    Yields:
        A :class:`CapturedText` whose ``text`` is set on exit.
    """
    captured = CapturedText()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2 (a pythonw process): nothing to hold back
        yield captured
        return
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            captured.text = buf.read().decode("utf-8", "replace")
    if captured.text and opencv_debug():
        sys.stderr.write(captured.text)
        sys.stderr.flush()
