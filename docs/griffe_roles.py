"""griffe extension: Sphinx cross-reference roles in the docstrings read as inline code.

The docstrings are Google style but name other objects with Sphinx roles
(``:class:`~attnmap.runtime.draw.style.OverlayStyle```, ``:meth:`FrameEngine.run```), which
Markdown would show as they are typed. Each role becomes the name in code, the last part of it
where the reference starts with ``~`` (as Sphinx shows it). The source files stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|data|attr|mod|exc|obj|const):`(~?)([^`]+)`")


def _plain(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite each object's docstring once the tree is built, before mkdocstrings parses it."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = ROLE.sub(_plain, obj.docstring.value)
