"""Errors: one form on every path, causes kept (and shown with --debug), the right types, and
library messages that speak of parameters while the CLI speaks of flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import attnmap.cli as cli
from attnmap.runtime.core.errors import (EncodeError, ModelError, OptionConflict, OptionError, OutputError,
                                         ProviderError)

ROOT = Path(__file__).resolve().parents[2]


def run(*args) -> "CliRunner":
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture()
def not_onnx(tmp_path) -> Path:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"this is not an onnx file")
    return path


def test_a_typed_error_is_one_line_and_debug_shows_its_chain_of_causes(not_onnx):
    plain = run("info", not_onnx)
    assert plain.exit_code == 1 and "Traceback" not in plain.output
    assert plain.stderr.splitlines() == [line for line in plain.stderr.splitlines() if line.startswith("error: ")]
    assert len(plain.stderr.splitlines()) == 1 and "not an ONNX model" in plain.stderr
    loud = run("--debug", "info", not_onnx)
    assert loud.exit_code == 1
    assert "Traceback" in loud.stderr and "The above exception was the direct cause" in loud.stderr
    assert "ModelError" in loud.stderr and loud.stderr.splitlines()[-1] == plain.stderr.splitlines()[0]


@pytest.mark.parametrize("args, needle, code", [
    (["explain", "x.png", "--fit", "bogus"], "Invalid value for '--fit'", 2),        # click's own parsing
    (["explain", "x.png", "--actors", "2"], "--actors applies to --engine ray only", 2),  # a parameter conflict
    (["info", "missing.onnx"], "does not exist", 1),                                  # a library error
])
def test_every_error_line_has_one_form(args, needle, code, tmp_path):
    res = run(*args, *(["--out", tmp_path] if args[0] == "explain" else []))
    assert res.exit_code == code
    errors = [line for line in res.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: ") and needle in errors[0], res.stderr


def test_an_unexpected_exception_is_one_error_line_too(monkeypatch, tmp_path):
    import attnmap.runtime.model.registry as registry

    def broken(spec=None):
        raise KeyError("a bug")

    monkeypatch.setattr(registry, "resolve_model", broken)
    res = run("info")
    assert res.exit_code == 1 and res.stderr.startswith("error: unexpected KeyError") and "--debug" in res.stderr


def test_parameter_conflicts_speak_of_parameters_in_the_library_and_of_flags_in_the_cli():
    from attnmap.runtime.fronts.collection import EngineChoice
    from attnmap.runtime.precision.convert import convert_options

    with pytest.raises(OptionConflict) as conflict:
        convert_options("fp32", check="photos/")
    assert str(conflict.value) == "check applies to precision fp16 or int8 only"
    assert conflict.value.text(cli.flag) == "--check applies to --precision fp16 or int8 only"
    with pytest.raises(OptionConflict) as conflict:
        EngineChoice("ray").ray_options(threads=2, workers=None)
    assert str(conflict.value).startswith("threads applies to engine local only (on Ray, actors sets")
    assert conflict.value.text(cli.flag).startswith("--threads applies to --engine local only (on Ray, --actors")
    with pytest.raises(OptionConflict, match="^address, gpus_per_actor apply to engine ray only$"):
        EngineChoice("local", address="auto", gpus_per_actor=1)


def test_library_messages_name_no_flags():
    from attnmap.runtime.core.errors import ServeError
    from attnmap.runtime.fronts.serve.security import resolve_token
    from attnmap.runtime.model.providers import resolve_providers

    with pytest.raises(ProviderError) as provider:
        resolve_providers("cuda", available=["CPUExecutionProvider"])
    with pytest.raises(ServeError) as serve:
        resolve_token("0.0.0.0", None, environ={})
    for message in (str(provider.value), str(serve.value)):
        assert " --" not in message and "`--" not in message, message


def test_bad_conversion_options_are_option_errors_not_model_errors():
    from attnmap.runtime.precision.convert import ConvertOptions

    for bad in (dict(precision="int4"), dict(mode="int4"), dict(mode="static"), dict(calibration_images=0),
                dict(attn_dtype="fp16")):
        with pytest.raises(OptionError) as err:
            ConvertOptions(**bad)
        assert not isinstance(err.value, ModelError), bad


def test_an_image_that_cannot_be_encoded_is_an_encode_error(monkeypatch):
    import attnmap.runtime.fronts.serve.api as api

    monkeypatch.setattr(api.cv2, "imencode", lambda ext, img, *a: (False, None))
    with pytest.raises(EncodeError) as err:
        api._png(np.zeros((4, 4, 3), np.uint8))
    assert isinstance(err.value, OutputError) and not isinstance(err.value, OptionError)


def test_export_errors_keep_their_cause(tmp_path):
    pytest.importorskip("torch", reason="the export side needs torch: pip install -e '.[export]'")
    from attnmap.runtime.core.errors import ExportError
    from attnmap.export.labels import read_labels

    bad = tmp_path / "labels.json"
    bad.write_text("{not json")
    with pytest.raises(ExportError) as err:
        read_labels(bad)
    assert isinstance(err.value.__cause__, json.JSONDecodeError)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"a": "cat"}))
    with pytest.raises(ExportError) as err:
        read_labels(keys)
    assert isinstance(err.value.__cause__, ValueError)
    # and none drops one: no `raise ... from None` left on the export side
    assert not [p.name for p in (ROOT / "export").glob("*.py") if "from None" in p.read_text()]
