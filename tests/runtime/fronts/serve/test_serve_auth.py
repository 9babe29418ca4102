"""Authentication that no header can slow down (issue 27, part 2), against real servers on loopback.

* The Cookie header is read by a linear split, never by ``http.cookies.SimpleCookie`` (quadratic
  on Python 3.11: CVE-2024-7592).
* The token comes from a file or ``$ATTNMAP_TOKEN``; one on the command line gets a warning.
* ``?token=`` keeps a ``+``; a CORS preflight passes before auth; a loopback bind to an address
  other than 127.0.0.1 answers requests addressed to that address.

No test bounds how long anything takes; the one timing is a ratio of two parses, each the
fastest of several runs.
"""

from __future__ import annotations

import http.cookies
import time

import httpx
import pytest
from click.testing import CliRunner

from attnmap import Explainer
from attnmap.cli import main
from attnmap.runtime.core.errors import ServeError
from attnmap.runtime.frames.synth import write_demo_inputs
from attnmap.runtime.fronts.serve import runner, security
from attnmap.runtime.fronts.serve.app import ServerSettings, create_app
from attnmap.runtime.fronts.serve.runner import BackgroundServer, bind_settings
from serve_helpers import SHIPPED, running_server

TOKEN = "test-token-0123456789abcdef"
# What CVE-2024-7592 needs: a quoted cookie value of backslashes. SimpleCookie took about 0.95 s
# of the event loop on this one (Python 3.11).
PATHOLOGICAL = 'attnmap_token="' + "\\" * 7900 + '"'


@pytest.fixture
def no_simplecookie(monkeypatch):
    """Every SimpleCookie parse raises: a code path that still uses it fails the test."""
    def refuse(self, rawdata):
        raise AssertionError("http.cookies was used to parse a Cookie header")

    monkeypatch.setattr(http.cookies.BaseCookie, "load", refuse)


# --------------------------------------------------------------------------- the cookie parser
def test_the_cookie_is_read_without_simplecookie(no_simplecookie):
    assert security.presented_token({"cookie": f"a=1; {security.COOKIE}={TOKEN}; b=2"}) == TOKEN
    assert security.presented_token({"cookie": f"{security.COOKIE} = {TOKEN} "}) == TOKEN
    assert security.presented_token({"cookie": "attnmap_tokenx=" + TOKEN}) is None
    assert security.presented_token({"cookie": PATHOLOGICAL}) is None  # quotes and escapes: no token
    assert security.presented_token({"cookie": 'x="\\' + "\\" * 100_000 + '"; ' + PATHOLOGICAL}) is None
    # A header over the bound presents no token, even when the token is in it.
    assert security.presented_token({"cookie": "a=" + "b" * security.MAX_COOKIE_HEADER + f"; {security.COOKIE}={TOKEN}"}) is None
    assert security.cookie_token("") is None and security.cookie_token(";;;==;") is None


def _fastest(fn, arg, runs: int = 15) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best


def test_a_pathological_cookie_costs_what_a_benign_one_of_its_length_costs():
    # Both headers are as long as the bound allows. SimpleCookie spent about 10^4 times longer on
    # the backslashes than on the letters; a linear parse spends about the same on both.
    n = 16 * 1024  # security.MAX_COOKIE_HEADER, the longest header read
    evil = {"cookie": (PATHOLOGICAL[:-1] + "\\" * n)[: n - 1] + '"'}
    benign = {"cookie": (f"{security.COOKIE}=" + "a" * n)[:n]}
    assert len(evil["cookie"]) == len(benign["cookie"]) == n
    ratio = _fastest(security.presented_token, evil) / max(_fastest(security.presented_token, benign), 1e-9)
    assert ratio < 20, f"the pathological header cost {ratio:.0f} times the benign one"
    assert security.presented_token(evil) is None
    assert security.MAX_COOKIE_HEADER == n


def test_a_pathological_cookie_gets_401_and_a_good_cookie_still_passes(no_simplecookie):
    with running_server(None, settings=ServerSettings(token=TOKEN)) as (srv, _), \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        for cookie in (PATHOLOGICAL, PATHOLOGICAL + "; other=1", "a=" + "\\" * 60_000):
            r = c.get("/v1/model", headers={"Cookie": cookie})
            assert r.status_code == 401 and "token" in r.json()["error"], r.text
        r = c.get("/v1/model", headers={"Cookie": f'junk="\\\\\\"; {security.COOKIE}={TOKEN}; more=2'})
        assert r.status_code == 200, r.text
        assert c.get("/healthz").status_code == 200


# --------------------------------------------------------------------------- ?token= with '+'
def test_a_token_with_plus_works_in_the_address_as_typed_and_percent_encoded():
    token = "abc+def/ghi=jkl+0123456789"
    with running_server(None, settings=ServerSettings(token=token)) as (srv, _), \
            httpx.Client(base_url=srv.url, timeout=30, follow_redirects=False) as c:
        for typed in (token, token.replace("+", "%2B")):
            r = c.get("/?token=" + typed)
            assert r.status_code == 303, (typed, r.text)
            assert r.headers["set-cookie"].startswith(f"{security.COOKIE}={token};")
            assert "Secure" not in r.headers["set-cookie"]  # plain HTTP: a Secure cookie would never come back
        assert c.get("/?token=" + token.replace("+", " ")).status_code == 401
        assert c.get("/v1/model", headers={"Cookie": f"{security.COOKIE}={token}"}).status_code == 200
        assert c.get("/?token=", headers={"Cookie": f"{security.COOKIE}={token}"}).status_code == 200
    assert security.query_token("token=" + token) == token
    assert security.query_token("x=1&token=" + token.replace("+", "%2B")) == token
    assert security.query_token(b"tokenx=1") is None


# --------------------------------------------------------------------------- token sources
def test_the_token_comes_from_a_file_or_the_environment(tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert security.resolve_token("0.0.0.0", None, environ={}, token_file=f) == TOKEN
    assert security.resolve_token("0.0.0.0", None, environ={"ATTNMAP_TOKEN": "e" * 20}, token_file=f) == TOKEN
    with pytest.raises(ServeError, match="not both"):
        security.resolve_token("0.0.0.0", TOKEN, environ={}, token_file=f)
    with pytest.raises(ServeError, match="cannot read the token file .*missing"):
        security.resolve_token("0.0.0.0", None, environ={}, token_file=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ServeError, match="one line; got an empty file"):
        security.resolve_token("0.0.0.0", None, environ={}, token_file=tmp_path / "empty")
    (tmp_path / "two").write_text(TOKEN + "\n" + TOKEN)
    with pytest.raises(ServeError, match="one line; got 2 lines"):
        security.resolve_token("0.0.0.0", None, environ={}, token_file=tmp_path / "two")


@pytest.fixture
def served(monkeypatch):
    """Run `attnmap serve` through the CLI up to the point where uvicorn would start; the app it
    built (and its bind) are kept for the test to run on a BackgroundServer."""
    seen = {}

    def keep(app, host, port, **kwargs):
        seen.update(app=app, host=host, port=port, **kwargs)

    monkeypatch.setattr(runner, "run_server", keep)
    monkeypatch.delenv("ATTNMAP_TOKEN", raising=False)
    return seen


def test_cli_token_file_and_environment_guard_the_server_and_argv_warns(served, tmp_path, monkeypatch):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    cli = CliRunner()
    r = cli.invoke(main, ["serve", "--model", str(SHIPPED), "--host", "0.0.0.0", "--token-file", str(f)])
    assert r.exit_code == 0, r.output
    assert "warning" not in r.stderr and "(token required)" in r.stderr
    with BackgroundServer(served["app"]) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/model", headers={"Authorization": "Bearer " + TOKEN}).status_code == 200

    monkeypatch.setenv("ATTNMAP_TOKEN", TOKEN)
    r = cli.invoke(main, ["serve", "--model", str(SHIPPED), "--host", "0.0.0.0"])
    assert r.exit_code == 0 and "warning" not in r.stderr and served["app"].settings.token == TOKEN

    r = cli.invoke(main, ["serve", "--model", str(SHIPPED), "--token", "argv-token-0123456789"])
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "ps" in warnings[0] and "--token-file" in warnings[0], r.stderr
    assert served["app"].settings.token == "argv-token-0123456789"

    r = cli.invoke(main, ["serve", "--model", str(SHIPPED), "--token", TOKEN, "--token-file", str(f)])
    assert r.exit_code == 1 and "not both" in r.output and len(r.output.strip().splitlines()) == 2  # warning + error


# --------------------------------------------------------------------------- CORS preflight
def test_a_cors_preflight_passes_before_auth_and_the_real_request_needs_the_token():
    origin = "http://dash.local"
    settings = ServerSettings(token=TOKEN, cors_origins=(origin,))
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    with running_server(None, settings=settings) as (srv, _), httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.options("/v1/explain", headers=preflight)
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == origin
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        assert "POST" in r.headers["access-control-allow-methods"]
        # what the page then sends: without the token it is refused, with it answered
        assert c.get("/v1/model", headers={"Origin": origin}).status_code == 401
        r = c.get("/v1/model", headers={"Origin": origin, "Authorization": "Bearer " + TOKEN})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        # an OPTIONS that is not a preflight is no way around the token
        assert c.options("/v1/model").status_code == 401
    # with CORS off a preflight is not let through
    with running_server(None, settings=ServerSettings(token=TOKEN)) as (srv, _), \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.options("/v1/explain", headers=preflight).status_code == 401


# --------------------------------------------------------------------------- the bound address
def test_a_loopback_bind_answers_requests_addressed_to_its_own_address(served):
    assert bind_settings(None, "127.0.0.1").allowed_hosts == security.LOOPBACK_NAMES
    assert bind_settings(None, "::1").allowed_hosts == security.LOOPBACK_NAMES
    assert bind_settings(None, "0.0.0.0", environ={"ATTNMAP_TOKEN": TOKEN}).allowed_hosts == ()
    r = CliRunner().invoke(main, ["serve", "--model", str(SHIPPED), "--host", "127.0.0.2"])
    assert r.exit_code == 0, r.output
    assert served["host"] == "127.0.0.2" and "127.0.0.2" in served["app"].settings.allowed_hosts
    try:
        srv = BackgroundServer(served["app"], host="127.0.0.2")
    except ServeError as exc:  # a system without the whole of 127.0.0.0/8 on lo
        pytest.skip(f"cannot bind 127.0.0.2 here: {exc}")
    with srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get("/v1/model").status_code == 200  # Host: 127.0.0.2:PORT
        assert c.get("/v1/model", headers={"Host": "localhost"}).status_code == 200
        assert c.get("/v1/model", headers={"Host": "rebound.example"}).status_code == 403
    # the same app built by hand, for a library user
    app = create_app(Explainer(SHIPPED), None, bind_settings(None, "127.0.0.2"))
    with BackgroundServer(app, host="127.0.0.2") as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get("/v1/model").status_code == 200


# --------------------------------------------------------------------------- behind a reverse proxy
def test_the_documented_reverse_proxy_setup(demo_video):
    """What nginx sends with the set-up in the docs (TLS at the proxy, ``proxy_pass`` to a loopback
    bind): ``Host`` is the upstream's own (nginx's default ``$proxy_host``), ``X-Forwarded-Proto``
    and ``X-Forwarded-For`` name the browser's side, and the page's POSTs carry the public origin."""
    public = "https://attnmap.example.org"
    settings = bind_settings(ServerSettings(token=TOKEN, cors_origins=(public,)), "127.0.0.1")
    with running_server(str(demo_video), settings=settings) as (srv, _), \
            httpx.Client(base_url=srv.url, timeout=30, follow_redirects=False) as c:
        proxied = {"Host": f"127.0.0.1:{srv.port}", "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
        r = c.get("/?token=" + TOKEN, headers=proxied)
        assert r.status_code == 303 and "; Secure" in r.headers["set-cookie"]  # the proxy's https counts
        page = {**proxied, "Cookie": f"{security.COOKIE}={TOKEN}", "Origin": public}
        r = c.post("/v1/stream/state", json={"paused": False}, headers=page)
        assert r.status_code == 200, r.text
        # without --cors-origin for the public name the page's POSTs are cross-origin to the server
        # (it sees Host 127.0.0.1), and a Host passed through unchanged is refused by a loopback bind
        r = c.post("/v1/stream/state", json={"paused": False}, headers={**page, "Origin": "https://other.example"})
        assert r.status_code == 403
        assert c.get("/v1/model", headers={**page, "Host": "attnmap.example.org"}).status_code == 403


@pytest.fixture(scope="module")
def demo_video(tmp_path_factory):
    return write_demo_inputs(tmp_path_factory.mktemp("proxy"), seed=2, n_images=1, video_frames=12, size=96)[1]
