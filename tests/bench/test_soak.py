"""The soak benchmark (bench/soak.py) on a few hundred frames of the tiny model: counts, memory
figures and leftover detection. No wall-clock bounds: the script measures, it is not timed here.
"""

from __future__ import annotations

import resource
from pathlib import Path

import cv2
import numpy as np
import pytest

from attnmap import Explainer
from scripts import script_module

pytestmark = pytest.mark.slow

SOAK_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
FRAMES, WARMUP, EVERY, SIZE = 300, 100, 50, 64


@pytest.fixture(scope="module")
def soak_mod():
    with script_module(SOAK_SCRIPT, "attnmap_bench_soak") as mod:
        yield mod


@pytest.fixture(scope="module")
def tiny_explainer(tiny_vit_onnx):
    return Explainer(tiny_vit_onnx, provider="cpu")


def _read_video(path: Path) -> tuple[int, tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    n = 0
    while cap.read()[0]:
        n += 1
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    cap.release()
    return n, size


def _proc_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.parametrize("path", ["offline", "live", "live-record"])
def test_soak_counts_frames_samples_memory_and_leaves_only_the_video(soak_mod, tiny_explainer, tmp_path, path,
                                                                      monkeypatch):
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setenv("SOAK_SYSTEM_TMP", str(system_tmp))
    out_dir = tmp_path / "out"
    r = soak_mod.soak(tiny_explainer, path, FRAMES, SIZE, warmup=WARMUP, every=EVERY, out_dir=out_dir)

    assert r.path == path and r.frames == FRAMES
    # A sample at every EVERY frames (offline: at the first progress report past it, which
    # comes every batch of 4) up to the end; the warm figure is the one at the warm-up.
    done = [d for d, _ in r.samples]
    assert done == sorted(done) and done[-1] == FRAMES
    step = 4 if path == "offline" else 1
    assert all(any(k <= d < k + step for d in done) for k in range(EVERY, FRAMES + 1, EVERY))
    assert len(done) == FRAMES // EVERY
    assert r.warm_at == WARMUP and (WARMUP, r.warm_kb) in r.samples
    assert r.end_kb == r.samples[-1][1]
    # Resident set figures are real: positive, and not above the process's peak so far (the
    # kernel syncs its per-thread RSS counters in batches, hence a little slack).
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for kb in (r.warm_kb, r.end_kb, r.after_kb, r.min_kb, r.max_kb):
        assert 0 < kb <= peak_kb + 4096
    assert r.min_kb <= r.end_kb <= r.max_kb and r.min_kb <= r.warm_kb <= r.max_kb
    assert r.growth == pytest.approx((r.end_kb - r.warm_kb) / r.warm_kb)
    assert r.seconds > 0 and r.fps == pytest.approx(FRAMES / r.seconds)

    # Nothing left behind: the output folder holds the requested video (and the empty private
    # temp folder) only; no runtime thread survives the run.
    assert r.leftovers == [] and r.system_tmp == [] and r.threads == []
    assert list((out_dir / "tmp").iterdir()) == []
    videos = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    if path == "live":
        assert videos == []
        assert r.extra["frames_written"] == 0
    else:
        assert videos == [f"soak-{path}.mp4"]
        assert _read_video(out_dir / videos[0]) == (FRAMES, (SIZE, SIZE))
    if path == "offline":
        assert r.extra["failed"] == 0 and r.extra["frames_written"] == FRAMES
    else:
        # An unpaced file-like source hands every frame over (no drops), and the source is
        # closed when the loop stops at max_frames.
        # An unpaced generated source hands over every frame; the only one that can go untaken
        # is the one the reader had ready when the loop stopped at max_frames.
        assert r.extra["ended"] == "max_frames" and r.extra["frames_dropped"] <= 1
        assert r.extra["frames_explained"] == FRAMES and r.extra["source_closed"] is True
        assert r.extra["records_kept"] == FRAMES
    assert r.failures() == []
    assert "PASS" in soak_mod.format_result(r).splitlines()[-1]


def test_soak_reports_files_a_run_leaves(soak_mod, tiny_explainer, tmp_path, monkeypatch):
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    (system_tmp / "attnmap-there-before").mkdir()  # not new: not reported
    monkeypatch.setenv("SOAK_SYSTEM_TMP", str(system_tmp))

    def leaky_offline(explainer, frames, size, out, sampler, style):
        for done in range(4, frames + 1, 4):
            sampler.at(done)
        out.write_bytes(b"video")
        (out.parent / f".{out.name}.1234abcd.partial.mp4").write_bytes(b"half")
        (system_tmp / "attnmap-bench-x").mkdir()
        (system_tmp / "unrelated").mkdir()
        return frames, {"failed": 0}

    monkeypatch.setattr(soak_mod, "_offline", leaky_offline)
    out_dir = tmp_path / "out"
    r = soak_mod.soak(tiny_explainer, "offline", 40, SIZE, warmup=8, every=8, out_dir=out_dir)
    assert r.leftovers == [str(out_dir / ".soak-offline.mp4.1234abcd.partial.mp4")]
    assert r.system_tmp == [str(system_tmp / "attnmap-bench-x")]
    why = r.failures()
    assert len(why) == 2 and "left 1 file" in why[0] and "system temp" in why[1]
    assert soak_mod.format_result(r).splitlines()[-1].startswith("FAIL offline")


def test_growth_and_failures_from_given_figures(soak_mod):
    r = soak_mod.SoakResult("live", 1000, 2.0, warm_kb=200_000, warm_at=500, end_kb=210_000, after_kb=205_000,
                            samples=[(100, 150_000), (500, 200_000), (800, 190_000), (1000, 210_000)])
    assert r.growth == pytest.approx(0.05)
    assert (r.min_kb, r.max_kb) == (190_000, 210_000)  # the warm-up's samples are not steady state
    assert r.fps == 500.0
    assert r.failures() == ["RSS grew 5.00 % >= 5 %"]
    assert r.failures(max_growth=0.06) == []
    short = soak_mod.SoakResult("live", 50, 1.0, None, None, 100, 100, [(50, 100)])
    assert short.growth is None and "no warm figure" in short.failures()[0]


def test_rss_matches_proc_and_generated_frames_move(soak_mod):
    assert abs(soak_mod.rss_kb() - _proc_rss_kb()) < 16 * 1024
    src = soak_mod.GeneratedSource(48, frame_count=5, hold=3)
    frames = list(src)
    assert [f.index for f in frames] == list(range(5))
    assert all(f.image_bgr.shape == (48, 48, 3) and f.image_bgr.dtype == np.uint8 for f in frames)
    assert src.size == (48, 48) and src.kind == "video" and not src.is_live
    # Frame i is scene (i // hold) rolled by (i, 2i): consecutive frames differ, and undoing
    # the roll of frame 1 gives frame 0's scene back.
    assert not np.array_equal(frames[0].image_bgr, frames[1].image_bgr)
    np.testing.assert_array_equal(np.roll(frames[1].image_bgr, (-1, -2), axis=(0, 1)), frames[0].image_bgr)
    src.close()
    assert list(src) == []
