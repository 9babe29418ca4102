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
from typing import NamedTuple, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from attnmap.runtime.model.buffers import BufferPool
from attnmap.runtime.core.errors import ModelError, ProviderError, suggest
from attnmap.runtime.model.graph import prune_to_outputs, split_stacked_outputs
from attnmap.runtime.core.meta import ModelMeta

PROVIDERS = ("auto", "cpu", "cuda")
_ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(int64)": np.dtype(np.int64)}


@dataclass(frozen=True)
class Outputs:
    """What one forward pass returns.

    Attributes:
        logits: (B, C) float32 class scores.
        attentions: (B, L, H, N, N) float32 attention probabilities (H is 1 when the exporter
            fused the heads), or None for a logits-only run. On CPU this is a view of an
            (L, B, H, N, N) buffer: C-contiguous at batch 1, and every layer ``[:, l]`` is.
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


class ThroughputPlan(NamedTuple):
    """How to run throughput work (videos, folders): see :func:`throughput_plan`."""

    threads: int | None  # intra-op threads per run (None: one per physical core)
    workers: int  # model runs at once, each on its own batch
    batch_size: int  # frames per model run


def throughput_plan(provider: str, threads: int | None = None, workers: int | None = None,
                    batch_size: int | None = None) -> ThroughputPlan:
    """Threads, model runs at once and batch size for throughput work: videos and folders.

    One onnxruntime run leaves the cores idle at each of its synchronisation points, and
    without spinning its threads sleep there. Two runs at once, each on its own batch and half
    the cores, fill those gaps. Each single-threaded run then works best on small batches
    (likely because their activations fit in the core's own L2 cache): on the 2-core box,
    DeiT-Tiny video explain with two runs gave 74, 78, 76, 76, 71.5 and 70 frames/s at batch
    1, 2, 3, 4, 6 and 8 (2-5 interleaved runs over both shared clips), and with one run on both
    cores 69 at both batch 4 and 8 (62 at batch 2). Batch 4 is close to the best either way.
    Larger machines and GPUs were not measured; CUDA keeps batch 8.

    Args:
        provider: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        threads: intra-op threads asked for (None: decided here).
        workers: runs at once asked for (None: decided here).
        batch_size: frames per run asked for (None: decided here).

    Returns:
        On a CPU with 2 or more physical cores and neither threads nor workers given:
        ``(cores // 2, 2)``. With ``workers`` given on a CPU: ``(threads or cores // workers
        (at least 1), workers)``. Otherwise (CUDA, one core, or only ``threads`` given):
        ``(threads, workers or 1)``. The batch size is ``batch_size`` if given, else 4 on a
        CPU and 8 on CUDA.
    """
    cpu = resolve_providers(provider)[0] == _ORT_NAMES["cpu"]
    batch = batch_size or (4 if cpu else 8)
    if not cpu:
        return ThroughputPlan(threads, workers or 1, batch)
    cores = physical_cores()
    if workers is None:
        if threads is not None or cores < 2:
            return ThroughputPlan(threads, 1, batch)
        workers = 2
    return ThroughputPlan(threads or max(1, cores // workers), workers, batch)


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
        cpu = self.providers[0] == _ORT_NAMES["cpu"]
        # On CPU the stacked attention outputs are split into per-layer outputs in memory
        # (runtime/graph.py) and every output is written into reused buffers (runtime/buffers.py).
        # Other providers run the file as it is, and session.run copies outputs to the host.
        self._split: dict[str, tuple[str, ...]] = {}
        source: str | bytes = str(self.path)
        proto = _read_proto(self.path) if cpu else None
        if proto is not None:
            self._split = split_stacked_outputs(proto)
            if self._split:
                source = proto.SerializeToString()
        del proto
        try:
            self.session = ort.InferenceSession(source, sess_options=session_options(threads),
                                                providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelError(f"cannot load model {str(self.path)!r} with onnxruntime: "
                             f"{str(exc).splitlines()[0][:300]}") from None
        self.meta = ModelMeta.from_props(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        # per-layer output -> the stacked output it is part of
        self._part_of = {p: name for name, parts in self._split.items() for p in parts}
        self.output_names = tuple(o["name"] for o in self.describe_outputs())
        missing = [n for n in self.meta.outputs if n not in self.output_names]
        if missing or self.meta.inputs[0] not in self.input_names:
            raise ModelError(f"model {str(self.path)!r} metadata names outputs {list(self.meta.outputs)} and "
                             f"input {self.meta.inputs[0]!r}, but the graph has outputs "
                             f"{list(self.output_names)} and inputs {list(self.input_names)}")
        self._plain: ort.InferenceSession | None = None
        self._pool = BufferPool() if cpu else None
        self._out_specs = {o.name: (o.shape, _DTYPES.get(o.type)) for o in self.session.get_outputs()}

    @property
    def provider(self) -> str:
        """The execution provider the session actually runs on."""
        return self.session.get_providers()[0]

    def describe_outputs(self) -> list[dict]:
        """The file's graph outputs as ``{"name", "shape", "type"}``: stacked outputs as written
        (``[batch, L, H, N, N]``), not the per-layer outputs the CPU session is split into."""
        described, seen = [], set()
        for o in self.session.get_outputs():
            name = self._part_of.get(o.name, o.name)
            if name in seen:
                continue
            seen.add(name)
            shape = list(o.shape) if name == o.name else [o.shape[0], len(self._split[name]), *o.shape[1:]]
            described.append({"name": name, "shape": shape, "type": o.type})
        return described

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
                tgt = np.ascontiguousarray(np.asarray(target, dtype=np.int64).reshape(-1))
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
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise ModelError(f"model {self.path.name!r} has no output {unknown[0]!r}; it has {list(self.output_names)}")
        try:
            values = self._run_bound(names, feed, x.shape[0])
            if values is None:
                values = self._run_unbound(names, feed)
        except Exception as exc:
            raise ModelError(f"onnxruntime failed on {self.path.name!r}: {str(exc).splitlines()[0][:300]}") from None
        logits = values["logits"]
        targets = None
        if "attention_grads" in values:
            targets = feed["target"].copy()
            unset = targets < 0
            targets[unset] = logits[unset].argmax(-1)
        return Outputs(logits, values.get("attentions"), values.get("attention_grads"), targets)

    def _run_unbound(self, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``session.run``, with split outputs stacked back to ``[B, L, ...]``."""
        fetch = [p for n in names for p in self._split.get(n, (n,))]
        got = dict(zip(fetch, self.session.run(fetch, feed)))
        return {n: np.stack([got[p] for p in self._split[n]], axis=1) if n in self._split else got[n]
                for n in names}

    def _run_bound(self, names: list[str], feed: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray] | None:
        """Run with the outputs bound to pooled buffers; None where that cannot be done.

        It cannot where the provider is not the CPU, or an output's shape is not known up
        to the batch axis (its first), or its dtype is not float32/int64. A split output's
        layers are bound to the slices ``buf[l]`` of one ``[L, B, ...]`` buffer, returned as
        its ``[B, L, ...]`` view (C-contiguous at batch 1; each layer ``[:, l]`` always is).
        """
        if self._pool is None:
            return None
        specs = []
        for name in names:
            parts = self._split.get(name, ())
            shape, dtype = self._out_specs.get(parts[0] if parts else name, (None, None))
            if dtype is None or not shape or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
                return None
            if isinstance(shape[0], int) and shape[0] != batch:
                return None
            specs.append((((len(parts),) if parts else ()) + (batch, *shape[1:]), dtype))
        arrays = self._pool.acquire((tuple(names), batch), specs)
        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)  # contiguous, and alive in `feed` until the run ends
        values = {}
        for name, arr in zip(names, arrays):
            parts = self._split.get(name)
            if parts is None:
                binding.bind_output(name, "cpu", 0, arr.dtype, arr.shape, arr.ctypes.data)
                values[name] = arr
                continue
            for part, layer in zip(parts, arr):
                binding.bind_output(part, "cpu", 0, layer.dtype, layer.shape, layer.ctypes.data)
            values[name] = arr.swapaxes(0, 1)  # np.moveaxis is the same view at 50x the overhead
        self.session.run_with_iobinding(binding)
        return values

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
        model = onnx.load(str(self.path))
        keep = [o for o in model.graph.output if o.name == "logits"]
        del model.graph.output[:]
        model.graph.output.extend(keep)
        model = prune_to_outputs(model)
        return ort.InferenceSession(model.SerializeToString(), sess_options=session_options(self.threads),
                                    providers=self.providers)


def _read_proto(path: Path) -> "onnx.ModelProto | None":
    """The file as an ONNX proto, or None when onnx cannot parse it (onnxruntime then says why)."""
    try:
        return onnx.load(str(path))
    except Exception:  # noqa: BLE001 - any parse failure is reported by onnxruntime just after
        return None
