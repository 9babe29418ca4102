"""One output contract: `explain --json` prints the same versioned records on every engine, a
closed stdout ends a run quietly, and Ray's own log lines stay off the terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import attnmap.cli as cli
from attnmap.runtime.engine.record import RECORD_SCHEMA_VERSION, record_line

TINY_GRADS = Path(__file__).resolve().parents[1] / "models" / "tiny_vit_grads.onnx"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(5)
    for i, (h, w) in enumerate([(40, 52), (32, 32), (60, 30), (36, 44)]):
        cv2.imwrite(str(folder / f"im{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return folder


def _attnmap(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    # the timeout only keeps a hung run from hanging the suite; it is no speed requirement
    return subprocess.run([sys.executable, "-m", "attnmap.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900, check=False, **kw)


def _local(args: list[str], cwd: Path, monkeypatch) -> list[dict]:
    monkeypatch.chdir(cwd)
    res = CliRunner().invoke(cli.main, args)
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in res.stdout.splitlines()]


@pytest.mark.slow
def test_both_engines_print_the_same_records_and_ray_keeps_its_logs_to_itself(images, tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="the Ray engine needs the distributed extra: pip install 'attnmap[distributed]'")
    pytest.importorskip("pyarrow")
    # a class-specific method with two classes side by side: topk, classes and their probabilities
    args = ["explain", images.name, "--model", str(TINY_GRADS), "--method", "chefer", "--class", "topk:2",
            "--topk", "3", "--save-maps", "--json", "--out", "out"]
    local = _local(args, images.parent, monkeypatch)
    # a fresh process: Ray starts here as a user's run starts it, with nothing set up beforehand
    env = {k: v for k, v in os.environ.items() if k != "RAY_BACKEND_LOG_LEVEL"}
    ray_run = _attnmap(*args, "--engine", "ray", "--actors", "1", cwd=images.parent, env=env)
    assert ray_run.returncode == 0, ray_run.stderr[-3000:]
    on_ray = [json.loads(line) for line in ray_run.stdout.splitlines()]
    key = lambda r: r["source"]  # noqa: E731 - Ray prints images as they finish
    assert sorted(on_ray, key=key) == sorted(local, key=key)
    assert len(local) == 4
    for record in local:
        assert record["schema_version"] == RECORD_SCHEMA_VERSION
        assert set(record) == {"schema_version", "source", "topk", "classes", "overlay", "maps"}
        assert [c["index"] for c in record["classes"]] == [t["index"] for t in record["topk"][:2]]
        assert [c["prob"] for c in record["classes"]] == [t["prob"] for t in record["topk"][:2]]
        assert Path(images.parent, record["overlay"]).is_file()
    # stderr holds attnmap's own summary only: no Ray INFO/WARNING lines, no C++ core lines
    assert ray_run.stderr.splitlines() == ["4 inputs explained into out"], ray_run.stderr


def test_local_records_follow_the_documented_schema(images, tmp_path, monkeypatch):
    records = _local(["explain", images.name, "--model", str(TINY_GRADS), "--json", "--out", str(tmp_path)],
                     images.parent, monkeypatch)
    for record in records:
        assert list(record) == ["schema_version", "source", "topk", "overlay"]
        assert record["schema_version"] == RECORD_SCHEMA_VERSION and len(record["topk"]) == 5
        assert all(set(t) == {"index", "label", "prob"} for t in record["topk"])
    text = CliRunner().invoke(cli.main, ["explain", images.name, "--model", str(TINY_GRADS), "--out",
                                         str(tmp_path)]).stdout.splitlines()
    assert text == [record_line(r) for r in records]


def test_a_closed_stdout_ends_the_run_quietly(images, tmp_path):
    # `attnmap explain ... --json | head -1`: head exits after the first line
    cmd = (f"{sys.executable} -m attnmap.cli explain {images} --model {TINY_GRADS} --batch-size 1 --json "
           f"--out {tmp_path / 'a'} | head -1")
    res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=900, check=False)
    assert len(res.stdout.splitlines()) == 1 and json.loads(res.stdout)["schema_version"] == RECORD_SCHEMA_VERSION
    # quiet whether the later records met the closed pipe or all fit in it before head left
    assert res.stderr in ("", f"4 inputs explained into {tmp_path / 'a'}\n"), res.stderr
    # a reader gone before the first record: the write fails at once (EPIPE), never a bug report
    proc = subprocess.Popen([sys.executable, "-m", "attnmap.cli", "explain", str(images), "--model", str(TINY_GRADS),
                             "--json", "--out", str(tmp_path / "b")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=900) == 1
    assert err == "", err
    assert not re.search(r"Traceback|BrokenPipe|bug in attnmap|Exception ignored", err)
