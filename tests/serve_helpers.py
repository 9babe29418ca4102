"""Helpers of the `attnmap serve` tests: a running server on a free loopback port, and an
MJPEG reader that parses ``multipart/x-mixed-replace`` by its part headers."""

from __future__ import annotations

import contextlib
from pathlib import Path

import cv2
import numpy as np

from attnmap import Explainer
from attnmap.runtime.engine.engine import Job
from attnmap.runtime.fronts.serve.app import ServerSettings, create_app
from attnmap.runtime.fronts.serve.metrics import server_metrics
from attnmap.runtime.fronts.serve.runner import BackgroundServer
from attnmap.runtime.fronts.serve.stream import StreamConfig, StreamLoop

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "shapes_vit.onnx"
BOUNDARY = b"--frame"


@contextlib.contextmanager
def running_server(source=None, *, job: Job | None = None, config: StreamConfig | None = None,
                   settings: ServerSettings | None = None, explainer: Explainer | None = None):
    """Yield ``(server, stream)``: the app on uvicorn on a free loopback port (stream None without a source)."""
    explainer = explainer or Explainer(SHIPPED)
    metrics = server_metrics()
    job = job or Job()
    stream = None if source is None else StreamLoop(explainer, source, job, config, metrics=metrics)
    app = create_app(explainer, stream, settings, metrics, default_method=job.method)
    with BackgroundServer(app) as srv:
        yield srv, stream


def read_parts(response, n: int) -> list[tuple[dict[str, str], bytes]]:
    """The first ``n`` parts of an MJPEG response: (headers with lower-case names, body)."""
    it = response.iter_raw()
    buf = b""
    parts = []
    while len(parts) < n:
        while True:
            start = buf.find(BOUNDARY + b"\r\n")
            end = buf.find(b"\r\n\r\n", start) if start >= 0 else -1
            if end >= 0:
                break
            buf += next(it)
        head = buf[start + len(BOUNDARY) + 2:end].decode("latin-1")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head.split("\r\n"))}
        length = int(headers["content-length"])
        body_start = end + 4
        while len(buf) < body_start + length + 2:
            buf += next(it)
        body = buf[body_start:body_start + length]
        assert buf[body_start + length:body_start + length + 2] == b"\r\n", "a part must end with CRLF"
        parts.append((headers, body))
        buf = buf[body_start + length + 2:]
    return parts


def decode_jpeg(data: bytes) -> np.ndarray:
    """Decode JPEG bytes with OpenCV; fails the test when they are not a JPEG."""
    assert data[:3] == b"\xff\xd8\xff", "not a JPEG"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.size > 0
    return img
