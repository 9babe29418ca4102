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
    assert res.output.startswith("error: --method: unknown explanation method 'rolout'")
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


# ------------------------------------------------------------------ folders: nothing skipped without a word
def _clip(path, frames=3, size=(48, 32)):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    for i in range(frames):
        w.write(np.full((size[1], size[0], 3), 40 * i, np.uint8))
    w.release()
    return path


def test_a_folder_explains_its_images_gifs_and_videos_and_names_what_it_skipped(tiny_vit_onnx, tmp_path):
    from PIL import Image

    d = tmp_path / "in"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), np.zeros((32, 32, 3), np.uint8))
    Image.fromarray(np.full((32, 32, 3), 99, np.uint8)).convert("P").save(d / "pal.gif")
    _clip(d / "c1.mp4")
    _clip(d / "c2.mp4")
    (d / "notes.txt").write_text("x")
    out = tmp_path / "o"
    res = run("explain", d, "--model", tiny_vit_onnx, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert [Path(r["source"]).name for r in records] == ["a.png", "pal.gif", "c1.mp4", "c2.mp4"]
    assert [r["frames"] for r in records[2:]] == [3, 3]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "a_rollout.png", "c1_rollout.mp4", "c2_rollout.mp4", "pal_rollout.png"]
    assert f"note: {d}: skipped 1 file that is neither image nor video (1 .txt)" in res.stderr.splitlines()
    # the codec note (where this OpenCV has no H.264 encoder) comes once per run, not per video
    assert res.stderr.count("does not play in web browsers") == (1 if records[2]["codec"] == "mp4v" else 0)
    assert all(len(line) <= 130 for line in res.stderr.splitlines())


# ------------------------------------------------------------------ reruns into the same folder
def test_names_carry_a_chosen_class_and_other_settings_are_refused_without_overwrite(tiny_vit_onnx, dog, tmp_path):
    out = tmp_path / "o"
    base = ("explain", dog, "--model", tiny_vit_onnx, "--out", out, "--method", "occlusion")
    first = run(*base, "--class", 1)
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in out.iterdir()) == [".attnmap-run.json", "dog_occlusion_class1.png"]
    before = (out / "dog_occlusion_class1.png").read_bytes()
    # the same settings again: fine
    again = run(*base, "--class", 1)
    assert again.exit_code == 0, again.output
    # another class: refused, nothing touched
    other = run(*base, "--class", 2)
    assert other.exit_code == 1 and len(other.output.splitlines()) == 1
    assert "holds the files of a run with other settings (class 1 there, 2 now)" in other.output
    assert "--overwrite" in other.output
    assert sorted(p.name for p in out.iterdir()) == [".attnmap-run.json", "dog_occlusion_class1.png"]
    assert (out / "dog_occlusion_class1.png").read_bytes() == before
    # other options or method: refused too
    res = run("explain", dog, "--model", tiny_vit_onnx, "--out", out, "--method", "attention", "--layer", 0)
    assert res.exit_code == 1 and "method 'occlusion' there, 'attention' now" in res.output
    # with --overwrite it runs, and the folder now records the new settings
    res = run(*base, "--class", 2, "--overwrite")
    assert res.exit_code == 0, res.output
    assert json.loads((out / ".attnmap-run.json").read_text())["class"] == 2
    assert (out / "dog_occlusion_class2.png").is_file()


def test_another_model_into_the_same_folder_is_refused(tiny_vit_onnx, dog, tmp_path):
    out = tmp_path / "o"
    assert run("explain", dog, "--model", tiny_vit_onnx, "--out", out).exit_code == 0
    res = run("explain", dog, "--out", out)  # the shipped default this time
    assert res.exit_code == 1 and "model " in res.output and "there" in res.output and "--overwrite" in res.output


def test_evaluate_says_which_files_of_a_folder_it_leaves_out(tiny_vit_onnx, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    _clip(d / "c.mp4")
    (d / "notes.txt").write_text("x")
    res = run("evaluate", d, "--model", tiny_vit_onnx, "--methods", "rollout", "--steps", 2)
    assert res.exit_code == 0, res.output
    assert (f"note: {d}: skipped 1 video (1 .mp4; still images only here); 1 file that is neither image nor "
            "video (1 .txt)") in res.stderr.splitlines()
