"""Every command on int8 and fp16 files of the shipped model (torch-free), and `attnmap quantize`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import attnmap.cli as cli
from attnmap import Explainer
from attnmap.runtime.frames.synth import make_batch

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "shapes_vit.onnx"


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """int8 and fp16 (half attentions) files of the shipped model, written by the CLI."""
    d = tmp_path_factory.mktemp("precision_cli")
    out = {}
    for name, extra in (("int8", []), ("fp16", ["--attn-dtype", "fp16"])):
        res = run("quantize", SHIPPED, "--precision", name, "-o", d / f"shapes_{name}.onnx", *extra)
        assert res.exit_code == 0, res.output
        assert res.stdout.strip() == str(d / f"shapes_{name}.onnx")
        assert "fidelity against fp32: 64 images (synthetic shapes, batch 1)" in res.stderr
        out[name] = d / f"shapes_{name}.onnx"
    return out


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Four synthetic shape photos and a 3-frame video of them."""
    d = tmp_path_factory.mktemp("shapes")
    images = make_batch(5, 4, size=128)[0]
    for i, img in enumerate(images):
        cv2.imwrite(str(d / f"s{i}.png"), img)
    video = d.parent / f"{d.name}_clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (128, 128))
    for img in images[:3]:
        writer.write(img)
    writer.release()
    return d, video


@pytest.mark.parametrize("name", ["int8", "fp16"])
def test_info_shows_precision_and_the_fidelity_block(files, name):
    res = run("info", files[name])
    assert res.exit_code == 0, res.output
    assert re.search(rf"^precision\s+{name}$", res.stdout, re.M), res.stdout
    assert "vs fp32 on 64 images (synthetic shapes, batch 1): top-1 agreement" in res.stdout
    assert "rollout" in res.stdout and "(gate >= 0.98)" in res.stdout
    data = json.loads(run("info", files[name], "--json").stdout)
    assert data["meta"]["precision"] == name and data["meta"]["fidelity"]["images"] == 64


@pytest.mark.parametrize("name", ["int8", "fp16"])
def test_explain_images_and_video_on_a_converted_file(files, shapes, tmp_path, name):
    folder, video = shapes
    res = run("explain", folder, video, "--model", files[name], "--out", tmp_path, "--json", "--save-maps")
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(records) == 5  # four images and the video
    ref = Explainer(SHIPPED, provider="cpu")
    for rec in records[:4]:
        want = ref.explain(cv2.imread(rec["source"]), topk=1)
        assert rec["topk"][0]["index"] == want.topk[0].index
        saved = np.load(next(tmp_path.glob(Path(rec["source"]).stem + "*.npz")))
        r = np.corrcoef(saved["grid"].ravel(), want.grid.ravel())[0, 1]
        assert saved["grid"].dtype == np.float32 and r > 0.98
    assert sorted(p.suffix for p in tmp_path.glob(video.stem + "*")) == [".mp4", ".npz"]


@pytest.mark.parametrize("name", ["int8", "fp16"])
def test_live_bench_evaluate_and_demo_run_on_a_converted_file(files, shapes, tmp_path, name):
    folder, video = shapes
    res = run("live", video, "--model", files[name], "--no-show", "--out", tmp_path / "live.avi", "--no-pace", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["frames_processed"] == 3
    res = run("bench", folder, "--model", files[name], "--runs", 2, "--warmup", 0, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["stages"]["stages"]["inference"]["median_ms"] > 0
    res = run("evaluate", folder, "--model", files[name], "--methods", "rollout", "--steps", 2)
    assert res.exit_code == 0, res.output
    res = run("demo", "--model", files[name], "--out", tmp_path / "demo")
    assert res.exit_code == 0, res.output


def test_bench_compare_puts_files_side_by_side(files, shapes):
    folder, _ = shapes
    res = run("bench", folder, "--model", SHIPPED, "--compare", f"{files['int8']},{files['fp16']}", "--runs", 3,
              "--warmup", 1, "--batch-size", 2, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    rows = out["files"]
    assert [Path(r["file"]).name for r in rows] == ["shapes_vit.onnx", "shapes_int8.onnx", "shapes_fp16.onnx"]
    assert [r["precision"] for r in rows] == ["fp32", "int8", "fp16"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["top1_agreement"] == 1.0 and rows[0]["map_pearson"] == 1.0
    for r in rows:
        assert r["size_bytes"] == Path(r["file"]).stat().st_size
        assert r["size_ratio"] == pytest.approx(r["size_bytes"] / rows[0]["size_bytes"], abs=1e-4)
        assert r["explains_per_s"] == pytest.approx(2e3 / r["explain_ms"], rel=1e-3)
        assert set(r["stages"]) == {"preprocess", "inference", "explanation", "overlay"}
    assert rows[1]["stored_fidelity"]["images"] == 64 and rows[0]["stored_fidelity"] == {}
    assert rows[1]["map_pearson"] > 0.98
    text = run("bench", folder, "--compare", SHIPPED, "--compare", files["int8"], "--runs", 1, "--warmup", 0).stdout
    assert "shapes_int8.onnx" in text and "speedup" in text


def test_quantize_gate_failure_exits_non_zero_and_writes_nothing(tmp_path):
    black = tmp_path / "black"
    black.mkdir()
    for i in range(3):
        cv2.imwrite(str(black / f"{i}.png"), np.zeros((96, 96, 3), np.uint8))
    out = tmp_path / "out"
    res = run("quantize", SHIPPED, "--calibration", black, "-o", out / "bad.onnx")
    assert res.exit_code == 1
    assert "error: fidelity gate failed for the int8 (static) file" in res.output
    assert not out.exists() or list(out.iterdir()) == []
    # the same gate, relaxed to nothing, lets it through (the figures say how bad it is)
    res = run("quantize", SHIPPED, "--calibration", black, "-o", out / "bad.onnx", "--min-top1", 0,
              "--min-rollout-corr", -1)
    assert res.exit_code == 0 and (out / "bad.onnx").is_file()


def test_precision_flags_that_do_not_apply_are_usage_errors(tmp_path):
    res = run("export", "deit_tiny_patch16_224", "-o", tmp_path / "x.onnx", "--check", tmp_path)
    assert res.exit_code == 2 and "--check applies to --precision fp16 or int8 only" in res.output
    res = run("export", "deit_tiny_patch16_224", "-o", tmp_path / "x.onnx", "--precision", "int8", "--no-attentions")
    assert res.exit_code == 2 and "needs the attentions" in res.output
    res = run("quantize", SHIPPED, "-o", tmp_path / "x.onnx", "--attn-dtype", "fp16")
    assert res.exit_code == 2 and "--attn-dtype fp16 applies to --precision fp16 only" in res.output
    res = run("quantize", SHIPPED, "-o", tmp_path / "x.onnx", "--precision", "fp16", "--calibration", tmp_path)
    assert res.exit_code == 2 and "--calibration applies to --precision int8 only" in res.output
    assert list(tmp_path.iterdir()) == []
