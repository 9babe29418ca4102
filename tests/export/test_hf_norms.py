"""``export(norms=True)`` for Hugging Face transformers classifiers: ``head_norms`` against the definition.

Every supported class is a tiny random-init model (test_hf_export.py's cases: layer scales
redrawn by its weight spread, so BEiT's ``lambda_1`` and DINOv2's ``lambda1`` matter). The
reference is taken from the definition with forward hooks on the transformers model itself: the
value vectors are the value Linear's output split per head, each multiplied by that head's
columns of the output projection's weight explicitly, scaled by the layer scale, and measured
with ``torch.linalg.vector_norm``; ``x_j`` is the hidden state entering the layer. No QR factor
and nothing of :mod:`export.hf_norms` is used. The file's values must agree within 1e-4 of the
largest, and the runtime's ``head-norm`` map (the default method of such a file) must run on it.
"""

from __future__ import annotations

import numpy as np
import pytest
from extras import need

torch = need("torch", "export")
transformers = need("transformers", "export")
ort = need("onnxruntime", "export")

from test_hf_export import CASES, PHOTOS, QUIET, save  # noqa: E402

from attnmap.export.hf_norms import HFWithNorms  # noqa: E402
from attnmap.export.to_onnx import export_onnx  # noqa: E402
from attnmap.runtime.core.errors import ExportError  # noqa: E402
from attnmap.runtime.core.meta import NORMS_OUTPUT  # noqa: E402

pytestmark = [pytest.mark.export, pytest.mark.slow]

RTOL = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """case -> (the transformers model, the norms file's path, its metadata)."""
    root = tmp_path_factory.mktemp("hf_norms")
    out = {}
    for case in CASES:
        model, _ = save(case, root / case)
        report = export_onnx(str(root / case), root / f"{case}.onnx", norms=True, **QUIET)
        out[case] = (model, report.path, report.meta)
    return out


def _layers(model) -> list:
    base = getattr(model, model.base_model_prefix)
    return list(base.layers if hasattr(base, "layers") else base.encoder.layer)


def _gamma(layer) -> torch.Tensor | float:
    """γ1 as each class's forward applies it after the attention."""
    if hasattr(layer, "layer_scale1"):  # DINOv2: hidden_states * lambda1
        return layer.layer_scale1.lambda1
    return layer.lambda_1 if hasattr(layer, "lambda_1") else 1.0  # BEiT: lambda_1 * hidden_states


def reference(model, x: torch.Tensor) -> np.ndarray:
    """``[B, L, N, H+1]`` float64 from the definition: ||γ1 ⊙ v^h_j W_O^h|| per head, ||x_j|| last."""
    layers, heads = _layers(model), int(model.config.num_attention_heads)
    seen: dict = {}
    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(
            lambda m, args, kwargs, i=i: seen.__setitem__(("x", i), args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True))
        handles.append(layer.attention.v_proj.register_forward_hook(
            lambda m, inputs, output, i=i: seen.__setitem__(("v", i), output)))
    try:
        with torch.no_grad():
            model(pixel_values=x)
    finally:
        for h in handles:
            h.remove()
    out = []
    for i, layer in enumerate(layers):
        v = seen[("v", i)].double()  # [B, N, H*d]
        b, n, width = v.shape
        d = width // heads
        w_o = layer.attention.o_proj.weight.detach().double()  # [D, H*d]: out = attn @ w_o.T
        gamma = _gamma(layer)
        gamma = gamma.detach().double() if isinstance(gamma, torch.Tensor) else gamma
        norms = []
        for h in range(heads):
            u = v[..., h * d:(h + 1) * d] @ w_o[:, h * d:(h + 1) * d].T  # [B, N, D]
            norms.append(torch.linalg.vector_norm(gamma * u, dim=-1))
        norms.append(torch.linalg.vector_norm(seen[("x", i)].double(), dim=-1))
        out.append(torch.stack(norms, dim=-1))  # [B, N, H+1]
    return torch.stack(out, dim=1).numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_head_norms_equal_the_definition(exported, case):
    model, path, meta = exported[case]
    assert meta.has_head_norms and meta.outputs == ("logits", "attentions", NORMS_OUTPUT)
    x = torch.randn(2, *meta.input_size, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x.numpy()})))
    want = reference(model, x)
    norms = got[NORMS_OUTPUT]
    assert norms.dtype == np.float32
    assert norms.shape == (2, meta.num_layers, meta.num_tokens, meta.num_heads + 1) == want.shape
    assert np.abs(norms - want).max() <= RTOL * np.abs(want).max()
    # the heads differ from each other and from the stream: a real per-head quantity, not a copy
    assert np.abs(want[..., 0] - want[..., 1]).max() > 0.05 * np.abs(want).max()
    with torch.no_grad():
        ref = model(pixel_values=x, output_attentions=True)
    np.testing.assert_allclose(got["logits"], ref.logits.numpy(), atol=1e-4 * max(1.0, float(ref.logits.abs().max())))


@pytest.mark.parametrize("case", ["deit_teacher", "beit"])
def test_runtime_head_norm_runs_and_is_the_default(exported, case):
    import attnmap
    from attnmap.runtime.engine.engine import FrameEngine, Job

    _, path, meta = exported[case]
    explainer = attnmap.Explainer(path)
    assert FrameEngine(explainer, Job()).job.method == "head-norm"
    result = explainer.explain(str(PHOTOS[0]), method="head-norm")
    assert result.method == "head-norm"
    assert result.grid.shape == meta.grid_size and np.isfinite(result.grid).all()
    assert result.grid.min() == 0.0 and result.grid.max() == 1.0


def test_parity_gate_compares_head_norms_against_the_wrapper(exported):
    from attnmap.export.parity import measure_parity

    model, path, meta = exported["dinov2_reg"]
    with HFWithNorms(model, image_size=meta.image_size) as wrapper:
        assert measure_parity(wrapper, path, meta).decompositions_max_rel <= RTOL
        with torch.no_grad():
            wrapper.factors[0].mul_(1.5)  # the first layer's first head's norms grow by half
        assert measure_parity(wrapper, path, meta).decompositions_max_rel > 0.01
    assert model.config._attn_implementation != "attnmap_capture"


def test_cli_export_with_norms(tmp_path):
    from click.testing import CliRunner

    from attnmap.cli import main as cli_main

    save("dinov2", tmp_path / "m")
    result = CliRunner().invoke(cli_main, ["export", str(tmp_path / "m"), "-o", str(tmp_path / "m.onnx"), "--norms"])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "attentions", NORMS_OUTPUT]


def test_fused_heads_and_gradients_are_refused_before_loading(tmp_path):
    save("vit", tmp_path / "m")
    with pytest.raises(ExportError, match="heads='none'"):
        export_onnx(str(tmp_path / "m"), tmp_path / "x.onnx", norms=True, heads="mean", **QUIET)
    with pytest.raises(ExportError, match="gradients"):
        export_onnx(str(tmp_path / "m"), tmp_path / "x.onnx", norms=True, gradients=True, **QUIET)
    assert not (tmp_path / "x.onnx").exists()


def _tiny(case: str):
    config, arch, _, _, _ = CASES[case]
    return getattr(transformers, arch)(config()).eval()


def test_a_layer_outside_the_pre_ln_ones_is_refused_and_nothing_is_patched():
    model = _tiny("vit")
    layer = _layers(model)[1]
    layer.__class__ = type("PostLNLayer", (type(layer),), {})
    before = model.config._attn_implementation
    with pytest.raises(ExportError, match="PostLNLayer is not one of the pre-LN layers"):
        HFWithNorms(model)
    assert model.config._attn_implementation == before


def test_a_value_path_that_is_not_linear_is_refused():
    model = _tiny("dinov2")
    attn = _layers(model)[0].attention
    attn.v_proj = torch.nn.Sequential(attn.v_proj, torch.nn.LayerNorm(attn.v_proj.out_features))
    with pytest.raises(ExportError, match="value path is not a Linear"):
        HFWithNorms(model)


def test_no_layernorm_before_the_attention_is_refused():
    model = _tiny("beit")
    _layers(model)[0].layernorm_before = torch.nn.Identity()
    with pytest.raises(ExportError, match="no LayerNorm before the attention"):
        HFWithNorms(model)
