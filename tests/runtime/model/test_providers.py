"""Execution providers with fakes (no GPU here): resolution, no silent fallback, options, device binding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import attnmap.cli as cli
from attnmap.runtime.core.errors import ModelError, ProviderError
from attnmap.runtime.model import providers, session
from attnmap.runtime.model.buffers import DeviceBuffers
from attnmap.runtime.model.providers import ORT_NAMES, provider_options, resolve_providers, short_name
from attnmap.runtime.model.session import OnnxModel

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "shapes_vit.onnx"
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
OV, COREML = "OpenVINOExecutionProvider", "CoreMLExecutionProvider"


@pytest.mark.parametrize("available, want", [
    ([CPU], [CPU]),
    ([CoreML := COREML, CPU], [COREML, CPU]),
    ([OV, COREML, CPU], [OV, CPU]),
    ([TRT, CUDA, CPU], [CUDA, CPU]),  # CUDA first: TensorRT's engine builds are only taken when asked
    ([TRT, CPU], [TRT, CPU]),
    (["AzureExecutionProvider", CPU], [CPU]),
])
def test_auto_takes_the_first_available_of_the_order(available, want):
    assert resolve_providers("auto", available) == want
    assert resolve_providers("AUTO", available) == want


def test_auto_reads_onnxruntime_s_list_by_default(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [OV, CPU])
    assert resolve_providers("auto") == [OV, CPU]


@pytest.mark.parametrize("name, available, want", [
    ("cpu", [CUDA, CPU], [CPU]),
    ("cuda", [TRT, CUDA, CPU], [CUDA, CPU]),
    ("tensorrt", [TRT, CUDA, CPU], [TRT, CUDA, CPU]),
    ("openvino", [OV, CPU], [OV, CPU]),
    ("coreml", [COREML, CPU], [COREML, CPU]),
])
def test_an_explicit_provider_comes_first_then_where_its_leftovers_run(name, available, want):
    assert resolve_providers(name, available) == want


@pytest.mark.parametrize("name", ["cuda", "tensorrt", "openvino", "coreml"])
def test_an_unavailable_provider_is_an_error_naming_what_there_is(name):
    with pytest.raises(ProviderError, match=rf"provider '{name}' is not available .*it offers "
                                            r"AzureExecutionProvider, CPUExecutionProvider"):
        resolve_providers(name, ["AzureExecutionProvider", CPU])


def test_an_unknown_provider_suggests_the_close_one():
    with pytest.raises(ProviderError, match="Did you mean 'tensorrt'"):
        resolve_providers("tensorrtt", [CPU])


def test_the_cli_offers_exactly_the_runtime_providers():
    assert cli.PROVIDERS == providers.PROVIDERS


def test_tensorrt_gets_an_engine_cache_folder(monkeypatch, tmp_path):
    opts = provider_options([TRT, CUDA, CPU], tmp_path / "engines")
    assert opts[0]["trt_engine_cache_enable"] == "True"
    assert opts[0]["trt_engine_cache_path"] == str(tmp_path / "engines") and opts[1:] == [{}, {}]
    monkeypatch.setenv(providers.TRT_CACHE_ENV, str(tmp_path / "env"))
    assert provider_options([TRT, CPU])[0]["trt_engine_cache_path"] == str(tmp_path / "env")


class _FakeSession:
    """Wraps a real CPU session but reports the providers a GPU build that fell back would."""

    def __init__(self, source, sess_options=None, providers=None, provider_options=None):
        _FakeSession.asked = (providers, provider_options)
        self._real = _REAL_SESSION(source, sess_options=sess_options, providers=[CPU])

    def get_providers(self):
        return [CPU]

    def __getattr__(self, name):
        return getattr(self._real, name)


_REAL_SESSION = ort.InferenceSession


def test_a_provider_onnxruntime_could_not_start_is_an_error_not_a_silent_cpu_run(monkeypatch, tmp_path):
    monkeypatch.setattr(providers, "resolve_providers", lambda provider: [TRT, CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    with pytest.raises(ProviderError, match="could not start TensorrtExecutionProvider .* runs on "
                                            "CPUExecutionProvider"):
        OnnxModel(SHIPPED, provider="tensorrt", trt_cache=tmp_path / "trt")
    asked, options = _FakeSession.asked
    assert asked == [TRT, CUDA, CPU] and options[0]["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert (tmp_path / "trt").is_dir()


@pytest.fixture()
def device_model(monkeypatch):
    """The shipped model run through the device binding path, with "cpu" standing in for "cuda"
    (on CUDA the stacked outputs are not split, so the split is turned off here too)."""
    monkeypatch.setattr(session, "split_stacked_outputs", lambda proto: {})
    model = OnnxModel(SHIPPED, provider="cpu")
    model._pool, model._device = None, DeviceBuffers("cpu", 0)
    return model


def test_device_binding_gives_what_session_run_gives_and_allocates_once(device_model):
    ref = OnnxModel(SHIPPED, provider="cpu")
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, 3, 96, 96)).astype(np.float32) for _ in range(3)]
    copies = [x.copy() for x in xs]
    kept = []
    for x in xs:
        got, want = device_model.run(x), ref.run(x)
        np.testing.assert_array_equal(got.logits, want.logits)
        np.testing.assert_array_equal(got.attentions, want.attentions)
        kept.append(got)
    # one input buffer and two output buffers for batch 2, reused; results kept by the caller stay intact
    assert device_model._device.allocations == 3
    np.testing.assert_array_equal(kept[0].logits, ref.run(xs[0]).logits)
    for x, c in zip(xs, copies):  # the callers' inputs are never written to
        np.testing.assert_array_equal(x, c)
    device_model.run(xs[0][:1])
    assert device_model._device.allocations == 6  # a new batch size: its own buffers


def test_device_binding_failures_are_model_errors(device_model, monkeypatch):
    def fail(binding, run_options=None):
        raise RuntimeError("Error in execution: fake CUDA failure")

    monkeypatch.setattr(device_model.session, "run_with_iobinding", fail)
    with pytest.raises(ModelError, match="onnxruntime failed on 'shapes_vit.onnx': Error in execution"):
        device_model.run(np.zeros((1, 3, 96, 96), np.float32))


@pytest.mark.parametrize("name, short", [(CPU, "cpu"), (CUDA, "cuda"), (TRT, "tensorrt"), (OV, "openvino"),
                                         ("CoreMLExecutionProvider", "coreml"), ("cuda", "cuda"),
                                         ("AzureExecutionProvider", "azure")])
def test_a_providers_short_name_is_what_attnmap_calls_it(name, short):
    assert short_name(name) == short
    if short in ORT_NAMES:  # the short name chooses the same provider again
        assert ORT_NAMES[short] == (name if name.endswith("Provider") else ORT_NAMES[name])


def test_a_session_reports_its_short_provider_name(tiny_vit_onnx):
    model = OnnxModel(tiny_vit_onnx, provider="cpu")
    assert (model.provider, model.provider_short) == (CPU, "cpu")


def test_options_for_the_chosen_provider_go_over_attnmaps(tmp_path):
    opts = provider_options([TRT, CUDA, CPU], tmp_path / "engines", {"trt_fp16_enable": True})
    assert opts[0]["trt_fp16_enable"] == "True" and opts[0]["trt_engine_cache_path"] == str(tmp_path / "engines")
    assert opts[1:] == [{}, {}]
    assert provider_options([OV, CPU], first={"num_of_threads": 1}) == [{"num_of_threads": "1"}, {}]


@pytest.mark.skipif(OV not in ort.get_available_providers(), reason="needs onnxruntime-openvino (CI's openvino lane)")
def test_openvino_takes_its_options_and_one_it_cannot_start_with_is_an_error(tiny_vit_onnx):
    import json

    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    ref = OnnxModel(tiny_vit_onnx, provider="cpu").run(x)
    hint = {"load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": "f32"}})}
    model = OnnxModel(tiny_vit_onnx, provider="openvino", provider_options=hint)
    assert model.provider == OV
    np.testing.assert_allclose(model.run(x).logits, ref.logits, atol=1e-4)
    # OpenVINO's provider does not start with an unknown precision, and onnxruntime would then
    # run the file on the CPU provider without saying so
    with pytest.raises(ProviderError, match="could not start OpenVINOExecutionProvider"):
        OnnxModel(tiny_vit_onnx, provider="openvino", provider_options={"precision": "INT3"})


@pytest.mark.skipif(OV not in ort.get_available_providers(), reason="needs onnxruntime-openvino (CI's openvino lane)")
def test_the_explainer_hands_provider_options_to_its_session(tiny_vit_onnx):
    import json

    from attnmap import Explainer

    hint = {"load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": "f32"}})}
    ex = Explainer(tiny_vit_onnx, provider="openvino", provider_options=hint)
    assert ex.provider == OV and ex.model.provider_options == hint
    with pytest.raises(ProviderError, match="could not start OpenVINOExecutionProvider"):
        Explainer(tiny_vit_onnx, provider="openvino", provider_options={"precision": "INT3"})
