"""Reading a ``multipart/form-data`` explain request as it arrives, within its limits.

The body is parsed while it streams in, so a text field longer than
:data:`~attnmap.runtime.fronts.serve.api.MAX_FIELD_BYTES` is refused (413) as soon as that
many of its bytes arrived: the rest of it is never read, and the server holds a few chunks of
it at most, whatever its length (a 19 MB ``method`` value once was read whole before the 413).
The same stream keeps the body's own limit (``max_upload_bytes``) and its memory account
(``hold``).

Starlette's parser scans every byte in Python, so it runs on a thread of its own (with an event
loop of its own, as the parser is async), not on the server's loop; the loop only moves
chunks from the socket to that thread through a short queue. The queue is bounded, so a
parser that falls behind slows the reading instead of piling chunks up.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from typing import Any, AsyncIterator, Callable

import anyio
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from attnmap.runtime.fronts.serve import api
from attnmap.runtime.fronts.serve.security import Limits

__all__ = ["read_form"]

# chunks on their way to the parser (Starlette's are up to 64 KiB each)
QUEUED_CHUNKS = 4
_END = object()


class _Stopped(Exception):
    """The reading side stopped (an error there, or the request was cancelled)."""


async def read_form(headers: Any, stream: AsyncIterator[bytes], limits: Limits,
                    hold: Callable[[int], None] | None = None) -> tuple[bytes, str, dict[str, str]]:
    """The image's bytes, how messages name it, and the text fields of a multipart body.

    Args:
        headers: the request's headers (the boundary is in its Content-Type).
        stream: the body as it arrives (Starlette's ``request.stream()``).
        limits: ``max_upload_bytes`` for the whole body.
        hold: called with each chunk's size before it is passed on (it may raise to refuse it).

    Raises:
        HTTPProblem: 413 for a body over ``max_upload_bytes`` or a text field over
            ``MAX_FIELD_BYTES`` (reading stops there), 400 for a malformed body, 422 for a
            body without the image file or with a second file.
    """
    chunks: queue.Queue = queue.Queue(maxsize=QUEUED_CHUNKS)
    stop = threading.Event()  # the parser is done, or the request is over: stop passing chunks
    fed = threading.Event()  # the reading side is over, however it ended

    async def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                chunks.put_nowait(item)
                return True
            except queue.Full:
                await asyncio.sleep(0.002)
        return False

    async def feed() -> None:
        size = 0
        try:
            async for chunk in stream:
                size += len(chunk)
                if size > limits.max_upload_bytes:
                    raise api.HTTPProblem(413, f"the upload is over the limit of {limits.max_upload_bytes:,} bytes "
                                               "(the server's max_upload_bytes)")
                if hold is not None:
                    hold(len(chunk))
                if not await offer(chunk):
                    return  # the parser is done (it refused the body): the rest is never read
            await offer(_END)
        finally:
            fed.set()

    async def body() -> AsyncIterator[bytes]:
        while True:
            try:
                item = chunks.get(timeout=0.05)
            except queue.Empty:
                if stop.is_set() or (fed.is_set() and chunks.empty()):
                    raise _Stopped() from None  # the body will not go on
                continue
            if item is _END:
                return
            yield item

    def parse() -> tuple[bytes, str, dict[str, str]]:
        return asyncio.run(_parse(headers, body()))

    reader = asyncio.ensure_future(feed())
    try:
        return await anyio.to_thread.run_sync(parse, abandon_on_cancel=True)
    except _Stopped:
        await reader  # raises the reading side's error: 413, a refused hold, a disconnect
        raise api.HTTPProblem(400, "the multipart body ended before its closing boundary") from None
    finally:
        stop.set()
        if not reader.done():
            reader.cancel()
        # awaited in every case, so that a reading side that failed after the parser was done
        # (the client left) is collected here, not logged as a task's unretrieved exception
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


async def _parse(headers: Any, chunks: AsyncIterator[bytes]) -> tuple[bytes, str, dict[str, str]]:
    try:
        form = await MultiPartParser(headers, chunks, max_files=2, max_fields=api.MAX_FIELDS,
                                     max_part_size=api.MAX_FIELD_BYTES).parse()
    except MultiPartException as exc:
        raise api.HTTPProblem(413 if "exceeded maximum size" in exc.message else 400,
                              f"cannot read the multipart body: {exc.message} (text fields are at most "
                              f"{api.MAX_FIELD_BYTES:,} bytes)") from exc
    upload = form.get(api.IMAGE_FIELD)
    fields = {k: v for k, v in form.multi_items() if k != api.IMAGE_FIELD}
    files = [k for k, v in fields.items() if not isinstance(v, str)]
    try:
        if not isinstance(upload, UploadFile):
            got = ", ".join(repr(k[:40]) for k in form.keys()) or "no fields"
            what = "a text value" if upload is not None else got
            raise api.HTTPProblem(422, f"expected the image as the file field {api.IMAGE_FIELD!r}; got {what}")
        if files:
            raise api.HTTPProblem(422, f"expected one file, in field {api.IMAGE_FIELD!r}; got another in "
                                       f"{files[0][:40]!r}")
        return await upload.read(), f"upload {(upload.filename or api.IMAGE_FIELD)[:80]!r}", fields
    finally:
        await form.close()
