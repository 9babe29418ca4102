"""What keeps ``attnmap serve`` safe by default: the bind rule, bearer tokens, upload limits.

* The server binds to 127.0.0.1 unless told otherwise; any other address needs a token, checked
  on every path except ``/healthz``. Give it in a file (``--token-file``) or in ``$ATTNMAP_TOKEN``:
  a ``--token`` on the command line is readable by every user of the machine (``ps``,
  ``/proc/PID/cmdline``), so the CLI warns about it.
* A client proves it has the token with ``Authorization: Bearer TOKEN``. A browser cannot add
  that header to an ``<img>`` stream, so the page is opened once as ``/?token=TOKEN``: the
  server answers with an ``HttpOnly; SameSite=Strict`` cookie and a redirect to ``/`` (the token
  leaves the address bar and the history), and later requests carry the cookie. Tokens are
  compared with :func:`hmac.compare_digest` (constant time). Before that comparison a request
  costs time linear in its headers: the cookie is read by a split on ``;`` and ``=``, never by
  :class:`http.cookies.SimpleCookie`, whose parser is quadratic on Python < 3.12.6
  (CVE-2024-7592: 8,000 backslashes in one cookie held the event loop for a second).
* Requests that change something (POST) from a page of another origin are refused unless
  that origin is allowed by ``--cors-origin`` (a cross-site form cannot drive the server), and a
  server bound to loopback answers only requests addressed to a loopback name or its own bound
  address (a DNS-rebinding page cannot read it through a name of its own). With CORS on, a
  browser's preflight (``OPTIONS``, sent without credentials) is answered before auth.
* Uploads are limited in bytes (``Content-Length`` first, then the body as it streams in) and
  in pixels (read from the image header before any decoding).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from attnmap.runtime.fronts.serve import ServeError

TOKEN_ENV = "ATTNMAP_TOKEN"
COOKIE = "attnmap_token"
OPEN_PATHS = frozenset({"/healthz"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
_MIN_TOKEN_CHARS = 16
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")  # safe in a header, a cookie and a URL
# Longest Cookie header read for the token, and longest token: a browser's cookies for one
# site stay far below 16 KiB, and a longer header presents no token rather than costing more.
MAX_COOKIE_HEADER = 16 * 1024
MAX_TOKEN_CHARS = 1024
ARGV_TOKEN_WARNING = ("warning: a token on the command line is visible to every user of this machine "
                      "(ps, /proc/PID/cmdline); prefer --token-file FILE or $" + TOKEN_ENV)


@dataclass(frozen=True)
class Limits:
    """Upload limits of ``POST /v1/explain``.

    Attributes:
        max_upload_bytes: largest request body accepted (default 20 MiB).
        max_pixels: largest width x height an image header may declare (default 40 megapixels,
            about a 7700 x 5200 photo; a decoded image takes 3 bytes a pixel).

    Raises:
        ServeError: a limit that is not a positive integer.
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServeError(f"{name} must be a positive integer; got {value!r}")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def read_token_file(path: str | Path) -> str:
    """The token stored in the file ``path``: its text without surrounding white space.

    Raises:
        ServeError: the file cannot be read, is empty, or holds more than one line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeError(f"cannot read the token file {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") from exc
    if not text or "\n" in text:
        raise ServeError(f"the token file {str(path)!r} must hold the token on one line; got "
                         + ("an empty file" if not text else f"{text.count(chr(10)) + 1} lines"))
    return text


def resolve_token(host: str, token: str | None, environ: dict[str, str] | None = None, *,
                  token_file: str | Path | None = None) -> str | None:
    """The token in force for a bind to ``host``, or None (loopback without a token).

    Args:
        host: the address to bind.
        token: the token itself; None falls back to ``token_file``, then ``$ATTNMAP_TOKEN``.
        environ: the environment to read (default ``os.environ``).
        token_file: a file holding the token (see :func:`read_token_file`).

    Raises:
        ServeError: both ``token`` and ``token_file``, a bind beyond loopback without a token, a
            token shorter than 16 characters or with characters outside ``A-Za-z0-9._~+/=-``
            (``python -c "import secrets; print(secrets.token_urlsafe())"`` makes one).
    """
    env = os.environ if environ is None else environ
    if token is not None and token_file is not None:
        raise ServeError("give the token once: token or token_file, not both")
    if token is None and token_file is not None:
        token = read_token_file(token_file)
    if token is None:
        token = env.get(TOKEN_ENV) or None
    if token is not None and not _TOKEN_CHARS.fullmatch(token):
        raise ServeError("the token may hold only letters, digits and . _ ~ + / = - (it travels in a header, "
                         "a cookie and a URL); make one with: python -c \"import secrets; print(secrets.token_urlsafe())\"")
    if token is not None and len(token) < _MIN_TOKEN_CHARS:
        raise ServeError(f"the token must be at least {_MIN_TOKEN_CHARS} characters; got {len(token)}. "
                         "Make one with: python -c \"import secrets; print(secrets.token_urlsafe())\"")
    if token is not None and len(token) > MAX_TOKEN_CHARS:
        raise ServeError(f"the token must be at most {MAX_TOKEN_CHARS} characters (it travels in a cookie); "
                         f"got {len(token):,}")
    if token is None and not is_loopback(host):
        raise ServeError(f"refusing to serve on {host!r} without a token: beyond loopback anyone who can reach "
                         f"the port could use it. Give one in a token file or in ${TOKEN_ENV} (make one "
                         "with `python -c \"import secrets; print(secrets.token_urlsafe())\"`), or bind to 127.0.0.1")
    return token


def token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    if given is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8", "surrogateescape"))


def presented_token(headers: dict[str, str]) -> str | None:
    """The token a request presents: its ``Authorization: Bearer`` header, else its cookie.

    Args:
        headers: request headers with lower-case names.
    """
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return cookie_token(headers.get("cookie", ""))


def cookie_token(header: str) -> str | None:
    """The value of the ``attnmap_token`` cookie in a ``Cookie`` header, or None.

    One pass of :meth:`str.split` on ``;`` and :meth:`str.partition` on ``=``: time linear in
    the header, whatever it holds. A header over :data:`MAX_COOKIE_HEADER` characters, or a value
    that is not a token (quotes and escapes included), presents no token.
    """
    if not header or len(header) > MAX_COOKIE_HEADER:
        return None
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        if sep and name.strip() == COOKIE:
            value = value.strip()
            return value if len(value) <= MAX_TOKEN_CHARS and _TOKEN_CHARS.fullmatch(value) else None
    return None


def query_token(query_string: bytes | str) -> str | None:
    """The last ``token=`` value of a URL's query string, or None.

    ``+`` is kept as itself (a token may hold one, and no token holds a space, so the form
    encoding's ``+`` for a space cannot be meant); ``%2B`` decodes to ``+`` as well. Tokens
    from ``secrets.token_urlsafe()`` need no encoding at all.
    """
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    found = None
    for pair in query_string.split("&"):
        name, sep, value = pair.partition("=")
        if sep and unquote(name) == "token":
            found = unquote(value)
    return found


def token_cookie(token: str, secure: bool = False) -> str:
    """The ``Set-Cookie`` value that lets the page's own requests (the ``<img>`` stream) through
    (``Secure`` when the page came over HTTPS: the browser then never sends it in clear)."""
    return f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")


def host_name(host_header: str) -> str:
    """The name of a ``Host`` header without its port: ``"[::1]:8000"`` -> ``"::1"``."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def is_preflight(method: str, headers: dict[str, str], cors_origins: tuple[str, ...]) -> bool:
    """True for a CORS preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
    to a server with CORS on: browsers send it without credentials, so it is answered before auth
    (by the CORS layer, which tells the page what it may send; it reaches no route)."""
    return bool(cors_origins) and method == "OPTIONS" and "origin" in headers \
        and "access-control-request-method" in headers


def refusal(method: str, headers: dict[str, str], scheme: str, allowed_hosts: tuple[str, ...],
            cors_origins: tuple[str, ...]) -> str | None:
    """Why a request must be refused before auth (403), or None.

    Args:
        method: the HTTP method.
        headers: request headers with lower-case names.
        scheme: ``http`` or ``https``.
        allowed_hosts: names the ``Host`` header may carry (empty: any).
        cors_origins: other origins allowed to send POSTs.
    """
    host = headers.get("host", "")
    if allowed_hosts and host_name(host) not in allowed_hosts:
        return (f"this server answers requests addressed to {', '.join(allowed_hosts)}; got Host {host!r} "
                "(bind to another host to serve other names)")
    origin = headers.get("origin")
    if method not in ("GET", "HEAD", "OPTIONS") and origin is not None and origin != "null" \
            and origin != f"{scheme}://{host}" and origin not in cors_origins:
        return f"a {method} from a page of another origin ({origin}) is refused; allow it in cors_origins"
    if method not in ("GET", "HEAD", "OPTIONS") and origin == "null":
        return f"a {method} from an opaque origin is refused"
    return None
