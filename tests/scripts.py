"""Scripts that are not modules of the package (bench/*.py) loaded as modules in tests."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator


@contextlib.contextmanager
def script_module(path: Path, name: str) -> Iterator[ModuleType]:
    """Load the script at ``path`` as the module ``name``, registered in ``sys.modules`` while in use.

    The registration matters: a dataclass looks its module up in ``sys.modules`` while the class
    is built, so a script that defines one fails to load without it.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(name, None)
