"""A capture thread that keeps only the newest frame, so a slow model never works on old ones.

Live video has one rule: explain what the camera sees *now*. Frames queued behind a model that
is slower than the camera only add latency, so :class:`LatestFrameGrabber` holds a single slot:
the reader thread overwrites it with every new frame (counting the frame it replaced as
dropped) and the consumer always takes the newest one.

A video file played "live" is paced at its own frame rate, so that it behaves like a camera:
without pacing the reader would decode as fast as the disk allows and drop nearly every frame.
A source with no clock at all (a folder of images, a sequence without fps) is handed over
frame by frame without dropping: the reader waits until the consumer has taken the last one.
OpenCV releases the GIL while it decodes, so the thread costs the inference loop little.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

from attnmap.runtime.core.errors import AttnmapError, SourceError
from attnmap.runtime.frames.sources import Frame, Source

# Paced playback that falls further behind than this many frame intervals restarts its clock
# rather than bursting frames out to catch up (a camera never delivers a burst either).
_MAX_LAG_FRAMES = 2.0


class LatestFrameGrabber:
    """Read a :class:`Source` in a background thread, keeping only the newest frame.

    Args:
        source: an open source; the grabber closes it when reading ends or :meth:`stop` is called.
        pace: deliver frames at the source's fps. None (default) paces sources that are not
            live and know their fps (video files played as if they were a camera).
        drop: replace an untaken frame with a newer one. None (default) drops for live and
            paced sources and hands over every frame of the others (folders of images).
        name: the thread's name.

    Attributes:
        captured: frames read from the source.
        dropped: frames replaced by a newer one before anyone took them.
        taken: frames handed out by :meth:`get`.
        error: the :class:`SourceError` that ended reading, or None.

    Example::

        with LatestFrameGrabber(open_source("cam:0")) as grab:
            while not grab.finished:
                frame = grab.get(timeout=1.0)  # None when nothing new arrived in time
                if frame is not None:
                    show(explain(frame.image_bgr))
        if grab.error is not None:
            raise grab.error
    """

    def __init__(self, source: Source, *, pace: bool | None = None, drop: bool | None = None,
                 name: str = "attnmap-capture"):
        self.source = source
        if pace is None:
            pace = not source.is_live and source.fps is not None
        self.pace = bool(pace) and source.fps is not None
        self.drop = bool(source.is_live or self.pace) if drop is None else bool(drop)
        self.captured = 0
        self.dropped = 0
        self.taken = 0
        self.error: SourceError | None = None
        self._slot: Frame | None = None
        self._finished = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # ------------------------------------------------------------------ consumer side
    def start(self) -> "LatestFrameGrabber":
        """Start the reader thread (idempotent); returns self."""
        if not self._thread.is_alive() and not self._finished and self._thread.ident is None:
            self._thread.start()
        return self

    def get(self, timeout: float | None = None) -> Frame | None:
        """Take the newest frame not taken yet, waiting for one if needed.

        Args:
            timeout: seconds to wait; None waits until a frame arrives or reading ends.

        Returns:
            The newest :class:`Frame`, or None when the wait timed out or reading has ended
            (tell the two apart with :attr:`finished`; after an error :attr:`error` is set).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._slot is not None or self._finished, timeout):
                return None
            frame, self._slot = self._slot, None
            if frame is not None:
                self.taken += 1
                # A reader that hands over every frame (no dropping) waits for the slot to be
                # free: wake it now, not at its next poll.
                self._cond.notify_all()
            return frame

    @property
    def finished(self) -> bool:
        """True once reading has ended (end of stream, error or stop) and no frame is left."""
        with self._cond:
            return self._finished and self._slot is None

    @property
    def running(self) -> bool:
        """True while the reader thread is alive."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the reader to stop, wait for it, and release the source.

        Args:
            timeout: seconds to wait for the thread; a camera blocked in a read may need
                up to one frame interval to notice.

        Returns:
            True when the thread has ended (the source is then closed).
        """
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._thread.is_alive():
            # Closing a capture while another thread is inside read() is unsafe in OpenCV;
            # the thread closes it itself when the read returns.
            return False
        self.source.close()
        with self._cond:
            self._finished = True
            self._cond.notify_all()
        return True

    def __enter__(self) -> "LatestFrameGrabber":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ reader thread
    def _run(self) -> None:
        frames: Iterator[Frame] | None = None
        interval = 1.0 / self.source.fps if self.pace else 0.0
        due = None
        try:
            frames = iter(self.source)
            for frame in frames:
                if self._stop.is_set():
                    break
                if self.pace:
                    now = time.perf_counter()
                    due = now if due is None or now - due > _MAX_LAG_FRAMES * interval else due
                    # Event.wait, not sleep: a stop request must not wait out the interval.
                    if due > now and self._stop.wait(due - now):
                        break
                    frame.timestamp = time.perf_counter()
                    due += interval
                self._publish(frame)
        except AttnmapError as exc:
            self.error = exc if isinstance(exc, SourceError) else SourceError(str(exc))
        except Exception as exc:  # noqa: BLE001 - any reader failure must end the stream, not hang it
            self.error = SourceError(f"source {self.source.spec!r} failed after {self.captured} frames: "
                                     f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()
            self.source.close()
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _publish(self, frame: Frame) -> None:
        with self._cond:
            if not self.drop:
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait(0.05)
            if self._slot is not None:
                self.dropped += 1
            self._slot = frame
            self.captured += 1
            self._cond.notify_all()
