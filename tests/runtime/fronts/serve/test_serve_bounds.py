"""Issue 27 part 1 against a real server on loopback: bounded work per request (the cost budget,
absurd option values, huge text fields), the bounded queue (429 with Retry-After, images decoded
only once at work), work dropped or stopped when its client leaves, the body and header
timeouts and the connection cap. Work is held at a gate where ordering matters, so nothing
here depends on how fast the machine is; each test's traffic is a few dozen requests."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from attnmap.runtime.fronts.serve import api
from attnmap.runtime.fronts.serve.app import SERVER_BUDGET, ServerSettings
from serve_helpers import running_server

DEADLINE = 60.0  # how long a test waits for a state before failing (never reached when it works)


@pytest.fixture(scope="module")
def png() -> bytes:
    img = np.random.default_rng(3).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def _server_errors(client) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in client.get("/metrics").text.splitlines()
               if line.startswith("attnmap_http_requests_total{") and 'status="5' in line)


def _metric(client, sample: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait(predicate, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _queue(srv):
    return srv.app.app.state.server.queue


def _raw_request(srv, png: bytes, **fields) -> bytes:
    """A complete multipart explain request as bytes (sent on a socket the test can close)."""
    req = httpx.Request("POST", srv.url + "/v1/explain", files={"image": ("a.png", png)}, data=fields)
    body = req.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items() if k.lower() != "host")
    return f"POST /v1/explain HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n{head}\r\n".encode() + body


class _Gate:
    """Holds every explanation at work, its image decoded, until released; counts the images decoded."""

    def __init__(self, monkeypatch):
        self.release, self.entered, self.decoded = threading.Event(), threading.Semaphore(0), 0
        real_decode = api.decode_upload

        def decode(*a, **k):
            self.decoded += 1
            img = real_decode(*a, **k)
            self.entered.release()
            assert self.release.wait(DEADLINE)
            return img

        monkeypatch.setattr(api, "decode_upload", decode)


@pytest.fixture
def gate(monkeypatch):
    g = _Gate(monkeypatch)
    yield g
    g.release.set()  # a failed test must not leave work held


# --------------------------------------------------------------------------- bounded work
def test_work_over_the_budget_is_refused_before_it_starts(png, monkeypatch):
    with running_server() as (srv, _), httpx.Client(base_url=srv.url, timeout=30) as c:
        explainer = srv.app.app.state.server.explainer
        runs = []
        real = explainer.model.run_plain
        monkeypatch.setattr(explainer.model, "run_plain", lambda x: runs.append(len(x)) or real(x))

        def explain(**fields):
            return c.post("/v1/explain", files={"image": ("a.png", png)}, data=fields)

        assert explain(method="rise", masks="4000", forward_batch="4000").status_code == 422  # 6.1 GB in issue 27
        r = explain(method="rise", masks="3000", forward_batch="3000")
        assert r.status_code == 422 and "at once (3000 inputs per model run" in r.json()["error"]
        assert "the server's --max-batch-mb" in r.json()["error"]
        r = explain(method="rise", masks="10000")  # held the worker for 64 s
        assert r.status_code == 422, r.text
        assert r.json()["error"].startswith("method 'rise' with masks=10000 runs the model 10,001 times per image, "
                                            f"over the limit of {SERVER_BUDGET.max_forward_passes:,} (the server's "
                                            "--max-forward-passes)")
        for field, value, allowed in (("masks", "1000000000000", "[1, 1,000,000]"), ("cells", "100000", "[1, 1,024]"),
                                      ("forward_batch", "40000", "[1, 4,096]")):
            r = explain(method="rise", **{field: value})
            assert r.status_code == 422 and f"must be an integer in {allowed}" in r.json()["error"], r.text
        r = explain(method="occlusion", window="1", stride="1")
        assert r.status_code == 422 and "runs the model 9,218 times" in r.json()["error"]
        assert runs == []  # none of them ran the model once
        ok = explain(method="rise", masks="50", forward_batch="16")
        assert ok.status_code == 200 and sum(runs) == 50
        assert _server_errors(c) == 0


def test_huge_text_fields_are_refused_without_a_suggestion_or_an_echo(png, monkeypatch):
    suggested = []
    real_suggest = api.suggest
    monkeypatch.setattr(api, "suggest", lambda word, *a: suggested.append(len(word)) or real_suggest(word, *a))
    with running_server() as (srv, _), httpx.Client(base_url=srv.url, timeout=60) as c:
        huge = "x" * (19 * 1024 * 1024)  # issue 27: a 19 MB `method` stalled every client for 3.4 s
        r = c.post("/v1/explain", files={"image": ("a.png", png)}, data={"method": huge})
        assert r.status_code == 413, r.text[:300]
        assert "text fields are at most 8,192 bytes" in r.json()["error"] and len(r.text) < 400
        long_name = "m" * 9000  # a query field past the limit, on the raw-body route
        r = c.post("/v1/explain", params={long_name: "1"}, content=png, headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and "is 9,000 characters long" in r.json()["error"] and len(r.text) < 400
        r = c.post("/v1/explain", params={f"f{i}": "1" for i in range(40)}, content=png,
                   headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and "more than 32 fields" in r.json()["error"]
        r = c.post("/v1/explain", files={"image": ("a.png", png)}, data={"method": "rolout"})
        assert r.status_code == 422 and "rollout" in r.json()["error"]  # short values still get suggestions
        assert max(suggested) <= api.MAX_FIELD_BYTES
        assert _server_errors(c) == 0


# --------------------------------------------------------------------------- the queue
def test_a_full_queue_answers_429_and_decodes_only_what_runs(png, gate):
    with running_server(settings=ServerSettings(api_queue=2)) as (srv, _), \
            httpx.Client(base_url=srv.url, timeout=DEADLINE) as c, ThreadPoolExecutor(3) as pool:
        post = lambda: c.post("/v1/explain", files={"image": ("a.png", png)})  # noqa: E731
        held = [pool.submit(post) for _ in range(3)]  # one at work, two waiting
        assert gate.entered.acquire(timeout=DEADLINE)
        _wait(lambda: _queue(srv).inside == 3, "three requests inside")
        refused = [post() for _ in range(4)]
        for r in refused:
            assert r.status_code == 429 and r.json()["error"].startswith("the server is busy: 3 explain requests")
            assert int(r.headers["Retry-After"]) >= 1
        assert gate.decoded == 1  # the waiting requests hold bytes, not images
        assert c.get("/healthz").status_code == 200
        gate.release.set()
        assert [f.result().status_code for f in held] == [200, 200, 200]
        assert gate.decoded == 3 and _queue(srv).inside == 0
        assert post().status_code == 200
        assert _server_errors(c) == 0


def test_a_request_whose_client_left_is_dropped_before_it_starts(png, gate):
    with running_server() as (srv, _), httpx.Client(base_url=srv.url, timeout=DEADLINE) as c, \
            ThreadPoolExecutor(1) as pool:
        first = pool.submit(lambda: c.post("/v1/explain", files={"image": ("a.png", png)}))
        assert gate.entered.acquire(timeout=DEADLINE)
        gone_before = _metric(c, 'attnmap_http_client_disconnects_total{route="/v1/explain"}')
        with socket.create_connection((srv.host, srv.port)) as s:
            s.sendall(_raw_request(srv, png))
            _wait(lambda: _queue(srv).inside == 2, "the second request waiting")
        _wait(lambda: _queue(srv).inside == 1, "the second request dropped")
        gate.release.set()
        assert first.result().status_code == 200
        assert gate.decoded == 1  # the dropped request was never decoded, let alone explained
        assert _metric(c, 'attnmap_http_client_disconnects_total{route="/v1/explain"}') == gone_before + 1
        assert _server_errors(c) == 0


def test_work_stops_between_model_runs_when_its_client_leaves(png, monkeypatch):
    with running_server() as (srv, _), httpx.Client(base_url=srv.url, timeout=DEADLINE) as c:
        explainer = srv.app.app.state.server.explainer
        calls, started, proceed = [], threading.Event(), threading.Event()
        real = explainer.model.run_plain

        def run_plain(x):
            calls.append(len(x))
            if len(calls) == 5:
                started.set()
                assert proceed.wait(DEADLINE)
            return real(x)

        monkeypatch.setattr(explainer.model, "run_plain", run_plain)
        with socket.create_connection((srv.host, srv.port)) as s:
            s.sendall(_raw_request(srv, png, method="rise", masks="3000", forward_batch="10"))  # 300 runs
            assert started.wait(DEADLINE)
        _wait(lambda: any(e.is_set() for e in _queue(srv).active), "the work's cancel flag")
        proceed.set()
        _wait(lambda: _queue(srv).inside == 0, "the work to stop")
        assert len(calls) <= 6  # stopped at the next chunk, not after 300
        r = c.post("/v1/explain", files={"image": ("a.png", png)}, data={"method": "rise", "masks": "20"})
        assert r.status_code == 200  # the worker is free again
        assert _server_errors(c) == 0


# --------------------------------------------------------------------------- connections
def test_slow_headers_are_cut_and_healthz_answers_meanwhile():
    with running_server(settings=ServerSettings(header_timeout=1.0)) as (srv, _), \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        slow = [socket.create_connection((srv.host, srv.port)) for _ in range(30)]
        for s in slow:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ")
        answered = sum(c.get("/healthz").status_code == 200 for _ in range(5))
        closed = 0
        for s in slow:  # a trickle of header bytes does not keep a connection
            s.settimeout(DEADLINE)
            try:
                while True:
                    s.sendall(b"a")
                    s.settimeout(0.2)
                    try:
                        if s.recv(64) == b"":
                            break
                    except socket.timeout:
                        pass
            except (ConnectionResetError, BrokenPipeError):
                pass
            closed += 1
            s.close()
        assert answered == 5 and closed == 30
        assert c.get("/healthz").status_code == 200


def test_a_slow_body_gets_408(png):
    with running_server(settings=ServerSettings(body_timeout=1.0)) as (srv, _), \
            httpx.Client(base_url=srv.url, timeout=30) as c, socket.create_connection((srv.host, srv.port)) as s:
        s.sendall(f"POST /v1/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                  f"Content-Length: {len(png)}\r\n\r\n".encode() + png[:10])
        s.settimeout(DEADLINE)
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:100]
        assert _queue(srv).inside == 0 and c.get("/healthz").status_code == 200


def test_connections_past_the_cap_are_closed_with_one_log_line(capfd):
    with running_server(settings=ServerSettings(max_connections=10)) as (srv, _):
        idle = [socket.create_connection((srv.host, srv.port)) for _ in range(40)]
        closed = 0
        for s in idle:
            s.settimeout(0.5)
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except socket.timeout:
                pass
        for s in idle:
            s.close()
        assert closed == 30  # the first 10 stay open (until the header timeout)
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            _wait(lambda: _healthy(c), "a connection to /healthz")
    log = capfd.readouterr().err  # uvicorn's log goes to stderr
    assert log.count("open connections, the most this server keeps") == 1 and "Traceback" not in log


def _healthy(c) -> bool:
    try:
        return c.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def test_settings_are_checked():
    from attnmap.runtime.fronts.serve import ServeError

    for bad in ({"api_queue": -1}, {"body_timeout": 0}, {"header_timeout": float("inf")}, {"max_connections": 0},
                {"budget": 5}):
        with pytest.raises(ServeError):
            ServerSettings(**bad)


def test_slow_bodies_hold_no_place_but_count_against_upload_memory(png):
    settings = ServerSettings(api_queue=0, upload_memory=100_000)
    with running_server(settings=settings) as (srv, _), httpx.Client(base_url=srv.url, timeout=30) as c:
        slow = [socket.create_connection((srv.host, srv.port)) for _ in range(5)]
        for s in slow:  # five bodies begun, 15 KB each, never finished
            s.sendall(b"POST /v1/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                      b"Content-Length: 90000\r\n\r\n" + bytes(15_000))
        _wait(lambda: _queue(srv).bytes == 75_000, "the slow bodies' bytes held")
        assert _queue(srv).inside == 0
        big = bytes(40_000)
        r = c.post("/v1/explain", content=big, headers={"Content-Type": "image/png"})
        assert r.status_code == 429 and "the server's --upload-memory-mb" in r.json()["error"], r.text
        assert int(r.headers["Retry-After"]) >= 1
        r = c.post("/v1/explain", files={"image": ("a.png", png)})  # small enough: the one worker takes it
        assert r.status_code == 200, r.text
        for s in slow:
            s.close()
        _wait(lambda: _queue(srv).bytes == 0, "the slow bodies' bytes given back")
        assert _server_errors(c) == 0


def test_cli_bounds_reach_the_server_and_the_explain_job(monkeypatch, png, tmp_path):
    from click.testing import CliRunner

    from attnmap.cli import main
    from attnmap.runtime.fronts.serve import runner
    from serve_helpers import SHIPPED

    seen = {}
    monkeypatch.setattr(runner, "run_server", lambda app, host, port, **kw: seen.update(app=app))
    r = CliRunner().invoke(main, ["serve", "--model", str(SHIPPED), "--max-forward-passes", "100", "--max-batch-mb",
                                  "64", "--api-queue", "1", "--upload-memory-mb", "1", "--body-timeout", "3",
                                  "--header-timeout", "2", "--max-connections", "7"])
    assert r.exit_code == 0, r.output
    settings = seen["app"].settings
    assert (settings.budget.max_forward_passes, settings.budget.max_batch_bytes) == (100, 64 * 1024 ** 2)
    assert (settings.api_queue, settings.upload_memory, settings.body_timeout, settings.header_timeout,
            settings.max_connections) == (1, 1024 ** 2, 3.0, 2.0, 7)
    with runner.BackgroundServer(seen["app"]) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/v1/explain", files={"image": ("a.png", png)}, data={"method": "rise", "masks": "200"})
        assert r.status_code == 422 and "201 times per image, over the limit of 100" in r.json()["error"]
    image = tmp_path / "a.png"
    image.write_bytes(png)
    r = CliRunner().invoke(main, ["explain", str(image), "--model", str(SHIPPED), "--method", "rise", "--masks", "300",
                                  "--max-forward-passes", "200", "-o", str(tmp_path / "out")])
    assert r.exit_code != 0 and "301 times per image, over the limit of 200" in r.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
