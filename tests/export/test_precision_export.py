"""`attnmap export --precision`: fp32 with parity, then converted and gated; and the real DeiT-Tiny."""

from __future__ import annotations

import numpy as np
import pytest
from extras import need

need("torch", "export")
need("timm", "export")

from conftest import TINY_LABELS, TINY_VIT  # noqa: E402
from attnmap import Explainer  # noqa: E402
from attnmap.runtime.image.decode import read_image  # noqa: E402
from attnmap.runtime.precision.convert import ConvertOptions, convert_file  # noqa: E402
from attnmap.runtime.precision.fidelity import FidelityError, Thresholds  # noqa: E402

pytestmark = [pytest.mark.export, pytest.mark.slow]


def _export_tiny(out, options):
    import torch

    from attnmap.export.precision import export_with_precision

    torch.manual_seed(0)
    return export_with_precision(TINY_VIT["name"], out, options, img_size=TINY_VIT["img_size"],
                                 model_kwargs=TINY_VIT["kwargs"], labels=list(TINY_LABELS), log=lambda line: None)


def test_export_with_precision_writes_only_the_converted_file(tmp_path):
    # random weights: near-tie probabilities, hence the 0.9 top-1 gate (see test_precision_convert.py)
    report = _export_tiny(tmp_path / "tiny_int8.onnx", ConvertOptions("int8", thresholds=Thresholds(min_top1=0.9)))
    assert [p.name for p in tmp_path.iterdir()] == ["tiny_int8.onnx"]
    assert report.export.logits_max_abs < 1e-4  # the fp32 parity gate ran first
    assert report.convert.meta.precision == "int8" and report.convert.meta.fidelity["images"] == 64


def test_export_with_precision_that_fails_its_gate_leaves_no_file(tmp_path):
    with pytest.raises(FidelityError, match="mean rollout correlation"):
        _export_tiny(tmp_path / "tiny_int8.onnx",
                     ConvertOptions("int8", thresholds=Thresholds(min_top1=0.0, min_rollout_corr=1.0)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_real_deit_tiny_converted_keeps_top1_and_maps_on_the_shared_photos(deit_tiny_onnx, shared_data, tmp_path,
                                                                           precision):
    photos = shared_data / "images"
    report = convert_file(deit_tiny_onnx, tmp_path / f"deit_{precision}.onnx",
                          ConvertOptions(precision, check=str(photos)), log=lambda line: None)
    fid = report.fidelity
    assert fid.images == len(list(photos.iterdir())) == 12 and fid.top1_agreement == 1.0
    assert fid.maps["rollout"].pearson_mean >= 0.98
    if precision == "int8":
        # 8-bit linear weights (a quarter of fp32) with a scale and zero point per output channel,
        # plus what stays float (patch embedding, head, norms, position embedding): 0.301x
        assert report.size_bytes <= 0.31 * report.source_size_bytes
    # independently of the gate's code: each photo's top-1 through the public API, and rollout maps
    ref, got = Explainer(deit_tiny_onnx, provider="cpu"), Explainer(report.path, provider="cpu")
    for path in sorted(photos.iterdir()):
        img = read_image(path)
        a, b = ref.explain(img, topk=1), got.explain(img, topk=1)
        assert a.topk[0].index == b.topk[0].index, path.name
        assert np.corrcoef(a.grid.ravel(), b.grid.ravel())[0, 1] > 0.97, path.name
