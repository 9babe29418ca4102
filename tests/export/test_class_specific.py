"""Class-specific explanations of the real DeiT-Tiny, with the gradients computed inside the ONNX graph.

The photo ``vitexplain_both.png`` (224 x 224) shows a bulldog sitting in the upper middle and a
tabby cat lying across the bottom. DeiT-Tiny's top-1 is "bull mastiff" (243, p 0.41); "tiger
cat" (282, p 0.06) is third and "tabby" (281) lower. Through the runtime alone
(``Explainer.explain(img, method=..., target=...)``), the map for the dog class must sit on the
dog and the maps for the cat classes on the cat. The regions are boxes read off the photo.

Measured on this export: share of the heatmap's mass in the dog box / in the cat box, and
where the peak is (row, col of the photo):

=============  ======================  ======================  ======================
method         243 bull mastiff        281 tabby               282 tiger cat
=============  ======================  ======================  ======================
chefer         0.54 / 0.33 (32, 119)   0.21 / 0.70 (177, 76)   0.28 / 0.62 (206, 148)
grad_rollout   0.58 / 0.30 (61, 133)   0.18 / 0.74 (177, 76)   0.22 / 0.70 (177, 76)
gradsam        0.54 / 0.33 (61, 133)   0.19 / 0.72 (177, 76)   0.26 / 0.64 (206, 148)
product        0.34 / 0.50 (61, 133)   0.08 / 0.75 (191, 75)   0.21 / 0.50 (46, 90)
rollout        0.35 / 0.38 (32, 104), one map for every class
=============  ======================  ======================  ======================

chefer, grad_rollout and gradsam separate the animals by mass and by peak. The product rule
does not: its dog map puts more mass on the cat, and its tiger-cat map peaks on the dog's
face; that case is kept as a strict xfail so that a change to the method that makes it
separate the animals is noticed.

Rollout is class-agnostic: it reads only the attentions, which do not depend on the target,
so it draws one map for both animals.

Needs ../shared/data (weights and photo); every test skips with a reason without it.
"""

from __future__ import annotations

import numpy as np
import pytest
from extras import need

torch = need("torch", "export")
timm = need("timm", "export")
onnx = pytest.importorskip("onnx")

from conftest import DEIT_TINY_CHECKPOINT  # noqa: E402
from attnmap.export import ViTWithAttention  # noqa: E402
from attnmap import Explainer  # noqa: E402
from attnmap.runtime.core.errors import ExplainError  # noqa: E402

pytestmark = [pytest.mark.export, pytest.mark.slow]

BULL_MASTIFF, TABBY, TIGER_CAT = 243, 281, 282
# Boxes on the 224 x 224 photo, (rows, cols): the bulldog from its head to its front paws, the
# cat from its ears to its tail. They do not overlap.
DOG_BOX = (slice(0, 125), slice(75, 170))
CAT_BOX = (slice(125, 224), slice(40, 215))
GRADIENT_METHODS = ("chefer", "grad_rollout", "gradsam", "product")


@pytest.fixture(scope="module")
def explainer(deit_tiny_grads_onnx) -> Explainer:
    return Explainer(deit_tiny_grads_onnx, provider="cpu")


@pytest.fixture(scope="module")
def photo(shared_data) -> np.ndarray:
    from attnmap.runtime.image.preprocess import read_image

    img = read_image(shared_data / "images" / "vitexplain_both.png")
    assert img.shape == (224, 224, 3)
    return img


def mass(heatmap: np.ndarray, box) -> float:
    """Share of the heatmap's total mass inside ``box``."""
    return float(heatmap[box].sum() / heatmap.sum())


def peak_in(heatmap: np.ndarray, box) -> bool:
    row, col = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
    return box[0].start <= row < box[0].stop and box[1].start <= col < box[1].stop


def test_the_dog_is_top_1_and_the_cat_is_among_the_top_5(explainer, photo):
    r = explainer.explain(photo, method="chefer")
    assert r.topk[0].index == BULL_MASTIFF and r.target == BULL_MASTIFF and r.label_of_target == "bull mastiff"
    assert TIGER_CAT in [t.index for t in r.topk]


@pytest.mark.parametrize("method", [
    *GRADIENT_METHODS[:3],
    pytest.param("product", marks=pytest.mark.xfail(
        strict=True, reason="measured: the product rule's bull-mastiff map has more mass on the cat (0.50) than on "
                            "the dog (0.34), and its tiger-cat map peaks on the dog's face")),
])
def test_dog_and_cat_classes_light_up_their_own_animal(explainer, photo, method):
    for target, own, other in ((BULL_MASTIFF, DOG_BOX, CAT_BOX), (TABBY, CAT_BOX, DOG_BOX),
                               (TIGER_CAT, CAT_BOX, DOG_BOX)):
        r = explainer.explain(photo, method=method, target=target)
        assert r.target == target
        heat = r.heatmap
        assert mass(heat, own) > mass(heat, other) + 0.15, (method, target, mass(heat, own), mass(heat, other))
        assert peak_in(heat, own), (method, target, np.unravel_index(int(heat.argmax()), heat.shape))


def test_rollout_draws_one_map_whatever_the_class(explainer, photo):
    with pytest.raises(ExplainError, match="class-agnostic"):
        explainer.explain(photo, method="rollout", target=TABBY)
    x, _ = explainer.preprocess([photo])
    dog = explainer.infer(x, target=[BULL_MASTIFF])
    cat = explainer.infer(x, target=[TABBY])
    # The attentions, all that rollout reads, are the same forward pass whatever the target ...
    np.testing.assert_array_equal(dog.attentions, cat.attentions)
    np.testing.assert_array_equal(explainer.maps(dog, "rollout"), explainer.maps(cat, "rollout"))
    # ... while the gradients, and the gradient-weighted maps, are not.
    assert not np.allclose(dog.grads, cat.grads, rtol=0.1, atol=0)
    chefer_dog, chefer_cat = explainer.maps(dog, "chefer")[0], explainer.maps(cat, "chefer")[0]
    assert np.abs(chefer_dog - chefer_cat).max() > 0.5
    # Rollout's single map sits on neither animal in particular (measured 0.35 dog / 0.38 cat).
    heat = explainer.explain(photo, method="rollout").heatmap
    assert abs(mass(heat, DOG_BOX) - mass(heat, CAT_BOX)) < 0.15


def reference_chefer(attentions: np.ndarray, grads: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Chefer et al. (2021) written out with full matrices: R = I; R <- R + mean_h((G ⊙ A)+) R.

    Args:
        attentions, grads: [L, H, N, N] float64 of one image, class token first.
        grid: patch grid (rows, cols).

    Returns:
        [rows, cols] class-token row of R over the patches, min-max normalised.
    """
    n = attentions.shape[-1]
    relevance = np.eye(n)
    for a, g in zip(attentions, grads):
        relevance = relevance + np.clip(g * a, 0.0, None).mean(axis=0) @ relevance
    row = relevance[0, 1:].reshape(grid)
    return (row - row.min()) / (row.max() - row.min())


def test_runtime_chefer_from_onnx_gradients_matches_torch_autograd(explainer, photo, shared_data):
    from safetensors.torch import load_file

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    model.load_state_dict(load_file(str(shared_data / DEIT_TINY_CHECKPOINT)), strict=True)
    model = model.double().eval()
    x, _ = explainer.preprocess([photo])
    xt = torch.from_numpy(x).double()
    with ViTWithAttention(model) as wrapped:
        for target in (BULL_MASTIFF, TABBY):
            deltas = [torch.zeros(1, 3, 197, 197, dtype=torch.float64, requires_grad=True) for _ in range(12)]
            wrapped.set_deltas(deltas)
            try:
                logits, attentions = wrapped(xt)
            finally:
                wrapped.set_deltas(None)
            grads = torch.stack(torch.autograd.grad(logits[0, target], deltas), dim=1)[0].numpy()
            attentions = attentions.detach()[0].numpy()

            out = explainer.infer(x, target=[target])
            scale = np.abs(grads).max()
            assert np.abs(out.grads[0] - grads).max() <= 1e-4 * scale
            expected = reference_chefer(attentions, grads, (14, 14))
            got = explainer.explain(photo, method="chefer", target=target).grid
            assert np.abs(got - expected).max() <= 1e-4


def test_the_gradient_file_stores_the_weights_once(deit_tiny_grads_onnx):
    proto = onnx.load(str(deit_tiny_grads_onnx))
    stored = sum(onnx.numpy_helper.to_array(i).nbytes for i in proto.graph.initializer)
    params = 5_717_416 * 4  # DeiT-Tiny's float32 parameters (SOURCES.md)
    assert params <= stored < 1.01 * params
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Softmax") == 12 and ops.count("Conv") == 1
