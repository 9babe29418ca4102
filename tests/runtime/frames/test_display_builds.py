"""OpenCV's two wheels: opencv-python has a GUI, opencv-python-headless has none. Without a
window the message is one line of the same shape on both builds, and no window call is made.

Both branches run whichever wheel is installed: the build is detected from
cv2.getBuildInformation()'s GUI line, and the tests patch that detection."""

from __future__ import annotations

import cv2
import pytest

from attnmap.runtime.core.errors import DisplayError
from attnmap.runtime.frames import sinks

HINT = "run headless (`attnmap live SOURCE --no-show --out FILE.mp4`), or watch in a browser with `attnmap serve`"


@pytest.fixture
def no_window_calls(monkeypatch):
    """Fail the test if OpenCV's GUI is touched (on the headless build it would raise, on the
    Qt build without a display it would abort the process)."""
    def refuse(*args, **kwargs):
        raise AssertionError("an OpenCV window call was made before the display check refused")

    for name in ("namedWindow", "imshow", "waitKey", "destroyWindow", "getWindowProperty"):
        monkeypatch.setattr(cv2, name, refuse)


def _build(monkeypatch, backend: str, wheels: tuple[str, ...]):
    monkeypatch.setattr(sinks, "gui_backend", lambda: backend)
    monkeypatch.setattr(sinks, "opencv_wheels", lambda: wheels)


def test_the_installed_build_is_read_from_opencv_itself():
    info = cv2.getBuildInformation()
    gui_line = next(line for line in info.splitlines() if line.strip().startswith("GUI:"))
    assert sinks.gui_backend() == gui_line.split(":", 1)[1].strip()
    # the wheel pip installed says the same as the build: -headless has no GUI
    names = [w.split()[0] for w in sinks.opencv_wheels()]
    if names == ["opencv-python-headless"]:
        assert sinks.is_headless_build()
    elif names == ["opencv-python"]:
        assert not sinks.is_headless_build()


@pytest.mark.parametrize("backend, wheels, reason", [
    ("NONE", ("opencv-python-headless 5.1.0.95",),
     "this OpenCV is the headless build (opencv-python-headless 5.1.0.95), which has no GUI"),
    ("NONE", ("opencv-python 5.0.0.93", "opencv-python-headless 5.0.0.93"),
     "this OpenCV is the headless build (opencv-python 5.0.0.93 and opencv-python-headless 5.0.0.93 "
     "share cv2; the last installed wins), which has no GUI"),
    ("NONE", (), "this OpenCV is the headless build, which has no GUI"),
    ("QT5", ("opencv-python 5.0.0.93",), "no display: neither $DISPLAY nor $WAYLAND_DISPLAY is set"),
])
def test_no_window_is_one_line_of_the_same_shape_on_both_builds(monkeypatch, no_window_calls, backend,
                                                                 wheels, reason):
    _build(monkeypatch, backend, wheels)
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(DisplayError) as info:
        sinks.Window("attnmap")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot show a window: {reason}") and message.endswith(f"; {HINT}")


@pytest.mark.parametrize("env", [{"DISPLAY": ":0"}, {"WAYLAND_DISPLAY": "wayland-0"},
                                 {"DISPLAY": ":0", "QT_QPA_PLATFORM": "offscreen"}])
def test_a_display_does_not_help_the_headless_build(monkeypatch, no_window_calls, env):
    _build(monkeypatch, "NONE", ("opencv-python-headless 5.0.0.93",))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert sinks.display_problem().startswith("this OpenCV is the headless build")
    with pytest.raises(DisplayError, match="^cannot show a window: this OpenCV is the headless build"):
        sinks.check_display()


def test_the_gui_build_with_a_display_may_open_a_window(monkeypatch):
    _build(monkeypatch, "GTK3", ("opencv-python 5.0.0.93",))
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    assert sinks.display_problem() is None
