"""Offline video explanation and the bounded pipeline under it.

Checks that an annotated video keeps the input's frame count, size and fps, that its frames
and maps are what the model and method give frame by frame, and that failures (input, model,
writer) end cleanly: no hang, no thread left, no temp file, and a valid partial video only
when the input broke.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from frames_fakes import FakeExplainer, ListSource, PacedSource, attnmap_threads, quadrant_frame, run_with_timeout
from attnmap.runtime.core.errors import AttnmapError, ModelError, OptionError, SourceError
from attnmap.runtime.engine.threads import BackgroundWorker, prefetch, run_ahead
from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.engine.engine import FrameEngine, Job
from attnmap.runtime.fronts.video import VideoProgress, explain_video

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
CLIP = DATA / "video" / "mmaction2_test.mp4"
needs_clip = pytest.mark.skipif(not CLIP.is_file(), reason=f"shared clip {CLIP} is absent")


def _engine(ex, method="rollout", options=None, batch_size=8, workers=1, fit="crop", **style):
    return FrameEngine(ex, Job(method=method, options=options or {}, fit=fit, topk=1, style=OverlayStyle(**style)),
                       batch_size=batch_size, workers=workers)


def _write_video(path: Path, n: int, fps: float = 12.0, size=(64, 48)) -> list[np.ndarray]:
    frames = [quadrant_frame(i, size) for i in range(n)]
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for f in frames:
        w.write(f)
    w.release()
    return frames


def _read_all(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


# --------------------------------------------------------------------------- pipeline
def test_prefetch_keeps_order_batches_and_a_short_tail():
    batches = list(prefetch(range(23), 5, lambda b: [v * 10 for v in b]))
    assert [b for b, _ in batches] == [list(range(i, min(i + 5, 23))) for i in range(0, 23, 5)]
    assert all(p == [v * 10 for v in b] for b, p in batches)
    assert attnmap_threads() == []


def test_prefetch_runs_ahead_only_depth_batches():
    prepared = []
    gen = prefetch(range(100), 2, lambda b: prepared.append(b[0]) or b, depth=2)
    next(gen)
    time.sleep(0.2)  # give the reader every chance to run away
    # One yielded + two queued + at most one prepared and waiting to be queued.
    assert len(prepared) <= 4
    gen.close()
    assert attnmap_threads() == []


def test_prefetch_reraises_after_yielding_what_was_read():
    def items():
        yield from range(7)
        raise SourceError("decoder broke at item 7")

    got = []
    with pytest.raises(SourceError, match="item 7"):
        for batch, _ in prefetch(items(), 3, lambda b: None):
            got.extend(batch)
    assert got == list(range(7))  # the short batch [6] before the failure is not lost


def test_prefetch_abandoned_early_closes_the_reader():
    closed = threading.Event()

    def items():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    for batch, _ in prefetch(items(), 4, lambda b: None):
        break
    assert closed.wait(2.0) and attnmap_threads() == []


def test_run_ahead_keeps_order_stays_one_item_ahead_and_reraises():
    done = []
    gen = run_ahead(range(50), lambda v: done.append(v) or v * v)
    assert next(gen) == (0, 0)
    time.sleep(0.2)  # give the worker every chance to run away
    # one yielded + one queued + at most one computed and waiting to be queued
    assert len(done) <= 3
    assert list(gen) == [(v, v * v) for v in range(1, 50)]
    assert attnmap_threads() == []

    def items():
        yield from range(4)
        raise SourceError("decoder broke at item 4")

    got = []
    with pytest.raises(SourceError, match="item 4"):
        for item, result in run_ahead(items(), lambda v: -v):
            got.append((item, result))
    assert got == [(v, -v) for v in range(4)] and attnmap_threads() == []


@pytest.mark.parametrize("workers", [1, 2])
def test_run_ahead_abandoned_early_stops_and_closes_its_input(workers):
    closed = threading.Event()

    def items():
        try:
            yield from range(1000)
        finally:
            closed.set()

    for _ in run_ahead(items(), lambda v: time.sleep(0.01 * (workers - 1)) or v, workers=workers):
        break
    assert closed.wait(2.0) and attnmap_threads() == []


def test_run_ahead_with_several_workers_runs_them_at_once_in_order_and_bounded():
    barrier = threading.Barrier(3, timeout=5.0)
    read = []

    def items():
        for v in range(60):
            read.append(v)
            yield v

    def fn(v):
        if v < 3:
            barrier.wait()  # only returns once three calls are running at the same time
        time.sleep(0.001 * (v % 4))  # later items often finish before earlier ones
        return v * 10

    gen = run_ahead(items(), fn, workers=3)
    assert next(gen) == (0, 0)
    time.sleep(0.2)
    # held by the consumer + 3 being worked on or finished + depth 1, at most
    assert len(read) <= 5
    assert list(gen) == [(v, v * 10) for v in range(1, 60)]
    assert attnmap_threads() == []
    with pytest.raises(ValueError, match="workers must be >= 1"):
        next(run_ahead(range(3), fn, workers=0))


@pytest.mark.parametrize("where", ["fn", "read"])
def test_run_ahead_with_several_workers_reraises_after_the_items_before(where):
    closed = threading.Event()

    def items():
        try:
            for v in range(100):
                if where == "read" and v == 7:
                    raise SourceError("decoder broke at item 7")
                yield v
        finally:
            closed.set()

    def fn(v):
        if where == "fn" and v == 7:
            raise ModelError("model broke at item 7")
        time.sleep(0.002)
        return -v

    got = []
    with pytest.raises((SourceError, ModelError), match="broke at item 7"):
        for item, result in run_ahead(items(), fn, workers=2):
            got.append((item, result))
    assert got == [(v, -v) for v in range(7)]
    assert closed.wait(2.0) and attnmap_threads() == []


def test_background_worker_keeps_order_and_reraises():
    out = []
    w = BackgroundWorker(out.append, depth=2)
    for i in range(50):
        w.submit(i)
    w.close()
    assert out == list(range(50))

    def fail_at_3(i):
        if i == 3:
            raise ValueError("encoder broke")
        out.append(i)

    out.clear()
    w = BackgroundWorker(fail_at_3, depth=1)
    with pytest.raises(ValueError, match="encoder broke"):
        for i in range(100):
            w.submit(i)
        w.close()
    w.close(raise_errors=False)
    assert out == [0, 1, 2] and attnmap_threads() == []


# --------------------------------------------------------------------------- the engine over a source
def test_engine_over_a_folder_batches_mixed_sizes_and_reports_bad_files_in_place(tmp_path):
    sizes = [(64, 48), (40, 40), (90, 30), (64, 48), (33, 57)]
    for i, size in enumerate(sizes):
        cv2.imwrite(str(tmp_path / f"img_{i}.png"), quadrant_frame(i, size))
    (tmp_path / "img_2b.png").write_bytes(b"broken")
    ex = FakeExplainer()
    engine = FrameEngine(ex, Job(method="attention", topk=2), batch_size=2)
    got = list(engine.run(str(tmp_path)))
    assert [Path(r.source).name for r in got] == ["img_0.png", "img_1.png", "img_2.png", "img_2b.png", "img_3.png",
                                                  "img_4.png"]
    bad = [r for r in got if not r.ok]
    assert [Path(r.source).name for r in bad] == ["img_2b.png"] and "cannot decode" in bad[0].reason()
    good = [r for r in got if r.ok]
    # 2 + 1 (the bad file takes a place in the third batch) + 2
    assert ex.infer_calls == 3 and ex.infer_frames == 5
    for r, size in zip(good, sizes):
        exp = r.explanation
        assert exp.image is r.frame.image_bgr and exp.heatmap.shape == (size[1], size[0])
        assert r.outputs.attentions.shape == (1, 2, 2, 5, 5) and r.outputs.logits.shape == (1, 3)
        assert len(exp.topk) == 2 and exp.method == "attention" and r.drawn is None
        # One image at a time gives the same map: batching mixed sizes changes nothing.
        x, _ = ex.preprocess([r.frame.image_bgr])
        np.testing.assert_allclose(exp.grid, ex.maps(ex.infer(x), "attention")[0], atol=1e-6)
    clock = engine.clock
    assert clock.count("inference") == 3 and clock.count("decode") == 6 and clock.total("explanation") > 0
    assert attnmap_threads() == []


def test_engine_isolates_an_item_that_fails_inside_a_batch():
    class FailsOnBrightest(FakeExplainer):
        def package(self, images, outputs, grids, geoms, method, topk=5):
            if len(images) > 1 and any(img.mean() > 200 for img in images):
                raise RuntimeError("boom in a batch")
            if images[0].mean() > 200:
                raise RuntimeError("boom on the white frame")
            return super().package(images, outputs, grids, geoms, method, topk)

    frames = [quadrant_frame(i) for i in range(5)]
    frames[3] = np.full_like(frames[3], 255)
    got = list(FrameEngine(FailsOnBrightest(), batch_size=4).run(ListSource(frames)))
    assert [r.ok for r in got] == [True, True, True, False, True]
    assert got[3].reason() == "RuntimeError: boom on the white frame"
    assert attnmap_threads() == []


def test_engine_abandoned_early_stops_the_reader_before_closing_the_source():
    src = ListSource([quadrant_frame(i) for i in range(200)], fps=25.0)
    closed_while_reading = []
    original = src.close

    def close():
        closed_while_reading.append("attnmap-reader" in attnmap_threads())
        original()

    src.close = close
    stream = FrameEngine(FakeExplainer(), batch_size=4).run(src)
    next(stream)
    stream.close()
    assert closed_while_reading == [False] and src.closed and attnmap_threads() == []


def test_engine_refuses_live_sources():
    cam = PacedSource(fps=30)
    with pytest.raises(SourceError, match="is live"):
        next(FrameEngine(FakeExplainer()).run(cam))
    assert cam.closed and cam.produced == 0


# --------------------------------------------------------------------------- explain_video
def test_progress_bar_fills_with_the_frames_done_and_gives_rate_and_time_left():
    p = VideoProgress(done=30, total=120, elapsed_s=2.0)  # 15 frames/s, 90 frames to go
    assert p.bar(width=8) == "[##......]  25%  30/120 frames  15.0 frames/s  6 s left"
    assert VideoProgress(0, 50, 0.0).bar(width=4) == "[....]   0%  0/50 frames  0.0 frames/s"
    # a container that undercounts its frames does not overfill the bar
    assert VideoProgress(55, 50, 5.0).bar(width=4) == "[####] 100%  55/50 frames  11.0 frames/s  0 s left"
    assert VideoProgress(7, None, 0.5).bar() == "7 frames  14.0 frames/s"


def test_video_keeps_count_size_fps_and_draws_each_frames_own_map(tmp_path):
    src = tmp_path / "in.avi"
    _write_video(src, 23, fps=12.0)
    out = tmp_path / "out.avi"
    ex = FakeExplainer()
    progress: list[VideoProgress] = []
    report = run_with_timeout(lambda: explain_video(_engine(ex, "attention", batch_size=8), str(src), out,
                                                    save_maps=tmp_path / "maps.npz", progress=progress.append), 30)
    assert (report.frames, report.fps, report.size) == (23, 12.0, (64, 48))
    written, fps = _read_all(out)
    assert len(written) == 23 and fps == 12.0 and written[0].shape == (48, 64, 3)
    assert [p.done for p in progress] == [8, 16, 23] and progress[-1].total == 23
    assert progress[-1].eta_s == 0.0 and progress[-1].fps > 0
    assert ex.infer_calls == 3 and ex.infer_frames == 23  # batched: 8 + 8 + 7

    maps = np.load(tmp_path / "maps.npz")
    assert maps["grids"].shape == (23, 2, 2) and maps["grids"].dtype == np.float32
    assert maps["frame_index"].tolist() == list(range(23)) and str(maps["method"]) == "attention"
    assert float(maps["fps"]) == 12.0 and maps["top1"].tolist() == [0] * 23
    # Each frame's map is the method on that frame alone (batching changes nothing), and it
    # peaks on the quadrant that frame lit.
    decoded, _ = _read_all(src)
    solo = FakeExplainer()
    for i in (0, 5, 22):
        x, geoms = solo.preprocess([decoded[i]], fit="crop")
        outputs = solo.infer(x)
        want = solo.maps(outputs, "attention")
        np.testing.assert_allclose(maps["grids"][i], want[0], atol=1e-6)
        q = i % 4
        assert np.unravel_index(np.argmax(maps["grids"][i]), (2, 2)) == (q // 2, q % 2)
        # ... and the frame written is that explanation drawn over the input (MJPG is lossy).
        expected = solo.package([decoded[i]], outputs, want, geoms, "attention", topk=1)[0].overlay()
        assert np.abs(written[i].astype(int) - expected.astype(int)).mean() < 4.0
        assert np.abs(written[i].astype(int) - decoded[i].astype(int)).mean() > 20.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.avi", "maps.npz", "out.avi"]
    assert attnmap_threads() == []


@needs_clip
def test_shared_clip_to_mp4_keeps_all_300_frames(tmp_path):
    out = tmp_path / "clip_rollout.mp4"
    report = run_with_timeout(lambda: explain_video(_engine(FakeExplainer(), batch_size=16), str(CLIP), out), 120)
    cap = cv2.VideoCapture(str(out))
    meta = (int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS),
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert meta == (300, 30.0, 340, 256) and n == 300
    assert report.frames == 300 and report.throughput_fps > 0


def test_input_failing_mid_stream_keeps_a_valid_partial_video(tmp_path):
    frames = [quadrant_frame(i) for i in range(40)]
    src = ListSource(frames, fps=20.0, fail_after=13)
    out = tmp_path / "partial.mp4"
    with pytest.raises(SourceError) as err:
        run_with_timeout(lambda: explain_video(_engine(FakeExplainer(), batch_size=4), src, out,
                                               save_maps=tmp_path / "m.npz"), 30)
    msg = str(err.value)
    assert "decoding failed at frame 13" in msg and "the 13 frames before it were written" in msg
    assert "\n" not in msg
    written, fps = _read_all(out)
    assert len(written) == 13 and fps == 20.0
    assert np.load(tmp_path / "m.npz")["grids"].shape == (13, 2, 2)
    assert src.closed and attnmap_threads() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "partial.mp4"]


@pytest.mark.parametrize("workers", [1, 2])
def test_model_failure_on_some_batches_keeps_every_frame_and_reports_them(tmp_path, workers):
    # Frame i is a flat grey of level 20 + 5 i, so a batch says which frames it holds: the model
    # fails on every batch with a frame from 8 on, whichever worker runs it and in whatever order.
    level8 = ((20 + 5 * 7.5) / 255 - 0.5) / 0.5  # between frames 7 and 8, in the normalised input

    class Broken(FakeExplainer):
        def infer(self, x, target=None):
            if x.mean(axis=(1, 2, 3)).max() > level8:
                raise ModelError("onnxruntime failed on 'fake.onnx': out of memory")
            return super().infer(x, target)

    src = ListSource([np.full((48, 64, 3), 20 + 5 * i, np.uint8) for i in range(30)], fps=10.0)
    report = run_with_timeout(lambda: explain_video(_engine(Broken(), batch_size=4, workers=workers), src,
                                                    tmp_path / "o.mp4"), 30)
    written, _ = _read_all(tmp_path / "o.mp4")
    assert report.frames == len(written) == 30  # the video keeps its length: failed frames drawn plain
    assert [i for i, _ in report.failed] == list(range(8, 30))
    assert all("out of memory" in why for _, why in report.failed)
    assert [p.name for p in tmp_path.iterdir()] == ["o.mp4"] and src.closed and attnmap_threads() == []


def test_frame_size_change_is_a_writer_error_without_output(tmp_path):
    frames = [quadrant_frame(i, (64, 48)) for i in range(6)] + [quadrant_frame(6, (32, 32))]
    with pytest.raises(AttnmapError, match=r"must be 48x64x3 uint8; got shape \(32, 32, 3\)"):
        run_with_timeout(lambda: explain_video(_engine(FakeExplainer(), batch_size=2), ListSource(frames),
                                               tmp_path / "o.avi"), 30)
    assert list(tmp_path.iterdir()) == [] and attnmap_threads() == []


def test_live_sources_and_bad_arguments_are_refused(tmp_path):
    cam = PacedSource(fps=30)
    with pytest.raises(SourceError, match="is live .*attnmap live SOURCE --no-show --out"):
        explain_video(_engine(FakeExplainer()), cam, tmp_path / "o.mp4")
    assert cam.closed and cam.produced == 0
    with pytest.raises(OptionError, match="batch_size must be an integer >= 1; got 0"):
        _engine(FakeExplainer(), batch_size=0)
    with pytest.raises(OptionError, match="workers must be an integer >= 1; got 0"):
        _engine(FakeExplainer(), workers=0)
    with pytest.raises(OptionError, match="Did you mean 'inferno'"):
        _engine(FakeExplainer(), colormap="infernoo")
    with pytest.raises(SourceError, match="does not exist"):
        explain_video(_engine(FakeExplainer()), str(tmp_path / "missing.mp4"), tmp_path / "o.mp4")
    assert list(tmp_path.iterdir()) == []


def test_image_sequence_without_fps_gets_the_default_rate(tmp_path):
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"f_{i:03d}.png"), quadrant_frame(i))
    report = explain_video(_engine(FakeExplainer(), batch_size=2), str(tmp_path / "f_%03d.png"),
                           tmp_path / "seq.avi")
    written, fps = _read_all(tmp_path / "seq.avi")
    assert report.frames == len(written) == 5 and fps == 25.0


@pytest.mark.parametrize("workers", [1, 2])
def test_real_model_maps_match_the_api_frame_by_frame(tiny_vit_onnx, tmp_path, workers):
    from attnmap import Explainer

    # Two model runs at once, as `attnmap explain` runs videos on a CPU: same maps, same order.
    ex = Explainer(tiny_vit_onnx, threads=1 if workers > 1 else None)
    src = tmp_path / "in.avi"
    _write_video(src, 10, fps=8.0)
    engine = _engine(ex, "rollout", {"discard_ratio": 0.5}, batch_size=2, workers=workers)
    report = explain_video(engine, str(src), tmp_path / "out.mp4", save_maps=tmp_path / "m.npz")
    assert report.frames == 10 and report.fps == 8.0
    maps = np.load(tmp_path / "m.npz")
    decoded, _ = _read_all(src)
    written, fps = _read_all(tmp_path / "out.mp4")
    assert len(written) == 10 and fps == 8.0
    for i, img in enumerate(decoded):
        # The batched pipeline gives what the one-image API gives.
        want = ex.explain(img, method="rollout", fit="crop", discard_ratio=0.5)
        np.testing.assert_allclose(maps["grids"][i], want.grid, atol=1e-4)
        assert maps["top1"][i] == want.topk[0].index
        assert maps["prob"][i] == pytest.approx(want.topk[0].prob, abs=1e-4)


def test_video_sink_writes_through_a_temp_file(tmp_path):
    from attnmap.runtime.frames.sinks import VideoSink

    sink = VideoSink(tmp_path / "a.avi", 10.0, (32, 24))
    assert sink.fourcc == "MJPG" and list(tmp_path.iterdir()) != [] and not (tmp_path / "a.avi").exists()
    for i in range(3):
        sink.write(quadrant_frame(i, (32, 24)))
    assert sink.close() == tmp_path / "a.avi" and [p.name for p in tmp_path.iterdir()] == ["a.avi"]
    assert len(_read_all(tmp_path / "a.avi")[0]) == 3

    dropped = VideoSink(tmp_path / "b.mp4", 10.0, (32, 24))
    assert dropped.fourcc == "mp4v"
    dropped.write(quadrant_frame(0, (32, 24)))
    assert dropped.close(commit=False) is None and [p.name for p in tmp_path.iterdir()] == ["a.avi"]
    with pytest.raises(AttnmapError, match="has no extension"):
        VideoSink(tmp_path / "noext", 10.0, (32, 24))
    with pytest.raises(AttnmapError, match="needs fps > 0"):
        VideoSink(tmp_path / "c.mp4", 0, (32, 24))
