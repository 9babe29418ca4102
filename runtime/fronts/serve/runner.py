"""Running the ``attnmap serve`` app on uvicorn: from the CLI (:func:`serve`, blocking until
Ctrl-C), or in a thread on a free loopback port (:class:`BackgroundServer`: tests, benchmarks,
notebooks). Both listen on a socket made here, whose connections' kernel send buffers are
capped (:data:`SEND_BUFFER_BYTES`), so a viewer that stops reading holds a few frames, not
seconds of them. Both speak HTTPS when given a certificate and its key (:class:`TLSFiles`).
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from attnmap.runtime.fronts.serve import ServeError
from attnmap.runtime.fronts.serve.app import ServerSettings, create_app
from attnmap.runtime.fronts.serve.metrics import server_metrics
from attnmap.runtime.fronts.serve.security import (ARGV_TOKEN_WARNING, LOOPBACK_NAMES, is_loopback,
                                                   resolve_token)
from attnmap.runtime.fronts.serve.stream import StreamLoop
from attnmap.runtime.methods import resolve_method


@dataclass(frozen=True)
class TLSFiles:
    """A PEM certificate (chain) and its private key: the server then speaks HTTPS only.

    Attributes:
        cert: the certificate file (``tls_cert``).
        key: its unencrypted private key (``tls_key``).

    Raises:
        ServeError: a file that cannot be read, or a pair that is not a certificate and its key
            (checked here, before the server starts).
    """

    cert: Path
    key: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "cert", Path(self.cert))
        object.__setattr__(self, "key", Path(self.key))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as exc:
            raise ServeError(f"tls_cert {str(self.cert)!r} and tls_key {str(self.key)!r} must be a PEM certificate "
                             f"and its unencrypted private key; {exc.reason or exc}") from exc
        except OSError as exc:
            raise ServeError(f"cannot read tls_cert {str(self.cert)!r} or tls_key {str(self.key)!r}: "
                             f"{exc.strerror or exc}") from exc

    @classmethod
    def from_options(cls, cert: str | Path | None, key: str | Path | None) -> "TLSFiles | None":
        """The pair from two optional paths; None when neither is given.

        Raises:
            ServeError: only one of the two, or the checks of the class.
        """
        if cert is None and key is None:
            return None
        if cert is None or key is None:
            raise ServeError("HTTPS needs both tls_cert and tls_key; got only "
                             + ("tls_cert" if key is None else "tls_key"))
        return cls(Path(cert), Path(key))


def uvicorn_config(app, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "warning",
                   tls: TLSFiles | None = None) -> uvicorn.Config:
    """uvicorn's settings for ``app``: h11 with a header timeout and a connection cap (the app's
    :class:`ServerSettings`), idle keep-alive connections closed after 5 s, no server header,
    requests cut after 2 s at shutdown, HTTPS with ``tls``."""
    files = {} if tls is None else {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
    settings = getattr(app, "settings", None) or ServerSettings()
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                          http=bounded_protocol(settings.header_timeout, connection_cap(settings.max_connections)),
                          timeout_keep_alive=5, server_header=False, timeout_graceful_shutdown=2, access_log=False,
                          **files)


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered to leave 64 of the process's file descriptors free (``ulimit -n``):
    past the cap a connection is closed as soon as it is accepted, so accept() never runs out
    of descriptors (which asyncio logs with a traceback per try)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # not POSIX
        return wanted
    return wanted if soft == resource.RLIM_INFINITY else max(1, min(wanted, soft - 64))


def bounded_protocol(header_timeout: float, max_connections: int) -> type:
    """uvicorn's h11 protocol with two bounds it lacks.

    * A connection's request headers must arrive within ``header_timeout`` seconds of its
      opening (or of the previous answer, on a kept-alive connection), however slowly they
      trickle in: past it the connection is closed (slowloris).
    * At most ``max_connections`` connections are open: one more is closed on accept, with one
      log line per 10 s however many are closed.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11(H11Protocol):
        refused = 0
        _last_warning = float("-inf")

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_timer = None
            if len(self.connections) > max_connections:
                cls = type(self)
                cls.refused += 1
                if time.monotonic() - cls._last_warning > 10.0:
                    cls._last_warning = time.monotonic()
                    self.logger.warning("%d open connections, the most this server keeps (max_connections): "
                                        "closing new ones (%d so far)", max_connections, cls.refused)
                transport.abort()
                return
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _cancel_header_timer(self) -> None:
            if getattr(self, "_header_timer", None) is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's headers arrived
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            self._arm_header_timer()  # first: the next request's headers may already be here
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self.transport.abort()

    return BoundedH11


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


def run_server(app, host: str, port: int, *, log_level: str = "warning", tls: TLSFiles | None = None) -> None:
    """Serve ``app`` (from :func:`create_app`) until Ctrl-C or SIGTERM (blocking), over HTTPS with ``tls``.

    Raises:
        ServeError: the address cannot be bound.
    """
    sock = listen_socket(host, port)
    try:
        _Uvicorn(uvicorn_config(app, host, port, log_level=log_level, tls=tls), app).run(sockets=[sock])
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

    def __init__(self, app, host: str = "127.0.0.1", tls: TLSFiles | None = None):
        self._sock = listen_socket(host, 0)
        self.host, self.port = host, self._sock.getsockname()[1]
        self.url = f"{'http' if tls is None else 'https'}://{host}:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn_config(app, host, self.port, tls=tls))
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

    # no memory arena: a large request's buffers go back to the allocator, which the server
    # trims after each request (runtime/core/memory.py), instead of being held for its life
    return Explainer(explainer.path, provider="cpu", threads=1, memory_arena=False)


def bind_settings(settings: ServerSettings | None, host: str, *, token_file: str | Path | None = None,
                  environ: dict[str, str] | None = None) -> ServerSettings:
    """``settings`` made whole for a bind to ``host``: the token in force, and the Host names served.

    A loopback bind answers the loopback names and its own address (``127.0.0.2`` included);
    any other bind answers any name (the token guards it).

    Raises:
        ServeError: see :func:`~attnmap.runtime.fronts.serve.security.resolve_token`.
    """
    settings = settings or ServerSettings()
    token = resolve_token(host, settings.token, environ, token_file=token_file)
    hosts = settings.allowed_hosts
    if not hosts and is_loopback(host):
        own = host.strip().strip("[]").lower()  # as host_name() reads it from a Host header
        hosts = LOOPBACK_NAMES + ((own,) if own not in LOOPBACK_NAMES else ())
    return dataclasses.replace(settings, token=token, allowed_hosts=hosts)


def serve(explainer, source, job, config=None, settings: ServerSettings | None = None, *,
          host: str = "127.0.0.1", port: int = 8000, log=print, token_file: str | Path | None = None,
          tls: TLSFiles | None = None, token_in_argv: bool = False) -> None:
    """Check the bind, start the stream loop (when there is a source) and serve until Ctrl-C.

    Args:
        explainer: the model.
        source: a source spec (``"0"``, ``"clip.mp4"``, ``"rtsp://..."``) or None for the API only.
        job: the method, options, fit and overlay style to start with (also the API's default method).
        config: the stream loop's :class:`~attnmap.runtime.fronts.serve.stream.StreamConfig`.
        settings: token, limits, CORS; the token falls back to ``token_file``, then ``$ATTNMAP_TOKEN``.
        host: address to bind (default loopback).
        port: TCP port.
        log: where the start-up line (and the warning below) goes.
        token_file: a file holding the token.
        tls: serve HTTPS with this certificate and key.
        token_in_argv: the token was given on the command line (readable by every user in
            ``ps``): one warning line goes to ``log``.

    Raises:
        ServeError: a bind beyond loopback without a token, a short token, both a token and
            a token file, a token file that cannot be read.
        OptionError: a method this model cannot run, bad options.
        SourceError: the source cannot be opened (checked before the server starts).
    """
    from attnmap.runtime.frames.sources import parse_source

    if token_in_argv and settings is not None and settings.token is not None:
        log(ARGV_TOKEN_WARNING)
    settings = bind_settings(settings, host, token_file=token_file)
    job = dataclasses.replace(job, method=resolve_method(job.method, explainer.meta))
    metrics = server_metrics()
    stream = None
    if source is not None:
        parse_source(source)  # a missing file fails now, with its suggestions, not in the loop thread
        stream = StreamLoop(explainer, source, job, config, metrics=metrics)
    app = create_app(api_explainer(explainer, stream), stream, settings, metrics, default_method=job.method)
    shown = f"[{host}]" if ":" in host else host
    log(f"attnmap serve: {'http' if tls is None else 'https'}://{shown}:{port}/"
        + ("" if source is not None else " (API only)") + (" (token required)" if settings.token else ""))
    run_server(app, host, port, tls=tls)
