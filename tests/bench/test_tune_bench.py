"""bench/tune.py runs end to end on the shipped model and prints every part with the load
(its figures are not checked: speed is measured by running it, never asserted in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from attnmap.runtime.frames.synth import make_batch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_tune_bench_prints_support_islands_and_the_tune_table(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(make_batch(2, 4, size=96)[0]):
        cv2.imwrite(str(photos / f"s{i}.png"), image)
    done = subprocess.run([sys.executable, "bench/tune.py", "--fp32", "models/shapes_vit.onnx", "--photos",
                           str(photos), "--parts", "support,islands,tune", "--rounds", "1",
                           "--json", str(tmp_path / "f.json")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert out.startswith("# ") and "load average" in out
    for part in ("## where bf16 runs", "## bf16 islands", "bf16 islands none", "## tune, rollout", "fastest passing"):
        assert part in out, part
    figures = json.loads((tmp_path / "f.json").read_text())
    assert len(figures["bf16_islands"]) == 4 and figures["tune_rollout"]["winner"]["passed"]
