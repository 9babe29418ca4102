"""The streamed multipart reader of ``POST /v1/explain``: a text field past its limit is refused
after a few chunks of it, so the bytes read and the memory used do not grow with its length."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest
from extras import need

need("starlette", "serve")

from starlette.datastructures import Headers  # noqa: E402

from attnmap.runtime.fronts.serve import api  # noqa: E402
from attnmap.runtime.fronts.serve.form import QUEUED_CHUNKS, read_form  # noqa: E402
from attnmap.runtime.fronts.serve.security import Limits  # noqa: E402

BOUNDARY = "attnmapboundary"
HEADERS = Headers({"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
CHUNK = 64 * 1024


def _part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if filename:
        head += "Content-Type: application/octet-stream\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


class Body:
    """A multipart body handed out in CHUNK-sized pieces, counting what was taken (and made
    lazily: a 19 MB field is never built in memory by the test itself)."""

    def __init__(self, field_bytes: int, *, image: bytes = b"\x89PNG fake", close: bool = True):
        self.field_bytes, self.image, self.close, self.taken = field_bytes, image, close, 0

    async def __aiter__(self):
        pieces = [_part("image", self.image, "a.png"), b""]
        head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="method"\r\n\r\n'.encode()
        for piece in (pieces[0], head):
            self.taken += len(piece)
            yield piece
        left = self.field_bytes
        while left > 0:
            n = min(CHUNK, left)
            left -= n
            self.taken += n
            yield b"x" * n
            await asyncio.sleep(0)
        tail = b"\r\n" + (f"--{BOUNDARY}--\r\n".encode() if self.close else b"")
        self.taken += len(tail)
        yield tail


def _read(body: Body, limits: Limits = Limits(), hold=None):
    return asyncio.run(read_form(HEADERS, body.__aiter__(), limits, hold))


@pytest.mark.parametrize("mib", [1, 19])
def test_a_text_field_past_its_limit_is_refused_after_a_few_chunks(mib):
    body = Body(mib * 1024 * 1024)
    with pytest.raises(api.HTTPProblem) as caught:
        _read(body, Limits(max_upload_bytes=64 * 1024 * 1024))
    assert caught.value.status == 413 and "text fields are at most 8,192 bytes" in caught.value.message
    # what was read from the socket: the field's limit and the chunks on their way to the parser
    assert body.taken <= api.MAX_FIELD_BYTES + (QUEUED_CHUNKS + 4) * CHUNK


def test_memory_does_not_grow_with_the_fields_length():
    peaks = {}
    for mib in (2, 19):
        tracemalloc.start()
        with pytest.raises(api.HTTPProblem):
            _read(Body(mib * 1024 * 1024), Limits(max_upload_bytes=64 * 1024 * 1024))
        peaks[mib] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # both peaks are a few chunks; reading the 19 MB field whole would add 17 MB to the second
    assert peaks[19] < peaks[2] + 2 * 1024 * 1024, peaks
    assert peaks[19] < 4 * 1024 * 1024, peaks


def test_a_good_body_gives_the_image_and_the_fields():
    data, name, fields = _read(Body(7))
    assert data == b"\x89PNG fake" and name == "upload 'a.png'" and fields == {"method": "x" * 7}


def test_the_bodys_own_limit_and_the_memory_account_still_apply():
    with pytest.raises(api.HTTPProblem) as caught:
        _read(Body(3000), Limits(max_upload_bytes=1000))
    assert caught.value.status == 413 and "max_upload_bytes" in caught.value.message
    held = []

    def hold(n):
        held.append(n)
        if sum(held) > 200:
            raise api.HTTPProblem(429, "busy")

    with pytest.raises(api.HTTPProblem) as caught:
        _read(Body(4000), hold=hold)
    assert caught.value.status == 429


def test_a_client_that_leaves_midway_ends_the_read_with_its_error():
    class Gone(Exception):
        pass

    async def leaving():
        yield _part("image", b"\x89PNG fake", "a.png")
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="method"\r\n\r\nroll'.encode()
        raise Gone()  # as Starlette's ClientDisconnect

    with pytest.raises(Gone):
        asyncio.run(read_form(HEADERS, leaving(), Limits()))
