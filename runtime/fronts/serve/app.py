"""The Starlette app of ``attnmap serve`` (``runner.py`` runs it on uvicorn).

Routes (JSON unless said otherwise; ``/v1/`` is the API's version):

=============================  ==========================================================
``GET /``                      the page (``static/``: no CDN, works offline)
``GET /v1/stream.mjpg``        the annotated stream, ``multipart/x-mixed-replace`` JPEGs
``GET|POST /v1/stream/state``  the live state and loop status; POST changes the state
``GET /v1/stream/snapshot``    the frame on show, as a PNG download
``POST /v1/explain``           explain an uploaded image (multipart field ``image``, or
                               the raw image as the body with fields as query parameters)
``GET /v1/model``              the model's metadata
``GET /v1/methods``            the methods and their option specs
``GET /healthz``               liveness (no token needed)
``GET /metrics``               Prometheus text
=============================  ==========================================================

Every error is a JSON body ``{"error": message, "status": code}``: 4xx for what the client
sent, a 500 without a traceback for a fault of the server's own. A client that leaves before its
request is read is neither: one line in the log and ``attnmap_http_client_disconnects_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl

import anyio
import cv2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from attnmap.runtime.core.errors import AttnmapError, EncodeError, ExplainError, OptionError
from attnmap.runtime.core.memory import release_free_heap
from attnmap.runtime.fronts.serve import ServeError
from attnmap.runtime.fronts.serve import api, control
from attnmap.runtime.fronts.serve.admission import ClientGone, QueueFull, WorkQueue, cancellable
from attnmap.runtime.fronts.serve.form import read_form
from attnmap.runtime.fronts.serve.metrics import Registry, server_metrics
from attnmap.runtime.fronts.serve.security import (OPEN_PATHS, Limits, is_preflight, presented_token, query_token,
                                                   refusal, token_cookie, token_matches)
from attnmap.runtime.fronts.serve.stream import StreamLoop
from attnmap.runtime.methods.cost import Budget

_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/static/style.css": ("style.css", "text/css; charset=utf-8")}
_CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
_STATE_BODY_LIMIT = 64 * 1024
# The server's default work limit per explain request: RISE's default 1,000 masks and occlusion
# down to 4-pixel steps on a 224 x 224 input pass; 4,000 DeiT-Tiny runs take about 25 s on 2 cores.
SERVER_BUDGET = Budget(max_forward_passes=4000, max_batch_bytes=512 * 1024 ** 2)
_BUDGET_NAMES = {"max_forward_passes": "the server's --max-forward-passes",
                 "max_batch_bytes": "the server's --max-batch-mb"}
# The status a request from a client that went away ends with (nginx's "client closed
# request"); nobody receives it, and the metrics count it apart from the answered requests.
CLIENT_GONE = 499
_log = logging.getLogger("uvicorn.error")  # the server's log: uvicorn writes it to stderr
ROUTES = ("/", "/static/app.js", "/static/style.css", "/v1/stream.mjpg", "/v1/stream/state", "/v1/stream/snapshot",
          "/v1/explain", "/v1/model", "/v1/methods", "/healthz", "/metrics")


@dataclass(frozen=True)
class ServerSettings:
    """Who may call the server and what it accepts.

    Attributes:
        token: the bearer token every path but ``/healthz`` needs; None: no auth (loopback).
        limits: upload limits.
        cors_origins: origins allowed to call the API from a browser; empty: CORS off.
        allowed_hosts: names a request's ``Host`` may carry; empty: any (the runner sets the
            loopback names and the bound address for a loopback bind).
        api_workers: explanations computed at once (others wait their turn); on a small CPU
            one keeps the stream loop's share of the cores.
        api_queue: explain requests that may wait for a worker; past that a 429 with
            ``Retry-After`` (a waiting request holds its upload's bytes, undecoded).
        budget: the most work one explain request may ask for (model runs, memory at once),
            checked before it waits for a worker: 422 with the figures past it.
        upload_memory: request-body bytes all explain requests may hold at once (bodies arriving
            and bodies waiting); past it a 429.
        body_timeout: seconds a client has to send a request's body (slow senders get a 408).
        header_timeout: seconds a connection has to send a request's headers (the runner
            closes it then: slowloris).
        max_connections: open connections at most; the runner closes any past it at once, so
            idle connections cannot take the process's last file descriptors.
    """

    token: str | None = None
    limits: Limits = field(default_factory=Limits)
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    api_workers: int = 1
    api_queue: int = 4
    upload_memory: int = 256 * 1024 ** 2
    budget: Budget = SERVER_BUDGET
    body_timeout: float = 30.0
    header_timeout: float = 10.0
    max_connections: int = 512

    def __post_init__(self) -> None:
        for name, low in (("api_workers", 1), ("api_queue", 0), ("max_connections", 1),
                          ("upload_memory", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ServeError(f"{name} must be an integer >= {low}; got {value!r}")
        for name in ("body_timeout", "header_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ServeError(f"{name} must be a number of seconds > 0; got {value!r}")
        if not isinstance(self.budget, Budget):
            raise ServeError(f"budget must be a Budget; got {type(self.budget).__name__}")


class _Server:
    """What the routes share: the explainer, the stream loop (or None), metrics, settings."""

    def __init__(self, explainer, stream: StreamLoop | None, settings: ServerSettings, metrics: Registry,
                 default_method: str):
        self.explainer, self.stream, self.settings, self.metrics = explainer, stream, settings, metrics
        self.default_method = default_method
        self.viewers = 0
        # API explanations run in threads of their own, at a lower CPU priority than the stream
        # loop (Linux: per-thread nice), so a burst of uploads slows the API, not the stream.
        self.pool = ThreadPoolExecutor(settings.api_workers, thread_name_prefix="attnmap-api",
                                       initializer=_lower_priority)
        self.queue = WorkQueue(settings.api_workers, settings.api_queue, settings.upload_memory)

    # ------------------------------------------------------------------ pages and meta
    async def static(self, request: Request) -> Response:
        name, media = _STATIC[request.url.path]
        body = resources.files("attnmap.runtime.fronts.serve").joinpath("static", name).read_bytes()
        return Response(body, media_type=media, headers={"Content-Security-Policy": _CSP,
                                                         "X-Content-Type-Options": "nosniff",
                                                         "Cache-Control": "no-cache"})

    async def healthz(self, request: Request) -> JSONResponse:
        stream = "none" if self.stream is None else "running" if self.stream.running else \
            (self.stream.ended or "starting")
        failed = self.stream is not None and self.stream.ended == "error"
        return JSONResponse({"status": "error" if failed else "ok", "stream": stream},
                            status_code=503 if failed else 200)

    async def model(self, request: Request) -> JSONResponse:
        return JSONResponse(api.model_document(self.explainer))

    async def methods(self, request: Request) -> JSONResponse:
        return JSONResponse(api.methods_document(self.explainer.meta))

    async def prometheus(self, request: Request) -> PlainTextResponse:
        self.metrics.set("attnmap_stream_viewers", self.viewers)
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # ------------------------------------------------------------------ stream
    def _need_stream(self) -> StreamLoop:
        if self.stream is None:
            raise api.HTTPProblem(404, "this server runs the API only: start it with a SOURCE "
                                       "(`attnmap serve 0`) for a live stream")
        return self.stream

    async def mjpeg(self, request: Request) -> StreamingResponse:
        broadcaster = self._need_stream().broadcaster

        async def parts():
            self.viewers += 1
            try:
                async for version, jpeg, skipped in broadcaster.frames():
                    if skipped:
                        self.metrics.inc("attnmap_viewer_frames_skipped_total", skipped)
                    yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\nX-Frame: %d\r\n\r\n"
                           % (len(jpeg), version) + jpeg + b"\r\n")
            finally:
                self.viewers -= 1

        return StreamingResponse(parts(), media_type="multipart/x-mixed-replace; boundary=frame",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def state(self, request: Request) -> JSONResponse:
        stream = self._need_stream()
        if request.method == "POST":
            try:
                with anyio.fail_after(self.settings.body_timeout):
                    body = await api.read_limited(request.stream(), Limits(max_upload_bytes=_STATE_BODY_LIMIT))
            except TimeoutError:
                raise api.HTTPProblem(408, f"the request body did not arrive within {self.settings.body_timeout:g} "
                                           "s (the server's body timeout)") from None
            try:
                changes = _json(body)
            except ValueError as exc:
                raise api.HTTPProblem(400, f"the state change must be a JSON object; {exc}") from exc
            except RecursionError:
                raise api.HTTPProblem(422, "the state change is nested too deep; expected a flat JSON object "
                                           f"with fields among {', '.join(control.FIELDS)}") from None
            new, smooth = control.apply_changes(stream.state, changes, self.explainer.meta, stream.smooth)
            control.commit(stream.state, new)
            stream.smooth = smooth
        return JSONResponse({"state": control.describe(stream.state, stream.smooth), "status": stream.status()})

    async def snapshot(self, request: Request) -> Response:
        drawn = self._need_stream().last_drawn
        if drawn is None:
            raise api.HTTPProblem(409, "no frame has been drawn yet; try again in a moment")
        ok, buf = cv2.imencode(".png", drawn)
        if not ok:
            raise EncodeError("OpenCV could not PNG-encode the frame on show")
        name = f"attnmap-{time.strftime('%Y%m%d-%H%M%S')}.png"
        return Response(buf.tobytes(), media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})

    # ------------------------------------------------------------------ explain
    async def explain(self, request: Request) -> Response:
        limits = self.settings.limits
        api.check_content_length(request.headers, limits)
        held = 0

        def hold(n: int) -> None:
            nonlocal held
            self.queue.hold(n)
            held += n

        try:
            if self.queue.full:  # refused before the body is read: a full queue costs no upload
                raise QueueFull(self.queue.retry_after(), self.queue.workers + self.queue.size)
            data, name, fields = await self._read_upload(request, limits, hold)
            meta, budget = self.explainer.meta, self.settings.budget

            def check() -> api.ExplainRequest:
                return api.parse_fields(fields, meta, self.default_method, budget, _BUDGET_NAMES)

            req = await anyio.to_thread.run_sync(check)  # refused before it waits for a worker
            self.queue.enter()
        except QueueFull as exc:
            self.queue.drop(held)
            if await request.is_disconnected():  # nobody to tell: a disconnect, not a 429
                raise ClientDisconnect() from None
            raise api.HTTPProblem(429, str(exc), {"Retry-After": str(exc.retry_after)}) from None
        except BaseException:
            self.queue.drop(held)
            raise
        try:
            loop = asyncio.get_running_loop()

            async def execute(work, cancel):
                return await loop.run_in_executor(self.pool, work, cancel)

            def work(cancel) -> bytes:
                try:
                    return api.answer_json(cancellable(self.explainer, cancel), data, name, req, limits)
                finally:
                    # a big request's buffers are free now, but glibc keeps them in the worker
                    # thread's arena: without this the server's RSS stays at its largest request
                    release_free_heap()

            try:
                body = await self.queue.run(work, execute, lambda: _disconnected(request))
            except ClientGone:
                _log.warning("client %s left before its explanation was ready; the work was dropped",
                             _peer(request.scope))
                return Response(status_code=CLIENT_GONE)
            return Response(body, media_type="application/json")
        finally:
            self.queue.leave()
            self.queue.drop(held)

    async def _read_upload(self, request: Request, limits: Limits, hold) -> tuple[bytes, str, dict[str, str]]:
        """The image's bytes, how messages name it, and the text fields: read within the body
        timeout and the size limits, nothing decoded."""
        try:
            with anyio.fail_after(self.settings.body_timeout):
                ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype == "multipart/form-data":
                    return await read_form(request.headers, request.stream(), limits, hold)
                body = await api.read_limited(request.stream(), limits, hold)
        except TimeoutError:
            raise api.HTTPProblem(408, f"the request body did not arrive within {self.settings.body_timeout:g} s "
                                       "(the server's body timeout)") from None
        if ctype.startswith("image/") or ctype == "application/octet-stream":
            try:
                pairs = parse_qsl(request.url.query, keep_blank_values=True, max_num_fields=api.MAX_FIELDS)
            except ValueError:  # past max_num_fields
                raise api.HTTPProblem(413, f"the query has more than {api.MAX_FIELDS} fields") from None
            return body, "the request body", dict(pairs)
        raise api.HTTPProblem(415, "send the image as multipart/form-data (field 'image') or as the raw body "
                                   f"with an image/* Content-Type; got Content-Type {ctype or 'none'!r}")


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (its body already read: the next ASGI message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


API_NICENESS = 10


def _lower_priority() -> None:
    """Lower the calling thread's CPU priority by :data:`API_NICENESS` where the OS allows it."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), API_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not permitted: same priority as the loop
        pass


def _json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from exc


# --------------------------------------------------------------------------- errors
def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": exc.message, "status": exc.status}, status_code=exc.status, headers=exc.headers)


async def _on_attnmap(request: Request, exc: Exception) -> JSONResponse:
    # Options, methods, classes: what the client asked for. Anything else of ours (the model
    # failing on a run) is the server's.
    status = 422 if isinstance(exc, (OptionError, ExplainError)) else 500
    return _problem(status, str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _on_disconnect(request: Request, exc: Exception) -> Response:
    # A client that leaves mid-request is no fault of the server: one line in the log, a count
    # of its own (the gate counts CLIENT_GONE apart from the status codes), no traceback.
    _log.warning("client %s left before its request to %s was read", _peer(request.scope), request.url.path)
    return Response(status_code=CLIENT_GONE)


def _peer(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


async def _on_bug(request: Request, exc: Exception) -> JSONResponse:
    return _problem(500, f"internal error ({type(exc).__name__}); the server's log has the details")


# --------------------------------------------------------------------------- middleware
class _Gate:
    """Outermost ASGI layer: Host and Origin checks, bearer/cookie auth (when a token is set) and
    per-route metrics."""

    def __init__(self, app, settings: ServerSettings, metrics: Registry):
        self.app, self.settings, self.token, self.metrics = app, settings, settings.token, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else "other"
        started = time.perf_counter()

        async def counted_send(message) -> None:
            if message["type"] == "http.response.start" and message["status"] == CLIENT_GONE:
                self.metrics.inc("attnmap_http_client_disconnects_total", route=route)
            elif message["type"] == "http.response.start":
                self.metrics.inc("attnmap_http_requests_total", route=route, status=str(message["status"]))
                self.metrics.observe("attnmap_http_request_seconds", time.perf_counter() - started, route=route)
            await send(message)

        denied = self._check(scope)
        app = denied if denied is not None else self.app
        await app(scope, receive, counted_send)

    def end_streams(self) -> None:
        """End every MJPEG response now (at shutdown, so uvicorn need not wait for them)."""
        server = self.app.state.server
        if server.stream is not None:
            server.stream.broadcaster.close()

    def _check(self, scope) -> Response | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        why = refusal(scope["method"], headers, scope.get("scheme", "http"), self.settings.allowed_hosts,
                      self.settings.cors_origins)
        if why is not None:
            return _problem(403, why)
        if self.token is None or scope["path"] in OPEN_PATHS:
            return None
        if is_preflight(scope["method"], headers, self.settings.cors_origins):
            return None
        given = query_token(scope.get("query_string", b"")) if scope["path"] == "/" else None
        if given:  # an empty ?token= is no attempt: the cookie may still let the page through
            if token_matches(self.token, given):
                # The token leaves the address bar (and the history); the page's requests carry the cookie.
                cookie = token_cookie(self.token, secure=scope.get("scheme") == "https")
                return RedirectResponse("/", status_code=303, headers={"Set-Cookie": cookie,
                                                                       "Cache-Control": "no-store"})
            return _denied("the token in the address is wrong")
        if token_matches(self.token, presented_token(headers)):
            return None
        return _denied("this server needs a token: send 'Authorization: Bearer TOKEN', or open the page once "
                       "as /?token=TOKEN")


def _denied(message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": 401}, status_code=401,
                        headers={"WWW-Authenticate": 'Bearer realm="attnmap"'})


# --------------------------------------------------------------------------- assembly
def create_app(explainer, stream: StreamLoop | None = None, settings: ServerSettings | None = None,
               metrics: Registry | None = None, default_method: str = "rollout"):
    """The ASGI app: routes, JSON errors, auth and metrics.

    Args:
        explainer: the :class:`~attnmap.runtime.engine.explainer.Explainer` the API uses (the
            stream loop's own, shared: onnxruntime sessions run concurrently).
        stream: the stream loop, or None for an API-only server. The app starts it at start-up
            and stops it at shutdown.
        settings: :class:`ServerSettings`.
        metrics: where counts go (the stream loop's registry; a new one by default).
        default_method: the method of ``/v1/explain`` requests that name none.

    Returns:
        An ASGI application.
    """
    settings = settings or ServerSettings()
    metrics = metrics or server_metrics()
    server = _Server(explainer, stream, settings, metrics, default_method)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if stream is not None:
            stream.broadcaster.bind(asyncio.get_running_loop())
            if not stream.running and not stream.ended:
                stream.start()
        try:
            yield
        finally:
            if stream is not None:
                await anyio.to_thread.run_sync(stream.stop)
            server.pool.shutdown(wait=False, cancel_futures=True)

    routes = [Route(p, server.static, methods=["GET"]) for p in _STATIC] + [
        Route("/v1/stream.mjpg", server.mjpeg, methods=["GET"]),
        Route("/v1/stream/state", server.state, methods=["GET", "POST"]),
        Route("/v1/stream/snapshot", server.snapshot, methods=["GET"]),
        Route("/v1/explain", server.explain, methods=["POST"]),
        Route("/v1/model", server.model, methods=["GET"]),
        Route("/v1/methods", server.methods, methods=["GET"]),
        Route("/healthz", server.healthz, methods=["GET"]),
        Route("/metrics", server.prometheus, methods=["GET"]),
    ]
    middleware = []
    if settings.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"]))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={
        api.HTTPProblem: _on_problem, AttnmapError: _on_attnmap, HTTPException: _on_http,
        ClientDisconnect: _on_disconnect, Exception: _on_bug})
    app.state.server = server
    return _Gate(app, settings, metrics)
