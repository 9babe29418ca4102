"""Live path: the latest-frame capture thread, the overlay loop, its keys, and the no-display guard.

Timing behaviour (frames dropped, not queued; ages, latency, pacing, the duration limit) is
tested on a fake clock (frames_fakes.FakeClock): the model's delay and the camera's exposures
are in fake time, so counts and times are exact whatever the machine's load. No test bounds
how long something takes in real time; real seconds appear only as hang guards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from frames_fakes import (FakeCamera, FakeClock, FakeExplainer, ListSource, PacedSource, attnmap_threads,
                          quadrant_frame, run_with_timeout)
from attnmap.runtime.engine.clock import StageClock
from attnmap.runtime.frames import capture
from attnmap.runtime.frames.capture import LatestFrameGrabber
from attnmap.runtime.core.errors import ExplainError, OptionError, SourceError
from attnmap.runtime.methods import attention_maps as run_method
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.engine import Job
from attnmap.runtime.fronts.live.loop import LiveConfig, LiveFrame, run_live
from attnmap.runtime.draw.style import CYCLE_COLORMAPS
from attnmap.runtime.engine.live.state import LiveState, apply_key, method_options
from attnmap.runtime.draw.overlay import COLORMAPS
from attnmap.runtime.frames.sources import open_source

ROOT = Path(__file__).resolve().parents[4]
DATA = ROOT.parent / "shared" / "data"
CLIP = DATA / "video" / "mmaction2_demo_armwrestling.mp4"
needs_clip = pytest.mark.skipif(not CLIP.is_file(), reason=f"shared clip {CLIP} is absent")


_JOB = ("method", "options", "fit")
_STYLE = ("colormap", "alpha", "blur", "mode")


def _live(explainer, source, **kwargs):
    """run_live with the job, style and config fields given as keywords (as the CLI splits them)."""
    job = {k: kwargs.pop(k) for k in _JOB if k in kwargs}
    style = OverlayStyle(**{k: kwargs.pop(k) for k in _STYLE if k in kwargs})
    on_frame = kwargs.pop("on_frame", None)
    clock = kwargs.pop("clock", None)  # a StageClock on a FakeClock: the loop's time source
    job.setdefault("fit", "squash")
    return run_live(explainer, source, Job(style=style, **job), LiveConfig(**kwargs), on_frame=on_frame,
                    clock=clock)

def _frames_in(path) -> tuple[int, float, tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    n = 0
    while cap.read()[0]:
        n += 1
    fps = cap.get(cv2.CAP_PROP_FPS)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    cap.release()
    return n, fps, size


# --------------------------------------------------------------------------- capture thread
def test_grabber_drops_old_frames_for_a_slow_consumer():
    clock = FakeClock()
    cam = FakeCamera(clock, fps=64, count=41)
    taken = []
    with LatestFrameGrabber(cam) as grab:
        for _ in range(10):
            frame = grab.get(timeout=10.0)
            taken.append((frame.index, clock.now() - frame.timestamp))
            clock.advance(4 / 64)  # a model 4 camera intervals slow
            cam.tick(frame)  # the camera exposes the 4 frames of that time
    assert cam.closed and not grab.running
    # Every frame taken is the newest the camera had exposed (age 0): the 3 in between were
    # dropped, not queued (with a queue, frame k would be frame k, ever older).
    assert taken == [(i, 0.0) for i in range(0, 40, 4)]
    assert (grab.captured, grab.taken, grab.dropped) == (41, 10, 41 - 10 - 1)  # frame 40 was left untaken


def test_grabber_paces_a_video_file_at_its_fps(tmp_path, monkeypatch):
    path = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 40.0, (32, 24))
    for i in range(12):
        w.write(quadrant_frame(i, (32, 24)))
    w.release()
    clock = FakeClock(start=100.0)
    # The grabber's time on the fake clock: its pacing wait moves the clock instead of sleeping.
    monkeypatch.setattr(capture, "time", clock)
    grab = LatestFrameGrabber(open_source(str(path)), drop=False)
    grab._stop = clock.event()
    stamps = []
    with grab:
        assert grab.pace  # a file with an fps is paced by default
        while (frame := grab.get(timeout=10.0)) is not None:
            stamps.append((frame.index, frame.timestamp))
    assert [i for i, _ in stamps] == list(range(12)) and grab.dropped == 0
    # Delivered at its 40 fps: one frame every 25 ms from the first, no drift.
    np.testing.assert_allclose([t for _, t in stamps], [100.0 + i / 40 for i in range(12)], rtol=0, atol=1e-9)


def test_grabber_reports_a_source_failure_and_stops():
    src = PacedSource(fps=200, fail_after=7)
    with LatestFrameGrabber(src) as grab:
        got = []
        while (frame := grab.get(timeout=2.0)) is not None or not grab.finished:
            if frame is not None:
                got.append(frame.index)
        assert grab.finished and not grab.running
    assert isinstance(grab.error, SourceError)
    assert "sensor unplugged" in str(grab.error) and "after 7 frames" in str(grab.error)
    assert got and got[-1] == 6 and src.closed


def test_grabber_stop_does_not_wait_out_the_pacing_interval():
    # A file paced at one frame per 10^6 s: after frame 0 the reader waits for frame 1's time.
    src = ListSource([quadrant_frame(0), quadrant_frame(1)], fps=1e-6)
    grab = LatestFrameGrabber(src).start()
    assert grab.pace and grab.get(timeout=10.0).index == 0
    # stop() interrupts that wait: the thread ends (True) long before its 60 s timeout, which
    # is only a hang guard; waiting the interval out would take 11 days.
    assert grab.stop(timeout=60.0)
    assert (grab.captured, grab.taken, grab.dropped) == (1, 1, 0)  # frame 1 was never handed out
    assert src.closed and grab.finished and grab.get(timeout=0.1) is None


# --------------------------------------------------------------------------- live loop
def test_live_drops_frames_when_the_model_is_slower_than_the_camera():
    clock = FakeClock()
    ex = FakeExplainer(delay=1 / 16, clock=clock)  # 4 intervals of the 64 fps camera
    cam = FakeCamera(clock, fps=64, count=65)  # the frames the run below can see
    stats = run_with_timeout(lambda: _live(ex, cam, show=False, duration=1.0, clock=StageClock(now=clock.now),
                                           on_frame=cam.tick), 30)
    # 1 s of fake time at 1/16 s a frame; the warm-up run came before the camera started.
    assert stats.ended == "duration" and stats.duration_s == 1.0
    assert stats.frames_processed == stats.frames_explained == 16 == ex.infer_calls - 1
    # The loop always took the newest frame: every 4th; the 3 between were dropped, not queued.
    assert [r.index for r in stats.records] == list(range(0, 64, 4))
    assert (stats.frames_captured, stats.frames_dropped) == (65, 65 - 16 - 1)  # frame 64 was left untaken
    # No backlog: each frame is taken the moment it is exposed, and shown one model run later.
    assert [r.age for r in stats.records] == [0.0] * 16
    assert [r.latency for r in stats.records] == [1 / 16] * 16
    assert stats.fps == 16.0
    assert attnmap_threads() == []


def test_live_keeps_every_frame_of_a_camera_it_can_keep_up_with():
    clock = FakeClock()
    ex = FakeExplainer(delay=1 / 128, clock=clock)  # half the 64 fps camera's interval
    cam = FakeCamera(clock, fps=64, count=40)
    stats = run_with_timeout(lambda: _live(ex, cam, show=False, clock=StageClock(now=clock.now),
                                           on_frame=cam.tick), 30)
    assert stats.ended == "end"
    assert (stats.frames_captured, stats.frames_dropped, stats.frames_processed) == (40, 0, 40)
    assert [r.index for r in stats.records] == list(range(40))
    assert [r.latency for r in stats.records] == [1 / 128] * 40
    # From taking frame 0 to showing frame 39: 39 camera intervals and one model run.
    assert stats.duration_s == 39 / 64 + 1 / 128 and stats.fps == 40 / stats.duration_s


def test_every_k_reuses_the_map_and_smoothing_is_an_ema():
    ex = FakeExplainer()
    seen: list[LiveFrame] = []
    src = ListSource([quadrant_frame(i) for i in range(9)], fps=None)
    stats = _live(ex, src, show=False, every=3, smooth=0.25, method="attention", on_frame=seen.append)
    assert stats.frames_processed == 9 and stats.frames_explained == 3 == ex.infer_calls - 1  # + warm-up
    assert [f.explained for f in seen] == [True, False, False] * 3
    raw = ex.raw_maps[1:]  # the method's own maps, one per model run (frames 0, 3, 6) after the warm-up
    assert len(raw) == 3
    want = [raw[0]]
    for m in raw[1:]:
        want.append(0.25 * want[-1] + 0.75 * m)
    for k, f in enumerate(seen):
        np.testing.assert_allclose(f.grid, want[k // 3], rtol=0, atol=1e-6)
    # The fake model attends to the bright quadrant: frames 0, 3, 6 are lit at TL, BR, BL.
    assert [np.unravel_index(np.argmax(m), (2, 2)) for m in raw] == [(0, 0), (1, 1), (1, 0)]
    assert [f.label for f in seen[:1]] == ["dark"]  # mostly dark frames


def test_keys_switch_method_layer_head_fit_snapshot_and_quit(tmp_path):
    ex = FakeExplainer()
    # Key returned after frame k is drawn; it takes effect from frame k + 1.
    keys = {0: ord("m"), 1: ord("]"), 2: ord("h"), 3: ord("f"), 4: ord("s"), 5: ord("c"), 6: ord("q")}
    seen: list[LiveFrame] = []

    def on_frame(view: LiveFrame):
        seen.append(view)
        return keys.get(len(seen) - 1)

    src = PacedSource(fps=100)
    stats = run_with_timeout(lambda: _live(ex, src, show=False, method="rollout", fit="squash",
                                              colormap="jet", on_frame=on_frame, snapshot_dir=tmp_path), 10)
    assert stats.ended == "quit" and len(seen) == 7 and src.closed
    assert [v.method for v in seen] == ["rollout"] + ["attention"] * 6  # m: next class-agnostic method
    assert seen[1].options == {}
    assert seen[2].options == {"layer": 0}             # ]: from the default last layer (1), wrapping to 0
    assert seen[3].options == {"layer": 0, "head": 0}  # h: fused -> head 0
    assert [v.fit for v in seen[3:5]] == ["squash", "letterbox"]
    assert seen[5].colormap == "jet" and seen[6].colormap != "jet"
    # The keys' choices reach the method: the map drawn is the method run with them.
    x, _ = ex.preprocess([seen[3].frame.image_bgr], fit="squash")
    want = run_method("attention", ex.infer(x).attentions, ex.meta.layout, layer=0, head=0)[0]
    np.testing.assert_allclose(seen[3].grid, want, atol=1e-6)
    assert not np.allclose(want, run_method("attention", ex.infer(x).attentions, ex.meta.layout)[0])
    assert len(stats.snapshots) == 1 and Path(stats.snapshots[0]).parent == tmp_path
    np.testing.assert_array_equal(cv2.imread(stats.snapshots[0]), seen[4].image_bgr)


def test_pause_is_ignored_without_a_window():
    # Nothing could resume a headless pause (on_frame is not called while paused): no hang.
    stats = run_with_timeout(lambda: _live(FakeExplainer(), PacedSource(fps=100), show=False, max_frames=3,
                                              on_frame=lambda view: ord(" ")), 10)
    assert stats.ended == "max_frames" and stats.frames_processed == 3


def test_apply_key_cycles_and_ignores_unknown_keys():
    st = LiveState(method="rollout", options={"discard_ratio": 0.5}, fit="crop", style=OverlayStyle(),
                   methods=("rollout", "attention"), num_layers=3, num_heads=2)
    assert apply_key(st, ord("x")) == (None, "")
    assert apply_key(st, ord("h"))[0] == "changed" and method_options(st) == {"discard_ratio": 0.5, "head_fusion": "max"}
    apply_key(st, ord("h")); apply_key(st, ord("h"))
    assert method_options(st)["head_fusion"] == "mean"  # mean -> max -> min -> mean
    apply_key(st, ord("["))
    assert method_options(st)["start_layer"] == 2  # rollout starts at 0; [ wraps to the last layer
    v = st.version
    apply_key(st, ord("m"))
    assert st.method == "attention" and st.version == v + 1
    assert method_options(st) == {"layer": 2, "head_fusion": "mean"}  # discard_ratio is rollout's only
    apply_key(st, ord("h")); apply_key(st, ord("h")); apply_key(st, ord("h"))
    assert st.head is None  # fused -> 0 -> 1 -> fused
    cm = st.colormap
    cycle = []
    for _ in CYCLE_COLORMAPS:
        apply_key(st, ord("c"))
        cycle.append(st.colormap)
    assert st.colormap == cm and len(set(cycle)) == len(cycle) >= 5 and set(cycle) <= set(COLORMAPS)
    assert apply_key(st, ord(" ")) == ("changed", "paused") and st.paused
    assert apply_key(st, ord(" "))[0] == "changed" and not st.paused
    assert apply_key(st, 27)[0] == "quit" and apply_key(st, ord("s"))[0] == "snapshot"


def test_bad_options_fail_before_the_source_is_opened():
    ex = FakeExplainer()
    with pytest.raises(OptionError, match="has no option 'layr'.*'layer'"):
        _live(ex, "cam:57", show=False, method="attention", options={"layr": 1})
    with pytest.raises(ExplainError, match="discard_ratio"):
        _live(ex, "cam:57", show=False, method="rollout", options={"discard_ratio": 1.5})
    with pytest.raises(OptionError, match="cannot run on this model"):
        _live(ex, "cam:57", show=False, method="chefer")  # no gradients in the fake
    for kwargs, fragment in [({"fit": "zoom"}, "fit must be"), ({"smooth": 1.0}, "smooth"),
                             ({"every": 0}, "every"), ({"colormap": "jett"}, "Did you mean 'jet'"),
                             ({"alpha": 1.5}, "alpha"), ({"out": "recording"}, "no extension")]:
        with pytest.raises(OptionError, match=fragment):
            _live(ex, "cam:57", show=False, **kwargs)


def test_source_failing_mid_stream_ends_cleanly_with_a_valid_video(tmp_path):
    out = tmp_path / "live.mp4"
    clock = FakeClock()
    cam = FakeCamera(clock, fps=64, fail_after=25)
    with pytest.raises(SourceError, match="sensor unplugged") as err:
        run_with_timeout(lambda: _live(FakeExplainer(clock=clock), cam, show=False, out=out,
                                       clock=StageClock(now=clock.now), on_frame=cam.tick), 30)
    assert "after 25 frames" in str(err.value)
    assert cam.closed and attnmap_threads() == []
    # Every frame before the failure is in the file, one per camera interval, at the camera's rate.
    n, fps, size = _frames_in(out)
    assert (n, fps, size) == (25, 64, (64, 48))
    assert [p.name for p in tmp_path.iterdir()] == ["live.mp4"]  # no temp file left behind


def test_ctrl_c_ends_a_headless_recording_cleanly(tmp_path):
    out = tmp_path / "cam.avi"
    clock = FakeClock()
    cam = FakeCamera(clock, fps=64, count=10)  # no 11th frame: after the interrupt nothing waits on fake time

    def interrupt_at_10(view: LiveFrame):
        if view.stats.frames_processed == 10:
            raise KeyboardInterrupt
        cam.tick(view)

    stats = run_with_timeout(lambda: _live(FakeExplainer(clock=clock), cam, show=False, out=out,
                                           clock=StageClock(now=clock.now), on_frame=interrupt_at_10), 30)
    assert stats.ended == "interrupted" and stats.frames_processed == 10 and cam.closed
    assert stats.out == str(out) and _frames_in(out)[0] == stats.frames_written == 10
    assert attnmap_threads() == []


@needs_clip
def test_headless_recording_of_the_shared_clip_plays_in_real_time(tmp_path):
    out = tmp_path / "rec.mp4"
    ex = FakeExplainer(delay=0.0)
    seen = []
    stats = run_with_timeout(lambda: _live(ex, str(CLIP), show=False, out=out, max_frames=20,
                                              on_frame=lambda v: seen.append(v.frame.index)), 20)
    assert stats.ended == "max_frames" and stats.frames_processed == 20
    n, fps, size = _frames_in(out)
    # One output frame per source frame from the first to the last processed one (a dropped
    # frame's slot repeats the previous picture), at the clip's rate and size.
    assert n == stats.frames_written == seen[-1] - seen[0] + 1
    assert (fps, size) == (28.0, (340, 256))
    # Paced at 28 fps, not faster: at least the 19 intervals between the first and the 20th
    # frame (the pacing itself is checked exactly on a fake clock above).
    assert seen == sorted(set(seen)) and stats.duration_s >= (seen[-1] - seen[0]) / 28 * 0.9


def test_video_file_end_of_stream_stops_the_loop(tmp_path):
    path = tmp_path / "short.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 100.0, (64, 48))
    for i in range(15):
        w.write(quadrant_frame(i))
    w.release()
    seen = []
    stats = run_with_timeout(lambda: _live(FakeExplainer(), str(path), show=False,
                                           on_frame=lambda v: seen.append(v.frame.index)), 30)
    assert stats.ended == "end"
    # However many a busy machine dropped, each frame was processed or dropped, and the last one shown.
    assert stats.frames_captured == 15 and stats.frames_processed + stats.frames_dropped == 15
    assert seen == sorted(set(seen)) and len(seen) == stats.frames_processed and seen[-1] == 14
    assert attnmap_threads() == []


@pytest.mark.parametrize("backend, reason", [
    ("QT5", "no display: neither $DISPLAY nor $WAYLAND_DISPLAY is set"),  # opencv-python
    ("NONE", "this OpenCV is the headless build"),  # opencv-python-headless
])
def test_show_without_a_display_is_a_clear_error_not_a_qt_abort(backend, reason):
    # In a child process: if the guard failed, Qt would abort it (SIGABRT), not raise. The child
    # is told which OpenCV build it has (the check reads cv2.getBuildInformation()), so both
    # builds' branches run whichever wheel is installed: the guard comes before any window call.
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "from frames_fakes import FakeExplainer, PacedSource\n"
        "from attnmap.runtime.frames import sinks\n"
        f"sinks.gui_backend = lambda: {backend!r}\n"
        "from attnmap.runtime.fronts.live.loop import LiveConfig, run_live\n"
        "from attnmap.runtime.core.errors import AttnmapError\n"
        "src = PacedSource(fps=10)\n"
        "try:\n"
        "    run_live(FakeExplainer(), src, config=LiveConfig(show=True))\n"
        "except AttnmapError as exc:\n"
        "    print('ERR', exc, '|', src.produced, src.closed)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip()
    assert "\n" not in line and line.startswith(f"ERR cannot show a window: {reason}"), line
    # Refused before the source produced a frame, and the source was still released; the same
    # way out on both builds.
    assert line.endswith("; run headless (`attnmap live SOURCE --no-show --out FILE.mp4`), or watch in a browser with "
                         "`attnmap serve` | 0 True"), line


@needs_clip
def test_real_model_live_view_matches_the_api(tiny_vit_onnx):
    from attnmap import Explainer

    ex = Explainer(tiny_vit_onnx)
    seen: list[LiveFrame] = []
    stats = run_with_timeout(lambda: _live(ex, str(CLIP), show=False, method="attention", fit="letterbox",
                                              max_frames=6, on_frame=seen.append), 30)
    assert stats.frames_processed == 6 and stats.frames_explained == 6
    for view in seen:
        want = ex.explain(view.frame.image_bgr, method="attention", fit="letterbox")
        np.testing.assert_allclose(view.grid, want.grid, atol=1e-5)
        assert view.label == want.topk[0].label and view.prob == pytest.approx(want.topk[0].prob, abs=1e-5)
        assert view.image_bgr.shape == (256, 340, 3)


@pytest.mark.parametrize("env, problem", [
    ({"DISPLAY": ":0"}, None),
    ({}, "no display: neither $DISPLAY nor $WAYLAND_DISPLAY is set"),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "OpenCV's Qt needs $DISPLAY (XWayland)"),
    ({"DISPLAY": ":0", "QT_QPA_PLATFORM": "offscreen"}, "only has the platform plugins xcb"),
])
def test_display_problem_reads_the_environment(monkeypatch, env, problem):
    from attnmap.runtime.frames import sinks as display

    if not display.gui_backend().upper().startswith("QT") or sys.platform != "linux":
        pytest.skip("the cases are those of OpenCV's Qt backend on Linux (the opencv-python wheel)")
    if display._qt_platform_plugins() != {"xcb"}:
        pytest.skip("this OpenCV's Qt bundles other platform plugins than xcb")
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    got = display.display_problem()
    assert got is None if problem is None else problem in got
