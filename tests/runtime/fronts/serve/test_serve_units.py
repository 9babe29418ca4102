"""`attnmap serve` building blocks without a server: metrics text, tokens and bind rules, the
state the page changes, the explain fields, and the broadcaster's newest-frame policy."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest
from extras import need

from attnmap import Explainer
from attnmap.runtime.core.errors import OptionError
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.live.state import LiveState, method_options
from attnmap.runtime.fronts.serve import ServeError, require_extra
from attnmap.runtime.fronts.serve import control, security
from attnmap.runtime.fronts.serve.api import parse_fields
from attnmap.runtime.fronts.serve.metrics import Registry
from attnmap.runtime.fronts.serve.stream import Broadcaster, StreamConfig

SHIPPED = Path(__file__).resolve().parents[4] / "models" / "shapes_vit.onnx"


@pytest.fixture(scope="module")
def meta():
    return Explainer(SHIPPED).meta


# --------------------------------------------------------------------------- metrics
def _parse_prometheus(text: str) -> dict[str, float]:
    """name{labels} -> value for every sample line (an independent reading of the text format)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, value = line.rsplit(" ", 1)
        out[key] = float(value.replace("+Inf", "inf"))
    return out


def test_histogram_counts_are_exact_and_cumulative():
    rng = np.random.default_rng(0)
    values = rng.exponential(0.05, size=1000)
    bounds = (0.001, 0.01, 0.05, 0.1, 1.0)
    reg = Registry()
    reg.histogram("t_seconds", "test", ("stage",), buckets=bounds)
    for v in values:
        reg.observe("t_seconds", v, stage="inference")
    got = _parse_prometheus(reg.render())
    for b in bounds:
        assert got[f't_seconds_bucket{{stage="inference",le="{b:g}"}}'] == int((values <= b).sum())
    assert got['t_seconds_bucket{stage="inference",le="+Inf"}'] == 1000
    assert got['t_seconds_count{stage="inference"}'] == 1000
    assert got['t_seconds_sum{stage="inference"}'] == pytest.approx(float(values.sum()), rel=1e-12)


def test_counters_labels_are_escaped_and_refuse_to_decrease():
    reg = Registry()
    reg.counter("req_total", "requests", ("route", "status"))
    reg.inc("req_total", route='/a"b\\c', status="200")
    reg.inc("req_total", 2, route='/a"b\\c', status="200")
    assert 'req_total{route="/a\\"b\\\\c",status="200"} 3' in reg.render().splitlines()
    with pytest.raises(ValueError, match="cannot decrease"):
        reg.inc("req_total", -1, route="/", status="200")
    with pytest.raises(KeyError, match="takes labels"):
        reg.inc("req_total", route="/")
    assert reg.value("req_total", route='/a"b\\c', status="200") == 3


def test_unlabelled_families_show_zero_before_any_update():
    reg = Registry()
    reg.counter("frames_total", "frames")
    reg.histogram("lat_seconds", "latency", buckets=(0.1,))
    got = _parse_prometheus(reg.render())
    assert got == {"frames_total": 0, 'lat_seconds_bucket{le="0.1"}': 0, 'lat_seconds_bucket{le="+Inf"}': 0,
                   "lat_seconds_sum": 0, "lat_seconds_count": 0}


# --------------------------------------------------------------------------- security
@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("localhost", True),
                                            ("::1", True), ("[::1]", True), ("0.0.0.0", False),
                                            ("192.168.1.4", False), ("::", False), ("example.org", False)])
def test_is_loopback(host, loopback):
    assert security.is_loopback(host) is loopback


def test_beyond_loopback_needs_a_token():
    with pytest.raises(ServeError, match="without a token.*ATTNMAP_TOKEN"):
        security.resolve_token("0.0.0.0", None, environ={})
    assert security.resolve_token("0.0.0.0", None, environ={"ATTNMAP_TOKEN": "x" * 16}) == "x" * 16
    assert security.resolve_token("0.0.0.0", "y" * 20, environ={"ATTNMAP_TOKEN": "x" * 16}) == "y" * 20
    assert security.resolve_token("127.0.0.1", None, environ={}) is None
    with pytest.raises(ServeError, match="at least 16 characters; got 5"):
        security.resolve_token("127.0.0.1", "short", environ={})


def test_presented_token_from_header_or_cookie():
    assert security.presented_token({"authorization": "Bearer abc"}) == "abc"
    assert security.presented_token({"authorization": "bearer   abc "}) == "abc"
    assert security.presented_token({"authorization": "Basic abc"}) is None
    assert security.presented_token({"cookie": "a=1; attnmap_token=tok123; b=2"}) == "tok123"
    assert security.presented_token({"cookie": "attnmap_tokenx=tok"}) is None
    assert security.presented_token({}) is None
    assert security.token_matches("s3cret-token-0123", "s3cret-token-0123")
    assert not security.token_matches("s3cret-token-0123", "s3cret-token-0124")
    assert not security.token_matches("s3cret-token-0123", None)
    assert not security.token_matches("s3cret-token-0123", "s3cret-\udcff")  # undecodable bytes in a header


def test_limits_are_checked():
    with pytest.raises(ServeError, match="max_pixels must be a positive integer"):
        security.Limits(max_pixels=0)
    with pytest.raises(OptionError, match="max_fps"):
        StreamConfig(max_fps=0)


def test_require_extra_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(ServeError, match=r"needs uvicorn .*pip install 'attnmap\[serve\]'"):
        require_extra()


# --------------------------------------------------------------------------- state changes
def _state(meta) -> LiveState:
    return LiveState(method="rollout", options={}, fit="crop", style=OverlayStyle(label=False),
                     methods=("rollout", "attention", "flow"), num_layers=meta.num_layers,
                     num_heads=meta.output_heads)


def test_state_change_is_checked_whole_and_leaves_the_original(meta):
    state = _state(meta)
    new, smooth = control.apply_changes(state, {"method": "attention", "layer": 1, "head": 2, "colormap": "Inferno",
                                                "smooth": 0.5, "fit": "letterbox"}, meta, 0.0)
    assert (state.method, state.layer, state.version, state.colormap) == ("rollout", None, 0, "jet")
    assert method_options(new) == {"layer": 1, "head": 2}
    assert (new.fit, new.colormap, smooth, new.version) == ("letterbox", "inferno", 0.5, 1)
    control.commit(state, new)
    assert method_options(state) == {"layer": 1, "head": 2} and state.version == 1
    # The colour map alone does not restart the map (no version bump), as with the `c` key.
    again, _ = control.apply_changes(state, {"colormap": "viridis"}, meta, 0.5)
    assert again.version == 1 and again.colormap == "viridis"
    # rollout takes the layer as its start_layer
    roll, _ = control.apply_changes(state, {"method": "rollout"}, meta, 0.5)
    assert method_options(roll) == {"start_layer": 1}


@pytest.mark.parametrize("changes, message", [
    ({"method": "chefer"}, "method must be one of rollout, attention, flow; got 'chefer'"),
    ({"metod": "rollout"}, "unknown state field 'metod'.*Did you mean 'method'"),
    ({"layer": 4}, r"must be in \[-4, 4\) for a model with 4 layers; got 4"),
    ({"layer": "1"}, "must be a layer index"),
    ({"method": "rollout", "head": 0}, "head: method 'rollout' has no head choice"),
    ({"method": "attention", "head": 3}, r"must be in \[-3, 3\)"),
    ({"head_fusion": "median"}, "one of mean, max, min; got 'median'"),
    ({"colormap": "jett"}, "jett"),
    ({"fit": "stretch"}, "fit must be one of crop, squash, letterbox"),
    ({"smooth": 1.0}, r"smooth must be a number in \[0, 1\)"),
    ({"smooth": True}, "smooth must be a number"),
    ({"paused": "yes"}, "paused must be true or false"),
    (["method"], "must be a JSON object"),
])
def test_bad_state_changes_are_refused_with_the_field_named(meta, changes, message):
    state = _state(meta)
    with pytest.raises(OptionError, match=message):
        control.apply_changes(state, changes, meta, 0.0)
    assert state.version == 0 and state.method == "rollout"


# --------------------------------------------------------------------------- explain fields
def test_explain_fields_parse_to_typed_options(meta):
    req = parse_fields({"method": "attention", "layer": "-1", "head": "none", "topk": "3", "png": "overlay,heatmap",
                        "colormap": "turbo", "fit": "squash"}, meta)
    assert (req.method, req.fit, req.topk, req.png, req.style.colormap) == ("attention", "squash", 3,
                                                                           ("overlay", "heatmap"), "turbo")
    assert req.options == {"layer": -1, "head": None}


@pytest.mark.parametrize("fields, message", [
    ({"method": "gradcam"}, "needs"),
    ({"method": "rollouts"}, "Did you mean 'rollout'"),
    ({"layer": "1"}, "unknown field 'layer' for method 'rollout'"),
    ({"topk": "0"}, r"topk must be an integer in \[1, 7\]"),
    ({"topk": "two"}, "topk must be an integer"),
    ({"png": "mask"}, "png must list some of heatmap, overlay"),
    ({"discard_ratio": "1.5"}, "discard_ratio"),
    ({"target": "circle"}, "class-agnostic"),
])
def test_bad_explain_fields(meta, fields, message):
    with pytest.raises(Exception, match=message) as info:
        parse_fields(fields, meta)
    assert isinstance(info.value, OptionError) or type(info.value).__name__ == "ExplainError"


# --------------------------------------------------------------------------- broadcaster
def test_viewers_take_the_newest_frame_and_count_what_they_skipped():
    async def scenario():
        b = Broadcaster()
        b.bind(asyncio.get_running_loop())
        fast, slow = [], []

        async def viewer(out, delay_after_first):
            async for version, jpeg, skipped in b.frames():
                out.append((version, jpeg, skipped))
                if delay_after_first:
                    await released.wait()

        released = asyncio.Event()
        tasks = [asyncio.create_task(viewer(fast, False)), asyncio.create_task(viewer(slow, True))]
        for i in range(1, 6):
            b.publish(b"frame%d" % i)
            for _ in range(5):
                await asyncio.sleep(0)
        released.set()  # the slow viewer comes back after frame 5 was published
        for _ in range(5):
            await asyncio.sleep(0)
        b.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return fast, slow

    fast, slow = asyncio.run(scenario())
    assert [v for v, _, _ in fast] == [1, 2, 3, 4, 5]
    assert all(s == 0 for _, _, s in fast)
    # The slow one sent frame 1, was busy through 2-4, and then took the newest: 5, skipping 3.
    assert [(v, j, s) for v, j, s in slow] == [(1, b"frame1", 0), (5, b"frame5", 3)]


def test_publish_never_waits_for_viewers():
    b = Broadcaster()  # no event loop bound, nobody reading: publishing still just replaces the slot
    for i in range(1000):
        assert b.publish(b"x%d" % i) == i + 1
    assert b.latest() == (1000, b"x999")


def test_methods_document_derives_from_the_specs(meta):
    # /v1/methods documents every option with its range in words (derived from the specs).
    from attnmap.runtime.fronts.serve.api import methods_document

    doc = {m["name"]: m for m in methods_document(meta)["methods"]}
    assert doc["rollout"]["runs_on_model"] and not doc["chefer"]["runs_on_model"]
    assert re.search(r"in \[0, 1\)", doc["rollout"]["options"]["discard_ratio"]["allowed"])


def test_token_characters_are_those_a_cookie_and_a_url_carry():
    with pytest.raises(ServeError, match="only letters, digits"):
        security.resolve_token("127.0.0.1", "a; Path=/; evil=1234567", environ={})
    assert security.resolve_token("::1", "Abc_-.~+/=0123456789", environ={}) == "Abc_-.~+/=0123456789"


@pytest.mark.parametrize("header, name", [("127.0.0.1:8000", "127.0.0.1"), ("[::1]:8000", "::1"), ("[::1]", "::1"),
                                          ("LocalHost", "localhost"), ("evil.example:80", "evil.example")])
def test_host_name(header, name):
    assert security.host_name(header) == name


def test_refusals_of_foreign_hosts_and_cross_origin_posts():
    loop = security.LOOPBACK_NAMES
    same = {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}
    assert security.refusal("POST", same, "http", loop, ()) is None
    assert security.refusal("GET", {"host": "localhost:8000"}, "http", loop, ()) is None
    assert "Host 'rebound.example:8000'" in security.refusal("GET", {"host": "rebound.example:8000"}, "http", loop, ())
    foreign = {"host": "127.0.0.1:8000", "origin": "http://evil.example"}
    assert "another origin" in security.refusal("POST", foreign, "http", (), ())
    assert security.refusal("GET", foreign, "http", (), ()) is None  # reading is what CORS governs
    assert security.refusal("POST", foreign, "http", (), ("http://evil.example",)) is None
    assert "opaque origin" in security.refusal("POST", {"host": "h", "origin": "null"}, "http", (), ())
    assert security.refusal("POST", {"host": "h"}, "http", (), ()) is None  # no Origin: not a browser page


def test_the_api_beside_a_cpu_stream_gets_a_single_threaded_session_of_its_own():
    """Uploads must not run in the stream's onnxruntime thread pool (the pool threads are not
    the API's lowered ones): beside a stream, the API has its own one-thread session of the
    same file, and it explains exactly as the stream's would."""
    need("starlette", "serve")
    need("uvicorn", "serve")
    from attnmap.runtime.fronts.serve.runner import api_explainer

    ex = Explainer(None, provider="cpu")
    assert api_explainer(ex, None) is ex  # API only: one session
    api = api_explainer(ex, object())  # any stream
    assert api is not ex and api.path == ex.path and api.model.threads == 1
    # the API's session frees each request's buffers; the stream's keeps its arena
    assert api.model.session.get_session_options().enable_cpu_mem_arena is False
    assert ex.model.session.get_session_options().enable_cpu_mem_arena is True
    img = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    a, b = ex.explain(img), api.explain(img)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)
    np.testing.assert_allclose(a.grid, b.grid, atol=1e-5)
