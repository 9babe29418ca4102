"""Overlap the stages of offline processing: decode ∥ inference ∥ explanation ∥ overlay-and-encode.

Offline work (a folder of images, a video file) must keep every frame, so unlike the live
path it queues instead of dropping, but through *bounded* queues: a fast decoder can run at
most ``depth`` batches ahead of inference, which keeps memory flat on long videos. OpenCV
(decode, resize, colour maps, encode) and onnxruntime release the GIL, so the three threads
really run side by side.

* :func:`prefetch` runs a reader thread that decodes frames and prepares whole batches
  (preprocessing) ahead of the consumer.
* :func:`run_ahead` applies a function to each item ahead of the consumer, in one or more
  threads of its own: the model runs on the next batch (or the next two) while the caller
  explains the last one.
* :class:`BackgroundWorker` runs a consumer thread that takes finished items (overlay,
  encode, write) in order, so inference never waits for the video encoder.

Errors raised in either thread are re-raised in the caller's thread, and both stop promptly
when the caller stops early (an exception, a ``break``).
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")
P = TypeVar("P")

_POLL_S = 0.05  # how often a blocked thread re-checks whether it was asked to stop
_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterable[T], batch_size: int, prepare: Callable[[list[T]], P], *,
             depth: int = 2, name: str = "attnmap-prefetch") -> Iterator[tuple[list[T], P]]:
    """Read and prepare batches in a background thread, ``depth`` batches ahead.

    Args:
        items: any iterable (e.g. a :class:`attnmap.runtime.frames.sources.Source`); it is iterated in the
            background thread only.
        batch_size: items per batch (the last batch may be shorter).
        prepare: called on each batch in the background thread, e.g. ``lambda frames:
            explainer.preprocess([f.image_bgr for f in frames])``.
        depth: prepared batches allowed to wait in the queue.
        name: the thread's name.

    Yields:
        ``(batch, prepare(batch))`` in input order.

    Raises:
        Whatever reading or ``prepare`` raised, in the caller's thread, after every item read
        before the failure has been yielded (the last batch may then be short).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        batch: list[T] = []
        failure: BaseException | None = None
        iterator = iter(items)
        try:
            try:
                for item in iterator:
                    if stop.is_set():
                        return
                    batch.append(item)
                    if len(batch) == batch_size:
                        full, batch = batch, []
                        if not put((full, prepare(full))):
                            return
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
                failure = exc
            if batch and not stop.is_set():
                # Items read before a failure still count: a video that breaks at frame 13
                # keeps frames 0..12 even when they do not fill a batch.
                try:
                    put((batch, prepare(batch)))
                except BaseException as exc:  # noqa: BLE001
                    failure = failure or exc
            put(_Failure(failure) if failure is not None else _END)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    try:
        thread.start()  # inside the try: the finally below waits for it, whenever Ctrl-C lands
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        # Unblock a reader stuck on a full queue, then wait for it to close its source.
        while thread.is_alive():
            try:
                q.get(timeout=_POLL_S)
            except queue.Empty:
                pass


def run_ahead(items: Iterable[T], fn: Callable[[T], P], *, depth: int = 1, workers: int = 1,
              name: str = "attnmap-ahead") -> Iterator[tuple[T, P]]:
    """Yield ``(item, fn(item))`` in order, with ``fn`` applied in background threads up to
    ``depth`` items ahead of the consumer (plus the ones being worked on).

    Args:
        items: any iterable; it is advanced by the worker threads, one at a time.
        fn: called once per item, in a worker thread.
        depth: finished results allowed to wait for the consumer.
        workers: threads applying ``fn`` side by side, each to its own item (two model runs
            at once, say); results still come out in input order.
        name: the threads' name (numbered when there are several).

    Like :func:`prefetch`: errors (reading ``items`` or in ``fn``) reach the caller after the
    items before them, and closing the iterator stops the threads and closes ``items``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1; got {workers}")
    iterator = iter(items)
    read_lock = threading.Lock()  # one worker at a time advances `iterator`
    # A worker takes a permit per item it reads and the consumer hands it back once done with
    # that item (when it asks for the next one), so at most `workers + depth` items are read
    # beyond the one the consumer holds: pooled output buffers are not outrun.
    permits = threading.Semaphore(workers + max(1, int(depth)) + 1)
    stop = threading.Event()
    ready = threading.Condition()
    results: dict[int, object] = {}  # item index -> (item, result), _Failure or _END
    state = {"read": 0, "ended": False}

    def publish(index: int, value: object) -> None:
        with ready:
            results[index] = value
            ready.notify_all()

    def work() -> None:
        while not stop.is_set():
            if not permits.acquire(timeout=_POLL_S):
                continue
            with read_lock:
                if stop.is_set() or state["ended"]:
                    return
                index = state["read"]
                state["read"] += 1
                try:
                    item = next(iterator)
                except StopIteration:
                    state["ended"] = True
                    publish(index, _END)
                    return
                except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
                    state["ended"] = True
                    publish(index, _Failure(exc))
                    return
            try:
                value: object = (item, fn(item))
            except BaseException as exc:  # noqa: BLE001
                state["ended"] = True  # nothing after a failed item is read
                value = _Failure(exc)
            publish(index, value)

    threads = [threading.Thread(target=work, name=name if workers == 1 else f"{name}-{k}", daemon=True)
               for k in range(workers)]
    started: list[threading.Thread] = []
    try:
        # Started inside the try: a Ctrl-C between two starts still stops and joins the
        # started ones below, before anything closes ``items`` under a worker reading it.
        for thread in threads:
            thread.start()
            started.append(thread)
        index = 0
        while True:
            with ready:
                while index not in results:
                    ready.wait(_POLL_S)
                value = results.pop(index)
            if value is _END:
                return
            if isinstance(value, _Failure):
                raise value.exc
            index += 1
            yield value  # type: ignore[misc]
            value = None
            permits.release()
    finally:
        stop.set()
        for thread in started:
            thread.join()
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


class BackgroundWorker(Generic[T]):
    """Apply ``fn`` to submitted items, in order, in one background thread.

    Args:
        fn: called as ``fn(item)`` for each item, in submission order.
        depth: items allowed to wait; :meth:`submit` blocks when the queue is full, which
            keeps a slow encoder from piling up frames in memory.
        name: the thread's name.

    The first exception ``fn`` raises stops the worker; it is re-raised by the next
    :meth:`submit` or by :meth:`close`.
    """

    def __init__(self, fn: Callable[[T], None], *, depth: int = 4, name: str = "attnmap-worker"):
        self._fn = fn
        self._q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> None:
        """Queue one item, waiting while the queue is full.

        Raises:
            The worker's exception, if ``fn`` has failed.
        """
        while True:
            self._raise_if_failed()
            try:
                self._q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def close(self, *, raise_errors: bool = True) -> None:
        """Process what is queued, then stop the thread.

        Args:
            raise_errors: re-raise the worker's exception (if any) after stopping it.
        """
        while self._thread.is_alive():
            try:
                self._q.put(_END, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        self._thread.join()
        if raise_errors:
            self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _END:
                return
            if self._error is not None:
                continue  # drain without work after a failure, so submit() never blocks forever
            try:
                self._fn(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the submitting thread
                self._error = exc
