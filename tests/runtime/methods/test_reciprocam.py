"""ViT-ReciproCAM (``reciprocam``): masks, the map against references written from the paper, faithfulness.

The references here are built from the definition (Byun & Lee 2023; the masks as openvino-xai
places them), with explicit loops over the grid, never with runtime/methods/reciprocam.py's
vectorised indexing: S_c(k) = f_c(tail(F^k)), F^k the class token and the patches weighted by the
3x3 Gaussian [[1/16, 1/8, 1/16], [1/8, 1/4, 1/8], [1/16, 1/8, 1/16]] centred on k, 0 elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnmap import Explainer
from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods import check_method_use
from attnmap.runtime.methods.reciprocam import mosaic_weights, reciprocam

G = [[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]]


def reference_mask(gh: int, gw: int, ky: int, kx: int, gaussian: bool = True) -> np.ndarray:
    """(gh, gw) weights of the copy for patch (ky, kx), one cell at a time."""
    m = np.zeros((gh, gw))
    for y in range(gh):
        for x in range(gw):
            dy, dx = y - ky, x - kx
            if abs(dy) <= 1 and abs(dx) <= 1:
                m[y, x] = G[dy + 1][dx + 1] if gaussian else float(dy == 0 and dx == 0)
    return m


@pytest.mark.parametrize("prefix,grid", [(1, (4, 5)), (2, (3, 3)), (0, (1, 4))])
@pytest.mark.parametrize("gaussian", [True, False])
def test_mosaic_weights_are_the_gaussian_neighbourhood_with_prefix_tokens_kept(prefix, grid, gaussian):
    w = mosaic_weights(TokenLayout(prefix, grid), gaussian)
    gh, gw = grid
    assert w.shape == (gh * gw, prefix + gh * gw) and w.dtype == np.float32
    assert np.all(w[:, :prefix] == 1.0)
    for k in range(gh * gw):
        np.testing.assert_array_equal(w[k, prefix:].reshape(gh, gw), reference_mask(gh, gw, k // gw, k % gw, gaussian))


def test_the_map_is_the_class_score_of_each_masked_copy_with_a_linear_tail():
    # a tail whose class-c logit is sum_j w_j <x_j, v_c>: the map at k is then sum_p M^k_p s_p
    rng = np.random.default_rng(0)
    layout = TokenLayout(1, (3, 4))
    tokens = rng.standard_normal((2, 13, 5)).astype(np.float32)
    v = rng.standard_normal((5, 7)).astype(np.float32)
    calls = []

    def tail(t, w):
        calls.append(len(t))
        return np.einsum("bn,bnd,dc->bc", w, t, v)

    classes = np.array([3, 6])
    got = reciprocam(tokens, tail, classes, layout, forward_batch=5)
    assert sum(calls) == 2 * 12 and max(calls) == 5  # chunks of forward_batch over (image, copy) pairs
    for i, c in enumerate(classes):
        s = tokens[i] @ v[:, c]
        ref = np.array([[s[0] + (reference_mask(3, 4, y, x) * s[1:].reshape(3, 4)).sum() for x in range(4)]
                        for y in range(3)])
        ref = (ref - ref.min()) / (ref.max() - ref.min())
        np.testing.assert_allclose(got[i], ref, atol=1e-6)
    # the same map whatever the chunking; the softmax score is a different map
    np.testing.assert_array_equal(got, reciprocam(tokens, tail, classes, layout, forward_batch=24))
    assert not np.allclose(got, reciprocam(tokens, tail, classes, layout, score="probability"))


def test_bad_inputs_are_one_clear_error():
    layout = TokenLayout(1, (2, 2))
    tail = lambda t, w: np.zeros((len(t), 3), np.float32)  # noqa: E731
    with pytest.raises(ExplainError, match=r"tail_input \(B, 5, D\)"):
        reciprocam(np.zeros((1, 4, 8), np.float32), tail, np.array([0]), layout)
    with pytest.raises(ExplainError, match="one class index"):
        reciprocam(np.zeros((1, 5, 8), np.float32), tail, np.array([0, 1]), layout)
    with pytest.raises(ExplainError, match="out of range for 3 classes"):
        reciprocam(np.zeros((1, 5, 8), np.float32), tail, np.array([3]), layout)
    with pytest.raises(ExplainError, match="score must be one of"):
        reciprocam(np.zeros((1, 5, 8), np.float32), tail, np.array([0]), layout, score="rank")


def test_a_file_without_a_tail_is_refused_with_the_export_to_run(tiny_vit_onnx):
    meta = Explainer(tiny_vit_onnx, provider="cpu").meta
    with pytest.raises(ExplainError, match="attnmap export --tail"):
        check_method_use("reciprocam", meta, class_given=True, model="'tiny_vit.onnx'")


# --------------------------------------------------------------------------- real DeiT-Tiny
@pytest.fixture(scope="module")
def deit(deit_tiny_tail_onnx):
    return Explainer(deit_tiny_tail_onnx, provider="cpu")


@pytest.mark.export
@pytest.mark.slow
def test_the_map_equals_a_torch_reference_from_the_paper_on_real_deit_tiny(deit, shared_data):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file

    from conftest import DEIT_TINY_CHECKPOINT

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    model.load_state_dict(load_file(str(shared_data / DEIT_TINY_CHECKPOINT)), strict=True)
    model.eval()
    blk = model.blocks[-1]
    for name, target in (("pytorchhub_dog.jpg", None), ("hc_dogcat2.jpg", 281)):  # 281: tabby cat, chosen
        x, _ = deit.preprocess([deit_image(shared_data / "images" / name)])
        outputs = deit.infer(x)
        c = int(outputs.logits[0].argmax()) if target is None else target
        # the file's own tail_input (tests/export/test_tail.py checks it against timm's last
        # block input within 1e-4): eleven blocks of float32 rounding would otherwise move the
        # logits of torch and onnxruntime apart by more than the map's tolerance
        tokens = torch.from_numpy(np.array(outputs.tail_input[0]))  # (197, 192), the last block's input
        scores = np.zeros((14, 14))
        with torch.no_grad():
            for ky in range(14):
                for kx in range(14):
                    m = torch.ones(197)
                    m[1:] = torch.from_numpy(reference_mask(14, 14, ky, kx).reshape(-1)).float()
                    m = m[:, None]
                    y = m * tokens + blk.attn((m * blk.norm1(tokens))[None])[0]
                    y = y + blk.mlp(blk.norm2(y))
                    scores[ky, kx] = float(model.head(model.norm(y)[0])[c])
        got = deit.maps(outputs, "reciprocam", classes=None if target is None else [target])[0]
        # The class logit moves little between the copies on DeiT-Tiny (the class token is kept
        # whole in each): about 0.03 on the Samoyed, so float32 rounding of the logits (1e-5)
        # is a visible part of the min-max normalised map. The map is compared in logit units:
        # mapped back onto the reference's range, it must give its scores within the parity
        # gate's 1e-4.
        span = scores.max() - scores.min()
        assert span > 0
        np.testing.assert_allclose(got * span + scores.min(), scores, atol=1e-4)
        assert np.corrcoef(got.ravel(), scores.ravel())[0, 1] > 0.999


def deit_image(path):
    from attnmap.runtime.image.decode import read_image

    return read_image(path)


@pytest.mark.export
@pytest.mark.slow
def test_reciprocam_beats_the_random_map_on_positive_perturbation_and_deletion(deit, shared_data):
    from attnmap.runtime.evaluation import RANDOM, evaluate
    from attnmap.runtime.frames.sources import expand_sources, open_files

    images = [r.target for r in expand_sources([str(shared_data / "images")]) if r.kind == "image"]
    with open_files(images, errors="yield") as frames:
        result = evaluate(deit, frames, ["reciprocam"])
    assert result.failed == [] and result.images == len(images) >= 10
    summary = result.summary()
    ours, floor = summary["reciprocam"], summary[RANDOM]
    assert ours["positive_auc"]["mean"] < floor["positive_auc"]["mean"], (ours, floor)
    assert ours["deletion_auc"]["mean"] < floor["deletion_auc"]["mean"], (ours, floor)
