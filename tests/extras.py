"""Optional extras in tests: a test that needs one skips with the command that installs it."""

from __future__ import annotations

import pytest


def need(module: str, extra: str):
    """Import ``module``, or skip the calling test (or, at module level, the file).

    Args:
        module: the import name (``"torch"``, ``"starlette"``, ``"PIL.Image"``).
        extra: the attnmap extra that installs it (``"export"``, ``"serve"``, ``"test"``...).

    Returns:
        The imported module.
    """
    __tracebackhide__ = True  # pytest reports the skip at the caller's line, not here
    return pytest.importorskip(module, reason=f"needs the {extra} extra: pip install -e '.[{extra}]'")
