"""Running the ``attnmap serve`` app on uvicorn: from the CLI (:func:`serve`, blocking until
Ctrl-C), or in a thread on a free loopback port (:class:`BackgroundServer`: tests, benchmarks,
notebooks). Both listen on a socket made here, whose connections' kernel send buffers are
capped (:data:`SEND_BUFFER_BYTES`), so a viewer that stops reading holds a few frames, not
seconds of them.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time

import uvicorn

from attnmap.runtime.fronts.serve import ServeError
from attnmap.runtime.fronts.serve.app import ServerSettings, create_app
from attnmap.runtime.fronts.serve.metrics import server_metrics
from attnmap.runtime.fronts.serve.stream import StreamLoop


def uvicorn_config(app, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn's settings for ``app``: h11, no server header, requests cut after 2 s at shutdown."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", http="h11",
                          server_header=False, timeout_graceful_shutdown=2, access_log=False)


class _Uvicorn(uvicorn.Server):
    """uvicorn, ending the MJPEG streams as soon as it is asked to exit."""

    def __init__(self, config: uvicorn.Config, app):
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig, frame) -> None:
        self._app.end_streams()
        super().handle_exit(sig, frame)


# Kernel send buffer of every connection. Linux grows an unset one to megabytes, which a viewer
# that stops reading fills with tens of seconds of stale frames before the server notices; this
# size holds a few frames, enough for 100 MB/s at a LAN's 1 ms round trip.
SEND_BUFFER_BYTES = 128 * 1024


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket for ``host:port``, its connections' send buffers capped.

    Raises:
        ServeError: the address cannot be bound (in use, not an address of this machine).
    """
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)  # accepted sockets inherit it
        sock.bind(addr)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def run_server(app, host: str, port: int, *, log_level: str = "warning") -> None:
    """Serve ``app`` (from :func:`create_app`) until Ctrl-C or SIGTERM (blocking).

    Raises:
        ServeError: the address cannot be bound.
    """
    sock = listen_socket(host, port)
    try:
        _Uvicorn(uvicorn_config(app, host, port, log_level=log_level), app).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it handled; for a server it is the normal way to stop
    finally:
        sock.close()


class BackgroundServer:
    """``app`` on uvicorn in a thread, on a free loopback port (tests, benchmarks, notebooks).

    Example::

        with BackgroundServer(create_app(explainer, stream)) as srv:
            httpx.get(srv.url + "/healthz")
    """

    def __init__(self, app, host: str = "127.0.0.1"):
        self._sock = listen_socket(host, 0)
        self.host, self.port = host, self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn_config(app, host, self.port))
        self._thread = threading.Thread(target=self._serve, name="attnmap-serve-http", daemon=True)

    def _serve(self) -> None:
        self.server.run(sockets=[self._sock])

    def start(self, timeout: float = 60.0) -> "BackgroundServer":
        """Start serving; return once uvicorn accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServeError(f"the server on {self.url} did not start within {timeout:g} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask uvicorn to exit (streams end, the loop stops) and wait for it."""
        self.app.end_streams()
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def api_explainer(explainer, stream: StreamLoop | None):
    """The explainer the API runs on: beside a stream on the CPU, a single-threaded session of
    the same file of its own.

    The API's threads run at a lower priority than the stream (``app.py``), but a session's
    work runs in onnxruntime's intra-op thread pool, which is not theirs: on a shared
    two-thread session every upload took pool time from the stream loop (DeiT-Tiny, 2 cores:
    the loop kept 72-83% of its frames/s under 4 API clients). A one-thread session computes
    on the calling thread, the lowered one, alone. On an accelerator, or with no stream, the
    one session serves both.
    """
    if stream is None or explainer.model.provider != "CPUExecutionProvider":
        return explainer
    from attnmap.runtime.engine.explainer import Explainer

    return Explainer(explainer.path, provider="cpu", threads=1)


def serve(explainer, source, job, config=None, settings: ServerSettings | None = None, *,
          host: str = "127.0.0.1", port: int = 8000, log=print) -> None:
    """Check the bind, start the stream loop (when there is a source) and serve until Ctrl-C.

    Args:
        explainer: the model.
        source: a source spec (``"0"``, ``"clip.mp4"``, ``"rtsp://..."``) or None for the API only.
        job: the method, options, fit and overlay style to start with (also the API's default method).
        config: the stream loop's :class:`~attnmap.runtime.fronts.serve.stream.StreamConfig`.
        settings: token, limits, CORS; the token falls back to ``$ATTNMAP_TOKEN``.
        host: address to bind (default loopback).
        port: TCP port.
        log: where the start-up line goes.

    Raises:
        ServeError: a bind beyond loopback without a token, or a short token.
        OptionError: a method this model cannot run, bad options.
        SourceError: the source cannot be opened (checked before the server starts).
    """
    from attnmap.runtime.frames.sources import parse_source
    from attnmap.runtime.fronts.serve.security import LOOPBACK_NAMES, is_loopback, resolve_token

    settings = settings or ServerSettings()
    settings = dataclasses.replace(settings, token=resolve_token(host, settings.token),
                                   allowed_hosts=settings.allowed_hosts or (LOOPBACK_NAMES if is_loopback(host) else ()))
    metrics = server_metrics()
    stream = None
    if source is not None:
        parse_source(source)  # a missing file fails now, with its suggestions, not in the loop thread
        stream = StreamLoop(explainer, source, job, config, metrics=metrics)
    app = create_app(api_explainer(explainer, stream), stream, settings, metrics, default_method=job.method)
    shown = f"[{host}]" if ":" in host else host
    log(f"attnmap serve: http://{shown}:{port}/" + ("" if source is not None else " (API only)")
        + (" (token required)" if settings.token else ""))
    run_server(app, host, port)
