"""``export_onnx(..., tail=True)``: the tokens entering the last block and the tail graph in the file.

The tail graph (``tail_input``, ``token_weights`` -> ``logits``) is checked against timm's own
modules written out here (not export/tail.py's TailModule): with all weights 1 it is
``head(norm(blocks[-1](x))[:, 0])``, with weights ``w`` the last block computes
``w x + attn(w norm1(x))`` then adds its MLP (openvino-xai's placement of ViT-ReciproCAM's masks).
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
from extras import need

torch = need("torch", "export")
timm = need("timm", "export")
ort = pytest.importorskip("onnxruntime")

from conftest import DEIT_TINY_CHECKPOINT, TINY_LABELS, TINY_VIT  # noqa: E402
from attnmap.runtime.core.errors import ExportError  # noqa: E402
from attnmap.runtime.core.meta import ModelMeta  # noqa: E402
from attnmap.runtime.model.tail import TAIL_KEY  # noqa: E402

pytestmark = pytest.mark.export


def _sessions(path):
    main = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    props = main.get_modelmeta().custom_metadata_map
    tail = ort.InferenceSession(base64.b64decode(props[TAIL_KEY]), providers=["CPUExecutionProvider"])
    return main, tail, ModelMeta.from_props(props)


def _torch_tail(model, tokens, weights):
    """The last block, final norm and head of a timm ViT (class-token pooling), weights as documented."""
    blk = model.blocks[-1]
    w = weights[..., None]
    x = w * tokens + blk.attn(w * blk.norm1(tokens))
    x = x + blk.mlp(blk.norm2(x))
    return model.head(model.norm(x)[:, 0])


@pytest.fixture(scope="module")
def tiny_tail(tmp_path_factory):
    from attnmap.export import export_onnx

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_tail") / "tiny_tail.onnx"
    report = export_onnx(TINY_VIT["name"], out, img_size=TINY_VIT["img_size"], model_kwargs=TINY_VIT["kwargs"],
                         labels=list(TINY_LABELS), tail=True, log=lambda line: None)
    return out, report


def test_a_tail_export_names_tail_input_and_carries_the_tail_graph(tiny_tail):
    path, report = tiny_tail
    main, tail, meta = _sessions(path)
    assert meta.outputs == ("logits", "attentions", "tail_input") and meta.has_tail and not meta.has_gradients
    assert [o.name for o in main.get_outputs()] == list(meta.outputs)
    assert [i.name for i in tail.get_inputs()] == ["tail_input", "token_weights"]
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    logits, _, tokens = main.run(None, {"input": x})
    assert tokens.shape == (3, meta.num_tokens, 32)
    # all weights 1: the tail on the file's own tail_input is the rest of the network
    again = tail.run(None, {"tail_input": tokens, "token_weights": np.ones(tokens.shape[:2], np.float32)})[0]
    np.testing.assert_allclose(again, logits, atol=1e-5)


def test_tail_and_gradients_are_refused_together_and_outside_timms_vit(tmp_path):
    from attnmap.export import export_onnx

    with pytest.raises(ExportError, match="tail=True and gradients=True"):
        export_onnx(TINY_VIT["name"], tmp_path / "t.onnx", img_size=32, model_kwargs=TINY_VIT["kwargs"],
                    tail=True, gradients=True, log=lambda line: None)
    with pytest.raises(ExportError, match="tail=True exports the last block of a timm VisionTransformer"):
        export_onnx("eva02_tiny_patch14_224", tmp_path / "e.onnx", img_size=28,
                    model_kwargs=dict(depth=1, num_classes=10), tail=True, log=lambda line: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_tail_of_real_deit_tiny_is_timms_last_block_norm_and_head(deit_tiny_tail_onnx, shared_data):
    from safetensors.torch import load_file

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    model.load_state_dict(load_file(str(shared_data / DEIT_TINY_CHECKPOINT)), strict=True)
    model.eval()
    main, tail, meta = _sessions(deit_tiny_tail_onnx)
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    logits, _, tokens = main.run(None, {"input": x})
    seen = []
    handle = model.blocks[-1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        full = model(torch.from_numpy(x))
    handle.remove()
    np.testing.assert_allclose(tokens, seen[0].numpy(), atol=1e-4)  # tail_input: the last block's input
    np.testing.assert_allclose(logits, full.numpy(), atol=1e-4)
    t = torch.from_numpy(tokens)
    for weights in (np.ones((2, 197), np.float32), np.random.default_rng(2).random((2, 197)).astype(np.float32)):
        got = tail.run(None, {"tail_input": tokens, "token_weights": weights})[0]
        with torch.no_grad():
            ref = _torch_tail(model, t, torch.from_numpy(weights)).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-4)
    with torch.no_grad():  # all weights 1 is timm's own forward of the last block
        plain = model.forward_head(model.norm(model.blocks[-1](t))).numpy()
    np.testing.assert_allclose(tail.run(None, {"tail_input": tokens,
                                               "token_weights": np.ones((2, 197), np.float32)})[0], plain, atol=1e-4)
