"""The SOURCE grammar: parsing, opening, reading, errors, and releasing what was opened."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from attnmap.runtime.core.errors import ImageError, SourceError
from attnmap.runtime.frames.sources import (CaptureSource, Frame, Source, SourceRef, expand_sources, iter_frames, open_files,
                             open_source, parse_source)

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
CLIP = DATA / "video" / "mmaction2_test.mp4"
needs_clip = pytest.mark.skipif(not CLIP.is_file(), reason=f"shared clip {CLIP} is absent")


def _png(path: Path, value: int, shape=(12, 16)) -> np.ndarray:
    img = np.zeros((*shape, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = value, 255 - value, (value * 7) % 256
    assert cv2.imwrite(str(path), img)
    return img


def _video(path: Path, n: int, fps: float = 25.0, size=(64, 48), fourcc="MJPG") -> list[int]:
    """Write n flat frames whose grey level encodes the index; return the levels."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert w.isOpened()
    levels = [(i * 37 + 20) % 230 for i in range(n)]
    for v in levels:
        w.write(np.full((size[1], size[0], 3), v, np.uint8))
    w.release()
    return levels


# --------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("spec, kind, target", [
    ("0", "camera", "0"),
    ("cam:1", "camera", "1"),
    ("rtsp://10.0.0.2:554/stream1", "stream", "rtsp://10.0.0.2:554/stream1"),
    ("http://example.org/live.mjpg", "stream", "http://example.org/live.mjpg"),
    ("HTTPS://example.org/a.m3u8", "stream", "HTTPS://example.org/a.m3u8"),
    ("frames/img_%04d.png", "sequence", "frames/img_%04d.png"),
    ("shots/*.jpg", "glob", "shots/*.jpg"),
])
def test_parse_specs_that_need_no_file(spec, kind, target):
    ref = parse_source(spec)
    assert (ref.kind, ref.spec, ref.target) == (kind, spec, target)
    assert ref.is_live == (kind in ("camera", "stream"))


def test_parse_files_by_what_they_are(tmp_path):
    _png(tmp_path / "a.png", 10)
    _video(tmp_path / "v.avi", 2)
    # Unknown extensions are sniffed: PNG bytes named .dat are an image, video bytes a video.
    (tmp_path / "img.dat").write_bytes((tmp_path / "a.png").read_bytes())
    (tmp_path / "clip.bin").write_bytes((tmp_path / "v.avi").read_bytes())
    assert parse_source(tmp_path / "a.png").kind == "image"
    assert parse_source(str(tmp_path / "v.avi")).kind == "video"
    assert parse_source(str(tmp_path)).kind == "directory"
    assert parse_source(str(tmp_path / "img.dat")).kind == "image"
    assert parse_source(str(tmp_path / "clip.bin")).kind == "video"
    assert parse_source("file://" + str(tmp_path / "a.png")).kind == "image"


def test_a_file_named_like_a_camera_index_is_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "zero.png", 3)
    (tmp_path / "zero.png").rename(tmp_path / "0")
    assert parse_source("0").kind == "image"


def test_missing_path_names_it_and_suggests_neighbours(tmp_path):
    _png(tmp_path / "dog_01.png", 1)
    with pytest.raises(SourceError) as err:
        parse_source(str(tmp_path / "dog_0l.png"))
    msg = str(err.value)
    assert "dog_0l.png" in msg and "does not exist" in msg
    assert repr(str(tmp_path / "dog_01.png")) in msg
    assert "\n" not in msg


@pytest.mark.parametrize("spec, fragment", [
    ("ftp://host/clip.mp4", "unsupported URL scheme 'ftp'"),
    ("   ", "source is empty"),
])
def test_bad_specs(spec, fragment):
    with pytest.raises(SourceError, match=fragment):
        parse_source(spec)


# --------------------------------------------------------------------------- still images
def test_directory_reads_images_sorted_and_skips_other_files(tmp_path):
    want = {name: _png(tmp_path / name, v) for name, v in [("b.png", 50), ("a.png", 10), ("c.bmp", 90)]}
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    with open_source(str(tmp_path)) as src:
        assert src.kind == "directory" and not src.is_live and src.frame_count == 3 and src.size is None
        frames = list(src)
    assert [Path(f.source).name for f in frames] == ["a.png", "b.png", "c.bmp"]
    assert [f.index for f in frames] == [0, 1, 2]
    for f in frames:
        np.testing.assert_array_equal(f.image_bgr, want[Path(f.source).name])


def test_bad_file_in_a_directory_is_reported_and_skipped(tmp_path):
    _png(tmp_path / "a.png", 10)
    (tmp_path / "b.png").write_bytes(b"\x89PNG truncated garbage")
    _png(tmp_path / "c.png", 30)
    (tmp_path / "d.jpg").write_bytes(b"")
    errors = []
    with open_source(str(tmp_path), on_error=lambda path, exc: errors.append((Path(path).name, exc))) as src:
        frames = list(src)
    assert [(Path(f.source).name, f.index) for f in frames] == [("a.png", 0), ("c.png", 2)]
    assert [name for name, _ in errors] == ["b.png", "d.jpg"]
    assert all(isinstance(e, ImageError) and "\n" not in str(e) for _, e in errors)
    assert "b.png" in str(errors[0][1]) and "cannot decode image file" in str(errors[0][1])


def test_bad_file_without_handler_raises_at_that_file(tmp_path):
    _png(tmp_path / "a.png", 10)
    (tmp_path / "b.png").write_bytes(b"nope")
    seen = []
    with pytest.raises(ImageError, match="b.png"):
        for f in iter_frames(str(tmp_path)):
            seen.append(Path(f.source).name)
    assert seen == ["a.png"]


def test_lone_unreadable_image_fails_at_open(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(ImageError, match="x.jpg"):
        open_source(str(tmp_path / "x.jpg"))


def test_single_image_grey_and_non_ascii_path(tmp_path):
    grey = (np.arange(20 * 30, dtype=np.uint32).reshape(20, 30) % 256).astype(np.uint8)
    path = tmp_path / "ñandú gris.png"
    ok, buf = cv2.imencode(".png", grey)
    path.write_bytes(buf.tobytes())
    with open_source(str(path)) as src:
        assert src.kind == "image" and src.size == (30, 20) and src.frame_count == 1
        (frame,) = list(src)
    assert frame.image_bgr.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(frame.image_bgr[..., c], grey)


def test_glob_and_empty_folders(tmp_path):
    _png(tmp_path / "x1.png", 1)
    _png(tmp_path / "x2.png", 2)
    _png(tmp_path / "y.png", 3)
    (tmp_path / "x3.txt").write_text("")
    with open_source(str(tmp_path / "x*")) as src:
        assert src.kind == "glob"
        assert [Path(f.source).name for f in src] == ["x1.png", "x2.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no image files"):
        open_source(str(tmp_path / "empty"))
    with pytest.raises(SourceError, match=r"matched only 1 file that is neither image nor video \(1 \.txt\)"):
        open_source(str(tmp_path / "x*.txt"))
    with pytest.raises(SourceError, match="matched nothing"):
        open_source(str(tmp_path / "z*.png"))


# --------------------------------------------------------------------------- capture sources
def test_video_file_metadata_and_frames(tmp_path):
    levels = _video(tmp_path / "v.avi", 7, fps=12.5, size=(64, 48))
    t0 = time.perf_counter()
    with open_source(str(tmp_path / "v.avi")) as src:
        assert isinstance(src, CaptureSource)
        assert (src.kind, src.fps, src.frame_count, src.size, src.is_live) == ("video", 12.5, 7, (64, 48), False)
        frames = list(src)
    assert [f.index for f in frames] == list(range(7))
    stamps = [f.timestamp for f in frames]
    assert t0 <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= time.perf_counter()
    for f, v in zip(frames, levels):
        assert f.image_bgr.shape == (48, 64, 3) and f.image_bgr.dtype == np.uint8
        assert abs(float(f.image_bgr.mean()) - v) < 3.0  # MJPG is lossy, but flat frames survive


def test_image_sequence_reads_every_numbered_file_exactly(tmp_path):
    want = [_png(tmp_path / f"img_{i:04d}.png", 40 * i) for i in range(5)]
    with open_source(str(tmp_path / "img_%04d.png")) as src:
        assert src.kind == "sequence" and src.frame_count == 5 and src.size == (16, 12)
        frames = list(src)
    assert len(frames) == 5
    for f, img in zip(frames, want):
        np.testing.assert_array_equal(f.image_bgr, img)


def test_sequence_that_matches_no_file(tmp_path):
    with pytest.raises(SourceError, match="image sequence"):
        open_source(str(tmp_path / "none_%03d.png"))


@needs_clip
def test_shared_clip():
    with open_source(str(CLIP)) as src:
        assert (src.fps, src.frame_count, src.size) == (30.0, 300, (340, 256))
        n = sum(1 for _ in src)
    assert n == 300


def test_video_that_cannot_be_decoded(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    with pytest.raises(SourceError, match=r"video '.*broken.mp4' cannot be opened"):
        open_source(str(bad))


def test_missing_camera_and_dead_stream_fail_with_a_clear_error():
    with pytest.raises(SourceError, match="camera 'cam:57' cannot be opened"):
        open_source("cam:57")
    # Port 9 (discard) on localhost refuses the connection at once.
    with pytest.raises(SourceError, match="stream 'rtsp://127.0.0.1:9/live' cannot be opened"):
        open_source("rtsp://127.0.0.1:9/live")


def test_context_manager_and_abandoned_iteration_release_the_capture(tmp_path, monkeypatch):
    _video(tmp_path / "v.avi", 5)
    with open_source(str(tmp_path / "v.avi")) as src:
        next(iter(src))
        cap = src.cap
    assert src.closed and not cap.isOpened()

    released = []
    original = CaptureSource.close
    monkeypatch.setattr(CaptureSource, "close", lambda self: (released.append(self.spec), original(self)))
    gen = iter_frames(str(tmp_path / "v.avi"))
    first = next(gen)
    assert isinstance(first, Frame) and first.index == 0
    gen.close()  # a consumer that stops early (break, exception) must not leak the capture
    assert released == [str(tmp_path / "v.avi")]


def test_camera_read_failure_is_an_error_not_an_end():
    class DeadCapture:
        def read(self):
            return False, None

        def release(self):
            pass

    # A camera that opened and then died: the capture is swapped for one whose reads fail.
    src = CaptureSource.__new__(CaptureSource)
    Source.__init__(src, SourceRef("camera", "cam:0", "0"))
    src.cap, src._read_count = DeadCapture(), 3
    with pytest.raises(SourceError, match="stopped delivering frames after 3 frames"):
        list(src)


# --------------------------------------------------------------------------- expand_sources
def test_expand_sources_flattens_folders_keeps_streams_and_dedupes(tmp_path):
    for name in ("b.png", "a.jpg"):
        _png(tmp_path / name, 5)
    _video(tmp_path / "v.avi", 2)
    refs = expand_sources([str(tmp_path / "b.png"), str(tmp_path), str(tmp_path / "v.avi"), "cam:2",
                           str(tmp_path / "*.png")])
    assert [(r.kind, Path(r.target).name if r.kind != "camera" else r.target) for r in refs] == [
        ("image", "b.png"), ("image", "a.jpg"), ("video", "v.avi"), ("camera", "2")]


def test_expand_sources_names_the_bad_spec(tmp_path):
    _png(tmp_path / "a.png", 5)
    with pytest.raises(SourceError, match="nope.png"):
        expand_sources([str(tmp_path / "a.png"), str(tmp_path / "nope.png")])


def test_open_files_reads_a_list_lazily_and_reports_bad_ones(tmp_path):
    good = [_png(tmp_path / f"{n}.png", v) for n, v in (("a", 1), ("c", 3))]
    (tmp_path / "b.png").write_bytes(b"")
    refs = expand_sources([str(tmp_path / "c.png"), str(tmp_path)])
    assert [Path(r.target).name for r in refs] == ["c.png", "a.png", "b.png"]
    errors = []
    with open_files([r.target for r in refs], on_error=lambda p, e: errors.append(Path(p).name)) as src:
        assert src.kind == "files" and src.spec == "3 files" and src.frame_count == 3
        frames = list(src)
    assert [(Path(f.source).name, f.index) for f in frames] == [("c.png", 0), ("a.png", 1)]
    np.testing.assert_array_equal(frames[0].image_bgr, good[1])
    assert errors == ["b.png"]
    with pytest.raises(SourceError, match="empty list"):
        open_files([])
