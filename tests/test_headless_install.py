"""The install for a headless box: requirements-headless.txt is the base install with OpenCV's
headless wheel in place of opencv-python, and constraints-newest.txt (the headless CI lane's
versions) names the same packages as constraints.txt."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
GUI, HEADLESS = "opencv-python", "opencv-python-headless"


def _lines(path: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower()


def _pins(path: Path) -> dict[str, str]:
    return dict(line.split("==") for line in _lines(path))


def test_the_headless_requirements_are_the_base_install_with_the_headless_wheel():
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    headless = _lines(ROOT / "requirements-headless.txt")
    assert any(_name(r) == GUI for r in base)
    # The same requirements, the same version bounds, only OpenCV's wheel swapped.
    assert headless == [HEADLESS + r[len(GUI):] if _name(r) == GUI else r for r in base]


def test_the_newest_constraints_name_the_same_packages_with_newer_or_equal_versions():
    pinned, newest = _pins(ROOT / "constraints.txt"), _pins(ROOT / "constraints-newest.txt")
    assert GUI in pinned and HEADLESS not in pinned
    assert HEADLESS in newest and GUI not in newest  # never both: they overwrite each other's cv2
    assert set(newest) == set(pinned) - {GUI} | {HEADLESS}

    def version(v: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", v))

    for name, v in newest.items():
        assert version(v) >= version(pinned[GUI if name == HEADLESS else name]), name
