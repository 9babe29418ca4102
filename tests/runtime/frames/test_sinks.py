"""Video sinks: the codec is picked per container from what this OpenCV really writes and reads
back; files are checked by decoding them and by the codec boxes in their bytes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from attnmap.runtime.core.errors import AttnmapError, OutputError
from attnmap.runtime.frames import codecs, sinks
from attnmap.runtime.frames.codecs import CODECS, candidates, codec_note, working_codecs
from attnmap.runtime.frames.sinks import RealTimeRecorder, VideoSink

REPO = Path(__file__).resolve().parents[3]
CLIP = "video/mmaction2_test.mp4"  # 340 x 256, 30 fps


@pytest.fixture(scope="module")
def clip_frames(shared_data) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(shared_data / CLIP))
    frames = []
    while len(frames) < 6:
        ok, img = cap.read()
        assert ok, "the shared clip has at least 6 frames"
        frames.append(img)
    cap.release()
    assert frames[0].shape == (256, 340, 3)
    return frames


def _decode(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    out = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        out.append(img)
    cap.release()
    return out, fps


def _write(sink: VideoSink, frames) -> Path:
    for f in frames:
        sink.write(f)
    return sink.close(commit=True)


def test_candidates_put_playable_first_and_slow_last_unless_asked():
    assert [c.fourcc for c in candidates(".mp4", playable=True)] == ["avc1", "vp09", "mp4v"]
    assert [c.fourcc for c in candidates(".MP4")] == ["avc1", "mp4v", "vp09"]
    assert [c.fourcc for c in candidates(".webm")] == ["VP80", "VP90"]
    assert [c.fourcc for c in candidates(".avi")] == ["MJPG", "mp4v"]
    assert [c.fourcc for c in candidates(".whatever")] == ["mp4v", "MJPG"]
    assert all(c.playable for c in candidates(".webm"))
    assert not CODECS["mp4v"].playable and CODECS["vp09"].slow and not CODECS["avc1"].slow


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".avi"])
def test_every_working_codec_writes_the_clip_back_frame_for_frame(tmp_path, clip_frames, ext):
    works = working_codecs(ext, playable=True)
    assert works, f"no codec writes {ext} here"
    for codec in works:
        out = _write(VideoSink(tmp_path / f"{codec.fourcc}{ext}", 30.0, (340, 256), codec.fourcc), clip_frames)
        decoded, fps = _decode(out)
        assert len(decoded) == len(clip_frames) and fps == pytest.approx(30.0)
        # lossy, but the same pictures in the same order: each frame is closest to its original
        for i, d in enumerate(decoded):
            psnr = [cv2.PSNR(d, f) for f in clip_frames]
            assert psnr[i] > 28 and int(np.argmax(psnr)) == i, (codec, i, psnr)


def test_default_mp4_is_the_first_working_codec_and_says_when_browsers_cannot_play_it(tmp_path, clip_frames):
    sink = VideoSink(tmp_path / "a.mp4", 30.0, (340, 256))
    assert sink.codec == sink.fourcc == working_codecs(".mp4")[0].fourcc
    out = _write(sink, clip_frames)
    data = out.read_bytes()
    assert data[4:8] == b"ftyp"
    # the sample entry in the file is the codec reported (independent of OpenCV's reader)
    assert sink.codec.encode() in data
    if CODECS[sink.codec].playable:
        assert sink.note is None
    else:
        assert ".webm" in sink.note and "browsers" in sink.note
        assert sink.note == codec_note(".mp4", sink.codec)


def test_playable_mp4_takes_a_browser_codec_when_one_works(tmp_path, clip_frames):
    playable = [c for c in working_codecs(".mp4", playable=True) if c.playable]
    if not playable:
        pytest.skip("this OpenCV writes no browser-playable codec into .mp4")
    sink = VideoSink(tmp_path / "web.mp4", 30.0, (340, 256), playable=True)
    assert sink.codec == playable[0].fourcc and sink.note is None
    data = _write(sink, clip_frames[:3]).read_bytes()
    if sink.codec == "vp09":
        # what browsers look for: the 'vp09' sample entry with its VP codec configuration box
        assert b"vp09" in data and b"vpcC" in data
    assert len(_decode(tmp_path / "web.mp4")[0]) == 3


def test_webm_is_vp8_or_vp9_in_a_webm_container(tmp_path, clip_frames):
    sink = VideoSink(tmp_path / "a.webm", 30.0, (340, 256))
    assert sink.codec in ("VP80", "VP90") and sink.note is None
    data = _write(sink, clip_frames[:4]).read_bytes()
    assert data[:4] == b"\x1a\x45\xdf\xa3" and b"webm" in data[:64]  # EBML header, DocType webm
    assert (b"V_VP8" if sink.codec == "VP80" else b"V_VP9") in data
    assert len(_decode(tmp_path / "a.webm")[0]) == 4


def test_probe_runs_once_per_container(monkeypatch):
    calls = []
    real = codecs._round_trips
    monkeypatch.setattr(codecs, "_round_trips", lambda c, p: calls.append(c.fourcc) or real(c, p))
    codecs._probe.cache_clear()
    try:
        first = working_codecs(".avi")
        assert working_codecs(".avi") == first and working_codecs(".avi", playable=True) == first
        assert sorted(calls) == sorted(c.fourcc for c in candidates(".avi"))
    finally:
        codecs._probe.cache_clear()


def test_a_codec_that_does_not_round_trip_is_dropped_by_the_probe(monkeypatch):
    # VP8 cannot go into MP4 here: the probe must find that out, not trust the table
    monkeypatch.setitem(codecs.PREFERENCE, ".mp4", ("VP80", "mp4v"))
    codecs._probe.cache_clear()
    try:
        assert [c.fourcc for c in working_codecs(".mp4")] == ["mp4v"]
    finally:
        codecs._probe.cache_clear()


def test_a_writer_that_does_not_open_falls_back_to_the_next_codec(tmp_path, monkeypatch):
    # the probe said yes, but the writer fails at this size or path: the next codec is tried
    monkeypatch.setattr(sinks, "working_codecs", lambda ext, playable=False: (CODECS["vp09"], CODECS["mp4v"]))
    real = sinks.open_writer
    tried = []

    def flaky(path, fourcc, fps, size):
        tried.append(fourcc)
        return (None, "[libvpx-vp9 @ 0x0] simulated failure") if fourcc == "vp09" else real(path, fourcc, fps, size)

    monkeypatch.setattr(sinks, "open_writer", flaky)
    sink = VideoSink(tmp_path / "f.mp4", 10.0, (32, 24))
    assert tried == ["vp09", "mp4v"] and sink.codec == "mp4v"
    _write(sink, [np.full((24, 32, 3), 100, np.uint8)] * 2)
    assert len(_decode(tmp_path / "f.mp4")[0]) == 2


def test_no_working_codec_is_an_output_error_naming_what_was_tried(tmp_path):
    with pytest.raises(OutputError, match=r"no codec .* writes a readable \.xyz file \(probed 'mp4v', 'MJPG'\)"):
        VideoSink(tmp_path / "a.xyz", 10.0, (32, 24))
    with pytest.raises(OutputError, match=r"tried 'VP80' \(FFmpeg: .+\)"):
        VideoSink(tmp_path / "b.mp4", 10.0, (32, 24), fourcc="VP80")
    with pytest.raises(AttnmapError, match="4 characters"):
        VideoSink(tmp_path / "c.mp4", 10.0, (32, 24), fourcc="h264x")
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_explicit_fourcc_is_used_as_given_without_a_note(tmp_path):
    sink = VideoSink(tmp_path / "m.mp4", 10.0, (32, 24), "mp4v")
    assert sink.codec == "mp4v" and sink.note is None
    sink.close(commit=False)
    assert list(tmp_path.iterdir()) == []


def test_recorder_reports_its_codec_once_it_has_a_frame(tmp_path):
    from attnmap.runtime.frames.sources import Frame

    rec = RealTimeRecorder(tmp_path / "r.webm", 10.0, by_index=True)
    assert rec.codec is None and rec.note is None
    img = np.full((24, 32, 3), 80, np.uint8)
    for i in range(3):
        rec.write(img, Frame(index=i, image_bgr=img, source="t", timestamp=i / 10))
    assert rec.codec == working_codecs(".webm")[0].fourcc
    assert rec.close() == tmp_path / "r.webm" and len(_decode(tmp_path / "r.webm")[0]) == 3


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_opening_sinks_keeps_ffmpeg_chatter_off_stderr_unless_debug(tmp_path):
    # A .webm writer makes OpenCV fprintf "tag ... is not supported ... 'webm / WebM'" and the
    # .mp4 probe makes the missing H.264 encoder complain; neither reaches the user's terminal,
    # except with quiet_opencv(debug=True).
    code = f"""
        import sys, numpy as np
        from attnmap.runtime.core.logs import quiet_opencv
        from attnmap.runtime.frames.sinks import VideoSink
        if sys.argv[1:] == ["debug"]:
            quiet_opencv(debug=True)
        for name in ("a.webm", "b.mp4"):
            s = VideoSink({str(tmp_path)!r} + "/" + name, 10.0, (32, 24))
            s.write(np.zeros((24, 32, 3), np.uint8))
            s.close()
        print("ok")
    """
    quiet = _run(code)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "ok", quiet.stderr
    assert quiet.stderr == ""
    loud = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "debug"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert loud.returncode == 0, loud.stderr
    assert "webm / WebM" in loud.stderr  # OpenCV's own line about the VP8 tag, replayed
