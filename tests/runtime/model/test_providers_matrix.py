"""Every attnmap file kind on every execution provider this onnxruntime offers.

fp32, fp16, int8 (dynamic and static QDQ) and gradient files are loaded, run and explained on
each provider of ``ort.get_available_providers()`` (the CPU provider everywhere; the OpenVINO
provider in CI's openvino lane, CUDA where a GPU is lent), and their maps compared with the
fp32 file's on the CPU provider: an fp32 file must give the same maps on every provider
(Pearson r >= 0.999 for every method, the same top-1 class), a reduced-precision file must
pass its own fidelity gate (the thresholds stored in its metadata) on every provider, as it
did on the CPU when it was converted. Every file kind is also inference-clean (no training-form
node: runtime/model/inference_graph.py).

The shipped model (trained, so its predictions are not near ties) gives the fp32, fp16 and int8
files; the committed tiny model with gradients (random weights: its stored gate is top-1 0.9)
gives the gradient files, in the inference form the export now writes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from attnmap import Explainer
from attnmap.runtime.model.graph import read_model
from attnmap.runtime.model.inference_graph import inference_graph, inference_problems
from attnmap.runtime.model.providers import ORT_NAMES, short_name
from attnmap.runtime.precision.convert import ConvertOptions, convert_file, synthetic_images
from attnmap.runtime.precision.fidelity import Thresholds, fidelity_failures, measure_fidelity

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "shapes_vit.onnx"
# The providers to exercise: every one onnxruntime offers that attnmap can choose.
PRESENT = [short_name(p) for p in ort.get_available_providers() if short_name(p) in ORT_NAMES]
KINDS = ("fp32", "fp16", "int8", "int8-static", "grads-fp32", "grads-fp16", "grads-int8")
LOOSE = Thresholds(min_top1=0.9)  # the random-weight tiny model's near ties (test_precision_convert.py)
CHECK_IMAGES = 64  # the images the conversion gate measured (convert.SYNTHETIC_IMAGES)


def _quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_vit_grads_onnx) -> dict[str, Path]:
    """Each file kind, converted once through the fidelity gate as ``attnmap quantize`` does."""
    d = tmp_path_factory.mktemp("provider_matrix")
    calib = d / "calibration"
    calib.mkdir()
    from attnmap.runtime.frames.synth import make_batch

    for i, img in enumerate(make_batch(99, 16, size=96)[0]):
        cv2.imwrite(str(calib / f"{i:02d}.png"), img)
    grads = d / "tiny_vit_grads.onnx"
    onnx.save_model(inference_graph(read_model(tiny_vit_grads_onnx)), str(grads))
    out = {"fp32": SHIPPED, "grads-fp32": grads}
    for kind, src, opts in (
            ("fp16", SHIPPED, ConvertOptions("fp16")),
            ("int8", SHIPPED, ConvertOptions("int8")),
            ("int8-static", SHIPPED, ConvertOptions("int8", mode="static", calibration=str(calib))),
            ("grads-fp16", grads, ConvertOptions("fp16", thresholds=LOOSE)),
            ("grads-int8", grads, ConvertOptions("int8", thresholds=LOOSE))):
        out[kind] = convert_file(src, d / f"{kind}.onnx", opts, log=_quiet).path
    return out


def _fp32_of(kind: str, files: dict[str, Path]) -> Path:
    return files["grads-fp32" if kind.startswith("grads") else "fp32"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_file_kind_is_inference_clean(files, kind):
    assert inference_problems(onnx.load(str(files[kind]))) == []


def test_the_providers_exercised_include_the_cpu():
    assert "cpu" in PRESENT


@pytest.mark.parametrize("provider", PRESENT)
@pytest.mark.parametrize("kind", KINDS)
def test_every_file_kind_explains_on_every_present_provider(files, kind, provider):
    reference = Explainer(_fp32_of(kind, files), provider="cpu")
    candidate = Explainer(files[kind], provider=provider)
    assert candidate.model.provider_short == provider
    x = synthetic_images(reference.meta)[:CHECK_IMAGES]
    fidelity = measure_fidelity(reference, candidate, x, source=f"{kind} on {provider}")
    if kind.endswith("fp32"):
        assert fidelity.top1_agreement == 1.0, fidelity.summary()
        assert fidelity.maps and all(m.pearson_min >= 0.999 for m in fidelity.maps.values()), fidelity.summary()
    else:
        gate = Thresholds(**candidate.meta.fidelity["thresholds"])
        assert fidelity_failures(fidelity, gate) == [], fidelity.summary()
    if kind.startswith("grads"):  # the class-specific methods ran too
        assert {"chefer", "gradcam"} <= set(fidelity.maps), sorted(fidelity.maps)


@pytest.mark.parametrize("provider", PRESENT)
def test_an_older_gradient_file_in_training_form_runs_on_every_present_provider(tiny_vit_grads_onnx, provider):
    """Files exported before the export wrote inference-clean graphs are rewritten at load."""
    clean = Explainer(tiny_vit_grads_onnx, provider=provider)
    x = synthetic_images(clean.meta)[:4]
    out = clean.infer(x)
    ref = Explainer(tiny_vit_grads_onnx, provider="cpu").infer(x)
    np.testing.assert_allclose(out.logits, ref.logits, atol=1e-4)
    np.testing.assert_allclose(out.grads, ref.grads, atol=1e-4 * float(np.abs(ref.grads).max()))
