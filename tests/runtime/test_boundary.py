"""The hard line: runtime/ (and the CLI's import) never pulls in torch or timm."""

import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    # Run outside the checkout, so only the installed `attnmap` package can be imported.
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


CHECK = ("import sys; print(sorted(m for m in ('torch', 'timm', 'torchvision', 'attnmap.export', 'runtime', "
         "'export', 'cli') if m in sys.modules))")


def test_importing_runtime_and_cli_imports_no_torch():
    assert _run("import attnmap, attnmap.cli, attnmap.runtime.methods, attnmap.runtime.draw.overlay, "
                "attnmap.runtime.image.preprocess, attnmap.runtime.frames.sources, attnmap.runtime.fronts.live.loop, "
                "attnmap.runtime.fronts.offline, attnmap.runtime.fronts.bench; " + CHECK) == "[]"


def test_the_package_claims_no_generic_top_level_names():
    """`runtime`, `export` and `cli` are attnmap's parts, not top-level modules of the install."""
    assert _run("import importlib.util as u; print([n for n in ('runtime', 'export', 'cli') "
                "if u.find_spec(n) is not None])") == "[]"


def test_cli_help_loads_neither_onnxruntime_nor_opencv():
    code = ("import sys\nfrom click.testing import CliRunner\nimport attnmap.cli as c\n"
            "assert CliRunner().invoke(c.main, ['--help']).exit_code == 0\n"
            "print(sorted(m for m in ('onnxruntime', 'cv2', 'onnx') if m in sys.modules))")
    assert _run(code) == "[]"


def test_a_full_explanation_imports_no_torch(tiny_vit_onnx):
    code = (
        "import numpy as np, attnmap as runtime\n"
        f"ex = runtime.Explainer({str(tiny_vit_onnx)!r}, provider='cpu')\n"
        "img = (np.arange(40 * 50 * 3) % 251).astype(np.uint8).reshape(40, 50, 3)\n"
        "r = ex.explain(img, method='rollout')\n"
        "assert r.heatmap.shape == (40, 50) and r.overlay().shape == (40, 50, 3)\n"
        "ex.explain([img, img], method='attention')\n"
        + CHECK
    )
    assert _run(code) == "[]"


def test_a_class_specific_explanation_imports_no_torch(tiny_vit_grads_onnx):
    """The gradients come out of the ONNX graph: explaining a chosen class needs no torch either."""
    code = (
        "import numpy as np, attnmap as runtime\n"
        f"ex = runtime.Explainer({str(tiny_vit_grads_onnx)!r}, provider='cpu')\n"
        "img = (np.arange(40 * 50 * 3) % 251).astype(np.uint8).reshape(40, 50, 3)\n"
        "cat, ship = ex.explain(img, method='chefer', target='cat'), ex.explain(img, method='chefer', target=8)\n"
        "assert (cat.target, cat.label_of_target, ship.target) == (3, 'cat', 8)\n"
        "assert cat.grid.shape == (4, 4) and (cat.grid.min(), cat.grid.max()) == (0.0, 1.0)\n"
        "assert not np.allclose(cat.grid, ship.grid, atol=1e-3)\n"
        + CHECK
    )
    assert _run(code) == "[]"


def test_no_runtime_module_mentions_torch_imports():
    offenders = []
    for path in (ROOT / "runtime").rglob("*.py"):  # noqa: B007
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")) and any(
                    f" {mod}" in stripped.split("#")[0] for mod in ("torch", "timm", "export")):
                offenders.append(f"{path.relative_to(ROOT)}: {stripped}")
    assert offenders == [], offenders


def test_the_shipped_default_model_explains_without_torch():
    """Runs on a torch-free edge install too: the default model needs no export step."""
    code = (
        "import numpy as np, attnmap as runtime\n"
        "from attnmap.runtime.frames.synth import make_sample\n"
        "ex = runtime.Explainer(provider='cpu')\n"
        "s = make_sample(np.random.default_rng(7), 96)\n"
        "r = ex.explain(s.image_bgr, method='rollout')\n"
        "assert r.heatmap.shape == (96, 96) and r.topk[0].label in ex.meta.label_names\n"
        + CHECK
    )
    assert _run(code) == "[]"
