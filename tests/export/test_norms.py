"""``export(norms=True)``: the ``head_norms`` output against an independent torch reference.

The reference (``decomposition_reference.capture``) obtains every head's value-output vector
u^h_j = (z_j W_V^h + b_V^h) W_O^h by running the block's own attention module on z with the
identity as head h's probabilities, then takes ``||γ1 ⊙ u^h_j||`` and ``||x_j||`` with
``torch.linalg.vector_norm``: no QR factor, no slice of the export's. The file's values must
agree within 1e-4 of the largest, on random-init tiny models of every family the export supports
and on the real DeiT-Tiny; equal the square roots of the diagonal of a decompositions export's
``mix_grams``; and cost only a fixed handful of graph nodes, whatever the depth.
"""

from __future__ import annotations

import collections

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
from attnmap.runtime.core.meta import NORMS_OUTPUT  # noqa: E402

pytestmark = [pytest.mark.export]

QUIET = dict(log=lambda line: None)
RTOL = 1e-4
# (id, timm name, kwargs): the families of test_decomposition.py, and EVA-02 with unfused q/k/v
# projections (its values are read from v_proj's output).
FAMILIES = [
    ("vit", "vit_tiny_patch16_224", dict(img_size=32, patch_size=8)),
    ("deit_distilled", "deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8)),
    ("registers_gap", "vit_base_patch16_reg4_gap_256", dict(img_size=32, patch_size=8)),
    ("dinov2_reg4", "vit_small_patch14_reg4_dinov2", dict(img_size=42)),
    ("eva02_rope", "eva02_tiny_patch14_224", dict(img_size=42)),
    ("eva02_unfused", "eva02_tiny_patch14_224", dict(img_size=42, qkv_fused=False)),
    ("beit_relpos", "beit_base_patch16_224", dict(img_size=32, patch_size=8)),
]


def _run(path, x: np.ndarray) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))


def _reference(model, x: torch.Tensor) -> np.ndarray:
    """``[B, L, N, H+1]`` from the definition: ||γ1 ⊙ u^h_j|| per head, ||x_j|| last, float64."""
    rec = ref.capture(model, x)
    layers = []
    for blk, r in zip(model.blocks, rec["blocks"]):
        g1 = ref.layer_scale(blk, 1)
        w = r["u"].double() * (g1.double() if g1 is not None else 1.0)  # [B, H, N, D]
        heads = torch.linalg.vector_norm(w, dim=-1).transpose(1, 2)  # [B, N, H]
        stream = torch.linalg.vector_norm(r["x"].double(), dim=-1)[..., None]  # [B, N, 1]
        layers.append(torch.cat([heads, stream], dim=-1))
    return torch.stack(layers, dim=1).numpy()


def _check(path, model, x: torch.Tensor) -> np.ndarray:
    got = _run(path, x.numpy())[NORMS_OUTPUT]
    with torch.no_grad():
        want = _reference(model, x)
    assert got.dtype == np.float32 and got.shape == want.shape
    diff = np.abs(got - want).max()
    assert diff <= RTOL * np.abs(want).max(), diff
    return got


@pytest.mark.parametrize("fid,name,kwargs", FAMILIES, ids=[f[0] for f in FAMILIES])
@pytest.mark.slow  # an export per family
def test_family_head_norms_equal_the_torch_reference(tmp_path, fid, name, kwargs):
    from attnmap.export import export_module

    model = make_model(name, **kwargs)
    randomise_layer_scales(model)
    out = tmp_path / f"{fid}.onnx"
    report = export_module(model, out, model_name=name, norms=True, **QUIET)
    meta = report.meta
    assert meta.has_head_norms and meta.outputs == ("logits", "attentions", NORMS_OUTPUT)
    c, h, w = report.meta.input_size
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(1))
    got = _check(out, model, x)
    assert got.shape == (2, meta.num_layers, meta.num_tokens, meta.num_heads + 1)


def test_head_norms_are_the_square_roots_of_the_mix_grams_diagonal(tmp_path):
    from attnmap.export import export_module

    model = make_model("vit_small_patch14_reg4_dinov2", img_size=28)
    randomise_layer_scales(model)
    export_module(model, tmp_path / "n.onnx", model_name="dinov2", norms=True, **QUIET)
    export_module(model, tmp_path / "d.onnx", model_name="dinov2", decompositions=True, **QUIET)
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(2)).numpy()
    norms = _run(tmp_path / "n.onnx", x)
    grams = _run(tmp_path / "d.onnx", x)
    diagonal = np.sqrt(np.diagonal(grams["mix_grams"].astype(np.float64), axis1=-2, axis2=-1))
    assert norms[NORMS_OUTPUT].shape == diagonal.shape
    assert np.abs(norms[NORMS_OUTPUT] - diagonal).max() <= RTOL * diagonal.max()
    # the rest of the file is the plain attention export's
    np.testing.assert_allclose(norms["attentions"], grams["attentions"], atol=1e-6)
    np.testing.assert_allclose(norms["logits"], grams["logits"], atol=1e-5)


@pytest.mark.slow
def test_real_deit_tiny_head_norms_equal_the_torch_reference(tmp_path, shared_data):
    from safetensors.torch import load_file

    from attnmap.export import export_onnx
    from conftest import DEIT_TINY_CHECKPOINT

    out = tmp_path / "deit_norms.onnx"
    export_onnx("deit_tiny_patch16_224", out, checkpoint=shared_data / DEIT_TINY_CHECKPOINT, norms=True, **QUIET)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    model.load_state_dict(load_file(str(shared_data / DEIT_TINY_CHECKPOINT)), strict=True)
    model.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    got = _check(out, model, x)
    assert got.shape == (2, 12, 197, 4)


def test_the_parity_gate_compares_head_norms(tmp_path):
    from attnmap.export.norms import ViTWithNorms
    from attnmap.export.parity import measure_parity
    from attnmap.export import export_module
    from attnmap.export.decomposition import DECOMP_RTOL

    model = make_model("vit_tiny_patch16_224", img_size=32, patch_size=8)
    report = export_module(model, tmp_path / "n.onnx", model_name="vit", norms=True, **QUIET)
    with ViTWithNorms(model) as wrapper:
        assert measure_parity(wrapper, report.path, report.meta).decompositions_max_rel <= 1e-5
        wrapper.factors.mul_(1.01)  # torch's head norms 1% larger than the file's
        rel = measure_parity(wrapper, report.path, report.meta).decompositions_max_rel
    # the gate measures against the largest value of the output, here a block input's norm
    x = torch.randn((2, *report.meta.input_size), generator=torch.Generator().manual_seed(0)).numpy()
    norms = _run(report.path, x)[NORMS_OUTPUT]
    assert rel == pytest.approx(0.01 * norms[..., :-1].max() / norms.max(), rel=0.05)
    assert rel > DECOMP_RTOL


def test_norms_refuse_other_outputs_and_non_pre_ln_blocks(tmp_path):
    from attnmap.export import export_module

    model = make_model("vit_tiny_patch16_224", img_size=32, patch_size=8)
    refused = [(dict(heads="mean"), "heads='none'"), (dict(attentions=False), "attentions=True"),
               (dict(gradients=True), "gradients"), (dict(decompositions=True), "mix_grams"),
               (dict(tail=True), "tail")]
    for i, (options, message) in enumerate(refused):
        with pytest.raises(ExportError, match=message):
            export_module(model, tmp_path / f"{i}.onnx", model_name="vit", norms=True, **options, **QUIET)
    model.blocks[1].norm1 = torch.nn.Identity()
    with pytest.raises(ExportError, match="pre-LN block with LayerNorm norm1"):
        export_module(model, tmp_path / "x.onnx", model_name="vit", norms=True, **QUIET)
    assert not list(tmp_path.iterdir())
    # no refusal left a hook behind
    assert not any(m._forward_hooks for m in model.modules())


def _optimised_ops(path, tmp_path) -> collections.Counter:
    """Op counts of the graph onnxruntime runs (basic optimisations: constant folding, CSE)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp_path / f"{path.stem}.opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(opts.optimized_model_filepath).graph
    return collections.Counter(n.op_type for n in graph.node), graph


@pytest.mark.slow  # four exports
def test_norms_add_a_fixed_handful_of_nodes_and_one_head_sized_matmul(tmp_path):
    """The extra graph does not grow with depth, and its one product is per head d x d, never
    a D-wide output projection per block."""
    from attnmap.export import export_module

    extra = {}
    for depth in (2, 4):
        model = make_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=depth, num_heads=4,
                           embed_dim=64)
        plain, norms = tmp_path / f"plain{depth}.onnx", tmp_path / f"norms{depth}.onnx"
        export_module(model, plain, model_name="deit", **QUIET)
        export_module(model, norms, model_name="deit", norms=True, **QUIET)
        (base, _), (ops, graph) = _optimised_ops(plain, tmp_path), _optimised_ops(norms, tmp_path)
        added = ops - base
        assert not base - ops  # nothing of the plain graph was replaced
        products = [n for n in graph.node if n.op_type in ("MatMul", "Gemm", "Einsum", "Conv")]
        assert sum(added[op] for op in ("MatMul", "Gemm", "Einsum", "Conv")) == 1, added
        # the added product multiplies by the per-head factors: an initializer [L*H, d, d]
        inits = {i.name: tuple(i.dims) for i in graph.initializer}
        factor_shapes = [inits[i] for n in products for i in n.input if inits.get(i) == (depth * 4, 16, 16)]
        assert len(factor_shapes) == 1
        extra[depth] = sum(added.values())
    assert extra[2] == extra[4] <= 12, extra


def test_cli_norms_flag_conflicts_up_front(tmp_path):
    runner = CliRunner()
    for other in ("--decompositions", "--gradients", "--no-attentions", "--tail"):
        result = runner.invoke(cli.main, ["export", "vit_tiny_patch16_224", "-o", str(tmp_path / "x.onnx"),
                                          "--norms", other])
        assert result.exit_code == 2 and "Use just one of --norms" in result.output, (other, result.output)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_export_norms_writes_head_norms(tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(cli.main, ["export", "vit_tiny_patch16_224", "-o", str(out), "--img-size", "32",
                                           "--num-classes", "4", "--norms"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "head_norms max |d|" in result.stderr
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert list(outputs) == ["logits", "attentions", NORMS_OUTPUT]
    assert outputs[NORMS_OUTPUT][1:] == [12, 5, 4]  # 12 blocks, 2x2 patches + class token, 3 heads + x
