"""``export(contributions=True)``: ``class_contributions`` without the Grams, alone or with norms.

A contributions file must emit the same ``class_contributions`` as a ``decompositions=True``
export of the same model (within 1e-5 of the largest), and both must equal the independent torch
reference (``decomposition_reference.class_contributions``, whose token parts and bias part add
up to the logits); the runtime's ``decompx`` map on it must equal ``decompx(start_layer=-1)`` on
the decompositions file. Its graph carries no Gram and is smaller than the decompositions one.
"""

from __future__ import annotations

import numpy as np
import pytest
from extras import need

torch = need("torch", "export")
timm = need("timm", "export")
onnx = need("onnx", "export")
ort = need("onnxruntime", "export")

import decomposition_reference as ref  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from tiny_models import make_model, randomise_layer_scales  # noqa: E402

import attnmap.cli as cli  # noqa: E402
from attnmap.runtime.core.errors import ExportError  # noqa: E402
from attnmap.runtime.core.meta import DECOMPOSITION_OUTPUTS, NORMS_OUTPUT  # noqa: E402
from attnmap.runtime.methods import METHODS  # noqa: E402
from attnmap.runtime.model.session import OnnxModel  # noqa: E402

pytestmark = [pytest.mark.export]

QUIET = dict(log=lambda line: None)
CONTRIB = "class_contributions"
SAME_RTOL = 1e-5  # a contributions file against a decompositions file of the same model
REF_RTOL = 1e-4  # either against the float64 torch reference (as test_decomposition.py)
# file name -> export options
KINDS = {"contrib": dict(contributions=True), "norms_contrib": dict(norms=True, contributions=True),
         "decomp": dict(decompositions=True)}


def _run(path, x: np.ndarray) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))


def _export_all(export, model_or_name, folder, **kwargs) -> dict:
    """Export the three kinds of file; ``export`` is export_module or export_onnx."""
    paths = {}
    for kind, options in KINDS.items():
        paths[kind] = folder / f"{kind}.onnx"
        export(model_or_name, paths[kind], **kwargs, **options, **QUIET)
    return paths


def _decompx_maps(path, x: np.ndarray, options: dict) -> np.ndarray:
    model = OnnxModel(path, provider="cpu")
    m = METHODS["decompx"]
    return m.kind.maps(m, model.run(x), model.meta.layout, {**m.defaults, **options})


def _compare(paths: dict, model, x: torch.Tensor) -> dict:
    """Every check shared by the tiny and the real model; returns the files' outputs."""
    outs = {kind: _run(path, x.numpy()) for kind, path in paths.items()}
    assert list(outs["contrib"]) == ["logits", "attentions", CONTRIB]
    assert list(outs["norms_contrib"]) == ["logits", "attentions", NORMS_OUTPUT, CONTRIB]
    want = outs["decomp"][CONTRIB]
    scale = np.abs(want).max()
    for kind in ("contrib", "norms_contrib"):
        got = outs[kind][CONTRIB]
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.abs(got - want).max() <= SAME_RTOL * scale, kind
        np.testing.assert_allclose(outs[kind]["attentions"], outs["decomp"]["attentions"], atol=1e-6)
        np.testing.assert_allclose(outs[kind]["logits"], outs["decomp"]["logits"], atol=1e-5)
    with torch.no_grad():
        rec = ref.capture(model, x)
        parts, bias = ref.class_contributions(model, rec)
        logits = rec["logits"].double()
    # completeness of the reference: token parts and bias part add up to the logits
    assert torch.allclose(parts.sum(dim=1) + bias, logits, atol=1e-4 * max(1.0, logits.abs().max().item()))
    parts = parts.numpy()
    for kind in KINDS:
        assert np.abs(outs[kind][CONTRIB] - parts).max() <= REF_RTOL * max(1.0, np.abs(parts).max()), kind
    # the head norms of the combined file are the diagonal of the decompositions' mix_grams
    diagonal = np.sqrt(np.diagonal(outs["decomp"]["mix_grams"].astype(np.float64), axis1=-2, axis2=-1))
    assert np.abs(outs["norms_contrib"][NORMS_OUTPUT] - diagonal).max() <= REF_RTOL * diagonal.max()
    # the runtime's decompx: its default on a contributions file is start_layer=-1 on the decompositions
    last = _decompx_maps(paths["decomp"], x.numpy(), {"start_layer": -1})
    carried = _decompx_maps(paths["decomp"], x.numpy(), {"start_layer": 0})
    for kind in ("contrib", "norms_contrib"):
        np.testing.assert_allclose(_decompx_maps(paths[kind], x.numpy(), {}), last, atol=1e-5)
    assert np.abs(carried - last).max() > 1e-3  # the comparison can tell the two settings apart
    return outs


@pytest.mark.parametrize("name,kwargs", [
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8)),
    pytest.param("vit_small_patch14_reg4_dinov2", dict(img_size=28), marks=pytest.mark.slow),  # layer scales
], ids=["vit", "dinov2_reg4"])
def test_tiny_contributions_equal_the_decompositions_and_the_reference(tmp_path, name, kwargs):
    from attnmap.export import export_module

    model = make_model(name, **kwargs)
    randomise_layer_scales(model)
    paths = _export_all(export_module, model, tmp_path, model_name=name)
    c, h, w = OnnxModel(paths["contrib"], provider="cpu").meta.input_size
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(1))
    _compare(paths, model, x)


@pytest.mark.slow
def test_real_deit_tiny_contributions_and_decompx_map(tmp_path, shared_data):
    from safetensors.torch import load_file

    from attnmap.export import export_onnx
    from attnmap.runtime.engine.explainer import Explainer
    from conftest import DEIT_TINY_CHECKPOINT

    paths = _export_all(export_onnx, "deit_tiny_patch16_224", tmp_path,
                        checkpoint=shared_data / DEIT_TINY_CHECKPOINT)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    model.load_state_dict(load_file(str(shared_data / DEIT_TINY_CHECKPOINT)), strict=True)
    model.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    outs = _compare(paths, model, x)
    assert outs["contrib"][CONTRIB].shape == (2, 197, 1000)
    # through the library's front door, on an image
    image = np.random.default_rng(0).integers(0, 256, (256, 300, 3), dtype=np.uint8)
    want = Explainer(paths["decomp"], provider="cpu").explain(image, method="decompx", start_layer=-1)
    for kind in ("contrib", "norms_contrib"):
        got = Explainer(paths[kind], provider="cpu").explain(image, method="decompx")
        assert got.target == want.target
        np.testing.assert_allclose(got.grid, want.grid, atol=1e-5)


def test_contributions_graph_has_no_grams_and_fewer_nodes(tmp_path):
    from attnmap.export import export_module

    model = make_model("vit_tiny_patch16_224", img_size=32, patch_size=8)
    sizes = {}
    for kind in ("contrib", "decomp"):
        report = export_module(model, tmp_path / f"{kind}.onnx", model_name="vit", **KINDS[kind], **QUIET)
        graph = onnx.load(str(report.path)).graph
        names = [o.name for o in graph.output]
        sizes[kind] = len(graph.node)
        if kind == "contrib":
            assert report.meta.has_class_contributions and not report.meta.has_decompositions
            assert names == ["logits", "attentions", CONTRIB] == list(report.meta.outputs)
            assert not set(DECOMPOSITION_OUTPUTS) & set(names)
    assert sizes["contrib"] < sizes["decomp"], sizes


@pytest.mark.parametrize("norms", [False, True], ids=["alone", "with_norms"])
def test_contributions_refusals(tmp_path, norms):
    from attnmap.export import export_module

    model = make_model("vit_tiny_patch16_224", img_size=32, patch_size=8)
    refused = [(dict(heads="mean"), "heads='none'"), (dict(attentions=False), "attentions=True"),
               (dict(gradients=True), "gradients"), (dict(tail=True), "tail=True"),
               (dict(decompositions=True), "mix_grams" if norms else "already emits class_contributions")]
    for i, (options, message) in enumerate(refused):
        with pytest.raises(ExportError, match=message):
            export_module(model, tmp_path / f"{i}.onnx", model_name="vit", contributions=True, norms=norms,
                          **options, **QUIET)
    for name, kwargs, message in [
            ("deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8), "distillation"),
            ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, global_pool="avg"), "'token' pooling")]:
        other = make_model(name, **kwargs)
        with pytest.raises(ExportError, match=f"no class contributions: .*{message}"):
            export_module(other, tmp_path / "x.onnx", model_name=name, contributions=True, norms=norms, **QUIET)
        assert not any(m._forward_hooks for m in other.modules())
    assert not list(tmp_path.iterdir())
    assert not any(m._forward_hooks for m in model.modules())


def test_cli_contributions_flag_conflicts_up_front(tmp_path):
    runner = CliRunner()
    for other in ("--decompositions", "--gradients", "--no-attentions", "--tail"):
        result = runner.invoke(cli.main, ["export", "vit_tiny_patch16_224", "-o", str(tmp_path / "x.onnx"),
                                          "--contributions", other])
        assert result.exit_code == 2 and "Use just one of --contributions" in result.output, (other, result.output)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_export_contributions_with_norms(tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(cli.main, ["export", "vit_tiny_patch16_224", "-o", str(out), "--img-size", "32",
                                           "--num-classes", "4", "--norms", "--contributions"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"head_norms/{CONTRIB} max |d|" in result.stderr
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert list(outputs) == ["logits", "attentions", NORMS_OUTPUT, CONTRIB]
    assert outputs[CONTRIB][1:] == [5, 4]  # 2x2 patches + class token, 4 classes


def test_the_parity_gate_compares_class_contributions_without_grams(tmp_path):
    from attnmap.export import export_module
    from attnmap.export.decomposition import DECOMP_RTOL
    from attnmap.export.forward_outputs import ViTWithContributions
    from attnmap.export.parity import measure_parity

    model = make_model("vit_tiny_patch16_224", img_size=32, patch_size=8)
    report = export_module(model, tmp_path / "c.onnx", model_name="vit", contributions=True, **QUIET)
    with ViTWithContributions(model) as wrapper:
        assert measure_parity(wrapper, report.path, report.meta).decompositions_max_rel <= DECOMP_RTOL
        exact = wrapper._class_contributions
        wrapper._class_contributions = lambda inputs, w: 1.01 * exact(inputs, w)  # torch's 1% larger
        rel = measure_parity(wrapper, report.path, report.meta).decompositions_max_rel
    # relative to the largest torch value, which is 1.01 times the file's
    assert rel == pytest.approx(0.01 / 1.01, rel=1e-3)
