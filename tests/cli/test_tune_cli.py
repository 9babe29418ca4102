"""`attnmap tune`, and explain / live / serve picking up what it wrote unless flags say otherwise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import attnmap.cli as cli
from attnmap.runtime.frames.synth import make_batch
from attnmap.runtime.model.tuned import TunedSetup, file_sha256, read_tuned, sidecar_path, write_tuned
from attnmap.runtime.precision.convert import ConvertOptions, convert_file

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "shapes_vit.onnx"


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tune_cli_photos")
    for i, image in enumerate(make_batch(9, 6, size=96)[0]):
        cv2.imwrite(str(d / f"shape_{i}.png"), image)
    return d


@pytest.fixture()
def model(tmp_path) -> Path:
    path = tmp_path / "shapes.onnx"
    shutil.copyfile(SHIPPED, path)
    return path


def test_tune_prints_its_table_and_writes_the_fastest_passing_set_up(model, photos):
    res = run("tune", model, "--check", photos, "--precisions", "fp32,int8,bf16", "--threads", "1",
              "--rounds", "1", "--warmup", "0")
    assert res.exit_code == 0, res.output
    rows = [line for line in res.stdout.splitlines() if line[:2] in ("* ", "  ") and line[2:].startswith("cpu ")]
    assert len(rows) == 2 and sum(line.startswith("* ") for line in rows) == 1
    assert "x plain" in res.stdout and "fastest passing: cpu" in res.stdout
    assert "load average" in res.stdout
    setup = read_tuned(model)
    assert setup.provider == "cpu" and setup.threads == 1 and setup.precision in ("fp32", "int8")
    assert "wrote " in res.stderr and "shapes.tuned.json" in res.stderr


def test_tune_json_and_no_write(model, photos):
    res = run("tune", model, "--check", photos, "--precisions", "fp32", "--threads", "1", "--rounds", "1",
              "--warmup", "0", "--no-write", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [r["precision"] for r in data["rows"]] == ["fp32"] and data["winner"]["passed"]
    assert not sidecar_path(model).exists()


@pytest.fixture()
def tuned(model, tmp_path) -> Path:
    """``model`` tuned (by hand, so the test decides) to its int8 file, 1 thread, batch 2."""
    int8 = convert_file(model, tmp_path / "shapes.tuned-int8.onnx", ConvertOptions("int8"), log=lambda _: None).path
    write_tuned(TunedSetup("cpu", 1, 2, "int8", int8.name, file_sha256(model), file_sha256(int8)), model)
    return model


def test_explain_uses_the_tuned_set_up_by_default(tuned, photos, tmp_path):
    res = run("explain", photos / "shape_0.png", "-m", tuned, "-o", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    assert "note: tuned set-up from shapes.tuned.json: shapes.tuned-int8.onnx on cpu, 1 threads, batch 2" in res.stderr
    assert json.loads(res.stdout.splitlines()[0])["topk"]


def test_explicit_flags_win_over_the_tuned_set_up(tuned, photos, tmp_path):
    res = run("explain", photos / "shape_0.png", "-m", tuned, "-o", tmp_path / "out", "--precision", "fp32",
              "--threads", "2", "--provider", "cpu")
    assert res.exit_code == 0, res.output
    assert "shapes.onnx on cpu, 2 threads, batch 2 (provider, threads, precision as given)" in res.stderr


def test_live_uses_it_too(tuned, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 96))
    for image in make_batch(3, 3, size=96)[0]:
        writer.write(image)
    writer.release()
    res = run("live", video, "-m", tuned, "--no-show", "--out", tmp_path / "live.avi", "--no-pace", "--json")
    assert res.exit_code == 0, res.output
    assert "tuned set-up from shapes.tuned.json: shapes.tuned-int8.onnx" in res.stderr
    used = json.loads(res.stdout)["setup"]
    assert used == {"model": str(tuned.parent / "shapes.tuned-int8.onnx"), "provider": "cpu", "threads": 1,
                    "precision": "int8", "tuned": str(tuned.parent / "shapes.tuned.json")}


@pytest.mark.parametrize("args, match", [
    (["--precisions", "fp8"], "expected comma-separated precisions among fp32, fp16, int8, int8-static, bf16"),
    (["--threads", "0"], "thread counts >= 1"),
    (["--batch-sizes", "x"], "batch sizes"),
    (["--precisions", "int8-static"], "int8-static needs calibration images"),
])
def test_bad_tune_flags_are_one_line(model, photos, args, match):
    res = run("tune", model, "--check", photos, *args)
    assert res.exit_code == 2 and match in res.stderr


def test_bad_inputs_are_one_line(model, photos, tmp_path):
    res = run("tune", model, "--check", photos, "--providers", "cuda")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "provider 'cuda' is not available" in res.stderr
    res = run("tune", model, "--check", tmp_path / "nothing_here", "--rounds", "1")
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "nothing_here" in res.stderr
    sidecar_path(model).write_text("{broken")
    res = run("explain", photos / "shape_0.png", "-m", model, "-o", tmp_path / "out")
    assert res.exit_code == 1 and "shapes.tuned.json" in res.stderr and "rerun `attnmap tune`" in res.stderr
