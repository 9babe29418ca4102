"""The low findings of issue 27 against a real server on loopback: odd ``target`` values and deep
state bodies get a 422 (never a 500), the page can go back to the default layer and head fusion,
and a client that leaves mid-upload is one log line and a count of its own, not a 500."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import httpx
import pytest

from attnmap.runtime.frames.synth import write_demo_inputs
from serve_helpers import running_server


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Generated inputs: one PNG image and a 12-frame 96 x 96 video."""
    return write_demo_inputs(tmp_path_factory.mktemp("hardening"), seed=5, n_images=1, video_frames=12, size=96)


@pytest.fixture(scope="module")
def live(demo):
    with running_server(str(demo[1])) as (srv, stream), httpx.Client(base_url=srv.url, timeout=30) as c:
        yield srv, stream, c


def _error(r, status: int, needle: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["status"] == status and needle.lower() in body["error"].lower(), body["error"]
    assert "\n" not in body["error"]


def _metric(client, sample: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _server_errors(client) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in client.get("/metrics").text.splitlines()
               if line.startswith("attnmap_http_requests_total{") and 'status="5' in line)


def test_odd_targets_get_422(live, demo):
    srv, stream, c = live
    png = Path(demo[0][0]).read_bytes()

    def explain(target):
        return c.post("/v1/explain", files={"image": ("a.png", png)}, data={"method": "rollout", "target": target})

    _error(explain("²"), 422, "unknown class '²'")  # str.isdigit() is true for it, int() is not
    _error(explain("9" * 5000), 422, "at most 200 characters; got 5,000")  # int() refuses 4,300+ digits
    _error(explain("9" * 150), 422, "out of range")
    _error(explain("-3"), 422, "out of range")
    assert _server_errors(c) == 0


def test_deep_state_bodies_get_422(live):
    srv, stream, c = live
    for body in (b"[" * 3000 + b"]" * 3000, b'{"layer": ' + b"[" * 3000 + b"]" * 3000 + b"}"):
        _error(c.post("/v1/stream/state", content=body, headers={"Content-Type": "application/json"}),
               422, "nested too deep")
    _error(c.post("/v1/stream/state", json={"layer": [[[1]]]}), 422, "layer")  # shallow: the field's own check
    assert c.get("/v1/stream/state").json()["state"]["layer"] is None
    assert _server_errors(c) == 0


def test_the_page_can_go_back_to_the_default_layer_and_head_fusion(live):
    srv, stream, c = live
    r = c.post("/v1/stream/state", json={"method": "rollout", "layer": 1, "head_fusion": "max"})
    assert r.status_code == 200, r.text
    state = r.json()["state"]
    assert state["options"] == {"start_layer": 1, "head_fusion": "max"}
    version = state["version"]
    r = c.post("/v1/stream/state", json={"layer": None, "head_fusion": None})  # what the page's "default" sends
    assert r.status_code == 200, r.text
    state = r.json()["state"]
    assert state["layer"] is None and state["head_fusion"] is None and state["options"] == {}
    assert state["version"] == version + 1  # the loop rebuilds its job for the default
    r = c.post("/v1/stream/state", json={"method": "attention", "layer": 2, "head": 1})
    assert r.status_code == 200, r.text
    r = c.post("/v1/stream/state", json={"layer": None, "head": None})
    assert r.status_code == 200 and r.json()["state"]["options"] == {}
    c.post("/v1/stream/state", json={"method": "rollout"})


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_a_client_that_leaves_mid_upload_is_a_disconnect_not_a_500(demo):
    records = _Records()
    log = logging.getLogger("uvicorn.error")
    with running_server(None) as (srv, _), httpx.Client(base_url=srv.url, timeout=30) as c:
        log.addHandler(records)
        try:
            heads = (b"Content-Type: image/png\r\n", b"Content-Type: multipart/form-data; boundary=xyz\r\n")
            bodies = (b"", b"\x89PNG" + bytes(20_000),
                      b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n\x89PNG')
            gone = 0
            for head in heads:
                for body in bodies:
                    if b"multipart" in head and body.startswith(b"\x89PNG"):
                        # a multipart body that is malformed from its first bytes: the streamed
                        # parse may refuse it (400) before the server notices the client left
                        continue
                    with socket.create_connection((srv.host, srv.port), timeout=10) as s:
                        s.sendall(b"POST /v1/explain HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head
                                  + b"Content-Length: 1000000\r\n\r\n" + body)
                    gone += 1
            deadline = time.monotonic() + 60  # hang guard only
            while _metric(c, 'attnmap_http_client_disconnects_total{route="/v1/explain"}') < gone:
                assert time.monotonic() < deadline, c.get("/metrics").text
                time.sleep(0.05)
        finally:
            log.removeHandler(records)
        assert _metric(c, 'attnmap_http_client_disconnects_total{route="/v1/explain"}') == gone
        assert _server_errors(c) == 0
        assert not any(line.startswith('attnmap_http_requests_total{route="/v1/explain"')
                       for line in c.get("/metrics").text.splitlines())
    left = [r for r in records.records if "left before" in r.getMessage()]
    assert len(left) == gone and all("/v1/explain" in r.getMessage() for r in left)
    assert not any(r.exc_info for r in records.records), [r.getMessage() for r in records.records]
    assert not any("Exception in ASGI application" in r.getMessage() for r in records.records)
