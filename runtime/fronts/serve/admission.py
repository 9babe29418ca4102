"""The bounded queue in front of the API's workers, and the watch for clients that leave.

``POST /v1/explain`` is refused at once when the queue is full, reads its body within a bound on
the bytes all bodies hold (:meth:`WorkQueue.hold`), then takes a place (:meth:`WorkQueue.enter`):
at most ``workers`` requests run and ``size`` more wait, each holding its upload's bytes (the
image is decoded only once it runs). A request past that gets a 429 with ``Retry-After`` (the
recent mean run time times the requests ahead, per worker), so a burst of uploads costs the
server a bounded amount of memory and the stream loop its CPU share, and a small request never
waits behind an unbounded line.

A request waits for a worker with :meth:`WorkQueue.run`, which also watches its connection: a
client that leaves while its request waits is dropped before the work starts, and one that
leaves while it runs sets the request's :class:`threading.Event`, which perturbation methods
read between model runs (:func:`cancellable`).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import math
import threading
from typing import Any, Awaitable, Callable

from attnmap.runtime.core.errors import AttnmapError


class ClientGone(Exception):
    """The client of a request left before its answer was ready (nobody receives one)."""


class WorkCancelled(AttnmapError):
    """Work stopped between two model runs because its client left."""


class QueueFull(Exception):
    """Every worker is busy and every place in the queue is taken.

    Attributes:
        retry_after: seconds after which a place is likely free (``Retry-After``).
        places: the queue's size (workers + waiting places).
    """

    def __init__(self, retry_after: int, places: int, why: str | None = None):
        super().__init__(why or f"the server is busy: {places} explain requests are running or waiting, the most "
                                f"it takes (the server's --api-queue); retry in {retry_after} s")
        self.retry_after, self.places = retry_after, places


class WorkQueue:
    """At most ``workers`` requests at work and ``size`` waiting; beyond that, :class:`QueueFull`.
    Bodies still arriving hold no place (a slow sender blocks nobody) but count, with the
    bodies of the requests inside, against ``max_bytes``.

    Args:
        workers: requests computed at once (the API's thread pool).
        size: requests that may wait for a worker (their bodies read, not decoded).
        max_bytes: request-body bytes held at once, over every request.
    """

    def __init__(self, workers: int, size: int, max_bytes: int = 256 * 1024 ** 2):
        self.workers, self.size, self.max_bytes = int(workers), int(size), int(max_bytes)
        self.bytes = 0
        self.inside = 0  # requests holding a place: reading, waiting or running
        self.running = 0
        self._slots: asyncio.Semaphore | None = None  # made on the server's loop, at first use
        self._seconds: collections.deque[float] = collections.deque(maxlen=16)
        self.active: set[threading.Event] = set()  # the cancel events of the requests at work

    @property
    def waiting(self) -> int:
        """Requests holding a place that are not at work."""
        return self.inside - self.running

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the recent mean run time x the requests ahead,
        per worker (1 to 600)."""
        mean = sum(self._seconds) / len(self._seconds) if self._seconds else 1.0
        return max(1, min(600, math.ceil(mean * (self.waiting + 1) / self.workers)))

    @property
    def full(self) -> bool:
        """No place is free now (a request is refused before its body is read)."""
        return self.inside >= self.workers + self.size

    def hold(self, n: int) -> None:
        """Count ``n`` more body bytes held, or raise :class:`QueueFull` past ``max_bytes``
        (give them back with :meth:`drop`)."""
        if self.bytes + n > self.max_bytes:
            raise QueueFull(self.retry_after(), self.workers + self.size,
                            f"the server is busy: it holds {self.bytes:,} bytes of uploads, and {n:,} more would pass "
                            f"its limit of {self.max_bytes:,} (the server's --upload-memory-mb); retry in "
                            f"{self.retry_after()} s")
        self.bytes += n

    def drop(self, n: int) -> None:
        """Give back ``n`` body bytes."""
        self.bytes -= n

    def enter(self) -> None:
        """Take a place, or raise :class:`QueueFull` (call :meth:`leave` once done)."""
        if self.full:
            raise QueueFull(self.retry_after(), self.workers + self.size)
        self.inside += 1

    def leave(self) -> None:
        """Give the place back."""
        self.inside -= 1

    async def run(self, work: Callable[[threading.Event], Any], execute: Callable[..., Awaitable[Any]],
                  disconnected: Callable[[], Awaitable[None]]) -> Any:
        """Wait for a worker, then run ``work(cancel)`` through ``execute``, watching the client.

        Args:
            work: the blocking work; it receives the event set when the client leaves.
            execute: ``await execute(work, cancel)`` runs it on a worker thread.
            disconnected: returns once the client has gone (ASGI ``http.disconnect``).

        Returns:
            What ``work`` returned.

        Raises:
            ClientGone: the client left while the request waited (the work never started) or
                while it ran (the work was cancelled, or its answer has nobody to go to).
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        cancel = threading.Event()
        gone = asyncio.ensure_future(disconnected())
        slot = asyncio.ensure_future(self._slots.acquire())
        try:
            await asyncio.wait({gone, slot}, return_when=asyncio.FIRST_COMPLETED)
            if gone.done():
                raise ClientGone()
        finally:
            if not slot.done():
                slot.cancel()
            elif not slot.cancelled() and gone.done():
                self._slots.release()
        self.running += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        gone.add_done_callback(lambda f: None if f.cancelled() else cancel.set())
        self.active.add(cancel)
        try:
            result = await execute(work, cancel)
        except WorkCancelled:
            raise ClientGone() from None
        finally:
            self.active.discard(cancel)
            self.running -= 1
            self._slots.release()
            self._seconds.append(loop.time() - started)
            gone.cancel()
        if cancel.is_set():
            raise ClientGone()
        return result


def cancellable(explainer, cancel: threading.Event):
    """A shallow copy of ``explainer`` whose perturbed-input model runs stop once ``cancel`` is set.

    Perturbation methods call ``explainer.probabilities`` once per ``forward_batch`` inputs
    (reciprocam ``explainer.tail_logits``); the copy's raise :class:`WorkCancelled` there, so a RISE of 4,000 masks stops within one
    chunk of its client leaving. The copy shares the model and its sessions.
    """
    copied = copy.copy(explainer)
    real = explainer.probabilities

    def probabilities(x):
        if cancel.is_set():
            raise WorkCancelled("the client left; the explanation was stopped")
        return real(x)

    copied.probabilities = probabilities
    real_tail = getattr(explainer, "tail_logits", None)
    if real_tail is not None:
        def tail_logits(tokens, weights):  # reciprocam's tail runs, one per forward_batch copies
            if cancel.is_set():
                raise WorkCancelled("the client left; the explanation was stopped")
            return real_tail(tokens, weights)

        copied.tail_logits = tail_logits
    copied._last_engine = None  # an engine the original cached runs the original's forward
    return copied
