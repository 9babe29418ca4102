"""`attnmap serve` over real HTTP: the server runs on uvicorn on a free loopback port, the shipped
model explains a moving synthetic video, and httpx is the client.

No test bounds how long anything takes; real seconds appear only as hang guards."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from extras import need

from attnmap import Explainer
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.frames.synth import write_demo_inputs

# serve_helpers and the server import starlette and uvicorn
need("starlette", "serve")
need("uvicorn", "serve")
from attnmap.runtime.fronts.serve.app import ServerSettings  # noqa: E402
from attnmap.runtime.fronts.serve.security import Limits  # noqa: E402
from serve_helpers import SHIPPED, decode_jpeg, read_parts, running_server  # noqa: E402

REPO = Path(__file__).resolve().parents[4]
PHOTO = REPO.parent / "shared" / "data" / "images"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Generated demo inputs: two PNG images and a 48-frame 192 x 192 video at 12 fps."""
    return write_demo_inputs(tmp_path_factory.mktemp("serve_demo"), seed=3, n_images=3, video_frames=48)


@pytest.fixture(scope="module")
def live(demo):
    """A server streaming the demo video (in a loop), with its stream loop and an httpx client."""
    with running_server(str(demo[1])) as (srv, stream):
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            yield srv, stream, client


@pytest.fixture(scope="module")
def reference():
    """An Explainer of its own, for the reference values the API must match."""
    return Explainer(SHIPPED)


def _metric(client, sample: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _settle(stream, quiet: float = 0.3) -> None:
    """Wait (paused) until the frame that was in flight is finished: no new frame for ``quiet`` s."""
    deadline = time.monotonic() + 30
    seen = stream.stats.frames_processed
    while True:
        time.sleep(quiet)
        now = stream.stats.frames_processed
        if now == seen:
            return
        assert time.monotonic() < deadline, "the paused loop kept drawing frames"
        seen = now


# --------------------------------------------------------------------------- stream
def test_the_stream_is_jpegs_that_decode_and_change(live):
    srv, stream, client = live
    with client.stream("GET", "/v1/stream.mjpg") as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
        parts = read_parts(r, 12)
    versions = [int(h["x-frame"]) for h, _ in parts]
    assert versions == sorted(versions) and len(set(versions)) == 12  # always newer, never repeated
    frames = [decode_jpeg(body) for h, body in parts]
    assert all(f.shape == (192, 192, 3) for f in frames)
    assert all(h["content-type"] == "image/jpeg" for h, _ in parts)
    # the object glides across the video: consecutive frames differ well beyond JPEG noise
    diffs = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, frames[1:])]
    assert max(diffs) > 2.0, diffs


def test_each_frame_is_encoded_once_for_all_viewers(live, monkeypatch):
    srv, stream, client = live
    encoded = []
    real_publish = stream.publish

    def counting_publish(image_bgr):
        encoded.append(1)
        real_publish(image_bgr)

    # Paused, the loop draws nothing new: the count and the patch start together, with no frame
    # caught half-way between them. The frame shown before the patch can still be a viewer's first.
    client.post("/v1/stream/state", json={"paused": True})
    _settle(stream)
    processed_before = stream.stats.frames_processed
    monkeypatch.setattr(stream, "publish", counting_publish)  # the loop's window calls stream.publish
    client.post("/v1/stream/state", json={"paused": False})
    got: dict[int, dict[int, bytes]] = {}

    def view(i):
        with httpx.Client(base_url=srv.url, timeout=30) as c, c.stream("GET", "/v1/stream.mjpg") as r:
            got[i] = {int(h["x-frame"]): body for h, body in read_parts(r, 8)}

    threads = [threading.Thread(target=view, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    client.post("/v1/stream/state", json={"paused": True})
    try:
        _settle(stream)  # the frame in flight is finished; paused, nothing new is drawn
        processed = stream.stats.frames_processed - processed_before
        assert processed >= 7 and len(encoded) == processed  # one encoding per frame, not per viewer
    finally:
        client.post("/v1/stream/state", json={"paused": False})
    common = set(got[0]) & set(got[1]) & set(got[2])
    assert common, "three viewers reading at once must share frames"
    for v in common:
        assert got[0][v] == got[1][v] == got[2][v]  # the same bytes, broadcast


def test_a_slow_viewer_skips_frames_and_stalls_no_one(live):
    srv, stream, client = live
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    slow.connect((srv.host, srv.port))
    slow.sendall(b"GET /v1/stream.mjpg HTTP/1.1\r\nHost: test\r\n\r\n")
    received = bytearray()
    done = threading.Event()

    def read_slowly():  # ~20 kB/s, a fifth of what the stream sends
        while not done.is_set():
            chunk = slow.recv(1024)
            if not chunk:
                return
            received.extend(chunk)
            time.sleep(0.05)

    reader = threading.Thread(target=read_slowly, daemon=True)
    skipped_before = _metric(client, "attnmap_viewer_frames_skipped_total")
    reader.start()
    try:
        with client.stream("GET", "/v1/stream.mjpg") as r:
            parts = read_parts(r, 60)  # five seconds of video while the slow viewer lags
        versions = [int(h["x-frame"]) for h, _ in parts]
        assert versions == sorted(versions) and len(set(versions)) == 60
        deadline = time.monotonic() + 60
        while _metric(client, "attnmap_viewer_frames_skipped_total") <= skipped_before:
            assert time.monotonic() < deadline, "the slow viewer never skipped a frame"
            time.sleep(0.2)
    finally:
        done.set()
        reader.join(10)
        slow.close()
    # What reached the slow viewer is whole frames in order (the frames it skipped were never queued
    # for it; the server's capped send buffer holds only the few it was already sending).
    slow_versions = [int(v) for v in re.findall(rb"X-Frame: (\d+)", bytes(received))]
    assert len(slow_versions) >= 2 and slow_versions == sorted(set(slow_versions))


def test_state_changes_reach_the_loop(live):
    srv, stream, client = live
    before = client.get("/v1/stream/state").json()
    assert before["state"]["method"] == "rollout" and before["status"]["running"]
    assert [t["label"] for t in before["status"]["topk"]]  # the top-k of the last explained frame
    try:
        r = client.post("/v1/stream/state", json={"method": "attention", "layer": 2, "head": 1, "colormap": "bone"})
        assert r.status_code == 200, r.text
        assert r.json()["state"]["options"] == {"layer": 2, "head": 1}
        explained = stream.stats.frames_explained
        deadline = time.monotonic() + 30
        while stream.session.job.method != "attention" or stream.stats.frames_explained <= explained + 1:
            assert time.monotonic() < deadline, "the loop never picked up the new method"
            time.sleep(0.05)
        assert dict(stream.session.job.options) == {"layer": 2, "head": 1}
        bad = client.post("/v1/stream/state", json={"head": 7})
        assert bad.status_code == 422 and "head" in bad.json()["error"]
        assert client.post("/v1/stream/state", content=b"{not json").status_code == 400
        assert client.post("/v1/stream/state", content=b"x" * 70_000).status_code == 413
    finally:
        client.post("/v1/stream/state", json={"method": "rollout", "layer": None, "colormap": "jet"})


def test_pause_stops_new_frames_and_resume_restarts_them(live):
    srv, stream, client = live
    assert client.post("/v1/stream/state", json={"paused": True}).json()["state"]["paused"] is True
    try:
        _settle(stream)  # let a frame that was in flight finish
        v0 = stream.broadcaster.version
        time.sleep(1.0)
        assert stream.broadcaster.version == v0  # paused: nothing new (and the still frame is not re-encoded)
    finally:
        client.post("/v1/stream/state", json={"paused": False})
    deadline = time.monotonic() + 30
    while stream.broadcaster.version == v0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_snapshot_is_the_frame_on_show_as_png(live):
    srv, stream, client = live
    r = client.get("/v1/stream/snapshot")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"].startswith('attachment; filename="attnmap-')
    img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (192, 192, 3)


def test_metrics_count_frames_stages_and_requests(live):
    srv, stream, client = live
    before = _metric(client, 'attnmap_http_requests_total{route="/v1/model",status="200"}')
    for _ in range(3):
        assert client.get("/v1/model").status_code == 200
    text = client.get("/metrics").text
    assert _metric(client, 'attnmap_http_requests_total{route="/v1/model",status="200"}') == before + 3
    assert _metric(client, "attnmap_frames_total") >= 1
    for stage in ("preprocess", "inference", "explanation", "overlay", "output"):
        assert f'attnmap_stage_seconds_count{{stage="{stage}"}}' in text
    frames = _metric(client, "attnmap_frames_total")
    assert _metric(client, 'attnmap_stage_seconds_count{stage="output"}') in (frames, frames + 1)
    assert client.get("/nope").status_code == 404
    assert _metric(client, 'attnmap_http_requests_total{route="other",status="404"}') >= 1


def test_page_and_static_files_come_from_the_package(live):
    srv, stream, client = live
    page = client.get("/")
    assert page.status_code == 200 and 'src="/v1/stream.mjpg"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace('lang="en"', "")  # no CDN, nothing fetched from elsewhere
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    for path in ("/static/../cli.py", "/static/index.html", "/static/%2e%2e/cli.py", "/cli.py"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["status"] == 404, path
    assert "access-control-allow-origin" not in client.get("/v1/model", headers={"Origin": "http://x.org"}).headers


# --------------------------------------------------------------------------- API
def _upload(client, data: bytes, name="img.png", **fields):
    return client.post("/v1/explain", files={"image": (name, data, "application/octet-stream")},
                       data={k: str(v) for k, v in fields.items()})


def _b64_png(text: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("fields, call", [
    ({}, dict(method="rollout")),
    ({"method": "attention", "layer": "1", "head": "0", "fit": "squash", "topk": "3"},
     dict(method="attention", layer=1, head=0, fit="squash", topk=3)),
    ({"method": "rollout", "head_fusion": "max", "discard_ratio": "0.5", "fit": "letterbox"},
     dict(method="rollout", head_fusion="max", discard_ratio=0.5, fit="letterbox")),
    ({"method": "flow"}, dict(method="flow")),
])
def test_explain_equals_the_explainer(live, demo, reference, fields, call):
    srv, stream, client = live
    paths = list(demo[0]) + sorted(PHOTO.glob("*.jpg"))[:1]
    for path in paths:
        data = Path(path).read_bytes()
        r = _upload(client, data, Path(path).name, png="heatmap,overlay", colormap="inferno", **fields)
        assert r.status_code == 200, r.text
        got = r.json()
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        ex = reference.explain(img, **call)
        assert got["image"] == {"width": img.shape[1], "height": img.shape[0]}
        assert [t["index"] for t in got["topk"]] == [t.index for t in ex.topk]
        assert np.allclose([t["prob"] for t in got["topk"]], [t.prob for t in ex.topk], rtol=0, atol=1e-6)
        grid = np.array(got["grid"]["values"], np.float32)
        assert got["grid"]["shape"] == list(ex.grid.shape)
        assert np.allclose(grid, ex.grid, rtol=0, atol=1e-6)
        heat = _b64_png(got["heatmap_png"])
        assert heat.shape == img.shape[:2]
        assert np.abs(heat.astype(int) - np.rint(ex.heatmap * 255).astype(int)).max() <= 1
        overlay = _b64_png(got["overlay_png"])
        expected = ex.overlay(OverlayStyle(colormap="inferno"))
        assert np.abs(overlay.astype(int) - expected.astype(int)).max() <= 1
        assert got["explained_class"] is None  # class-agnostic methods explain no one class


def test_raw_body_upload_with_query_fields(live, demo, reference):
    srv, stream, client = live
    data = Path(demo[0][1]).read_bytes()
    r = client.post("/v1/explain?method=attention&layer=-1&topk=2", content=data, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    ex = reference.explain(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), "attention", layer=-1, topk=2)
    assert np.allclose(np.array(r.json()["grid"]["values"], np.float32), ex.grid, atol=1e-6)
    assert len(r.json()["topk"]) == 2


def test_model_methods_and_health(live):
    srv, stream, client = live
    model = client.get("/v1/model").json()
    assert model["path"] == "shapes_vit.onnx" and model["meta"]["num_layers"] == 4
    assert "/" not in model["path"]  # no server paths
    methods = {m["name"]: m for m in client.get("/v1/methods").json()["methods"]}
    assert methods["attention"]["options"]["layer"]["axis"] == "layers"
    assert methods["rollout"]["runs_on_model"] and not methods["chefer"]["runs_on_model"]
    assert client.get("/healthz").json() == {"status": "ok", "stream": "running"}


# --------------------------------------------------------------------------- limits and bad uploads
@pytest.fixture(scope="module")
def api_only():
    """An API-only server (no source) with small limits: 200 kB uploads, 1 megapixel images."""
    settings = ServerSettings(limits=Limits(max_upload_bytes=200_000, max_pixels=1_000_000))
    with running_server(None, settings=settings) as (srv, _):
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            yield srv, client


def _assert_json_error(r, status: int | tuple[int, ...], needle: str = ""):
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "status"} and body["status"] == r.status_code
    assert "Traceback" not in body["error"] and "\n" not in body["error"]
    assert needle.lower() in body["error"].lower(), body["error"]


def test_upload_limits_are_checked_before_reading(api_only):
    srv, client = api_only
    big = b"\x89PNG\r\n\x1a\n" + bytes(300_000)
    _assert_json_error(_upload(client, big), 413, "over the limit of 200,000")

    def chunks():  # no Content-Length: the limit must hold on the streamed body too
        for _ in range(40):
            yield bytes(10_000)

    r = client.post("/v1/explain", content=chunks(), headers={"Content-Type": "image/png"})
    _assert_json_error(r, 413, "over the limit")
    # a liar: a small Content-Length and a big body is cut by the HTTP layer, never read past the limit
    sock = socket.create_connection((srv.host, srv.port))
    try:
        sock.sendall(b"POST /v1/explain HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: abc\r\n\r\n")
        reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 400")
    finally:
        sock.close()


def test_decompression_bombs_are_refused_from_the_header(api_only):
    from corpus.make_corpus import png_file
    import zlib

    srv, client = api_only
    bomb = png_file(60000, 60000, 2, 8, idat=zlib.compress(b"\x00" * 64))
    _assert_json_error(_upload(client, bomb), 413, "60000 x 60000")
    just_over = cv2.imencode(".png", np.zeros((1001, 1000, 3), np.uint8))[1].tobytes()
    _assert_json_error(_upload(client, just_over), 413, "1,001,000 pixels")


def test_bad_requests_get_json_4xx(api_only, demo):
    srv, client = api_only
    png = Path(demo[0][0]).read_bytes()
    _assert_json_error(client.post("/v1/explain", files={"file": ("a.png", png)}), 422, "field 'image'")
    _assert_json_error(client.post("/v1/explain", files={"image": (None, "not a file")}), 422, "a text value")
    _assert_json_error(client.post("/v1/explain", data={"image": "not a file"}), 415, "multipart/form-data")
    _assert_json_error(client.post("/v1/explain", files=[("image", ("a.png", png)), ("other", ("b.png", png))]),
                       422, "one file")
    _assert_json_error(_upload(client, png, methd="rollout"), 422, "Did you mean 'method'")
    _assert_json_error(_upload(client, png, method="chefer"), 422, "gradients")
    _assert_json_error(_upload(client, png, method="attention", layer="9"), 422, "layer")
    _assert_json_error(_upload(client, png, target="circle"), 422, "class-agnostic")
    _assert_json_error(client.post("/v1/explain", content=png, headers={"Content-Type": "text/plain"}), 415)
    _assert_json_error(client.post("/v1/explain", content=b"--x\r\nbroken",
                                   headers={"Content-Type": "multipart/form-data; boundary=x"}), (400, 422))
    _assert_json_error(client.get("/v1/explain"), 405)
    _assert_json_error(client.get("/v1/stream.mjpg"), 404, "API only")


def test_the_bad_image_corpus_gets_4xx_never_5xx(api_only, tmp_path):
    from corpus.make_corpus import EITHER, FAIL, OK, image_cases

    srv, client = api_only
    seen = {FAIL: 0, OK: 0, EITHER: 0}
    for case in image_cases():
        path = case.make(tmp_path)
        if path.is_dir():
            continue
        r = _upload(client, path.read_bytes(), case.name)
        if case.expect == FAIL:
            _assert_json_error(r, (400, 413), "")
        elif case.expect == OK:
            assert r.status_code == 200, (case.name, r.text)
            assert r.json()["image"] == {"width": case.size[1], "height": case.size[0]}, case.name
        else:
            assert r.status_code in (200, 400, 413), (case.name, r.status_code, r.text)
            if r.status_code != 200:
                _assert_json_error(r, (400, 413))
        seen[case.expect] += 1
    assert seen[FAIL] > 50 and seen[OK] > 5 and seen[EITHER] > 10


# --------------------------------------------------------------------------- auth and CORS
TOKEN = "test-token-0123456789abcdef"


def test_a_token_guards_everything_but_healthz(demo):
    settings = ServerSettings(token=TOKEN)
    with running_server(None, settings=settings) as (srv, _), \
            httpx.Client(base_url=srv.url, timeout=30, follow_redirects=False) as c:
        assert c.get("/healthz").status_code == 200
        for path in ("/", "/v1/model", "/v1/methods", "/metrics", "/static/app.js"):
            r = c.get(path)
            _assert_json_error(r, 401, "token")
            assert r.headers["www-authenticate"].startswith("Bearer")
        _assert_json_error(c.post("/v1/explain", files={"image": ("a.png", b"x")}), 401)
        _assert_json_error(c.get("/v1/model", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"}), 401)
        assert c.get("/v1/model", headers={"Authorization": "Bearer " + TOKEN}).status_code == 200
        # the page: opened once with ?token=, answered with a cookie and a redirect that drops it
        _assert_json_error(c.get("/?token=wrong"), 401, "wrong")
        r = c.get("/?token=" + TOKEN)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert c.get("/v1/model", headers={"Cookie": f"attnmap_token={TOKEN}"}).status_code == 200
        assert c.get("/", headers={"Cookie": f"attnmap_token={TOKEN}"}).status_code == 200
        assert _metric(c, "attnmap_frames_total") == 0  # /metrics without the token reads nothing


def test_cors_only_when_asked(demo):
    settings = ServerSettings(cors_origins=("http://dash.local",))
    with running_server(None, settings=settings) as (srv, _), httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.get("/v1/model", headers={"Origin": "http://dash.local"})
        assert r.headers["access-control-allow-origin"] == "http://dash.local"
        r = c.get("/v1/model", headers={"Origin": "http://evil.local"})
        assert "access-control-allow-origin" not in r.headers


def test_cross_site_posts_and_foreign_hosts_are_refused(live, demo):
    srv, stream, client = live
    r = client.post("/v1/stream/state", json={"paused": True}, headers={"Origin": "http://evil.example"})
    _assert_json_error(r, 403, "another origin")
    assert client.get("/v1/stream/state").json()["state"]["paused"] is False
    png = Path(demo[0][0]).read_bytes()
    r = client.post("/v1/explain", files={"image": ("a.png", png)}, headers={"Origin": "http://evil.example"})
    _assert_json_error(r, 403, "another origin")
    settings = ServerSettings(allowed_hosts=("127.0.0.1", "localhost", "::1"))
    with running_server(None, settings=settings) as (srv2, _), httpx.Client(base_url=srv2.url, timeout=30) as c:
        assert c.get("/v1/model").status_code == 200
        _assert_json_error(c.get("/v1/model", headers={"Host": "rebound.example"}), 403, "rebound.example")


def test_class_specific_methods_explain_the_asked_class(tiny_vit_grads_onnx):
    img = np.random.default_rng(5).integers(0, 256, (40, 56, 3), np.uint8)
    png = cv2.imencode(".png", img)[1].tobytes()
    reference = Explainer(tiny_vit_grads_onnx)
    with running_server(None, explainer=Explainer(tiny_vit_grads_onnx)) as (srv, _), \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        for target, label in (("3", "cat"), ("truck", "truck")):
            r = _upload(c, png, method="chefer", target=target, start_layer="0")
            assert r.status_code == 200, r.text
            got = r.json()
            ex = reference.explain(img, "chefer", target=label, start_layer=0)
            assert got["explained_class"] == {"index": ex.target, "label": label}
            assert np.allclose(np.array(got["grid"]["values"], np.float32), ex.grid, atol=1e-6)
        _assert_json_error(_upload(c, png, method="chefer", target="zebra"), 422, "unknown class 'zebra'")
        _assert_json_error(_upload(c, png, method="chefer", target="10"), 422, "out of range")


# --------------------------------------------------------------------------- CLI
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_and_stops_on_ctrl_c(demo):
    port = _free_port()
    env = dict(os.environ, ATTNMAP_TOKEN="")
    proc = subprocess.Popen([sys.executable, "-m", "attnmap.cli", "serve", str(demo[1]), "--port", str(port),
                             "--model", str(SHIPPED), "--method", "attention", "--layer", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/stream/state", timeout=5)
                if r.status_code == 200 and r.json()["status"]["frames"] > 0:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server never answered"
            time.sleep(0.2)
        assert r.json()["state"]["options"] == {"layer": 1}
        with httpx.stream("GET", f"http://127.0.0.1:{port}/v1/stream.mjpg", timeout=30) as s:
            decode_jpeg(read_parts(s, 1)[0][1])
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert f"http://127.0.0.1:{port}/" in err.decode()
    assert "Traceback" not in err.decode()


def test_cli_refuses_a_public_bind_without_a_token_and_names_the_extra(monkeypatch):
    from click.testing import CliRunner

    from attnmap.cli import main

    monkeypatch.delenv("ATTNMAP_TOKEN", raising=False)
    r = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--model", str(SHIPPED)])
    assert r.exit_code == 1 and "without a token" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "starlette" else real(name, *a))
    r = CliRunner().invoke(main, ["serve"])
    assert r.exit_code == 1 and "pip install 'attnmap[serve]'" in r.output
    assert len(r.output.strip().splitlines()) == 1
