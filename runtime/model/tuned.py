"""The set-up ``attnmap tune`` chose for a model, kept beside it, and how a run picks it up.

``attnmap tune deit.onnx`` measures what runs fastest here with faithful maps and writes
``deit.tuned.json`` next to the model (and, where the winner is a converted precision, the file
``deit.tuned-int8.onnx``). :func:`resolve_setup` is what ``explain``, ``live`` and ``serve`` ask
before they load a model: each setting given explicitly wins; the others come from the sidecar;
without one (or with a stale one: the model or the tuned file changed since) the model runs as
given. The sidecar records the SHA-256 of both files, so a re-exported model never runs with
another model's tuning.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from attnmap.runtime.core.errors import MetadataError, OptionError
from attnmap.runtime.core.files import file_sha256, write_bytes

SIDECAR_SUFFIX = ".tuned.json"
SCHEMA_VERSION = 1


class TunedError(MetadataError):
    """A tuned sidecar that cannot be read (not JSON, a field missing or of the wrong type)."""


@dataclass(frozen=True)
class TunedSetup:
    """The fastest set-up that passed the fidelity gate on this machine.

    Attributes:
        provider: attnmap's provider name (``"cpu"``, ``"openvino"`` ...).
        threads: intra-op threads.
        batch_size: images per inference batch.
        precision: ``"fp32"``, ``"fp16"``, ``"int8"`` or ``"bf16"``.
        file: the model file to run, a name in the sidecar's folder (the model itself for fp32).
        model_sha256: SHA-256 of the fp32 model that was tuned.
        file_sha256: SHA-256 of ``file``.
        measured: what the choice rests on: ms per image, the ratio to plain fp32 inference,
            the fidelity figures, the method, rounds, check images and the machine's load.
    """

    provider: str
    threads: int
    batch_size: int
    precision: str
    file: str
    model_sha256: str
    file_sha256: str
    measured: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **asdict(self), "measured": dict(self.measured)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "TunedSetup":
        """Read :meth:`to_dict`'s form back.

        Raises:
            TunedError: an unknown schema version, or a field missing or of the wrong type.
        """
        if not isinstance(data, Mapping) or data.get("schema_version") != SCHEMA_VERSION:
            raise TunedError(f"{where}: not a tuned set-up of schema {SCHEMA_VERSION}; rerun `attnmap tune`")
        try:
            setup = cls(str(data["provider"]), int(data["threads"]), int(data["batch_size"]), str(data["precision"]),
                        str(data["file"]), str(data["model_sha256"]), str(data["file_sha256"]),
                        dict(data.get("measured") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise TunedError(f"{where}: malformed tuned set-up ({exc!r}); rerun `attnmap tune`") from exc
        if Path(setup.file).name != setup.file or setup.threads < 1 or setup.batch_size < 1:
            raise TunedError(f"{where}: malformed tuned set-up (file must be a name beside it, threads and "
                             "batch_size >= 1); rerun `attnmap tune`")
        return setup


def sidecar_path(model: str | Path) -> Path:
    """``deit.onnx`` -> ``deit.tuned.json`` (same folder)."""
    model = Path(model)
    return model.with_name(model.stem + SIDECAR_SUFFIX)


def tuned_file_path(model: str | Path, precision: str) -> Path:
    """Where a tuned converted file goes: ``deit.onnx`` -> ``deit.tuned-int8.onnx``."""
    model = Path(model)
    return model.with_name(f"{model.stem}.tuned-{precision}.onnx")


def write_tuned(setup: TunedSetup, model: str | Path) -> Path:
    """Write ``setup`` as the model's sidecar, whole or not at all; returns its path."""
    return write_bytes(sidecar_path(model), (json.dumps(setup.to_dict(), indent=2) + "\n").encode())


def read_tuned(model: str | Path) -> TunedSetup | None:
    """The model's sidecar, or None where it has none.

    Raises:
        TunedError: the sidecar exists and cannot be read (see :meth:`TunedSetup.from_dict`).
    """
    path = sidecar_path(model)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TunedError(f"{str(path)!r}: cannot read the tuned set-up ({exc}); rerun `attnmap tune` or "
                         "delete the file") from exc
    return TunedSetup.from_dict(data, repr(str(path)))


@dataclass(frozen=True)
class RunSetup:
    """What a run loads: the file and how, and where each setting came from.

    Attributes:
        path: the model file to load.
        provider: provider name (``"auto"`` where neither given nor tuned).
        threads: intra-op threads, or None for the default.
        batch_size: images per batch, or None for the front's default.
        tuned: the sidecar that supplied settings, or None.
        note: one line for the user: what was used and why (None where nothing was tuned).
    """

    path: Path
    provider: str
    threads: int | None
    batch_size: int | None
    tuned: Path | None = None
    note: str | None = None


def resolve_setup(model: str | Path, *, provider: str | None = None, threads: int | None = None,
                  precision: str | None = None, batch_size: int | None = None) -> RunSetup:
    """The set-up to run ``model`` with: explicit settings win, the tuned sidecar fills the rest.

    Args:
        model: the model file (resolved: a path that exists).
        provider, threads, batch_size: the settings given explicitly, or None.
        precision: the precision given explicitly, or None: ``"fp32"`` runs ``model`` itself
            even where a converted file was tuned; the tuned precision runs the tuned file.

    Returns:
        :class:`RunSetup`.

    Raises:
        OptionError: ``precision`` is neither the model's nor the tuned file's.
        TunedError: the sidecar cannot be read.
    """
    model = Path(model)
    given = RunSetup(model, provider or "auto", threads, batch_size)
    setup = read_tuned(model)
    if setup is None:
        if precision not in (None, "fp32"):
            raise OptionError(f"precision {precision!r}: {model.name!r} has no tuned {precision} file; convert "
                              "one (quantize) or tune the model, or pass the converted file as the model")
        return given
    sidecar = sidecar_path(model)
    tuned_file = model.parent / setup.file
    stale = ("the model changed since it was tuned" if file_sha256(model) != setup.model_sha256 else
             f"{setup.file!r} is missing" if not tuned_file.is_file() else
             f"{setup.file!r} changed since it was tuned"
             if tuned_file != model and file_sha256(tuned_file) != setup.file_sha256 else None)
    if stale:
        return RunSetup(model, given.provider, threads, batch_size, None,
                        f"ignoring {sidecar.name} ({stale}); rerun tune to measure again")
    if precision not in (None, "fp32", setup.precision):
        raise OptionError(f"precision {precision!r}: {model.name!r} was tuned to {setup.precision} "
                          f"({setup.file}); give fp32 or {setup.precision}, or convert a {precision} file")
    path = model if precision == "fp32" else tuned_file
    chosen = RunSetup(path, provider or setup.provider, threads or setup.threads, batch_size or setup.batch_size,
                      sidecar)
    from_flags = [name for name, value in (("provider", provider), ("threads", threads),
                                           ("precision", precision), ("batch_size", batch_size)) if value]
    note = (f"tuned set-up from {sidecar.name}: {path.name} on {chosen.provider}, {chosen.threads} threads, "
            f"batch {chosen.batch_size}" + (f" ({', '.join(from_flags)} as given)" if from_flags else ""))
    return RunSetup(chosen.path, chosen.provider, chosen.threads, chosen.batch_size, sidecar, note)

