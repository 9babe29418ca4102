"""Ctrl-C and SIGTERM end a video run with the signal's exit code, one line on what was written,
and no temp file left; a later run into the folder sweeps partials that killed runs left."""

import os
import re
import select
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import attnmap.cli as cli

pty = pytest.importorskip("pty", reason="the progress bar needs a POSIX terminal")

FRAMES = 4000  # long enough to be interrupted mid-way on any machine


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "long.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (48, 32))
    rng = np.random.default_rng(0)
    for _ in range(FRAMES):
        w.write(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    w.release()
    return path


@pytest.fixture()
def dog(tmp_path):
    path = tmp_path / "dog.png"
    cv2.imwrite(str(path), np.full((32, 32, 3), 120, np.uint8))
    return path


def _default_sigint():
    # A shell starts background jobs with SIGINT ignored, and a Python started so keeps it
    # ignored (as `nohup` users expect): give the run the default disposition a terminal's
    # foreground job has, whatever started this test.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _started(proc, terminal):
    """Wait for the video's first progress line on the terminal (the engine is then under way,
    its threads all started); False when the run ended first."""
    seen = b""
    while proc.poll() is None:
        ready, _, _ = select.select([terminal], [], [], 0.1)
        if ready:
            try:
                seen += os.read(terminal, 4096)
            except OSError:
                return False
            if re.search(rb"\d+/%d frames" % FRAMES, seen):
                return True
    return False


@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_mid_video_exits_with_its_code_and_says_what_was_written(tiny_vit_onnx, long_clip, dog, tmp_path,
                                                                          sig, code, name):
    out = tmp_path / "out"
    terminal, stderr = pty.openpty()  # stderr on a terminal: the run shows its progress bar there
    proc = subprocess.Popen([sys.executable, "-m", "attnmap.cli", "explain", str(dog), str(long_clip),
                             "--model", str(tiny_vit_onnx), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=stderr, preexec_fn=_default_sigint)
    os.close(stderr)
    try:
        assert _started(proc, terminal), "the run ended before it could be interrupted"
        proc.send_signal(sig)
        # keep reading the terminal until the run ends: a pty's buffer is a few KB, and a run
        # whose stderr is full would block on its next write instead of exiting
        err = _read_until_exit(proc, terminal).decode(errors="replace").replace("\r\n", "\n")
    finally:
        os.close(terminal)
    assert proc.returncode == code, err
    assert list(out.glob(".*.partial.*")) == []
    said = [line.split("\r")[-1].replace("\x1b[K", "") for line in err.splitlines() if "interrupted" in line]
    assert said == [f"interrupted ({name}): 1 of 2 inputs written to {str(out)!r}; 1 not written "
                    f"(in progress: {long_clip}; nothing of it is left half-written)"]
    assert "Aborted" not in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [".attnmap-run.json", "dog_rollout.png"]


def _read_until_exit(proc, fd, timeout=300.0):
    data, deadline = b"", time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                data += os.read(fd, 4096)
            except OSError:
                break
    proc.wait(timeout=5)
    return data + _read_all(fd)


def _read_all(fd):
    data = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the other end is closed (Linux: EIO)
            break
        if not chunk:
            break
        data += chunk
    return data


def test_a_later_run_sweeps_the_partials_of_runs_that_are_gone(tiny_vit_onnx, dog, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = out / f".clip_rollout.mp4.{gone.pid}-0123abcd.partial.mp4"
    stale.write_bytes(b"half a video")
    running = out / f".other_rollout.mp4.{os.getppid()}-89abcdef.partial.mp4"  # a writer still alive: kept
    running.write_bytes(b"being written")
    unrelated = out / ".notes.partial.txt"  # not of this tool's naming: kept
    unrelated.write_bytes(b"x")
    res = CliRunner().invoke(cli.main, ["explain", str(dog), "--model", str(tiny_vit_onnx), "--out", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert not stale.exists() and running.exists() and unrelated.exists()
    assert (f"note: removed 1 partial video an interrupted run left in {str(out)!r} ({stale.name})"
            in res.stderr.splitlines())
