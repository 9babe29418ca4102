"""The live session both `attnmap live` and `attnmap serve` drive: one picture, one schedule.

The pixel tests run the committed tiny ViT with a crop fit on frames wider or taller than the
model's square input, so the strips the crop never saw are part of every picture.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from frames_fakes import FakeExplainer, ListSource, quadrant_frame, run_with_timeout
from attnmap import Explainer
from attnmap.runtime.core.errors import OptionError
from attnmap.runtime.draw.caption import LabelOverlay
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.engine import Job
from attnmap.runtime.engine.live.session import LiveSession, LiveSettings, live_methods
from attnmap.runtime.frames.capture import LatestFrameGrabber
from attnmap.runtime.fronts.live.loop import LiveConfig, run_live
from attnmap.runtime.fronts.serve.stream import StreamConfig, StreamLoop


def _frames(h: int, w: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(h * 1000 + w)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


class _View:
    """A view that keeps what it was shown and answers scripted keys (after the k-th frame)."""

    def __init__(self, keys: dict[int, int] | None = None, interactive: bool = True):
        self.keys, self.interactive = keys or {}, interactive
        self.shown: list[tuple[int, np.ndarray]] = []
        self.polls: list[np.ndarray | None] = []

    def show(self, drawn, frame) -> int:
        self.shown.append((frame.index, drawn))
        return self.keys.get(len(self.shown) - 1, -1)

    def poll(self, wait_ms, paused) -> int:
        self.polls.append(paused)
        return ord("q") if paused is not None else -1


def _run(session: LiveSession, images, view: _View, **kwargs) -> str:
    grabber = LatestFrameGrabber(ListSource(images, fps=None), drop=False).start()
    try:
        return run_with_timeout(lambda: session.run(grabber, view, **kwargs), 30)
    finally:
        grabber.stop()
        session.count_source(grabber)


# --------------------------------------------------------------------------- one picture
@pytest.mark.parametrize("hw, method", [((48, 80), "rollout"), ((80, 48), "attention")], ids=["wide", "tall"])
def test_live_frames_equal_the_explanation_overlay(tiny_vit_onnx, hw, method):
    ex = Explainer(str(tiny_vit_onnx))
    style = OverlayStyle(colormap="inferno", alpha=0.6)
    seen = []
    stats = run_live(ex, ListSource(_frames(*hw, 4), fps=None), Job(method=method, fit="crop", style=style),
                     LiveConfig(show=False, hud=False), on_frame=seen.append)
    assert stats.frames_processed == len(seen) == 4
    side = (max(hw) - min(hw)) // 2
    for view in seen:
        reference = ex.explain(view.frame.image_bgr, method=method, fit="crop")
        np.testing.assert_array_equal(view.image_bgr, reference.overlay(style))
        # the crop's unseen strips (the caption's box aside) are the frame dimmed, not the
        # colour of "no relevance"
        strip = np.zeros(hw, bool)
        if hw[1] > hw[0]:
            strip[:, :side] = strip[:, -side:] = True
        else:
            strip[:side] = strip[-side:] = True
        x, y, w, h = LabelOverlay().box(hw, reference.caption(), reference.heatmap)
        strip[y:y + h, x:x + w] = False
        assert strip.sum() > 0.3 * side * min(hw)
        np.testing.assert_array_equal(view.image_bgr[strip], view.frame.image_bgr[strip] >> 1)


def test_served_frames_equal_the_explanation_overlay(tiny_vit_onnx):
    ex = Explainer(str(tiny_vit_onnx))
    frame = _frames(48, 80, 1)[0]
    published = []
    stream = StreamLoop(ex, ListSource([frame] * 3, fps=None), Job(method="rollout", fit="crop"),
                        StreamConfig(hud=False, max_fps=1000.0))
    stream.publish = published.append  # the drawn frames, before JPEG
    stream.start()
    deadline = time.monotonic() + 60
    while stream.running:
        assert time.monotonic() < deadline, "the stream never ended"
        time.sleep(0.02)
    assert stream.stop() and stream.ended == "end" and stream.error is None
    # serve draws without a caption by default: the page lists the predictions
    want = ex.explain(frame, method="rollout", fit="crop").overlay(OverlayStyle(label=False))
    assert len(published) == 3
    for drawn in published:
        np.testing.assert_array_equal(drawn, want)
    assert [t["label"] for t in stream.status()["topk"]] == [t.label for t in ex.explain(frame).topk]


def test_the_hud_only_adds_caption_lines(tiny_vit_onnx):
    ex = Explainer(str(tiny_vit_onnx))
    image = _frames(240, 400, 1)[0]
    session = LiveSession(ex, Job(method="rollout", fit="crop"), LiveSettings(hud=True))
    view = _View()
    _run(session, [image], view)
    drawn = view.shown[0][1]
    bare = ex.explain(image, method="rollout", fit="crop").overlay(OverlayStyle(label=False))
    differs = np.any(drawn != bare, axis=2)
    ys, xs = np.nonzero(differs)
    # Only a box in one corner differs from the bare picture (the strips and the map around it
    # are the overlay's); it holds the caption's two lines and the HUD's three.
    assert (ys.min() == 0 or ys.max() == 239) and (xs.min() == 0 or xs.max() == 399)
    assert 5 * 8 < ys.max() - ys.min() < 120 and xs.max() - xs.min() < 300


# --------------------------------------------------------------------------- schedule
def test_every_k_restarts_when_a_key_changes_the_map_and_smoothing_restarts_with_it():
    ex = FakeExplainer()
    session = LiveSession(ex, Job(method="attention", fit="squash", topk=1), LiveSettings(smooth=0.5, every=3))
    seen = []
    session.on_frame = seen.append
    view = _View(keys={1: ord("]")})  # after frame 1: layer 1 -> 0 (the state's version moves)
    assert _run(session, [quadrant_frame(i) for i in range(7)], view) == "end"
    # 0 explained, 1 reused, 2 explained at once (new state), then every 3rd from there
    assert [f.explained for f in seen] == [True, False, True, False, False, True, False]
    assert session.job.options == {"layer": 0} and [f.options for f in seen][2] == {"layer": 0}
    raw = ex.raw_maps  # the method's own maps of frames 0, 2 and 5 (no warm-up here)
    assert len(raw) == 3
    np.testing.assert_allclose(seen[0].grid, raw[0], atol=1e-6)
    np.testing.assert_allclose(seen[2].grid, raw[1], atol=1e-6)  # a new state: no blend with the old map
    np.testing.assert_allclose(seen[5].grid, 0.5 * raw[1] + 0.5 * raw[2], atol=1e-6)
    assert seen[1].grid is seen[0].grid and seen[6].grid is seen[5].grid


def test_statistics_add_up_over_sources_played_one_after_another():
    session = LiveSession(FakeExplainer(), Job(method="rollout", fit="squash"))
    _run(session, [quadrant_frame(i) for i in range(4)], _View())
    _run(session, [quadrant_frame(i) for i in range(3)], _View())
    st = session.stats
    assert (st.frames_captured, st.frames_processed, st.frames_explained, st.frames_dropped) == (7, 7, 7, 0)
    assert len(st.records) == 7 and st.source == "list:3"
    assert session.fps > 0 and session.latency is not None
    assert set(session.stage_ema) == {"preprocess", "inference", "explanation", "overlay", "output"}
    assert all(v > 0 for v in session.stage_ema.values())


def test_a_pause_is_honoured_only_where_it_can_be_resumed():
    images = [quadrant_frame(i) for i in range(5)]
    headless = LiveSession(FakeExplainer(), Job(method="rollout", fit="squash"))
    view = _View(keys={0: ord(" ")}, interactive=False)
    assert _run(headless, images, view) == "end" and len(view.shown) == 5 and not headless.state.paused
    windowed = LiveSession(FakeExplainer(), Job(method="rollout", fit="squash"))
    view = _View(keys={0: ord(" ")})
    # paused after frame 0: the view is polled with the frame on show (and quits, here)
    assert _run(windowed, images, view) == "quit" and len(view.shown) == 1
    assert view.polls[-1] is view.shown[0][1]


# --------------------------------------------------------------------------- checks
def test_settings_are_checked_once_the_same_way_for_live_and_serve():
    for kwargs, fragment in [({"smooth": 1.0}, r"smooth must be a number in \[0, 1\)"),
                             ({"smooth": True}, "smooth must be a number"),
                             ({"every": 0}, "every must be an integer >= 1"),
                             ({"every": 1.5}, "every must be an integer >= 1")]:
        for make in (LiveSettings, StreamConfig, lambda **kw: LiveConfig(show=False, **kw)):
            with pytest.raises(OptionError, match=fragment):
                make(**kwargs)
    assert LiveConfig(show=False, smooth=0.25, every=2).settings == LiveSettings(smooth=0.25, every=2)
    session = LiveSession(FakeExplainer(), Job(method="rollout"))
    with pytest.raises(OptionError, match="smooth"):
        session.smooth = 1.5
    session.smooth = 0.5
    assert session.smooth == 0.5


def test_methods_a_session_cycles_through():
    meta = FakeExplainer().meta
    assert "rollout" in live_methods(meta, "rollout") and "occlusion" not in live_methods(meta, "rollout")
    assert "occlusion" in live_methods(meta, "occlusion")  # started with it: kept in the cycle
    with pytest.raises(OptionError, match="cannot run on this model"):
        LiveSession(FakeExplainer(), Job(method="chefer"))  # no gradients in the fake


def test_live_and_serve_share_the_session_not_each_other():
    """The fronts that drive a session import it from the engine, never from each other."""
    import ast
    from pathlib import Path

    import attnmap

    fronts = Path(attnmap.__file__).resolve().parent / "runtime" / "fronts"
    for front, other in (("serve", "live"), ("live", "serve")):
        for path in (fronts / front).glob("*.py"):
            tree = ast.parse(path.read_text())
            imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module] + \
                [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            assert not [m for m in imported if m.startswith(f"attnmap.runtime.fronts.{other}")], path
    assert "LiveSession" in (fronts / "serve" / "stream.py").read_text()
