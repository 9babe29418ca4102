"""Stopping a run from outside (Ctrl-C, SIGTERM) with its files in order and a word on what was kept.

Ctrl-C raises :class:`KeyboardInterrupt` in the main thread; the fronts' cleanup (``finally``
blocks: threads joined, a video's temp file removed) runs as it unwinds. SIGTERM, by default,
ends the process on the spot and leaves temp files behind; inside :func:`terminate_as_interrupt`
it raises :class:`Terminated` instead, so it unwinds the same way. A front that catches either
raises :class:`Interrupted` with one line saying what was and was not written.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception by :func:`terminate_as_interrupt`."""

    signal_name = "SIGTERM"
    exit_code = 128 + signal.SIGTERM


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM after cleaning up.

    A KeyboardInterrupt still (code that stops on Ctrl-C stops on it), with the outcome.

    Attributes:
        summary: one line, e.g. ``"2 of 5 inputs written to 'out'; not written: clip.mp4 (in
            progress: its partial file was removed) and 2 not started"``.
        exit_code: 130 for Ctrl-C (SIGINT), 143 for SIGTERM, as a shell reports a signal.
    """

    def __init__(self, summary: str, *, cause: BaseException | None = None):
        super().__init__(summary)
        self.summary = summary
        terminated = isinstance(cause, Terminated)
        self.signal_name = "SIGTERM" if terminated else "SIGINT"
        self.exit_code = Terminated.exit_code if terminated else 128 + signal.SIGINT


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (so cleanup runs).

    The previous handler comes back at the end. Outside the main thread (where Python cannot
    set signal handlers) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):  # noqa: ARG001 - signal handler signature
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
