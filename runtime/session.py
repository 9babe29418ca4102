"""OnnxModel: one onnxruntime session over an attnmap ONNX file, created once and reused.

Providers are chosen from what onnxruntime itself offers (``ort.get_available_providers()``),
never from torch. On CPU the session uses one intra-op thread per physical core with spinning
off: spinning threads would otherwise fight NumPy (which runs the explanations) for the cores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from .errors import ModelError, ProviderError, suggest
from .meta import ModelMeta

PROVIDERS = ("auto", "cpu", "cuda")
_ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass(frozen=True)
class Outputs:
    """What one forward pass returns.

    Attributes:
        logits: (B, C) float32 class scores.
        attentions: (B, L, H, N, N) float32 attention probabilities (H is 1 when the exporter
            fused the heads), or None for a logits-only run.
        grads: (B, L, H, N, N) float32 d logit[target] / d attentions, or None when the model
            was exported without gradients.
        targets: (B,) int64 classes the gradients were taken for, or None.
    """

    logits: np.ndarray
    attentions: np.ndarray | None = None
    grads: np.ndarray | None = None
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def select(self, index: int) -> "Outputs":
        """The outputs of one item of the batch, keeping a batch axis of 1."""
        pick = slice(index, index + 1)
        return Outputs(
            self.logits[pick],
            None if self.attentions is None else self.attentions[pick],
            None if self.grads is None else self.grads[pick],
            None if self.targets is None else self.targets[pick],
        )


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """Number of physical CPU cores (hyper-threads not counted), at least 1."""
    try:
        cores = set()
        phys = core = None
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not line.strip():
                    if core is not None:
                        cores.add((phys, core))
                    phys = core = None
        if core is not None:
            cores.add((phys, core))
        if cores:
            return max(1, min(len(cores), len(os.sched_getaffinity(0))))
    except (OSError, AttributeError):
        pass
    return max(1, os.cpu_count() or 1)


def resolve_providers(provider: str) -> list[str]:
    """Turn ``auto|cpu|cuda`` into an onnxruntime provider list.

    ``auto`` takes CUDA when onnxruntime offers it, else CPU. ``cuda`` where onnxruntime has no
    CUDA provider is an error, never a silent fallback to CPU.
    """
    name = str(provider).lower()
    if name not in PROVIDERS:
        raise ProviderError(f"provider must be one of {', '.join(PROVIDERS)}; got {provider!r}."
                            + suggest(name, PROVIDERS))
    available = ort.get_available_providers()
    if name == "auto":
        name = "cuda" if _ORT_NAMES["cuda"] in available else "cpu"
    if _ORT_NAMES[name] not in available:
        raise ProviderError(
            f"provider {name!r} is not available in this onnxruntime (it offers {', '.join(available)}); "
            "install onnxruntime-gpu with a matching CUDA for 'cuda', or use --provider cpu")
    return [_ORT_NAMES[name]] + (["CPUExecutionProvider"] if name != "cpu" else [])


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Session options: ``threads`` intra-op threads (default: physical cores), no spinning."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads) if threads else physical_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


class OnnxModel:
    """An attnmap ONNX file loaded into onnxruntime.

    Args:
        path: the ``.onnx`` file written by ``attnmap export``.
        provider: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        threads: intra-op threads on CPU (default: the physical cores).

    Raises:
        ModelError: the file is missing, not ONNX, or lacks the outputs its metadata names.
        MetadataError: the file has no (or an unreadable) attnmap metadata.
        ProviderError: the provider is unknown or unavailable.
    """

    def __init__(self, path: str | Path, provider: str = "auto", threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model file {str(self.path)!r} does not exist; pass an .onnx file "
                             "written by `attnmap export`")
        self.providers = resolve_providers(provider)
        self.threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=session_options(threads),
                                                providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelError(f"cannot load model {str(self.path)!r} with onnxruntime: "
                             f"{str(exc).splitlines()[0][:300]}") from None
        self.meta = ModelMeta.from_props(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        missing = [n for n in self.meta.outputs if n not in self.output_names]
        if missing or self.meta.inputs[0] not in self.input_names:
            raise ModelError(f"model {str(self.path)!r} metadata names outputs {list(self.meta.outputs)} and "
                             f"input {self.meta.inputs[0]!r}, but the graph has outputs "
                             f"{list(self.output_names)} and inputs {list(self.input_names)}")
        self._plain: ort.InferenceSession | None = None

    @property
    def provider(self) -> str:
        """The execution provider the session actually runs on."""
        return self.session.get_providers()[0]

    def run(self, x_nchw: np.ndarray, target: np.ndarray | Sequence[int] | None = None,
            outputs: Sequence[str] | None = None) -> Outputs:
        """Run the model.

        Args:
            x_nchw: (B, 3, H, W) float32, preprocessed as the metadata says.
            target: (B,) int64 class per image for the gradients (-1 = predicted class); only for
                models exported with gradients. None means the predicted class.
            outputs: graph outputs to fetch (default: all the metadata names).

        Returns:
            Outputs with logits, attentions and, for gradient models, grads and targets.
        """
        x = np.ascontiguousarray(x_nchw, dtype=np.float32)
        expected = (3, *self.meta.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ModelError(f"model input must be (B, {expected[0]}, {expected[1]}, {expected[2]}) float32; "
                             f"got shape {tuple(x.shape)}")
        feed = {self.meta.inputs[0]: x}
        if "target" in self.input_names:
            if target is None:
                tgt = np.full((x.shape[0],), -1, dtype=np.int64)
            else:
                tgt = np.asarray(target, dtype=np.int64).reshape(-1)
                if tgt.shape[0] != x.shape[0]:
                    raise ModelError(f"target must hold one class per image ({x.shape[0]}); got {tgt.shape[0]}")
                # The graph would fail deep inside its backward (ScatterElements) instead.
                if (tgt >= self.meta.num_classes).any():
                    raise ModelError(f"target classes must be < {self.meta.num_classes} (or -1 for the predicted "
                                     f"class); got {tgt.tolist()}")
            feed["target"] = tgt
        elif target is not None:
            raise ModelError(f"model {self.path.name!r} was exported without gradients, so it takes no target; "
                             "re-export it with --gradients for class-specific methods")
        names = list(outputs) if outputs is not None else list(self.meta.outputs)
        try:
            values = dict(zip(names, self.session.run(names, feed)))
        except Exception as exc:
            raise ModelError(f"onnxruntime failed on {self.path.name!r}: {str(exc).splitlines()[0][:300]}") from None
        logits = values["logits"]
        targets = None
        if "attention_grads" in values:
            targets = feed["target"].copy()
            unset = targets < 0
            targets[unset] = logits[unset].argmax(-1)
        return Outputs(logits, values.get("attentions"), values.get("attention_grads"), targets)

    def run_plain(self, x_nchw: np.ndarray) -> np.ndarray:
        """Logits from a logits-only copy of the graph: the plain-inference baseline.

        The copy drops the ``attentions`` (and gradient) outputs and every node that only fed
        them, so it runs what a deployment without explanations would.
        """
        if self._plain is None:
            self._plain = self._build_plain_session()
        x = np.ascontiguousarray(x_nchw, dtype=np.float32)
        return self._plain.run(["logits"], {self.meta.inputs[0]: x})[0]

    def _build_plain_session(self) -> ort.InferenceSession:
        import onnx  # only the benchmark baseline needs it

        model = onnx.load(str(self.path))
        keep = [o for o in model.graph.output if o.name == "logits"]
        del model.graph.output[:]
        model.graph.output.extend(keep)
        model = _prune_to_outputs(model)
        return ort.InferenceSession(model.SerializeToString(), sess_options=session_options(self.threads),
                                    providers=self.providers)


def _prune_to_outputs(model):
    """Remove the nodes that no graph output needs, and inputs (``target``) left unused."""
    import onnx

    needed = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(model.graph.node):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del model.graph.node[:]
    model.graph.node.extend(keep)
    inputs = [i for i in model.graph.input if i.name in needed]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    onnx.checker.check_model(model)
    return model
