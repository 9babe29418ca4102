"""Typed errors raised by the attnmap library.

The CLI turns every one of these into a one-line ``click`` error; library users can catch
:class:`AttnmapError` to handle them all. Messages say what was expected, what arrived and,
where it helps, how to fix it.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence


class AttnmapError(Exception):
    """Base class of every error attnmap raises on purpose."""


class MetadataError(AttnmapError):
    """An ONNX file lacks attnmap metadata, or carries metadata this version cannot read (not
    JSON, a newer schema, a missing field or one of the wrong type or range)."""


class ModelError(AttnmapError):
    """A model file cannot be loaded or run (missing file, wrong outputs, bad provider)."""


class ProviderError(ModelError):
    """The requested onnxruntime execution provider is not available here."""


class GraphMismatchError(MetadataError, ModelError):
    """A file's attnmap metadata disagrees with its ONNX graph (token count, classes, layers,
    heads, input size, missing outputs); both a MetadataError and a ModelError."""


class InputError(ModelError, ValueError):
    """A model run was asked for what the model cannot take or give: an input of the wrong
    shape or dtype, a bad target, an output the graph lacks."""


class SourceError(AttnmapError):
    """An input source (image, directory, glob, video, camera, stream) cannot be opened or read."""


class ImageError(SourceError):
    """An image array or file is not a readable BGR uint8 image."""


class ExplainError(AttnmapError, ValueError):
    """An explanation method was asked for something it cannot do (bad option, missing outputs)."""


class OptionError(AttnmapError, ValueError):
    """An option value is not one of those allowed (a colormap, fit mode, method option ...)."""


class OptionConflict(OptionError):
    """Parameters given together that do not go together: each applies only with another
    parameter's value (``workers`` with ``engine="local"``, ``calibration`` with ``precision="int8"``).

    The message speaks of parameters; a front that spells them otherwise (the CLI's flags)
    renders it with :meth:`text`.

    Args:
        given: ``(parameter, value)`` pairs given; value None for a parameter named alone.
        needs: ``(parameter, value)`` that the given ones apply to.
        hint: how to fix it; ``{name}`` in it is a parameter, spelled as the rest.
    """

    def __init__(self, given: Sequence[tuple[str, Any]], needs: tuple[str, Any], hint: str = ""):
        self.given, self.needs, self.hint = list(given), needs, hint
        super().__init__(self.text())

    def text(self, spell: Callable[[str, Any], str] | None = None) -> str:
        """The message with each ``(parameter, value)`` spelled by ``spell`` (default ``name value``)."""
        spell = spell or (lambda name, value: name if value is None else f"{name} {value}")
        names = ", ".join(spell(name, value) for name, value in self.given)
        verb = "applies" if len(self.given) == 1 else "apply"
        hint = re.sub(r"\{(\w+)\}", lambda m: spell(m[1], None), self.hint)
        return f"{names} {verb} to {spell(*self.needs)} only" + (f" ({hint})" if hint else "")


class MethodOptionError(OptionError, ExplainError):
    """A method option is unknown, of the wrong type or out of its range (both an OptionError
    and an ExplainError, so either catches it)."""


class OutputError(AttnmapError):
    """A result (overlay, map, video, model file) cannot be written where it was asked to go."""


class EncodeError(OutputError):
    """An image cannot be encoded (JPEG, PNG) for a response or a stream."""


class RunConflictError(OutputError):
    """An output folder holds the results of a run with other settings, which a new run would
    overwrite file by file. ``conflict`` says what differs (without the way out, which the
    caller words: a parameter in the API, a flag on the command line)."""

    def __init__(self, message: str, conflict: str = ""):
        super().__init__(message)
        self.conflict = conflict or message


class DisplayError(AttnmapError):
    """No window can be shown here (no display, or an OpenCV build without a GUI)."""


class ExportError(AttnmapError):
    """A model cannot be exported (outside the ViT family, bad checkpoint, parity failure)."""


class FidelityError(AttnmapError):
    """A reduced-precision (int8, fp16) file fails the fidelity gate against its fp32 original."""


class ServeError(AttnmapError):
    """``attnmap serve`` cannot start as asked: the ``serve`` extra is missing, a bind beyond
    loopback without a token, or a bad limit."""


class ClusterError(AttnmapError):
    """Ray is not installed, a cluster cannot be reached or started, or a distributed run
    failed as a whole (not one image: those are failed rows)."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest of ``choices``, or ``""``.

    Names about as close as the closest one are offered beside it (at most three); a far
    second guess ('product' for 'rolout') is left out.
    """
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if not close:
        return ""
    ratio = [difflib.SequenceMatcher(None, name, c).ratio() for c in close]
    close = [c for c, r in zip(close, ratio) if r >= ratio[0] - 0.1]
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def suggest_path(path: str | Path) -> str:
    """``" Did you mean 'models/deit.onnx'?"`` for a path that does not exist, or ``""``.

    Each missing part of the path is replaced by the closest name in the folder above it
    (``modles/deit.onx`` -> ``models/deit.onnx``); the suggestion keeps the path's own form
    (relative stays relative) so it can be pasted back as it is.
    """
    path = Path(path).expanduser()
    if path.exists():
        return ""
    anchor = Path(path.anchor) if path.is_absolute() else Path(".")
    cur, shown = anchor, []
    for part in path.parts[1:] if path.is_absolute() else path.parts:
        if part in ("", "."):
            continue
        if not (cur / part).exists():
            try:
                names = sorted(os.listdir(cur))
            except OSError:
                return ""
            close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
            if not close:
                return ""
            part = close[0]
        cur = cur / part
        shown.append(part)
    if not shown or not cur.exists():
        return ""
    guess = anchor.joinpath(*shown) if path.is_absolute() else Path(*shown)
    return f" Did you mean {str(guess)!r}?"

