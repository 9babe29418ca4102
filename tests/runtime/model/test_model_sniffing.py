"""A model spec that is a picture, a video or a typo gets a message that names the file and what it is."""

import os

import cv2
import numpy as np
import pytest

from attnmap.runtime.core.errors import ModelError, suggest_path
from attnmap.runtime.image.header import describe_media
from attnmap.runtime.model import registry
from attnmap.runtime.model.session import OnnxModel


@pytest.mark.parametrize("ext, kind", [(".jpg", "a JPEG image"), (".png", "a PNG image"),
                                       (".bmp", "a BMP image"), (".webp", "a WebP image")])
def test_an_image_given_as_a_model_is_named_as_that_image(tmp_path, ext, kind):
    path = tmp_path / f"dog{ext}"
    assert cv2.imwrite(str(path), np.full((40, 60, 3), 90, np.uint8))
    with pytest.raises(ModelError) as info:
        OnnxModel(path, provider="cpu")
    assert f"'dog{ext}' is {kind}, not an ONNX model" in str(info.value)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_an_image_renamed_to_onnx_is_still_found_out(tmp_path):
    path = tmp_path / "model.onnx"
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    path.write_bytes(buf.tobytes())
    with pytest.raises(ModelError, match="'model.onnx' is a JPEG image, not an ONNX model"):
        OnnxModel(path, provider="cpu")


def test_a_video_given_as_a_model_is_named_as_a_video(tmp_path):
    path = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (32, 32))
    for i in range(2):
        w.write(np.full((32, 32, 3), 50 * i, np.uint8))
    w.release()
    with pytest.raises(ModelError, match="'clip.mp4' is an MP4/QuickTime video, not an ONNX model"):
        OnnxModel(path, provider="cpu")


def test_describe_media_leaves_other_bytes_alone():
    assert describe_media(b"\x08\x07\x12\x04") is None  # an ONNX protobuf starts with field tags
    assert describe_media(b"hello") is None
    assert describe_media(b"GIF89a\x10\x00\x10\x00") == "a GIF image"


def test_a_mistyped_model_path_suggests_the_close_file(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "deit_tiny.onnx").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    want = os.path.join("models", "deit_tiny.onnx")
    for typo in ("modls/deit_tiny.onnx", "models/deit_tiny.onx", "modles/deittiny.onnx"):
        with pytest.raises(ModelError) as info:
            registry.resolve_model(typo)
        assert str(info.value).endswith(f"Did you mean {want!r}?"), str(info.value)
    with pytest.raises(ModelError) as info:
        OnnxModel(tmp_path / "models" / "deit_tin.onnx", provider="cpu")
    assert str(info.value).endswith(f"Did you mean {str(tmp_path / 'models' / 'deit_tiny.onnx')!r}?")
    # nothing close: no guess
    assert suggest_path("elsewhere/zzz.onnx") == ""


def test_default_choice_names_the_model_a_run_without_one_uses(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    entry = next(e for e in registry.shipped_models() if e.get("default"))
    assert registry.default_choice(None) == f"{entry['name']} (the shipped default)"
    assert registry.resolve_model(None) == registry.MODELS_DIR / entry["file"]
    assert registry.default_choice("some.onnx") is None
    monkeypatch.setenv(registry.ENV_VAR, "mine.onnx")
    assert registry.default_choice("") == "'mine.onnx' (from $ATTNMAP_MODEL)"
