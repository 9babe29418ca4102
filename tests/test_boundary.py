"""The hard line: runtime/ (and the CLI's import) never pulls in torch or timm."""

import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


CHECK = "import sys; print(sorted(m for m in ('torch', 'timm', 'torchvision', 'export') if m in sys.modules))"


def test_importing_runtime_and_cli_imports_no_torch():
    assert _run("import runtime, cli, runtime.methods, runtime.draw.overlay, runtime.image.preprocess, runtime.frames.sources; "
                + CHECK) == "[]"


def test_a_full_explanation_imports_no_torch(tiny_vit_onnx):
    code = (
        "import numpy as np, runtime\n"
        f"ex = runtime.Explainer({str(tiny_vit_onnx)!r}, provider='cpu')\n"
        "img = (np.arange(40 * 50 * 3) % 251).astype(np.uint8).reshape(40, 50, 3)\n"
        "r = ex.explain(img, method='rollout')\n"
        "assert r.heatmap.shape == (40, 50) and r.overlay().shape == (40, 50, 3)\n"
        "ex.explain([img, img], method='attention')\n"
        + CHECK
    )
    assert _run(code) == "[]"


def test_no_runtime_module_mentions_torch_imports():
    offenders = []
    for path in (ROOT / "runtime").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")) and any(
                    f" {mod}" in stripped.split("#")[0] for mod in ("torch", "timm", "export")):
                offenders.append(f"{path.relative_to(ROOT)}: {stripped}")
    assert offenders == [], offenders


def test_the_shipped_default_model_explains_without_torch():
    """Runs on a torch-free edge install too: the default model needs no export step."""
    code = (
        "import numpy as np, runtime\n"
        "from attnmap.runtime.frames.synth import make_sample\n"
        "ex = runtime.Explainer(provider='cpu')\n"
        "s = make_sample(np.random.default_rng(7), 96)\n"
        "r = ex.explain(s.image_bgr, method='rollout')\n"
        "assert r.heatmap.shape == (96, 96) and r.topk[0].label in ex.meta.label_names\n"
        + CHECK
    )
    assert _run(code) == "[]"
