"""The tuned sidecar: written whole and read back, and how a run's set-up is resolved from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from attnmap.runtime.core.errors import OptionError
from attnmap.runtime.model.tuned import (RunSetup, TunedError, TunedSetup, file_sha256, read_tuned, resolve_setup,
                                         sidecar_path, tuned_file_path, write_tuned)

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "shapes_vit.onnx"


@pytest.fixture()
def model(tmp_path) -> Path:
    """A copy of the shipped model and a stand-in 'int8' file beside it, tuned to the latter."""
    path = tmp_path / "shapes.onnx"
    shutil.copyfile(SHIPPED, path)
    tuned = tuned_file_path(path, "int8")
    tuned.write_bytes(b"int8 stand-in")
    write_tuned(TunedSetup("cpu", 1, 4, "int8", tuned.name, file_sha256(path), file_sha256(tuned),
                           {"ms_per_image": 1.5}), path)
    return path


def test_the_sidecar_round_trips_and_leaves_no_temp_file(model):
    setup = read_tuned(model)
    assert setup == TunedSetup("cpu", 1, 4, "int8", "shapes.tuned-int8.onnx", file_sha256(model),
                               file_sha256(model.parent / "shapes.tuned-int8.onnx"), {"ms_per_image": 1.5})
    assert sidecar_path(model).name == "shapes.tuned.json"
    assert sorted(p.name for p in model.parent.iterdir()) == ["shapes.onnx", "shapes.tuned-int8.onnx",
                                                              "shapes.tuned.json"]
    assert read_tuned(model.parent / "other.onnx") is None


@pytest.mark.parametrize("text, match", [("{not json", "cannot read"), ('{"schema_version": 9}', "schema 1"),
                                         ('{"schema_version": 1, "provider": "cpu"}', "malformed"),
                                         ('{"schema_version": 1, "provider": "cpu", "threads": 1, "batch_size": 1, '
                                          '"precision": "fp32", "file": "../x.onnx", "model_sha256": "", '
                                          '"file_sha256": ""}', "a name beside it")])
def test_a_bad_sidecar_is_one_line_naming_it(model, text, match):
    sidecar_path(model).write_text(text)
    with pytest.raises(TunedError, match=match) as exc:
        resolve_setup(model)
    assert "shapes.tuned.json" in str(exc.value) and "\n" not in str(exc.value)


def test_the_tuned_set_up_is_the_default(model):
    setup = resolve_setup(model)
    assert (setup.path, setup.provider, setup.threads, setup.batch_size) == (
        model.parent / "shapes.tuned-int8.onnx", "cpu", 1, 4)
    assert setup.tuned == sidecar_path(model) and "from shapes.tuned.json" in setup.note


def test_explicit_settings_win(model):
    setup = resolve_setup(model, provider="auto", threads=2, precision="fp32", batch_size=8)
    assert (setup.path, setup.provider, setup.threads, setup.batch_size) == (model, "auto", 2, 8)
    assert "provider, threads, precision, batch_size as given" in setup.note
    assert resolve_setup(model, precision="int8").path.name == "shapes.tuned-int8.onnx"
    with pytest.raises(OptionError, match="tuned to int8"):
        resolve_setup(model, precision="fp16")


def test_without_a_sidecar_the_model_runs_as_given(tmp_path):
    path = tmp_path / "plain.onnx"
    shutil.copyfile(SHIPPED, path)
    assert resolve_setup(path, threads=3) == RunSetup(path, "auto", 3, None)
    with pytest.raises(OptionError, match="no tuned int8 file"):
        resolve_setup(path, precision="int8")


def test_a_stale_sidecar_is_ignored_with_a_note(model):
    tuned = model.parent / "shapes.tuned-int8.onnx"
    tuned.write_bytes(b"changed")
    setup = resolve_setup(model)
    assert setup.path == model and setup.tuned is None and "changed since it was tuned" in setup.note
    data = json.loads(sidecar_path(model).read_text())
    data["model_sha256"] = "0" * 64
    sidecar_path(model).write_text(json.dumps(data))
    assert "the model changed" in resolve_setup(model).note
