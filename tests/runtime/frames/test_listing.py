"""Folders and globs say what they leave out; a still GIF is an image, an animated one a video."""

import cv2
import numpy as np
import pytest
from PIL import Image

from attnmap.runtime.core.errors import SourceError
from attnmap.runtime.frames.listing import file_kind
from attnmap.runtime.frames.sources import open_source, parse_source, plan_inputs


def _gif(path, frames):
    tiles = [Image.fromarray(np.full((24, 32, 3), 40 + 70 * i, np.uint8)).convert("P") for i in range(frames)]
    tiles[0].save(path, save_all=frames > 1, append_images=tiles[1:], duration=100)
    return path


def _clip(path, frames=3):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    for i in range(frames):
        w.write(np.full((24, 32, 3), 60 * i, np.uint8))
    w.release()
    return path


@pytest.fixture()
def mixed(tmp_path):
    d = tmp_path / "mixed"
    (d / "sub").mkdir(parents=True)
    cv2.imwrite(str(d / "a.png"), np.zeros((20, 20, 3), np.uint8))
    _gif(d / "still.gif", 1)
    _gif(d / "anim.gif", 3)
    _clip(d / "clip.avi")
    (d / "notes.txt").write_text("x")
    (d / "more.txt").write_text("y")
    (d / "README").write_text("z")
    (d / ".hidden.png").write_bytes(b"")
    return d


def test_gif_frames_decide_image_or_video(tmp_path):
    still, anim = _gif(tmp_path / "s.gif", 1), _gif(tmp_path / "a.gif", 4)
    assert file_kind(still) == "image" and parse_source(str(still)).kind == "image"
    assert file_kind(anim) == "video" and parse_source(str(anim)).kind == "video"
    with open_source(str(still)) as src:  # read as the image it is, not as a one-frame video
        (frame,) = list(src)
    assert frame.image_bgr.shape == (24, 32, 3)
    # the animated one reads as a video of its frames
    with open_source(str(anim)) as src:
        assert len(list(src)) == 4


def test_a_folder_takes_images_and_still_gifs_and_says_what_it_skipped(mixed):
    notes = []
    refs, failures = plan_inputs([str(mixed)], on_skip=lambda spec, note: notes.append((spec, note)))
    assert failures == [] and [(r.kind, r.target.split("/")[-1]) for r in refs] == [("image", "a.png"),
                                                                                  ("image", "still.gif")]
    assert notes == [(str(mixed), "skipped 2 videos (1 .avi, 1 .gif; still images only here); 3 files that are "
                                  "neither image nor video (2 .txt, 1 without extension); 1 folder (not read: a "
                                  "folder is not searched recursively)")]


def test_with_videos_a_folder_takes_its_videos_too(mixed):
    notes = []
    refs, _ = plan_inputs([str(mixed)], videos=True, on_skip=lambda spec, note: notes.append(note))
    assert [(r.kind, r.target.split("/")[-1]) for r in refs] == [
        ("image", "a.png"), ("image", "still.gif"), ("video", "anim.gif"), ("video", "clip.avi")]
    assert notes == ["skipped 3 files that are neither image nor video (2 .txt, 1 without extension); 1 folder "
                     "(not read: a folder is not searched recursively)"]


def test_a_clean_folder_says_nothing(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    notes = []
    plan_inputs([str(tmp_path)], videos=True, on_skip=lambda spec, note: notes.append(note))
    assert notes == []


def test_a_folder_of_videos_only_is_named_as_such_when_videos_are_not_taken(tmp_path):
    _clip(tmp_path / "c.avi")
    with pytest.raises(SourceError, match=r"holds no image files: only 1 video \(1 \.avi; still images only here\)"):
        open_source(str(tmp_path))
    refs, failures = plan_inputs([str(tmp_path)], videos=True)
    assert failures == [] and [r.kind for r in refs] == ["video"]


def test_a_file_list_is_named_with_the_right_plural(tmp_path):
    from attnmap.runtime.frames.sources import open_files

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for p in (a, b):
        cv2.imwrite(str(p), np.zeros((8, 8, 3), np.uint8))
    assert open_files([a]).spec == "1 file"
    assert open_files([a, b]).spec == "2 files"
