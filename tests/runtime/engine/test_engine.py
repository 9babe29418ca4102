"""The frame engine, its stage clock, the option specs and the overlay style that every front shares."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from attnmap import Explainer, FrameEngine, ItemResult, Job, OverlayStyle, StageClock
from attnmap.runtime.core.errors import ExplainError, MethodOptionError, OptionError, OutputError
from attnmap.runtime.core.meta import ModelMeta
from attnmap.runtime.core.options import OptionSpec
from attnmap.runtime.engine.explainer import parse_class_spec
from attnmap.runtime.frames.frame import Frame
from attnmap.runtime.methods import METHODS, check_options
from attnmap.runtime.model import session
from attnmap.runtime.model.plan import plan_for_inputs
from frames_fakes import FAKE_META, FakeExplainer, ListSource, attnmap_threads, quadrant_frame


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------- StageClock
def test_stage_clock_records_durations_totals_and_percentiles_on_its_own_time_source():
    now = FakeClock()
    clock = StageClock(now=now, keep=3)
    for d in (0.010, 0.020, 0.030, 0.040):
        with clock.stage("inference"):
            now.t += d
    with pytest.raises(RuntimeError):
        with clock.stage("overlay"):
            now.t += 0.005
            raise RuntimeError("drawing failed")
    clock.add("custom", 1.0)
    assert clock.stages() == ["inference", "overlay", "custom"]  # engine order first, then first seen
    assert clock.durations("inference") == pytest.approx([0.020, 0.030, 0.040])  # the last `keep`
    assert clock.total("inference") == pytest.approx(0.100) and clock.count("inference") == 4
    assert clock.last("overlay") == pytest.approx(0.005)  # timed although it raised
    s = clock.summary()["inference"]
    assert s["median_ms"] == pytest.approx(30.0) and s["max_ms"] == pytest.approx(40.0) and s["n"] == 3
    assert s["p90_ms"] == pytest.approx(38.0) and s["total_s"] == pytest.approx(0.1)
    assert clock.last("never") == 0.0 and clock.durations("never") == []


# --------------------------------------------------------------------------- option specs
def test_option_specs_check_types_ranges_choices_and_model_axes():
    ratio = METHODS["rollout"].options["discard_ratio"]
    assert ratio.check(np.float32(0.5)) == 0.5 and isinstance(ratio.check(0), float)
    for bad in (1.0, -0.1, float("nan"), "0.5", True, None):
        with pytest.raises(OptionError):
            ratio.check(bad)
    layer = METHODS["attention"].options["layer"]
    assert layer.check(-1, size=4) == -1 and layer.check(3, size=4) == 3
    with pytest.raises(OptionError, match=r"must be in \[-4, 4\) for a model with 4 layers; got 4"):
        layer.check(4, size=4)
    head = METHODS["attention"].options["head"]
    assert head.nullable and head.check(None) is None
    fusion = METHODS["rollout"].options["head_fusion"]
    with pytest.raises(OptionError, match="Did you mean 'max'"):
        fusion.check("maxx")
    assert METHODS["product"].options["eps"].describe() == "a number in (0, inf]"
    with pytest.raises(OptionError):
        METHODS["product"].options["eps"].check(0.0)


def test_option_steps_drive_the_live_keys():
    fusion = METHODS["rollout"].options["head_fusion"]
    assert [fusion.step(v) for v in ("mean", "max", "min")] == ["max", "min", "mean"]
    head = METHODS["attention"].options["head"]
    seq, v = [], None
    for _ in range(4):
        v = head.step(v, size=3)
        seq.append(v)
    assert seq == [0, 1, 2, None]  # fused -> each head -> fused
    layer = METHODS["attention"].options["layer"]
    assert layer.step(-1, 1, size=4) == 0 and layer.step(0, -1, size=4) == 3
    assert METHODS["rollout"].options["residual"].step(True) is False


def test_every_method_option_has_a_spec_whose_default_passes_its_own_check():
    for m in METHODS.values():
        for name, spec in m.options.items():
            assert spec.name == name and spec.help
            assert spec.check(spec.default, size=2) == spec.default


def test_check_options_refuses_head_choices_on_a_file_whose_heads_were_fused_at_export():
    fused = dataclasses.replace(FAKE_META, head_fusion="mean")
    assert check_options("attention", {"layer": -1}, fused) == {"layer": -1}
    with pytest.raises(MethodOptionError, match="heads were fused at export .*--heads mean.*one head output"):
        check_options("attention", {"head": 0}, fused)
    with pytest.raises(MethodOptionError, match="already fused by 'mean' at export"):
        check_options("rollout", {"head_fusion": "max"}, fused)
    assert check_options("rollout", {"head_fusion": "mean"}, fused) == {"head_fusion": "mean"}
    # A bad option is both an OptionError and an ExplainError, whichever the caller catches.
    with pytest.raises(ExplainError):
        check_options("rollout", {"discard": 0.5})
    with pytest.raises(OptionError, match="has no option 'discard'.*Did you mean 'discard_ratio'"):
        check_options("rollout", {"discard": 0.5})


def test_a_custom_spec_refuses_unknown_kinds_and_axes():
    with pytest.raises(TypeError):
        OptionSpec("x", list, None, "help")
    with pytest.raises(TypeError):
        OptionSpec("x", int, 0, "help", axis="tokens")


# --------------------------------------------------------------------------- OverlayStyle
def test_overlay_style_is_checked_once_and_normalises_colormap_names():
    style = OverlayStyle(colormap="Inferno", alpha=1, blur=0)
    assert style.colormap == "inferno" and style.alpha == 1.0 and isinstance(style.alpha, float)
    assert style.replace(alpha=0.25).alpha == 0.25 and style.replace(alpha=0.25).colormap == "inferno"
    for kwargs, fragment in [({"alpha": 1.5}, "alpha"), ({"alpha": True}, "alpha"), ({"blur": -0.1}, "blur"),
                             ({"mode": "blnd"}, "Did you mean 'blend'"), ({"colormap": "infernoo"}, "inferno"),
                             ({"label": "yes"}, "label")]:
        with pytest.raises(OptionError, match=fragment):
            OverlayStyle(**kwargs)
    with pytest.raises(OptionError, match="no field 'colour'"):
        style.replace(colour="jet")
    assert OverlayStyle().next_colormap().colormap != "jet"


# --------------------------------------------------------------------------- Job and the engine
def test_job_is_checked_against_the_model():
    ex = FakeExplainer()
    for job, fragment in [(Job(fit="zoom"), "fit must be"), (Job(topk=0), "topk"),
                          (Job(method="chefer"), "needs attention gradients"),
                          (Job(method="rollout", target=1), "class-agnostic"),
                          (Job(method="rollout", options={"start_layer": 5}), r"\[-2, 2\)"),
                          (Job(options={"layer": 1}), "method 'auto' is 'rollout' for this model"),
                          (Job(style={"colormap": "jet"}), "OverlayStyle")]:
        with pytest.raises((OptionError, ExplainError), match=fragment):
            FrameEngine(ex, job)
    job = FrameEngine(ex, Job(method="rollout", options={"discard_ratio": np.float64(0.5)})).job
    assert job.options == {"discard_ratio": 0.5}


def test_method_auto_is_the_first_live_default_the_file_carries():
    ex = FakeExplainer()
    assert FrameEngine(ex, Job()).job.method == "rollout"  # a plain attention file
    with_norms = ex.meta.replace(outputs=(*ex.meta.outputs, "head_norms"))
    assert Job().checked(with_norms).method == "head-norm"
    assert Job(method="attention").checked(with_norms).method == "attention"  # a named method is kept


def test_step_gives_what_the_one_image_api_gives_and_a_failure_as_an_item(tmp_path):
    ex = Explainer(provider="cpu")  # the shipped model: real preprocessing, model and method
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    engine = FrameEngine(ex, Job(method="rollout", options={"discard_ratio": 0.5}, fit="squash", topk=3,
                                 style=OverlayStyle(colormap="viridis")))
    item = engine.step(Frame(7, img, "frame7", 0.0))
    ref = ex.explain(img, method="rollout", fit="squash", topk=3, discard_ratio=0.5)
    assert item.ok and item.index == 7 and item.source == "frame7"
    np.testing.assert_allclose(item.explanation.grid, ref.grid, atol=1e-6)
    assert [t.index for t in item.explanation.topk] == [t.index for t in ref.topk]
    np.testing.assert_array_equal(item.drawn, ref.overlay(OverlayStyle(colormap="viridis")))
    assert {"preprocess", "inference", "explanation", "overlay"} <= set(engine.clock.stages())
    bad = engine.step(Frame(8, np.zeros((5, 5), np.float32), "frame8", 0.0))
    assert not bad.ok and bad.explanation is None and "uint8" in bad.reason()


class _ListSink:
    def __init__(self, fail_at: int | None = None):
        self.seen: list[int] = []
        self.fail_at = fail_at

    def write(self, item: ItemResult) -> None:
        if item.index == self.fail_at:
            raise OutputError("disk full")
        self.seen.append(item.index)


@pytest.mark.parametrize("workers", [1, 2])
def test_run_hands_every_item_to_the_sink_in_order_drawn_before_it_is_yielded(workers):
    frames = [quadrant_frame(i) for i in range(11)]
    sink = _ListSink()
    engine = FrameEngine(FakeExplainer(), Job(style=OverlayStyle()), batch_size=3, workers=workers)
    got = list(engine.run(ListSource(frames), sink=sink))
    assert [r.index for r in got] == sink.seen == list(range(11))
    assert all(r.ok and r.drawn.shape == frames[r.index].shape for r in got)
    assert engine.clock.count("output") == 11 and engine.clock.count("overlay") == 11
    assert attnmap_threads() == []


def test_a_failing_sink_ends_the_run_after_the_items_before_it():
    sink = _ListSink(fail_at=5)
    engine = FrameEngine(FakeExplainer(), Job(style=OverlayStyle()), batch_size=2)
    got = []
    with pytest.raises(OutputError, match="disk full"):
        for item in engine.run(ListSource([quadrant_frame(i) for i in range(20)]), sink=sink):
            got.append(item.index)
    assert sink.seen == list(range(5)) and got == list(range(len(got))) and len(got) <= 5
    assert attnmap_threads() == []


def test_run_over_a_list_of_frames_with_a_bad_one_keeps_the_others():
    frames = [Frame(i, quadrant_frame(i), f"f{i}", 0.0) for i in range(4)]
    frames[2] = Frame(2, None, "f2", 0.0, error=OSError("unreadable"))
    got = list(FrameEngine(FakeExplainer(), batch_size=4).run(frames))
    assert [r.ok for r in got] == [True, True, False, True] and got[2].reason() == "OSError: unreadable"


# --------------------------------------------------------------------------- policy in the library
def test_plan_for_inputs_runs_two_at_once_only_where_there_is_more_than_one_batch(monkeypatch):
    monkeypatch.setattr(session, "physical_cores", lambda: 2)
    assert plan_for_inputs("cpu", images=3, videos=0) == (None, 1, 4)  # one batch: one run, all cores
    assert plan_for_inputs("cpu", images=9, videos=0) == (1, 2, 4)
    assert plan_for_inputs("cpu", images=1, videos=1) == (1, 2, 4)
    assert plan_for_inputs("cpu", images=9, videos=0, threads=2) == (2, 1, 4)
    assert plan_for_inputs("cpu", images=9, videos=0, batch_size=2, workers=3) == (1, 3, 2)
    assert plan_for_inputs("cpu", images=9, videos=0, per_image=True) == (None, 1, 4)


def test_parse_class_spec_reads_indices_names_and_topk():
    meta: ModelMeta = FAKE_META
    assert parse_class_spec(meta, "1") == (1, None)
    assert parse_class_spec(meta, "Bright") == (1, None)
    assert parse_class_spec(meta, "topk:2") == (None, 2)
    assert parse_class_spec(meta, "topk:99") == (None, 3)  # no more than the model has
    for bad, fragment in [("topk:0", "topk:N"), ("topk:x", "topk:N"), ("7", "out of range"),
                          ("brigth", "Did you mean 'bright'")]:
        with pytest.raises(ExplainError, match=fragment):
            parse_class_spec(meta, bad)
