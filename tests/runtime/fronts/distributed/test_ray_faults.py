"""Faults in a Ray run (issue 27 part 4), through bench/ray_faults.py on real Ray processes: an
actor killed with SIGKILL, the second node of a two-node cluster on this machine killed with
its raylet, and the driver killed with SIGKILL. Each faulted run must finish (or, for the
driver, be finished by the next run) with one row per image, one overlay per image, nothing
printed twice, and a rerun that skips everything; a killed driver's Ray processes are gone
once the next run ends. Every Ray process a test starts is stopped in the script's ``finally``
blocks (by process group, and by the test's own Ray temp folders), also when a check fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from extras import need
from scripts import script_module

need("ray", "distributed")
need("pyarrow", "distributed")

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[4] / "bench" / "ray_faults.py"
IMAGES = 16


@pytest.fixture(scope="module")
def faults():
    with script_module(SCRIPT, "attnmap_bench_ray_faults") as mod:
        yield mod


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("ray-faults")


def _whole(run, images: int) -> None:
    """One row, one overlay and one printed line per image; the rerun skips them all."""
    assert run.rows == images and run.sources == images and run.duplicates == 0 and run.errors == 0
    assert run.overlays_per_image == 1.0
    assert run.rerun_exit_code == 0 and run.rerun_skipped == images and run.rerun_done == 0


def test_a_killed_actor_is_replaced_and_every_image_written_once(faults, work):
    run = faults.actor_fault(work, IMAGES, "occlusion", after=3)
    assert run.killed and run.killed_after_rows < IMAGES  # killed mid-run
    assert run.exit_code == 0, run.note
    assert run.printed == IMAGES and run.printed_sources == IMAGES
    _whole(run, IMAGES)


@pytest.mark.skipif(not Path(sys.executable).with_name("ray").is_file(), reason="needs Ray's `ray` command beside "
                    "this Python (the script starts the nodes with it)")
def test_a_node_that_leaves_mid_run_loses_no_image(faults, work):
    run = faults.node_fault(work, IMAGES, "occlusion", after=3)
    assert len(run.killed) >= 1 and run.killed_after_rows < IMAGES
    assert run.exit_code == 0, run.note
    assert run.printed == IMAGES and run.printed_sources == IMAGES
    _whole(run, IMAGES)


def test_a_killed_drivers_processes_are_gone_once_the_next_run_ends(faults, work):
    run = faults.driver_fault(work, IMAGES, "occlusion", after=2)
    assert run.left_over >= 1  # what this test is about: SIGKILL leaves Ray's agents running
    assert run.left_over_after_next == 0, run.note
    assert any("that a killed run" in line for line in run.rerun_notes)
    # the rerun finishes the job: every image once, the first run's finished ones skipped
    assert run.rows == IMAGES and run.duplicates == 0 and run.errors == 0 and run.overlays_per_image == 1.0
    assert run.rerun_exit_code == 0 and run.rerun_skipped >= run.killed_after_rows
    assert run.rerun_skipped + run.rerun_done == IMAGES
