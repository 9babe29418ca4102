"""The frictions a newcomer met (issue 24, part 8), each as it is seen on the command line."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import attnmap.cli as cli
from attnmap.runtime.model import registry


def run(*args, **kw):
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False, **kw)


@pytest.fixture()
def dog(tmp_path):
    path = tmp_path / "dog.jpg"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return path


# ------------------------------------------------------------------ which model answered
def test_a_run_without_a_model_says_it_used_the_shipped_default(dog, tmp_path, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    name = next(e["name"] for e in registry.shipped_models() if e.get("default"))
    res = run("explain", dog, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("model:")]
    assert lines == [f"model: {name} (the shipped default); --model to choose another"]
    assert "model:" not in res.stdout  # results stay clean for pipes


def test_a_named_model_gets_no_such_line(tiny_vit_onnx, dog, tmp_path):
    res = run("explain", dog, "--model", tiny_vit_onnx, "--out", tmp_path / "o")
    assert res.exit_code == 0 and "model:" not in res.stderr


# ------------------------------------------------------------------ typos: one line, with the suggestion
@pytest.mark.parametrize("command", ["explain", "live", "serve", "bench"])
def test_a_method_typo_is_one_line_with_the_suggestion_in_every_command(command, dog):
    res = run(command, dog, "--method", "rolout")
    assert res.exit_code == 2 and len(res.output.splitlines()) == 1
    assert res.output.startswith("Error: --method: unknown explanation method 'rolout'")
    assert res.output.rstrip().endswith("Did you mean 'rollout'?")
    assert "Usage:" not in res.output


def test_a_method_typo_in_evaluate_is_the_same_one_line(tiny_vit_onnx, dog):
    res = run("evaluate", dog, "--model", tiny_vit_onnx, "--methods", "rollout,atention")
    assert res.exit_code == 2 and len(res.output.splitlines()) == 1
    assert "unknown explanation method 'atention'" in res.output and "Did you mean 'attention'?" in res.output


def test_a_mistyped_model_path_is_one_line_with_the_suggestion(tiny_vit_onnx, dog, tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "tiny.onnx").write_bytes(Path(tiny_vit_onnx).read_bytes())
    monkeypatch.chdir(tmp_path)
    res = run("explain", dog, "--model", "modls/tiny.onnx", "--out", tmp_path / "o")
    assert res.exit_code == 1 and len(res.output.splitlines()) == 1
    assert "model file 'modls/tiny.onnx' does not exist" in res.output
    assert res.output.rstrip().endswith("Did you mean 'models/tiny.onnx'?")
    assert not (tmp_path / "o").exists()


def test_a_jpeg_given_as_the_model_is_named_a_jpeg(dog, tmp_path):
    res = run("explain", dog, "--model", dog, "--out", tmp_path / "o")
    assert res.exit_code == 1 and len(res.output.splitlines()) == 1
    assert "'dog.jpg' is a JPEG image, not an ONNX model" in res.output
