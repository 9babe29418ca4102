"""The per-stage benchmark and the real-time target measurement.

Timings are never asserted against absolute speeds; the tests check that each stage times
what it says (a model that sleeps a known time shows that time), that the ratio is computed
from the right stages, and that the result is JSON-able and printable.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from frames_fakes import FakeExplainer, ListSource, attnmap_threads, quadrant_frame, run_with_timeout
from attnmap.runtime.fronts.bench import STAGES, format_bench, run_bench
from attnmap.runtime.fronts.goals import format_goals, measure_goals
from attnmap.runtime.core.errors import ModelError, OptionError, SourceError

BENCH_SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "bench_frames.py"


def _video(path: Path, n: int, fps: float = 50.0, size=(64, 48)) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(n):
        w.write(quadrant_frame(i, size))
    w.release()
    return path


def test_stages_time_what_they_say_and_the_ratio_uses_attention_over_plain():
    ex = FakeExplainer(delay=0.04, plain_delay=0.02)
    r = run_bench(ex, runs=6, warmup=1, batch_size=2)
    assert set(r["stages"]) == {*STAGES, "plain_inference"}
    inf, plain, exp = (r["stages"][k] for k in ("inference", "plain_inference", "explanation"))
    # Sleeps are lower bounds; a busy machine may wake the sleeper late, never early (so no
    # upper bound: a loaded machine must not fail this test).
    assert inf["median_ms"] >= 40.0 and plain["median_ms"] >= 20.0
    assert inf["per_frame_ms"] == pytest.approx(inf["median_ms"] / 2, abs=1e-3)
    assert all(s["median_ms"] <= s["p90_ms"] for s in r["stages"].values())
    # About (40 ms + a fraction of a ms of explanation) / 20 ms = 2, per run then the median.
    assert r["ratio"] > 1.3
    assert r["ratio"] == pytest.approx((inf["median_ms"] + exp["median_ms"]) / plain["median_ms"], rel=0.3)
    assert ex.infer_calls == 7  # warm-up + runs, each with attentions; plain runs not counted
    assert r["source"] == "synthetic" and r["frame_size"] == [640, 480] and r["batch_size"] == 2
    assert r["fps"]["plain_inference"] == pytest.approx(2e3 / plain["median_ms"], rel=1e-3)
    assert json.loads(json.dumps(r)) == r


def test_video_source_is_read_onward_and_reopened_at_its_end(tmp_path):
    path = _video(tmp_path / "v.avi", 5)
    r = run_bench(FakeExplainer(), str(path), runs=4, warmup=1, batch_size=3)  # 15 frames from a 5-frame clip
    assert r["source"] == str(path) and r["frame_size"] == [64, 48]
    assert r["stages"]["decode"]["median_ms"] > 0 and r["stages"]["output"]["median_ms"] > 0
    assert list(tmp_path.iterdir()) == [path]  # the encode stage wrote into a temp folder only


def test_format_bench_shows_every_stage_and_the_ratio():
    r = run_bench(FakeExplainer(delay=0.002, plain_delay=0.001), runs=3, warmup=0)
    text = format_bench(r)
    for name in ("decode", "preprocess", "inference", "explanation", "overlay", "output", "plain inference"):
        assert f"\n{name} " in text
    assert f"(inference + explanation) / plain = {r['ratio']:.3f}" in text
    assert "fake_vit" in text


def test_bad_arguments():
    with pytest.raises(OptionError, match="runs and batch_size must be >= 1"):
        run_bench(FakeExplainer(), runs=0)
    with pytest.raises(SourceError, match="does not exist"):
        run_bench(FakeExplainer(), "no/such/clip.mp4")
    with pytest.raises(SourceError, match="yielded no frames"):
        run_bench(FakeExplainer(), _Empty())


class _Empty(ListSource):
    """A video source that opens but holds no frames."""

    def __init__(self):
        super().__init__([quadrant_frame(0)])
        self.images = []


def test_measure_goals_on_a_paced_clip(tmp_path):
    path = _video(tmp_path / "clip.avi", 20, fps=50.0)
    ex = FakeExplainer(delay=0.004, plain_delay=0.004)
    r = measure_goals(ex, str(path), batch_size=4, plain_runs=5)
    live, off = r["live"], r["offline"]
    assert live["frames_processed"] + live["frames_dropped"] == live["frames_captured"] == 20
    assert off["frames"] == 20 and r["source_fps"] == 50.0
    assert r["plain_ms"] >= 3.5 and r["plain_paced_ms"] >= 3.5
    t = r["goals"]
    # Live: min(50 fps, 1 / ~4 ms) = 50 fps; threshold 0.9 of that.
    assert t["live_fps"]["threshold"] == pytest.approx(45.0, rel=1e-6)
    assert t["latency"]["threshold"] == pytest.approx(1.3 * r["plain_ms"], rel=1e-3)
    assert t["offline_fps"]["threshold"] == pytest.approx(0.85 * 1e3 / r["plain_batch_ms_per_frame"], rel=1e-2)
    for name in ("live_fps", "offline_fps"):
        assert t[name]["met"] == (t[name]["value"] >= t[name]["threshold"])
    assert t["latency"]["met"] == (t["latency"]["value"] <= t["latency"]["threshold"])
    assert t["latency"]["value"] == pytest.approx(live["latency_ms"]["median"], abs=1e-3)
    assert json.loads(json.dumps(r)) == r
    text = format_goals(r)
    assert "live_fps" in text and "offline_fps" in text and "latency" in text
    assert f"{r['plain_paced_ms']:.2f} ms at batch 1 paced at 50 fps" in text
    assert list(tmp_path.iterdir()) == [path]


def test_measure_goals_with_two_runs_at_once_times_plain_inference_the_same_way(tmp_path):
    path = _video(tmp_path / "clip.avi", 20, fps=50.0)
    ex = FakeExplainer(delay=0.004, plain_delay=0.004)
    offline = FakeExplainer(delay=0.004, plain_delay=0.004)
    r = measure_goals(ex, str(path), batch_size=4, plain_runs=5, offline_explainer=offline, workers=2)
    assert r["offline"]["frames"] == 20 and r["offline_workers"] == 2
    assert offline.infer_frames == 20  # the offline run used its own explainer
    # 4 ms a batch of 4, two batches at once: about 0.5 ms a frame, against 1 ms one at a time.
    assert 0.4 <= r["plain_concurrent_ms_per_frame"] <= 0.75 < r["plain_batch_ms_per_frame"]
    assert "2 model run(s) at once" in format_goals(r)

    class Failing(FakeExplainer):
        def infer_plain(self, x_nchw):
            raise ModelError("plain run broke")

    with pytest.raises(ModelError, match="plain run broke"):
        run_with_timeout(lambda: measure_goals(ex, str(path), batch_size=4, plain_runs=2,
                                                 offline_explainer=Failing(), workers=2), 30)
    assert attnmap_threads() == []


def test_measure_goals_needs_a_clip_with_fps(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), quadrant_frame(i))
    with pytest.raises(SourceError, match="needs a known fps"):
        measure_goals(FakeExplainer(), str(tmp_path / "f%d.png"))


def test_real_tiny_model(tiny_vit_onnx):
    from attnmap import Explainer

    ex = Explainer(tiny_vit_onnx)
    r = run_bench(ex, runs=5, warmup=1, batch_size=2, method="attention")
    assert r["model"] == ex.meta.model_name and r["provider"] == "CPUExecutionProvider"
    assert r["stages"]["plain_inference"]["median_ms"] > 0 and r["ratio"] > 0
    assert r["file"] == str(tiny_vit_onnx)


def test_throughput_explainer_follows_the_plan_of_attnmap_explain(tiny_vit_onnx, monkeypatch):
    from attnmap import Explainer
    from attnmap.runtime.model import session
    from attnmap.runtime.fronts.goals import throughput_explainer

    monkeypatch.setattr(session, "physical_cores", lambda: 2)
    ex = Explainer(tiny_vit_onnx, provider="cpu")
    offline, plan = throughput_explainer(ex)
    assert plan == (1, 2, 4)  # two single-threaded runs on batches of 4
    assert offline is not ex and offline.model.threads == 1 and offline.path == ex.path
    assert throughput_explainer(ex, 6)[1] == (1, 2, 6)
    # Threads asked for: one run on them, so the explainer itself serves.
    pinned = Explainer(tiny_vit_onnx, provider="cpu", threads=2)
    assert throughput_explainer(pinned) == (pinned, (2, 1, 4))


def test_cli_bench_measures_the_targets_at_the_batch_explain_uses(tiny_vit_onnx, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import attnmap.cli as cli
    from attnmap.runtime.model import session

    monkeypatch.setattr(session, "physical_cores", lambda: 2)
    path = _video(tmp_path / "clip.avi", 10, fps=50.0)
    for extra, batch in (([], 4), (["--batch-size", "3"], 3)):
        result = CliRunner().invoke(cli.main, ["bench", "--model", str(tiny_vit_onnx), "--provider", "cpu",
                                               "--runs", "1", "--warmup", "0", "--targets", str(path), "--json",
                                               *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        targets = json.loads(result.stdout)["targets"]
        assert (targets["batch_size"], targets["offline_workers"], targets["offline"]["frames"]) == (batch, 2, 10)
        assert set(targets["goals"]) == {"live_fps", "offline_fps", "latency"}
