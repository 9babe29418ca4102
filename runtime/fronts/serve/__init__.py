"""``attnmap serve``: the live overlay in a browser, and explanations over HTTP (extra ``serve``).

One producer thread runs the engine's live session (as ``attnmap live`` does) on the source and
JPEG-encodes each frame once (``stream.py``); any number of MJPEG viewers take the newest frame
and never hold the loop up.
``api.py`` answers ``/v1/explain`` and friends, ``security.py`` holds the bind, token and upload
rules, ``metrics.py`` the Prometheus text, ``control.py`` the page's state changes; ``app.py`` ties them
into one Starlette app and ``runner.py`` runs it on uvicorn.

This package imports Starlette and uvicorn only in ``app.py`` and ``runner.py``; :func:`require_extra`
tells a user without them how to install them.
"""

from __future__ import annotations

import importlib.util

from attnmap.runtime.core.errors import ServeError

INSTALL_HINT = "pip install 'attnmap[serve]'"
_NEEDED = (("starlette", "starlette"), ("uvicorn", "uvicorn"), ("python_multipart", "python-multipart"))


def require_extra() -> None:
    """Raise :class:`ServeError` naming the install command unless the ``serve`` extra is installed."""
    missing = [dist for module, dist in _NEEDED if importlib.util.find_spec(module) is None]
    if missing:
        raise ServeError(f"`attnmap serve` needs {', '.join(missing)} (the 'serve' extra); "
                         f"install it with: {INSTALL_HINT}")
