"""quiet_opencv: OpenCV's and FFmpeg's own stderr lines are silenced by the entry point and kept
with debug. Each case runs in a fresh interpreter (FFmpeg's level is read once per process)
and provokes a real message: a missing camera, an empty image sequence, a truncated video, an
unreadable image."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]


def _run(body: str, mode: str, env: dict | None = None, args: list[str] | None = None) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import os
        import sys
        import cv2
        from attnmap.runtime.core.logs import quiet_opencv
        mode = {mode!r}
        if mode != "untouched":
            quiet_opencv(debug=(mode == "debug"))
    """) + textwrap.dedent(body)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *(args or [])], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=full_env, check=False)


@pytest.fixture(scope="module")
def truncated_mp4(tmp_path_factory) -> Path:
    # OpenCV writes the MP4 index (moov) at the end, so a cut file has none
    path = tmp_path_factory.mktemp("trunc") / "whole.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(20):
        w.write(np.full((48, 64, 3), i * 10, np.uint8))
    w.release()
    cut = path.with_name("cut.mp4")
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return cut


CASES = {
    # name: (code that provokes the message, a piece of the message)
    "missing camera": ("c = cv2.VideoCapture(57); print(c.isOpened())", "[ WARN"),
    "empty image sequence": ("c = cv2.VideoCapture(sys.argv[1] + '/img_%04d.png'); print(c.isOpened())",
                             "Could find no file or sequence"),
    "truncated video": ("c = cv2.VideoCapture(sys.argv[2]); print(c.isOpened())", "moov atom not found"),
    "unreadable image": ("print(cv2.imread(sys.argv[1] + '/none.png'))", "can't open/read file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_quiet_silences_opencv_and_ffmpeg_and_debug_keeps_them(case, tmp_path, truncated_mp4):
    body, marker = CASES[case]
    args = [str(tmp_path), str(truncated_mp4)]
    untouched = _run(body, "untouched", args=args)
    assert untouched.returncode == 0 and marker in untouched.stderr, untouched.stderr  # the message is real
    quiet = _run(body, "quiet", args=args)
    assert quiet.returncode == 0 and quiet.stdout.strip() in ("False", "None")
    assert quiet.stderr == ""
    debug = _run(body, "debug", args=args)
    assert debug.returncode == 0 and marker in debug.stderr, debug.stderr


def test_importing_changes_nothing_and_a_users_levels_are_kept(truncated_mp4):
    body = """
        from attnmap.runtime.core import logs  # noqa: F401 - imported, not called
        print(cv2.utils.logging.getLogLevel(), os.environ.get("OPENCV_FFMPEG_LOGLEVEL"))
    """
    out = _run(body, "untouched")
    assert out.stdout.split() == [str(cv2.utils.logging.LOG_LEVEL_WARNING), "None"], out.stderr
    # a level the user set in the environment wins over quiet_opencv() (OpenCV's FFmpeg log
    # callback then prints to stdout, as "[OPENCV:FFMPEG:16] moov atom not found")
    kept = _run("c = cv2.VideoCapture(sys.argv[1]); print(os.environ['OPENCV_FFMPEG_LOGLEVEL'])",
                "quiet", env={"OPENCV_FFMPEG_LOGLEVEL": "16"}, args=[str(truncated_mp4)])
    assert "moov atom not found" in kept.stdout + kept.stderr and kept.stdout.split()[-1] == "16"


def test_the_cli_reports_a_missing_camera_in_one_clean_line(tmp_path):
    cli = [sys.executable, "-c", "from attnmap.cli import main; main()"]
    args = ["live", "57", "--no-show", "--out", str(tmp_path / "x.mp4")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    quiet = subprocess.run(cli + args, cwd=REPO, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert quiet.returncode != 0 and "camera" in quiet.stderr
    assert "WARN" not in quiet.stderr and "ERROR:" not in quiet.stderr and "OpenCV(" not in quiet.stderr
    debug = subprocess.run(cli[:3] + ["--debug"] + args, cwd=REPO, capture_output=True, text=True, timeout=120,
                           env=env, check=False)
    assert "[ WARN" in debug.stderr and "camera" in debug.stderr
