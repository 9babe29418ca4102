"""On the shared photos, the forward-only decomposition maps beat the random map (issue 25).

``attnmap evaluate`` runs once over ``../shared/data/images`` with the real DeiT-Tiny exported
with the decomposition outputs, each method at its defaults. Each must beat the random floor
(3 seeded uniform maps per image) on the two "remove the most relevant first" metrics: a lower
positive-perturbation AUC and a lower deletion AUC.
"""

from __future__ import annotations

import pytest

from attnmap import Explainer
from attnmap.runtime.evaluation import RANDOM, evaluate
from attnmap.runtime.frames.sources import expand_sources, open_files

pytestmark = [pytest.mark.export, pytest.mark.slow]  # the DeiT-Tiny export needs torch

DECOMPOSITION_METHODS = ["attn-norm", "head-norm", "globenc", "decompx"]


@pytest.fixture(scope="module")
def evaluation(deit_tiny_decomp_onnx, shared_data):
    explainer = Explainer(deit_tiny_decomp_onnx, provider="cpu")
    images = [r.target for r in expand_sources([str(shared_data / "images")]) if r.kind == "image"]
    with open_files(images, errors="yield") as frames:
        result = evaluate(explainer, frames, DECOMPOSITION_METHODS)
    assert result.failed == [] and result.images == len(images) >= 10
    return result.summary()


@pytest.mark.parametrize("method", DECOMPOSITION_METHODS)
def test_decomposition_methods_beat_the_random_map_on_positive_perturbation_and_deletion(evaluation, method):
    ours, floor = evaluation[method], evaluation[RANDOM]
    assert ours["positive_auc"]["mean"] < floor["positive_auc"]["mean"], (method, ours, floor)
    assert ours["deletion_auc"]["mean"] < floor["deletion_auc"]["mean"], (method, ours, floor)
