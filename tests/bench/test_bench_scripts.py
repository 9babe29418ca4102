"""Issue 18's benchmark scripts run end to end and print every row (their figures are not
checked: speed is measured by running them, never asserted in tests)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("explain(img", "explain(frame640x480)", "batch 8, per image")


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_explain_limit_prints_every_row_with_the_load():
    out = _run("bench/explain_limit.py", "--shipped", "--rounds", "2", "--warmup", "1")
    assert "interleaved rounds  load average" in out
    for row in ("plain inference (logits-only file, batch 1)", 'head_fusion="max", discard_ratio=0.9',
                "explain(frame640x480).overlay()", "inference with attention outputs", "+ rollout map", *ROWS):
        assert row in out, row


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="bench/ab_revision.py exports a revision with git: needs a git checkout")
def test_ab_revision_compares_this_checkout_with_a_revision_in_one_process():
    out = _run("bench/ab_revision.py", "--rev", "HEAD", "--shipped", "--rounds", "2", "--warmup", "1")
    assert "this checkout against HEAD  2 paired rounds" in out
    for row in ("max fusion, discard 0.9", "explain(frame).overlay()", *ROWS):
        assert row in out, row


def test_providers_prints_a_row_per_file_kind_and_provider_with_its_fidelity():
    import onnxruntime as ort

    from attnmap.runtime.model.providers import ORT_NAMES, short_name

    out = _run("bench/providers.py", "--count", "4", "--runs", "2", "--warmup", "1")
    assert "load average before:" in out and "load average after:" in out
    assert "plain fp32 inference on the CPU provider (logits only):" in out
    present = [short_name(p) for p in ort.get_available_providers() if short_name(p) in ORT_NAMES]
    for kind in ("fp32", "fp16", "int8 dynamic", "int8 static"):
        for provider in present:
            rows = [line for line in out.splitlines() if line.startswith(f"| {kind} | {provider} | rollout |")]
            assert len(rows) == 1, (kind, provider, out)
            cells = [c.strip() for c in rows[0].strip("|").split("|")]
            assert len(cells) == 9 and 0.0 <= float(cells[5]) <= 1.0  # top-1 agreement beside the speed
