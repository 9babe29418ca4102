"""The evaluation package's place in the house: above the engine, below the fronts; the local
fronts read manifests from frames, never from the distributed front."""

from __future__ import annotations

import ast
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[3] / "runtime"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def _modules(folder: str) -> list[Path]:
    root = RUNTIME / folder
    return sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]


def test_evaluation_imports_no_front_and_no_floor_below_imports_evaluation():
    assert _modules("evaluation")
    for path in _modules("evaluation"):
        bad = {m for m in _imports(path) if m.startswith("attnmap.runtime.fronts")}
        assert not bad, f"{path.name} imports {bad}"
    for floor in ("core", "model", "methods", "image", "draw", "frames", "engine"):
        for path in _modules(floor):
            bad = {m for m in _imports(path) if m.startswith("attnmap.runtime.evaluation")}
            assert not bad, f"{floor}/{path.name} imports {bad}"


def test_local_fronts_do_not_import_the_distributed_front():
    local = [*_modules("fronts/evaluate"), *_modules("fronts/offline"), *_modules("fronts/video")]
    assert len(local) >= 4
    for path in local:
        bad = {m for m in _imports(path) if m.startswith("attnmap.runtime.fronts.distributed")}
        assert not bad, f"{path.name} imports {bad}"
