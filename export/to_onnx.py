"""Export a timm ViT-family model to one self-describing ONNX file.

The graph takes ``input`` float32 ``[B, 3, H, W]`` (only B dynamic) and emits ``logits``
``[B, C]`` and ``attentions`` ``[B, L, H, N, N]`` (softmax probabilities of every block), with a
:class:`attnmap.runtime.core.meta.ModelMeta` stored as JSON under the ``"attnmap"`` metadata key. With
``gradients=True`` it also takes ``target`` int64 ``[B]`` (negative = the predicted class) and
emits ``attention_grads`` ``[B, L, H, N, N]``, d logit[target] / d attentions, for the
class-specific methods, and ``tokens`` / ``token_grads`` ``[B, N, D]`` (the last block's norm1
output and d logit[target] / d it) for Grad-CAM (see :mod:`attnmap.export.gradients` for how the
backward gets into the graph and why that tensor).

Exporter route: ``torch.onnx.export(..., dynamo=True)``, the default since torch 2.9. It traces
with ``torch.export`` (non-strict, so the Python forward hooks that collect the probabilities run
as plain Python during tracing), translates with onnxscript, names the outputs, and marks the
batch axis dynamic through ``dynamic_shapes`` (``Dim("batch")``) rather than the legacy
``dynamic_axes``. The TorchScript exporter is deprecated in this torch and emits a warning on
every call, so it is not used.

Files are written to a temporary name in the target folder, checked for parity with torch
(:mod:`attnmap.export.parity`), and only then moved into place (:mod:`attnmap.runtime.core.files`); a failed export
leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from attnmap.runtime.core.errors import AttnmapError, ExportError, suggest
from attnmap.runtime.core.files import commit, discard, temp_path
from attnmap.runtime.core.meta import EXPORT_HEAD_FUSIONS, ModelMeta
from attnmap.runtime.core.text import megabytes
from attnmap.runtime.model.inference_graph import inference_graph, inference_problems

from .gradients import GRAD_RTOL, GRADIENT_INPUTS, GRADIENT_OUTPUTS, check_gradient_options, trace_gradients
from .metadata import build_meta
from .parity import DECOMPOSED, check_parity, gradient_module, measure_parity
from .decomposition import DECOMP_RTOL
from .forward_outputs import check_forward_options, forward_wrapper
from .vit_attn import ViTWithAttention, describe_tokens
from .weights import (checkpoint_num_classes, create_pretrained, head_classes, load_checkpoint,
                      load_state_dict_strict, read_state_dict)

__all__ = ["ATTN_ATOL", "ExportReport", "export_onnx", "export_module", "export_wrapped", "check_parity"]

ATTN_ATOL = 1e-5
# protobuf cannot serialise a message of 2 GiB or more; keep headroom for the graph itself.
MAX_WEIGHT_BYTES = int(1.9 * 2**30)


@dataclass
class ExportReport:
    """What an export produced.

    Attributes:
        path: the written ``.onnx`` file.
        meta: the metadata embedded in it.
        logits_max_abs: largest |torch - onnxruntime| of the logits in the parity check.
        attentions_max_abs: same for the attention probabilities (0.0 without attentions).
        size_bytes: size of the file.
        seconds: wall time of the export, parity check included.
        grads_max_rel: largest |torch - onnxruntime| of the attention gradients, relative to the
            largest |gradient| torch gave (0.0 without gradients).
        token_grads_max_rel: same for ``token_grads``, Grad-CAM's token gradients (0.0 without
            gradients).
    """

    path: Path
    meta: ModelMeta
    logits_max_abs: float
    attentions_max_abs: float
    size_bytes: int
    seconds: float
    grads_max_rel: float = 0.0
    token_grads_max_rel: float = 0.0


def _relative(max_abs: float, scale: float) -> float:
    """``max_abs`` relative to ``scale``; ``max_abs`` itself where the scale is 0."""
    return max_abs / scale if scale > 0 else max_abs


def _check_heads(heads: str) -> None:
    if heads not in EXPORT_HEAD_FUSIONS:
        raise ExportError(f"heads must be one of {EXPORT_HEAD_FUSIONS}; got {heads!r}."
                          + suggest(str(heads), EXPORT_HEAD_FUSIONS))


def _check_module(model: nn.Module, model_name: str) -> None:
    params = list(model.parameters()) + list(model.buffers())
    devices = {p.device.type for p in params}
    if devices - {"cpu"}:
        raise ExportError(f"{model_name} has weights on {sorted(devices)}; move it to the CPU with model.cpu()")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes - {torch.float32}:
        raise ExportError(f"{model_name} has {sorted(map(str, dtypes))} weights; attnmap exports float32 "
                          "models (call model.float())")
    size = sum(p.numel() * p.element_size() for p in params)
    if size > MAX_WEIGHT_BYTES:
        raise ExportError(f"{model_name} holds {size / 2**30:.2f} GiB of weights; one self-contained ONNX "
                          f"file must stay below protobuf's 2 GiB limit")


def _unwrap_error(exc: BaseException) -> AttnmapError | None:
    """Our own error raised inside the traced forward, if the exporter wrapped one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, AttnmapError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _trace(wrapper: nn.Module, input_size: tuple[int, ...], opset: int | None, model_name: str,
           gradients: bool = False):
    """Trace ``wrapper`` (with its attention gradients) into an ``onnx.ModelProto``, dynamic batch."""
    # Batch 2, not 1: torch.export specialises a size-1 dimension to a constant.
    example = torch.zeros((2, *input_size), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1)
    # onnxscript's constant folder warns for every multi-output Split it leaves alone (EVA's
    # rotary embedding has several); that is expected and not worth a line per block.
    folding_log = logging.getLogger("onnxscript.optimizer._constant_folding")
    level = folding_log.level
    folding_log.setLevel(logging.ERROR)
    try:
        if gradients:
            module = trace_gradients(gradient_module(wrapper), example)
            args = (example, torch.full((2,), -1, dtype=torch.int64))
            inputs, outputs = list(GRADIENT_INPUTS), list(GRADIENT_OUTPUTS)
            dynamic: Any = ({0: batch}, {0: batch})
        else:
            module, args, inputs = wrapper, (example,), ["input"]
            outputs = ["logits", "attentions"] if wrapper.attentions else ["logits"]
            outputs = list(getattr(wrapper, "output_names", outputs))
            outputs += list(getattr(wrapper, "extra_outputs", ()))  # export/tail.py's tail_input
            dynamic = {"x": {0: batch}}
        with warnings.catch_warnings():
            # Both inputs share the batch Dim, which the exporter reports once per export.
            warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used")
            program = torch.onnx.export(
                module, args, None, input_names=inputs, output_names=outputs,
                opset_version=opset, dynamo=True, external_data=False, dynamic_shapes=dynamic,
                optimize=True, verbose=False)
    except Exception as exc:  # torch.export and onnxscript raise many types; report the first line
        own = _unwrap_error(exc)
        if own is not None:
            raise own from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx could not export {model_name}: {first}") from exc
    finally:
        folding_log.setLevel(level)
    proto = program.model_proto  # a new proto at each access
    finish = getattr(wrapper, "finish_proto", None)  # export/tail.py: the tail graph into the metadata
    if callable(finish):
        finish(proto, input_size, opset)
    return proto


def _opset_of(proto) -> int:
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _save(proto, meta: ModelMeta, path: Path) -> None:
    import onnx

    # the training form torch writes for a gradient graph (3-output LayerNormalization ...)
    # stops OpenVINO and other inference runtimes: written in its inference form
    inference_graph(proto)
    problems = inference_problems(proto)
    if problems:
        raise ExportError(f"the exported graph of {meta.model_name} is not inference-clean: {'; '.join(problems)}")
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(meta.to_props())
    onnx.helper.set_model_props(proto, props)
    if proto.ByteSize() >= 2**31:
        raise ExportError(f"the ONNX graph of {meta.model_name} is {proto.ByteSize() / 2**30:.2f} GiB; "
                          "a self-contained file must stay below 2 GiB")
    onnx.save_model(proto, str(path))
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported graph of {meta.model_name} is not valid ONNX: "
                          f"{str(exc).splitlines()[0]}") from exc


def export_module(model: nn.Module, out: str | Path, *, model_name: str, heads: str = "none",
                  labels: str | Path | Sequence[str] | None = None, attentions: bool = True,
                  opset: int | None = None, atol: float = 1e-4, extra: dict | None = None,
                  data_config: dict | None = None, gradients: bool = False,
                  decompositions: bool = False, tail: bool = False, norms: bool = False,
                  contributions: bool = False, log: Callable[[str], None] = print) -> ExportReport:
    """Export an already-built (e.g. freshly trained) timm ViT-family model.

    The model is put in eval mode for the export and returned to its previous mode after; its
    attention flags and hooks are restored as well.

    Args:
        model: timm ViT-family model on the CPU, float32.
        out: path of the ``.onnx`` file to write (its folder is created if needed).
        model_name: timm name recorded in the metadata (e.g. ``"vit_tiny_patch16_224"``).
        heads: ``"none"`` keeps all heads; ``"mean"``, ``"max"``, ``"min"`` fuse them in the graph.
        labels: labels file, list of class names, or None (ImageNet names for ImageNet-sized heads).
        attentions: False exports the same model with the ``logits`` output only.
        opset: ONNX opset; None uses the exporter's default.
        atol: logits tolerance of the parity gate, scaled by ``max(1, max|logit|)``; attentions
            must agree within :data:`ATTN_ATOL`.
        extra: free-form notes stored in ``ModelMeta.extra`` (e.g. training details).
        data_config: preprocessing overrides (``mean``, ``std``, ``interpolation``, ``crop_pct``,
            ``crop_mode``) over what timm resolves for the model.
        gradients: also take a ``target`` input and emit ``attention_grads`` (d logit[target] /
            d attentions, per image) for the class-specific methods, and ``tokens`` and
            ``token_grads`` (the last block's norm1 output and its gradient) for Grad-CAM;
            needs ``heads="none"``. The parity gate then checks both gradients against torch
            autograd as well, each within :data:`export.gradients.GRAD_RTOL` of its largest
            value, and the tokens within ``atol`` scaled like the logits.
        decompositions: also emit ``mix_grams`` and ``mix_grams_ln`` (and, for token-pooled
            models with a GELU MLP, ``class_contributions``) for the forward-only norm-based
            methods (see :mod:`export.decomposition`); needs ``heads="none"``, no gradients.
        tail: also emit ``tail_input`` (the tokens entering the last block) and store the tail
            graph (last block, final norm, head) in the metadata, for ViT-ReciproCAM (see
            :mod:`attnmap.export.tail`); timm ``VisionTransformer`` models, without gradients.
        norms: also emit ``head_norms`` float32 ``[B, L, N, H+1]`` (per block and token the norm
            of each head's value-output vector ``||γ1 ⊙ (z_j W_V^h + b_V^h) W_O^h||`` and of the
            block input ``||x_j||``) for the forward-only ``head-norm`` map, at a few percent
            over plain inference (see :mod:`export.norms`); needs ``heads="none"`` and
            attentions, without gradients, decompositions or tail. The parity gate checks them
            within :data:`export.decomposition.DECOMP_RTOL` of their largest value.
        contributions: also emit ``class_contributions`` float32 ``[B, N, C]`` (each token's part
            of every logit through the last block, final norm and head; DecompX-style, see
            :func:`export.decomposition.class_contributions`) for the forward-only ``decompx``
            map, without the Grams; with ``norms`` as well, both in one file. Token-pooled
            models with one class token and a GELU MLP; ``heads="none"`` and attentions,
            without gradients, decompositions (which emit them already) or tail. Checked as
            ``norms``.
        log: receives progress lines.

    Returns:
        :class:`ExportReport`.

    Raises:
        ExportError: outside the ViT family, bad labels, head fusion or no attentions with
            gradients, trace failure, parity failure (then no file is written).
    """
    started = time.perf_counter()
    _check_heads(heads)
    if gradients:
        check_gradient_options(heads, attentions)
    out = Path(out)
    describe_tokens(model)
    _check_module(model, model_name)
    meta = build_meta(model, model_name=model_name, heads=heads, labels=labels, attentions=attentions,
                      opset=opset or 0, data_config=data_config, extra=extra, gradients=gradients)
    if norms or contributions or decompositions:
        forward = dict(norms=norms, contributions=contributions, decompositions=decompositions)
        check_forward_options(heads, attentions, gradients, tail, **forward)
        with forward_wrapper(model, **forward) as wrapper:
            meta = meta.replace(outputs=wrapper.output_names)
            return export_wrapped(wrapper, meta, out, opset=opset, atol=atol, log=log, started=started)
    with ViTWithAttention(model, heads=heads, attentions=attentions) as wrapper:
        if tail:
            from .tail import with_tail

            return export_wrapped(*with_tail(wrapper, meta, atol=atol, log=log), out, opset=opset, atol=atol,
                                  log=log, started=started)
        return export_wrapped(wrapper, meta, out, opset=opset, atol=atol, log=log, started=started)


def export_wrapped(wrapper: nn.Module, meta: ModelMeta, out: str | Path, *, opset: int | None = None,
                   atol: float = 1e-4, log: Callable[[str], None] = print,
                   started: float | None = None) -> ExportReport:
    """Trace, save, check parity and commit one wrapped model (timm's or transformers').

    Args:
        wrapper: :class:`ViTWithAttention` or :class:`export.hf.HFWithAttention` around a model
            (its head fusion, attentions flag and layers agree with ``meta``).
        meta: the metadata to embed (its ``outputs`` say whether gradients are exported).
        out: path of the ``.onnx`` file.
        opset: ONNX opset; None uses the exporter's default.
        atol: logits tolerance of the parity gate (see :func:`export_module`).
        log: receives progress lines and the parity figures.
        started: ``time.perf_counter()`` when the export began (default: now).

    Returns:
        :class:`ExportReport`.

    Raises:
        ExportError: trace failure or parity failure (then no file is written).
    """
    started = time.perf_counter() if started is None else started
    out = Path(out)
    model_name, heads, attentions = meta.model_name, meta.head_fusion, "attentions" in meta.outputs
    gradients = meta.has_gradients
    model = wrapper.model
    tmp = temp_path(out)
    was_training = model.training
    model.eval()
    try:
        log(f"exporting {model_name} ({meta.num_layers} blocks, {meta.num_heads} heads, "
            f"{meta.num_tokens} tokens, heads={heads}, attentions={attentions}, gradients={gradients})")
        proto = _trace(wrapper, meta.input_size, opset, model_name, gradients)
        meta = meta.replace(exporter={**meta.exporter, "opset": str(_opset_of(proto))})
        _save(proto, meta, tmp)
        del proto
        result = measure_parity(wrapper, tmp, meta)
        logits_tol = atol * max(1.0, result.logits_scale)
        failures = []
        if not result.logits_max_abs <= logits_tol:
            failures.append(f"logits max |torch - onnx| {result.logits_max_abs:.2e} > {logits_tol:.2e}")
        if attentions and not result.attentions_max_abs <= ATTN_ATOL:
            failures.append(f"attentions max |torch - onnx| {result.attentions_max_abs:.2e} > {ATTN_ATOL:.0e}")
        if result.row_sum_max_err > ATTN_ATOL:
            failures.append(f"attention rows sum to 1 +- {result.row_sum_max_err:.2e}")
        grads_rel = _relative(result.grads_max_abs, result.grads_scale)
        token_grads_rel = _relative(result.token_grads_max_abs, result.token_grads_scale)
        tokens_tol = atol * max(1.0, result.tokens_scale)
        if gradients and not grads_rel <= GRAD_RTOL:
            failures.append(f"attention_grads max |torch - onnx| {result.grads_max_abs:.2e} is {grads_rel:.2e} "
                            f"of the largest gradient {result.grads_scale:.2e} (> {GRAD_RTOL:.0e})")
        if gradients and not result.tokens_max_abs <= tokens_tol:
            failures.append(f"tokens max |torch - onnx| {result.tokens_max_abs:.2e} > {tokens_tol:.2e}")
        if gradients and not token_grads_rel <= GRAD_RTOL:
            failures.append(f"token_grads max |torch - onnx| {result.token_grads_max_abs:.2e} is "
                            f"{token_grads_rel:.2e} of the largest gradient {result.token_grads_scale:.2e} "
                            f"(> {GRAD_RTOL:.0e})")
        if result.decompositions_max_rel > DECOMP_RTOL:
            failures.append(f"{'/'.join(n for n in meta.outputs if n in DECOMPOSED)} max |torch - onnx| is "
                            f"{result.decompositions_max_rel:.2e} of "
                            f"their largest value (> {DECOMP_RTOL:.0e})")
        if "tail_input" in meta.outputs and not result.tail_input_max_abs <= atol * max(1.0, result.tail_input_scale):
            failures.append(f"tail_input max |torch - onnx| {result.tail_input_max_abs:.2e}")
        if failures:
            raise ExportError(f"parity check failed for {model_name}: {'; '.join(failures)}; no file written")
        commit(tmp, out)
    finally:
        model.train(was_training)
        discard(tmp)
    size = out.stat().st_size
    seconds = time.perf_counter() - started
    grads_note = (f", attention_grads max |d| {grads_rel:.2e} and token_grads {token_grads_rel:.2e} of the largest"
                  if gradients else "")
    decomposed = [n for n in meta.outputs if n in DECOMPOSED]
    decomp_note = (f", {'/'.join(decomposed)} max |d| {result.decompositions_max_rel:.2e} of the largest"
                   if decomposed else "")
    log(f"wrote {out} ({megabytes(size)}, {seconds:.1f} s); parity: logits max |d| "
        f"{result.logits_max_abs:.2e}, attentions max |d| {result.attentions_max_abs:.2e}{grads_note}{decomp_note}")
    return ExportReport(out, meta, result.logits_max_abs, result.attentions_max_abs, size, seconds,
                        grads_rel if gradients else 0.0, token_grads_rel if gradients else 0.0)


def _build(model_name: str, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    try:
        return timm.create_model(model_name, pretrained=False, **kwargs).eval()
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"timm could not build {model_name} with {kwargs}: {first}") from exc


def export_onnx(model_name: str, out: str | Path, *, checkpoint: str | Path | None = None,
                pretrained: bool = False, img_size: int | None = None, heads: str = "none",
                labels: str | Path | Sequence[str] | None = None, attentions: bool = True,
                model_kwargs: dict | None = None, opset: int | None = None, atol: float = 1e-4,
                gradients: bool = False, decompositions: bool = False, tail: bool = False,
                norms: bool = False, contributions: bool = False, log: Callable[[str], None] = print,
                random_weights_hint: str = "pass checkpoint=PATH or pretrained=True") -> ExportReport:
    """Build a timm model by name, load its weights and export it (see :func:`export_module`).

    ``model_name`` may instead name a Hugging Face transformers model: a ``save_pretrained``
    folder or ``hf:ORG/NAME`` (see :func:`export.hf_export.export_hf`); timm names win.

    Args:
        model_name: timm model name, optionally with a pretrained tag (``"deit_tiny_patch16_224"``),
            a transformers model folder, or ``hf:ORG/NAME``.
        out: path of the ``.onnx`` file to write.
        checkpoint: local weights (``.safetensors``, ``.pth``/``.pt``/``.bin``, JAX ``.npz``), loaded
            strictly. When ``model_kwargs`` has no ``num_classes``, the checkpoint's head size is used.
        pretrained: download timm's pretrained weights (needs the hub; fails fast offline).
        img_size: input resolution override (square), e.g. 224 for a 518 px DINOv2.
        heads: ``"none"``, ``"mean"``, ``"max"`` or ``"min"`` (head fusion in the graph).
        labels: labels file, list of names, or None (ImageNet names for ImageNet-sized heads).
        attentions: False exports the same model with the ``logits`` output only.
        model_kwargs: extra ``timm.create_model`` arguments (``depth``, ``num_classes`` ...).
        opset: ONNX opset; None uses the exporter's default.
        atol: logits tolerance of the parity gate (scaled by the logit magnitude).
        gradients: also emit ``attention_grads``, ``tokens`` and ``token_grads`` for a ``target``
            input (see :func:`export_module`).
        decompositions: also emit the forward-only decomposition outputs (see :func:`export_module`;
            timm models only).
        tail: also emit ``tail_input`` and store the tail graph for ViT-ReciproCAM (see
            :func:`export_module`).
        norms: also emit ``head_norms`` for the forward-only ``head-norm`` map (see
            :func:`export_module`, and :mod:`export.hf_norms` for transformers models).
        contributions: also emit ``class_contributions`` for the forward-only ``decompx`` map,
            without the Grams (see :func:`export_module`; timm models only).
        log: receives progress lines (and the warning when weights are random).
        random_weights_hint: how the warning about random weights tells the caller to pass
            real ones (the CLI says ``--checkpoint FILE or --pretrained``).

    Returns:
        :class:`ExportReport`; ``meta.extra["weights"]`` records where the weights came from.

    Raises:
        ExportError: unknown model, conflicting options, weights that do not load, a model
            outside the ViT family, or a failed parity check.
    """
    import timm

    from .hf_load import is_hf_source

    started = time.perf_counter()
    _check_heads(heads)
    if gradients:
        check_gradient_options(heads, attentions)
    check_forward_options(heads, attentions, gradients, tail, norms=norms, contributions=contributions,
                          decompositions=decompositions)
    if not timm.is_model(model_name) and is_hf_source(model_name):
        given = [k for k, v in (("checkpoint=", checkpoint), ("pretrained=True", pretrained), ("img_size=", img_size),
                                ("model_kwargs=", model_kwargs), ("decompositions=True", decompositions),
                                ("tail=True", tail), ("contributions=True", contributions)) if v]
        if given:
            raise ExportError(f"{', '.join(given)} do not apply to the transformers model {model_name}: its "
                              "weights, input size and head come from its own files")
        from .hf_export import export_hf

        report = export_hf(model_name, out, heads=heads, labels=labels, attentions=attentions, opset=opset,
                           atol=atol, gradients=gradients, norms=norms, log=log)
        return dataclasses.replace(report, seconds=time.perf_counter() - started)
    if not timm.is_model(model_name):
        raise ExportError(f"{model_name!r} is neither a timm model nor a folder holding a transformers model "
                          f"(config.json); write hf:ORG/NAME for the Hugging Face hub."
                          f"{suggest(model_name, timm.list_models())}")
    if checkpoint is not None and pretrained:
        raise ExportError("use just one of checkpoint= and pretrained=True")
    kwargs = dict(model_kwargs or {})
    for key in ("pretrained", "checkpoint_path", "pretrained_cfg_overlay"):
        if key in kwargs:
            raise ExportError(f"model_kwargs must not set {key!r}; use export_onnx's checkpoint=/pretrained=")
    if img_size is not None:
        kwargs["img_size"] = int(img_size)

    state_dict = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if checkpoint.suffix.lower() == ".npz":
            classes = checkpoint_num_classes(checkpoint)
        else:
            state_dict = read_state_dict(checkpoint)
            classes = head_classes(state_dict)
        if "num_classes" not in kwargs and classes is not None:
            kwargs["num_classes"] = classes
        source = f"checkpoint:{checkpoint.name}"
    elif pretrained:
        source = "pretrained"
    else:
        source = "random"

    if pretrained:
        model = create_pretrained(model_name, kwargs, log)
    else:
        model = _build(model_name, kwargs)
    describe_tokens(model)
    if state_dict is not None:
        load_state_dict_strict(model, state_dict, checkpoint.name, log)
        log(f"loaded weights from {checkpoint}")
        del state_dict
    elif checkpoint is not None:
        load_checkpoint(model, checkpoint, log)
    elif not pretrained:
        log(f"warning: no checkpoint and no pretrained weights: exporting {model_name} with RANDOM weights "
            f"({random_weights_hint} for a real model)")
    report = export_module(model, out, model_name=model_name, heads=heads, labels=labels,
                           attentions=attentions, opset=opset, atol=atol, extra={"weights": source},
                           gradients=gradients, decompositions=decompositions, tail=tail, norms=norms,
                           contributions=contributions, log=log)
    return dataclasses.replace(report, seconds=time.perf_counter() - started)
