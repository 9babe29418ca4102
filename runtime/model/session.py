"""OnnxModel: one onnxruntime session over an attnmap ONNX file, created once and reused.

Providers are chosen from what onnxruntime itself offers (``ort.get_available_providers()``),
never from torch. On CPU the session uses one intra-op thread per physical core with spinning
off: spinning threads would otherwise fight NumPy (which runs the explanations) for the cores.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from attnmap.runtime.core.errors import InputError, ModelError, ProviderError, suggest_path
from attnmap.runtime.core.meta import ModelMeta
from attnmap.runtime.model.buffers import BufferPool, DeviceBuffers
from attnmap.runtime.model.graph import check_against_graph, logits_only, read_model, split_stacked_outputs
from attnmap.runtime.model import providers as _providers
from attnmap.runtime.model.inference_graph import inference_graph, inference_problems
from attnmap.runtime.model.ort_errors import describe_ort_error
from attnmap.runtime.model.providers import ORT_NAMES, provider_options

_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(int64)": np.dtype(np.int64),
           "tensor(float16)": np.dtype(np.float16)}
_IMAGE_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
                 "tensor(double)": np.dtype(np.float64)}
# onnxruntime's own exceptions (Fail, InvalidArgument, RuntimeException, InvalidProtobuf ...):
# only these are reported as onnxruntime's failure; anything else is attnmap's and propagates.
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    v for v in vars(_ort_state).values() if isinstance(v, type) and issubclass(v, Exception))


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
        tokens: (B, N, D) float32 token features for Grad-CAM, the output of the last block's
            ``norm1`` (prefix tokens first), or None when the file has no such output (exported
            without gradients, or before attnmap exported them).
        token_grads: (B, N, D) float32 d logit[target] / d tokens, or None likewise.
        mix_grams: (B, L, N, H+1, H+1) float32 per block and token j the Gram matrix of the
            heads' value-output vectors γ1 ⊙ u^h_j and the block's input x_j (forward-only
            decompositions, ``attnmap export --decompositions``), or None.
        mix_grams_ln: (B, L, N, H+1, H+1) float32 the same under norm2's linearised LayerNorm
            (centred, γ2-scaled vectors), or None.
        class_contributions: (B, N, C) float32 each token's contribution to every logit through
            the last block and the head (DecompX-style), or None.
        tail_input: (B, N, D) float32 tokens entering the last block (a file exported with
            ``--tail``; ViT-ReciproCAM reruns the tail on them), or None.
        head_norms: (B, L, N, H+1) float32 per block and token j the norms ||γ1 ⊙ u^h_j|| of the
            heads' value-output vectors and ||x_j|| of the block input (``attnmap export
            --norms``), or None.
    """

    logits: np.ndarray
    attentions: np.ndarray | None = None
    grads: np.ndarray | None = None
    targets: np.ndarray | None = None
    tokens: np.ndarray | None = None
    token_grads: np.ndarray | None = None
    mix_grams: np.ndarray | None = None
    mix_grams_ln: np.ndarray | None = None
    class_contributions: np.ndarray | None = None
    tail_input: np.ndarray | None = None
    head_norms: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def select(self, index: int) -> "Outputs":
        """The outputs of one item of the batch, keeping a batch axis of 1."""
        return self.slice(index, index + 1)

    def slice(self, start: int, stop: int) -> "Outputs":
        """The outputs of items ``start`` to ``stop - 1`` of the batch (views, not copies)."""
        pick = slice(start, stop)
        return Outputs(
            self.logits[pick],
            None if self.attentions is None else self.attentions[pick],
            None if self.grads is None else self.grads[pick],
            None if self.targets is None else self.targets[pick],
            None if self.tokens is None else self.tokens[pick],
            None if self.token_grads is None else self.token_grads[pick],
            None if self.mix_grams is None else self.mix_grams[pick],
            None if self.mix_grams_ln is None else self.mix_grams_ln[pick],
            None if self.class_contributions is None else self.class_contributions[pick],
            None if self.tail_input is None else self.tail_input[pick],
            None if self.head_norms is None else self.head_norms[pick],
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


def session_options(threads: int | None = None, *, memory_arena: bool = True) -> ort.SessionOptions:
    """Session options: ``threads`` intra-op threads (default: physical cores), no spinning.

    Args:
        threads: intra-op threads (default: the physical cores).
        memory_arena: keep onnxruntime's CPU memory arena. The arena keeps the peak of the
            largest run for the session's life (a RISE request of 3000 masks on the shipped
            model: resident memory 122 -> 253 MiB, and it stays); without it each run's
            buffers go back to the C allocator, which a long-lived server then trims.
    """
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = bool(memory_arena)
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
        provider: a name of :data:`~attnmap.runtime.model.providers.PROVIDERS` (``"auto"``, ``"cpu"``,
            ``"cuda"``, ``"tensorrt"`` ...).
        threads: intra-op threads on CPU (default: the physical cores).
        trt_cache: TensorRT engine cache folder (see :func:`provider_options`).
        provider_options: onnxruntime options for the chosen provider, over attnmap's (see
            :func:`provider_options`); options it cannot start with are a ProviderError.
        memory_arena: keep onnxruntime's CPU memory arena (see :func:`session_options`); a
            server's API model turns it off so that one large request does not hold its peak.

    Any precision attnmap writes loads: fp32, fp16 and int8 files all take the image in the
    dtype their graph declares (float32 for every file ``attnmap quantize`` writes) and every
    float16 output (an fp16 file's ``attentions`` with ``--attn-dtype fp16``) is returned as
    float32, so maps are always computed in float32.

    Raises:
        ModelError: the file is missing, is not an ONNX model, or onnxruntime cannot load it.
        MetadataError: the file has no attnmap metadata (it was not written by ``attnmap
            export``), or metadata that does not parse; a GraphMismatchError (also a
            ModelError) where the metadata does not describe the graph (see
            :func:`attnmap.runtime.model.graph.check_against_graph`).
        ProviderError: the provider is unknown or unavailable, or onnxruntime could not start it
            (it would otherwise run the model on the CPU without saying so).
    """

    def __init__(self, path: str | Path, provider: str = "auto", threads: int | None = None,
                 trt_cache: str | Path | None = None, provider_options: Mapping[str, str] | None = None,
                 memory_arena: bool = True):
        self.path = Path(path)
        self.memory_arena = bool(memory_arena)
        if not self.path.is_file():
            raise ModelError(f"model file {str(self.path)!r} does not exist; pass an .onnx file "
                             f"written by `attnmap export`.{suggest_path(self.path)}".rstrip("."))
        self.providers = _providers.resolve_providers(provider)
        self.threads = threads
        self.trt_cache = trt_cache
        self.provider_options = dict(provider_options or {})
        cpu = self.providers[0] == ORT_NAMES["cpu"]
        # On CPU the stacked attention outputs are split into per-layer outputs in memory
        # (runtime/model/graph.py) and every output is written into reused buffers
        # (runtime/model/buffers.py). Other providers run the file as it is, and session.run
        # copies outputs to the host.
        self._split: dict[str, tuple[str, ...]] = {}
        source: str | bytes = str(self.path)
        proto = read_model(self.path)
        # the metadata before the session: a file attnmap did not write is refused as such
        self.meta = ModelMeta.from_props({p.key: p.value for p in proto.metadata_props}, str(self.path))
        if cpu:
            self._split = split_stacked_outputs(proto)
            if self._split:
                source = proto.SerializeToString()
        elif inference_problems(proto):
            # a file exported before attnmap wrote inference-clean graphs (runtime/model/inference_graph.py):
            # OpenVINO and other accelerators refuse a training-form node, the CPU provider runs it
            source = inference_graph(proto).SerializeToString()
        del proto
        self.session = self._create_session(source)
        inputs = self.session.get_inputs()
        self.input_names = tuple(i.name for i in inputs)
        # per-layer output -> the stacked output it is part of
        self._part_of = {p: name for name, parts in self._split.items() for p in parts}
        described = self.describe_outputs()
        check_against_graph(self.meta, inputs, described, self.path)
        self.output_names = tuple(o["name"] for o in described)
        image = inputs[self.input_names.index(self.meta.inputs[0])]
        self._input_dtype = _IMAGE_DTYPES.get(image.type, np.dtype(np.float32))
        self._batch = image.shape[0] if image.shape and isinstance(image.shape[0], int) else None
        self._plain: ort.InferenceSession | None = None
        self._pool = BufferPool() if cpu else None
        # id(first array of a pooled set) -> (weak reference to that array, the IOBinding with
        # the set's outputs bound): outputs are bound once per set, not once per run
        # set: never changed in place but replaced whole under the lock, so a reader (a run on
        # another thread: the frame engine runs the model on two at once) sees a whole dict
        self._bindings: dict[int, tuple[weakref.ref, ort.IOBinding]] = {}
        self._bindings_lock = threading.Lock()
        self._out_specs = {o.name: (o.shape, _DTYPES.get(o.type)) for o in self.session.get_outputs()}
        # (output names, batch) -> the pooled buffers' specs, or None where they cannot be bound
        self._bound_specs: dict[tuple[tuple[str, ...], int], list | None] = {}
        # an fp16 file's half outputs are widened to float32 after each run
        self._any_half = any(dtype == np.float16 for _, dtype in self._out_specs.values())
        # A dynamic int8 file quantises each activation with one scale over the whole batch, so
        # an image's logits and maps would shift with its batch companions (the shipped model:
        # attentions by up to 0.1 between batch 1 and 64): it runs one image at a time, as its
        # fidelity gate measured it (runtime/precision/fidelity.py).
        self._per_image = (self._batch is None and self.meta.precision == "int8"
                           and "dynamic int8" in str(self.meta.exporter.get("converter", "")))
        # CUDA and TensorRT: inputs and outputs bound on the device (runtime/model/buffers.py's
        # DeviceBuffers); other accelerators (OpenVINO, CoreML) go through session.run.
        on_gpu = self.providers[0] in (ORT_NAMES["cuda"], ORT_NAMES["tensorrt"])
        self._device = DeviceBuffers("cuda", 0) if on_gpu else None

    def _create_session(self, source: str | bytes) -> ort.InferenceSession:
        """The onnxruntime session; ModelError (cause kept) where onnxruntime refuses the file."""
        options = provider_options(self.providers, self.trt_cache, self.provider_options)
        for opts in options:
            if "trt_engine_cache_path" in opts:
                Path(opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        try:
            session = ort.InferenceSession(source, sess_options=session_options(self.threads, memory_arena=self.memory_arena),
                                           providers=self.providers, provider_options=options)
        except ORT_ERRORS as exc:
            if isinstance(source, str):  # not parsed yet: a file that is not ONNX, or not attnmap's, says so
                proto = read_model(self.path)
                ModelMeta.from_props({p.key: p.value for p in proto.metadata_props}, str(self.path))
            raise ModelError(f"cannot load model {str(self.path)!r} with onnxruntime's "
                             f"{_providers.short_name(self.providers[0])} provider: {describe_ort_error(exc)}") from exc
        started = session.get_providers()
        if self.providers[0] not in started:
            # onnxruntime-gpu without its CUDA/cuDNN libraries logs an error and runs on the CPU.
            raise ProviderError(f"onnxruntime could not start {self.providers[0]} for {self.path.name!r} (the "
                                f"session runs on {', '.join(started)}): check the CUDA/cuDNN (or TensorRT, "
                                "OpenVINO) libraries it needs, or use the cpu provider")
        return session

    @property
    def provider(self) -> str:
        """The execution provider the session actually runs on (onnxruntime's name)."""
        return self.session.get_providers()[0]

    @property
    def provider_short(self) -> str:
        """:attr:`provider` as attnmap names it: ``cpu``, ``cuda``, ``tensorrt``, ``openvino``, ``coreml``."""
        return _providers.short_name(self.provider)

    def describe_outputs(self) -> list[dict]:
        """The file's graph outputs as ``{"name", "shape", "type"}``: stacked outputs as written
        (``[batch, L, H, N, N]``), not the per-layer outputs the CPU session is split into."""
        described, seen = [], set()
        for o in self.session.get_outputs():
            name = self._part_of.get(o.name, o.name)
            if name in seen:
                continue
            seen.add(name)
            shape = list(o.shape or [])
            if name != o.name and shape:  # a layer [B, H, N, N] of the stacked [B, L, H, N, N]
                shape = [shape[0], len(self._split[name]), *shape[1:]]
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
            Outputs with logits, attentions and, for gradient models, grads and targets (and
            tokens and token_grads where the file has them).

        Raises:
            InputError: ``x_nchw``, ``target`` or ``outputs`` is not what the model takes.
            ModelError: onnxruntime itself failed (its exception is the cause). Any other
                exception propagates as it is.
        """
        x = self._check_input(x_nchw)
        if self._per_image and len(x) > 1:
            return self._run_each(x, target, outputs)
        feed = {self.meta.inputs[0]: x}
        if "target" in self.input_names:
            feed["target"] = self._check_target(target, x.shape[0])
        elif target is not None:
            raise InputError(f"model {self.path.name!r} was exported without gradients, so it takes no target; "
                             "re-export it with --gradients for class-specific methods")
        names = list(outputs) if outputs is not None else list(self.meta.outputs)
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise InputError(f"model {self.path.name!r} has no output {unknown[0]!r}; it has {list(self.output_names)}")
        try:
            values = self._run_bound(names, feed, x.shape[0])
            if values is None and self._device is not None:
                values = self._device.run(self.session, names, feed, self._out_specs,
                                          run=lambda session, binding: _run_binding(session, binding, self.path))
            if values is None:
                values = self._run_unbound(names, feed)
        except ORT_ERRORS as exc:
            raise ModelError(f"onnxruntime failed on {self.path.name!r}: {describe_ort_error(exc)}") from exc
        # maps are computed in float32: an fp16 file's half attentions are widened here, once
        if self._any_half:
            values = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in values.items()}
        logits = values["logits"]
        targets = None
        if "attention_grads" in values or "token_grads" in values:
            targets = feed["target"].copy()
            unset = targets < 0
            targets[unset] = logits[unset].argmax(-1)
        return Outputs(logits, values.get("attentions"), values.get("attention_grads"), targets,
                       values.get("tokens"), values.get("token_grads"), values.get("mix_grams"),
                       values.get("mix_grams_ln"), values.get("class_contributions"), values.get("tail_input"),
                       values.get("head_norms"))

    def _run_each(self, x: np.ndarray, target, outputs) -> Outputs:
        """:meth:`run` one image at a time, the results stacked (copies, not pooled buffers)."""
        if target is not None:
            target = self._check_target(target, len(x))
        runs = [self.run(x[i:i + 1], None if target is None else target[i:i + 1], outputs) for i in range(len(x))]
        return Outputs(*(None if getattr(runs[0], f) is None else np.concatenate([getattr(r, f) for r in runs])
                         for f in ("logits", "attentions", "grads", "targets", "tokens", "token_grads",
                                  "mix_grams", "mix_grams_ln", "class_contributions", "tail_input", "head_norms")))

    def _check_input(self, x_nchw: np.ndarray) -> np.ndarray:
        """``x_nchw`` checked against the graph input, as a contiguous array of its dtype."""
        x = np.asarray(x_nchw)
        c, h, w = self.meta.input_size
        if x.dtype.kind != "f":
            raise InputError(f"model {self.path.name!r} takes preprocessed float images (B, {c}, {h}, {w}); got "
                             f"dtype {x.dtype}: preprocess the images first (Explainer.preprocess)")
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w) or x.shape[0] == 0:
            raise InputError(f"model input must be (B, {c}, {h}, {w}) {self._input_dtype.name} with B >= 1; "
                             f"got shape {tuple(x.shape)}")
        if self._batch is not None and x.shape[0] != self._batch:
            raise InputError(f"model {self.path.name!r} was exported for batches of exactly {self._batch}; "
                             f"got {x.shape[0]} images")
        return np.ascontiguousarray(x, dtype=self._input_dtype)

    def _check_target(self, target: np.ndarray | Sequence[int] | None, batch: int) -> np.ndarray:
        """(B,) int64 target classes, -1 (the predicted class) where ``target`` is None."""
        if target is None:
            return np.full((batch,), -1, dtype=np.int64)
        tgt = np.asarray(target).reshape(-1)
        if tgt.shape[0] != batch:
            raise InputError(f"target must hold one class per image ({batch}); got {tgt.shape[0]}")
        if tgt.dtype.kind not in "iu":
            raise InputError(f"target must hold integer class indices; got dtype {tgt.dtype} ({tgt.tolist()})")
        tgt = np.ascontiguousarray(tgt, dtype=np.int64)
        # The graph would fail deep inside its backward (ScatterElements) instead.
        if (tgt >= self.meta.num_classes).any():
            raise InputError(f"target classes must be < {self.meta.num_classes} (or -1 for the predicted "
                             f"class); got {tgt.tolist()}")
        return tgt

    def _run_unbound(self, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``session.run``, with split outputs stacked back to ``[B, L, ...]``."""
        fetch = [p for n in names for p in self._split.get(n, (n,))]
        got = dict(zip(fetch, self.session.run(fetch, feed)))
        return {n: np.stack([got[p] for p in self._split[n]], axis=1) if n in self._split else got[n]
                for n in names}

    def _run_bound(self, names: list[str], feed: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray] | None:
        """Run with the outputs bound to pooled buffers; None where that cannot be done.

        It cannot where the provider is not the CPU, or an output's shape is not known up
        to the batch axis (its first), or its dtype is not float32/int64/float16. A split output's
        layers are bound to the slices ``buf[l]`` of one ``[L, B, ...]`` buffer, returned as
        its ``[B, L, ...]`` view (C-contiguous at batch 1; each layer ``[:, l]`` always is).
        """
        if self._pool is None:
            return None
        key = (tuple(names), batch)
        specs = self._bound_specs.get(key, False)
        if specs is False:  # worked out once per set of outputs and batch size
            specs = self._bound_specs[key] = self._specs(names, batch)
        if specs is None:
            return None
        arrays = self._pool.acquire(key, specs)
        binding = self._binding_of(names, arrays)
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)  # contiguous, and alive in `feed` until the run ends
        values = {}
        for name, arr in zip(names, arrays):
            # np.moveaxis is the same view as swapaxes at 50x the overhead
            values[name] = arr if name not in self._split else arr.swapaxes(0, 1)
        _run_binding(self.session, binding, self.path)
        return values

    def _specs(self, names: list[str], batch: int) -> list[tuple[tuple[int, ...], np.dtype]] | None:
        """(shape, dtype) of each pooled buffer for ``names`` at ``batch``; None where an output
        cannot be bound (see :meth:`_run_bound`)."""
        specs = []
        for name in names:
            parts = self._split.get(name, ())
            shape, dtype = self._out_specs.get(parts[0] if parts else name, (None, None))
            if dtype is None or not shape or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
                return None
            if isinstance(shape[0], int) and shape[0] != batch:
                return None
            specs.append((((len(parts),) if parts else ()) + (batch, *shape[1:]), dtype))
        return specs

    def _binding_of(self, names: list[str], arrays: tuple[np.ndarray, ...]) -> ort.IOBinding:
        """The IOBinding with ``arrays`` (a pooled set) bound as the outputs ``names``.

        Binding a dozen outputs costs about 0.1 ms, as much as rollout's arithmetic on a small
        model, so it is done once per pooled set and kept; each run only binds its input. The
        binding holds raw pointers, no reference, so it is kept beside a weak reference to the
        set's first array and used only while that array is the one the pool handed out (a set
        the pool let go of, whose memory may be reused, is bound afresh).
        """
        key = id(arrays[0])
        kept = self._bindings.get(key)
        if kept is not None and kept[0]() is arrays[0]:
            return kept[1]
        binding = self.session.io_binding()
        for name, arr in zip(names, arrays):
            parts = self._split.get(name)
            if parts is None:
                binding.bind_output(name, "cpu", 0, arr.dtype, arr.shape, arr.ctypes.data)
                continue
            for part, layer in zip(parts, arr):
                binding.bind_output(part, "cpu", 0, layer.dtype, layer.shape, layer.ctypes.data)
        with self._bindings_lock:
            kept_now = {k: v for k, v in self._bindings.items() if v[0]() is not None}
            kept_now[key] = (weakref.ref(arrays[0]), binding)
            self._bindings = kept_now
        return binding

    def run_plain(self, x_nchw: np.ndarray) -> np.ndarray:
        """Logits from a logits-only copy of the graph: the plain-inference baseline.

        The copy drops the ``attentions`` (and gradient) outputs and every node that only fed
        them, so it runs what a deployment without explanations would.
        """
        x = self._check_input(x_nchw)
        if self._plain is None:
            plain = logits_only(read_model(self.path))
            if self.providers[0] != ORT_NAMES["cpu"]:
                inference_graph(plain)
            self._plain = self._create_session(plain.SerializeToString())
        try:
            if self._per_image:  # one image per run, as in :meth:`run`
                return np.concatenate([self._plain.run(["logits"], {self.meta.inputs[0]: x[i:i + 1]})[0]
                                       for i in range(len(x))])
            return self._plain.run(["logits"], {self.meta.inputs[0]: x})[0]
        except ORT_ERRORS as exc:
            raise ModelError(f"onnxruntime failed on {self.path.name!r}: {describe_ort_error(exc)}") from exc


def _run_binding(session: ort.InferenceSession, binding, path: Path) -> None:
    """``session.run_with_iobinding``; its failures (plain RuntimeErrors from the binding
    wrapper, not onnxruntime's own exception types) become a ModelError naming the file."""
    try:
        session.run_with_iobinding(binding)
    except RuntimeError as exc:
        raise ModelError(f"onnxruntime failed on {path.name!r}: {describe_ort_error(exc)}") from exc
