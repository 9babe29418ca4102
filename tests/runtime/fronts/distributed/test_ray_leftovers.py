"""The parts of Ray fault handling that need no Ray: finding and stopping what a killed driver's
local instance left (processes found by their session folder), and the kept scores a
distributed evaluation resumes from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attnmap.runtime.evaluation.plan import EvaluationPlan
from attnmap.runtime.evaluation.result import Evaluation, merge_evaluations
from attnmap.runtime.fronts.distributed import instances
from attnmap.runtime.fronts.distributed.scores import (evaluation_fingerprint, keep_part, kept_part, part_from_json,
                                                       part_to_json, score_path)

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds processes through /proc")


@pytest.fixture
def records(tmp_path, monkeypatch):
    """The records' folder under this test's temp folder (not the machine's)."""
    monkeypatch.setattr(instances, "records_dir", lambda: tmp_path / "records")
    return tmp_path / "records"


def _holder(session: Path, *, in_argv: bool) -> subprocess.Popen:
    """A process standing in for a Ray agent: it names the session in its command line, or only
    holds a log file under it open (as an agent whose title Ray rewrote)."""
    session.mkdir(parents=True, exist_ok=True)
    code = ("import os, time; f = open(os.environ['SESSION'] + '/logs.out', 'w'); print('ready', flush=True); "
            "time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, *([str(session)] if in_argv else [])], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "SESSION": str(session)})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_dead_drivers_instance_is_stopped_and_its_record_forgotten(records, tmp_path):
    session = tmp_path / "ray" / "session_x_1"
    named, holding = _holder(session, in_argv=True), _holder(session, in_argv=False)
    bystander = _holder(tmp_path / "ray" / "session_y_2", in_argv=False)  # another instance's process
    try:
        assert sorted(instances.session_processes(str(session))) == sorted([named.pid, holding.pid])
        dead = _dead_pid()
        instances.record_instance(str(session), pid=dead)
        notes = []
        found = instances.sweep_stale_instances(grace=2.0, on_note=notes.append)
        assert [f.driver for f in found] == [dead] and sorted(found[0].stopped) == sorted([named.pid, holding.pid])
        assert named.wait(timeout=10) is not None and holding.wait(timeout=10) is not None
        assert bystander.poll() is None  # only the stale session's processes
        assert notes == [f"stopped 2 Ray processes that a killed run (pid {dead}) left running"]
        assert not list(records.glob("*.json"))
    finally:
        for p in (named, holding, bystander):
            p.kill()
            p.wait()


def test_a_running_drivers_instance_is_left_alone(records, tmp_path):
    session = tmp_path / "ray" / "session_z_3"
    holder = _holder(session, in_argv=True)
    try:
        path = instances.record_instance(str(session))  # this process: alive
        assert instances.sweep_stale_instances(grace=0.5) == [] and path.is_file()
        assert holder.poll() is None
        instances.forget_instance()
        assert not path.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_reused_pid_does_not_pass_for_the_driver(records, tmp_path):
    session = tmp_path / "ray" / "session_r_4"
    holder = _holder(session, in_argv=True)
    try:
        path = instances.record_instance(str(session))
        doc = json.loads(path.read_text())
        doc["started"] -= 1  # this pid, but a process that started at another time
        path.write_text(json.dumps(doc))
        found = instances.sweep_stale_instances(grace=2.0)
        assert [f.stopped for f in found] == [(holder.pid,)]
        assert holder.wait(timeout=10) is not None
    finally:
        holder.kill()
        holder.wait()


def test_unreadable_records_are_dropped(records):
    records.mkdir(parents=True)
    (records / "1.json").write_text("{not json")
    assert instances.sweep_stale_instances() == [] and not (records / "1.json").exists()


# ----------------------------------------------------------------------------- kept scores
def _part(source: str, seed: int) -> Evaluation:
    rng = np.random.default_rng(seed)
    ev = Evaluation("m", "patch", "mean", {"rollout": {}, "random": {}})
    curves = {}
    from attnmap.runtime.evaluation.curves import Curves

    for method in ("rollout", "random"):
        curves[method] = Curves(np.linspace(0, 1, 10), rng.random(10), rng.random(10), np.linspace(0, 1, 5),
                                rng.random(5), rng.random(5))
    ev._add(source, int(rng.integers(10)), {"rollout": {"positive_auc": float(rng.random()), "mass_ratio": np.nan},
                                            "random": {"positive_auc": float(rng.random()), "mass_ratio": 0.1}},
            curves)
    return ev


def test_a_kept_part_reads_back_exactly_and_merges_as_the_original(tmp_path):
    parts = [_part(f"img{i}.png", i) for i in range(3)]
    back = [part_from_json(json.loads(json.dumps(part_to_json(p)))) for p in parts]
    a, b = merge_evaluations(parts), merge_evaluations(back)
    assert a.sources == b.sources and a.targets == b.targets
    for method in a.per_image:
        np.testing.assert_array_equal(a.per_image[method]["positive_auc"], b.per_image[method]["positive_auc"])
        for name in ("positive", "deletion"):
            np.testing.assert_array_equal(np.stack(a.curves[method][name]), np.stack(b.curves[method][name]))
    assert a.to_dict() == b.to_dict()


def test_a_kept_part_is_taken_only_for_the_same_bytes_position_and_settings(tmp_path):
    part = _part("img0.png", 0)
    keep_part(tmp_path, 3, "a" * 64, "f1", part)
    assert score_path(tmp_path, 3, "a" * 64).is_file()
    assert kept_part(tmp_path, 3, "a" * 64, "f1").to_dict() == part.to_dict()
    assert kept_part(tmp_path, 3, "b" * 64, "f1") is None  # other bytes
    assert kept_part(tmp_path, 4, "a" * 64, "f1") is None  # another position: another random floor
    assert kept_part(tmp_path, 3, "a" * 64, "f2") is None  # other settings
    score_path(tmp_path, 3, "a" * 64).write_text("{broken")
    assert kept_part(tmp_path, 3, "a" * 64, "f1") is None


def test_the_fingerprint_follows_the_settings_that_change_scores():
    from attnmap import Explainer

    shipped = Path(__file__).resolve().parents[4] / "models" / "shapes_vit.onnx"
    meta = Explainer(shipped, provider="cpu", threads=1).meta
    base = EvaluationPlan(methods=("rollout",), steps=4).checked(meta)
    same = EvaluationPlan(methods=("rollout",), steps=4, batch_size=8).checked(meta)  # batching: same numbers
    assert evaluation_fingerprint("m", base) == evaluation_fingerprint("m", same)
    for other in (EvaluationPlan(methods=("rollout",), steps=8), EvaluationPlan(methods=("rollout:discard_ratio=0.5",),
                                                                                steps=4),
                  EvaluationPlan(methods=("rollout",), steps=4, baseline="blur")):
        assert evaluation_fingerprint("m", other.checked(meta)) != evaluation_fingerprint("m", base)
    assert evaluation_fingerprint("n", base) != evaluation_fingerprint("m", base)


def test_the_raylets_error_messages_go_to_stderr_not_to_the_json_on_stdout(capsys):
    pytest.importorskip("ray", reason="needs the distributed extra: pip install -e '.[distributed]'")
    from ray._private import worker

    from attnmap.runtime.fronts.distributed.cluster import _raylet_errors_to_stderr

    _raylet_errors_to_stderr()
    _raylet_errors_to_stderr()  # once per process: not wrapped twice
    worker.print_to_stdstream({"lines": ["A worker died or was killed"], "pid": "raylet", "is_err": False},
                              ignore_prefix=False)
    out, err = capsys.readouterr()
    assert out == "" and "A worker died or was killed" in err
