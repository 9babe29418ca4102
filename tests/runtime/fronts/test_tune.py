"""`attnmap tune` as a library: every set-up measured and gated, the fastest passing one written.

The shipped model (trained on the synthetic shapes) with synthetic shape photos as the check
images, so the gate is the real one. Times come from a fake clock: no wall-clock figures are
asserted, only which rows exist, what the gate said and what was chosen and written.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import cv2
import pytest

from attnmap.runtime.frames.synth import make_batch
from attnmap.runtime.fronts import tune as t
from attnmap.runtime.model.tuned import file_sha256, read_tuned, resolve_setup
from attnmap.runtime.precision import bf16
from attnmap.runtime.precision.fidelity import Fidelity

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "shapes_vit.onnx"


def _quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tune_photos")
    for i, image in enumerate(make_batch(5, 12, size=96)[0]):
        cv2.imwrite(str(d / f"shape_{i:02d}.png"), image)
    return str(d)


@pytest.fixture()
def model(tmp_path) -> Path:
    path = tmp_path / "shapes.onnx"
    shutil.copyfile(SHIPPED, path)
    return path


def _clock():
    """A fake clock: every reading 1 ms after the last (all set-ups tie; the order decides)."""
    ticks = itertools.count()
    return lambda: next(ticks) / 1000.0


def _plan(photos: str, **changes) -> t.TunePlan:
    return t.TunePlan(**{"check": photos, "providers": ("cpu",), "precisions": ("fp32", "int8", "bf16"),
                         "threads": (1,), "batches": (1, 2), "rounds": 2, "warmup": 0, **changes})


def test_every_set_up_is_measured_and_gated(model, photos, monkeypatch):
    monkeypatch.setattr(bf16, "bf16_support", lambda: bf16.Bf16Support((), (), {"cpu": "has no bf16 MatMul kernel"}))
    result = t.run_tune(model, _plan(photos), log=_quiet, clock=_clock())
    try:
        measured = [(r.provider, r.precision, r.threads, r.batch) for r in result.rows if r.fidelity is not None]
        assert measured == [("cpu", p, 1, b) for p in ("fp32", "int8") for b in (1, 2)]
        note = next(r for r in result.rows if r.precision == "bf16")
        assert note.fidelity is None and not note.passed and "bf16 cannot run" in note.note
        for r in result.rows[1:]:
            assert r.fidelity.images == 12 and r.ms is not None and r.x_plain is not None
        fp32 = next(r for r in result.rows if r.precision == "fp32")
        assert fp32.fidelity.top1_agreement == 1.0 and fp32.fidelity.maps["rollout"].pearson_mean == 1.0
        assert result.winner is not None and result.winner.passed
        table = t.format_table(result)
        assert "bf16 cannot run" in table and sum(line.endswith("  pass") for line in table.splitlines()) == 4 and "fastest passing: cpu" in table
    finally:
        t.discard_work(result)
    assert not result.workdir


def test_a_failing_configuration_is_never_chosen(model, photos, monkeypatch):
    real_gate = t.gate

    def int8_breaks(fidelity, thresholds, method):
        # a precision that breaks maps, as far as the gate can tell: its figures fail
        broken = fidelity.maps["rollout"].pearson_mean < 1.0
        return real_gate(fidelity, thresholds, method) + (["deliberately broken"] if broken else [])

    monkeypatch.setattr(t, "gate", int8_breaks)
    result = t.run_tune(model, _plan(photos, precisions=("fp32", "int8")), log=_quiet, clock=_clock())
    written = t.write_winner(result)
    int8 = [r for r in result.rows if r.precision == "int8"]
    assert int8 and all(not r.passed and "deliberately broken" in r.failures for r in int8)
    assert result.winner.precision == "fp32"
    assert "FAIL: deliberately broken" in t.format_table(result)
    assert written == [model.parent / "shapes.tuned.json"]
    assert read_tuned(model).precision == "fp32" and read_tuned(model).file == "shapes.onnx"


def test_choose_takes_the_fastest_passing_row_by_its_paired_ratio():
    ok = Fidelity(1, "x", 1.0, 0.0)
    rows = [t.TuneRow("cpu", "int8", 1, 1, ms=1.0, x_plain=0.5, fidelity=ok, failures=["broken"]),
            t.TuneRow("cpu", "fp16", 1, 1, ms=3.0, x_plain=1.5, fidelity=ok),
            t.TuneRow("cpu", "fp32", 2, 1, ms=2.5, x_plain=1.0, fidelity=ok),
            t.TuneRow("cpu", "fp32", 1, 1, ms=2.0, x_plain=1.1, fidelity=ok),  # faster median, slower paired
            t.TuneRow("-", "bf16", None, None, note="cannot run")]
    assert t.choose(rows) is rows[2]
    assert t.choose(rows[:1]) is None


def test_the_winner_is_written_and_becomes_the_default(model, photos):
    result = t.run_tune(model, _plan(photos, precisions=("int8",), batches=(2,)), log=_quiet, clock=_clock())
    written = t.write_winner(result)
    assert [p.name for p in written] == ["shapes.tuned-int8.onnx", "shapes.tuned.json"]
    assert sorted(p.name for p in model.parent.iterdir()) == ["shapes.onnx", "shapes.tuned-int8.onnx",
                                                              "shapes.tuned.json"]  # nothing half-written
    setup = read_tuned(model)
    assert (setup.provider, setup.threads, setup.batch_size, setup.precision) == ("cpu", 1, 2, "int8")
    assert setup.file_sha256 == file_sha256(written[0]) and setup.measured["fidelity"]["images"] == 12
    run = resolve_setup(model)
    assert run.path == written[0] and run.batch_size == 2


@pytest.mark.parametrize("changes, match", [({"precisions": ("fp8",)}, "precisions must be among"),
                                            ({"providers": ("tpu",)}, "providers must be among"),
                                            ({"threads": (0,)}, "threads must all be >= 1"),
                                            ({"rounds": 0}, "rounds must be >= 1")])
def test_bad_plans_are_one_line(changes, match):
    with pytest.raises(ValueError, match=match):
        t.TunePlan(check="x", **changes)


def test_a_converted_model_is_refused(tmp_path, photos):
    from attnmap.runtime.precision.convert import ConvertOptions, convert_file

    int8 = convert_file(SHIPPED, tmp_path / "shapes_int8.onnx", ConvertOptions("int8"), log=_quiet).path
    with pytest.raises(Exception, match="is int8; tune the fp32 file"):
        t.run_tune(int8, _plan(photos), log=_quiet)


def test_a_precision_that_does_not_convert_is_a_row_and_the_rest_goes_on(model, photos, monkeypatch):
    from attnmap.runtime.core.errors import ModelError
    from attnmap.runtime.precision import convert

    real = convert.convert_file

    def fp16_fails(src, out, options, **kwargs):
        if options.precision == "fp16":
            raise ModelError("onnxruntime's float16 converter failed: a test's refusal")
        return real(src, out, options, **kwargs)

    monkeypatch.setattr(convert, "convert_file", fp16_fails)
    result = t.run_tune(model, _plan(photos, precisions=("fp16", "int8"), batches=(1,)), log=_quiet, clock=_clock())
    t.discard_work(result)
    fp16 = [r for r in result.rows if r.precision == "fp16"]
    assert len(fp16) == 1 and fp16[0].note.startswith("cannot convert: ModelError: onnxruntime's float16")
    assert result.winner.precision == "int8"


def test_static_int8_is_tried_with_calibration_images_and_written_as_int8(model, photos, tmp_path):
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i, image in enumerate(make_batch(11, 8, size=96)[0]):
        cv2.imwrite(str(calibration / f"c{i}.png"), image)
    plan = _plan(photos, precisions=("int8-static",), batches=(1,), calibration=str(calibration))
    result = t.run_tune(model, plan, log=_quiet, clock=_clock())
    assert [r.precision for r in result.rows] == ["int8-static"]
    if result.winner is None:  # the static file failed the gate: nothing to write
        t.discard_work(result)
        assert result.rows[0].failures
        return
    written = t.write_winner(result)
    assert written[0].name == "shapes.tuned-int8-static.onnx"
    setup = read_tuned(model)
    assert setup.precision == "int8" and setup.file == "shapes.tuned-int8-static.onnx"
    assert resolve_setup(model, precision="int8").path == written[0]
