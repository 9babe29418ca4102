"""mkdocs hook: give the API reference a package named ``attnmap`` to read.

The repository root *is* the package ``attnmap`` (``package-dir = {"attnmap" = "."}``), so
no folder on disk carries that name and griffe, which finds a package by its folder's name,
cannot see it. At each build this hook makes ``build/docs-pkg/attnmap/`` with one symbolic
link per part of the package (the root's modules and its sub-packages), and mkdocs.yml points
the Python handler's ``paths`` there. Linking the parts, not the root itself, keeps griffe's
walk out of ``.venv*/`` and away from a link that would contain itself.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "build" / "docs-pkg" / "attnmap"


def _parts(root: Path) -> list[Path]:
    """The entries of the root that belong to the package: modules and sub-packages."""
    return sorted(p for p in root.iterdir()
                  if (p.is_file() and p.suffix == ".py")
                  or (p.is_dir() and (p / "__init__.py").is_file()))


def on_startup(**_: object) -> None:
    shutil.rmtree(PKG, ignore_errors=True)
    PKG.mkdir(parents=True)
    for part in _parts(ROOT):
        os.symlink(os.path.relpath(part, PKG), PKG / part.name)
