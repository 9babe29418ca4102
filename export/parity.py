"""Parity gate: does the ONNX file compute what the torch model computes?

The same seeded random batch goes through the torch model (wrapped by
:class:`export.vit_attn.ViTWithAttention`) and through onnxruntime on the CPU; the largest
absolute differences of the logits and of the attention probabilities are measured, the dynamic
batch axis is exercised with a second, single-image run, and the attention rows of the file are
checked to sum to 1. For a transformers model the torch side is transformers itself: the
model with eager attention called with ``output_attentions=True``. For a file with attention
gradients, the gradients torch autograd gives (:class:`export.gradients.AttentionGradients`
run eagerly) are compared too, with one image's
target given explicitly and the others left to the predicted class (target -1): the attention
gradients, and Grad-CAM's token features (the last block's norm1 output) with their gradients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attnmap.runtime.core.errors import ExportError
from attnmap.runtime.core.meta import ModelMeta

from .decomposition import CONTRIBUTION_OUTPUT, DECOMPOSITION_OUTPUTS
from .norms import NORMS_OUTPUT
from .gradients import AttentionGradients
from .vit_attn import ViTWithAttention

__all__ = ["ROW_SUM_ATOL", "ParityResult", "ort_session", "gradient_module", "measure_parity", "check_parity"]

ROW_SUM_ATOL = 1e-5
# outputs compared relative to their largest value (ParityResult.decompositions_max_rel)
DECOMPOSED = (*DECOMPOSITION_OUTPUTS, CONTRIBUTION_OUTPUT, NORMS_OUTPUT)


def _cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def ort_session(path: str | Path):
    """An onnxruntime CPU session for ``path``, one intra-op thread per usable core, no spinning.

    Args:
        path: the ``.onnx`` file.

    Returns:
        ``onnxruntime.InferenceSession``.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = _cpu_threads()
    opts.inter_op_num_threads = 1
    # Spinning threads burn the shared cores between runs for no gain in a one-off check.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class ParityResult:
    """Outcome of :func:`measure_parity`.

    Attributes:
        logits_max_abs: largest |torch - onnx| over the logits of every run.
        attentions_max_abs: same for the attentions (0.0 when the file has none).
        logits_scale: largest |logit| torch produced (tolerances scale with it).
        row_sum_max_err: largest |row sum - 1| of the file's attentions (0.0 when not
            applicable: no attentions, or max/min head fusion).
        grads_max_abs: largest |torch - onnx| of the attention gradients (0.0 without them).
        grads_scale: largest |gradient| torch produced (0.0 without gradients).
        tokens_max_abs: largest |torch - onnx| of the ``tokens`` output (0.0 without it).
        tokens_scale: largest |token feature| torch produced (0.0 without them).
        token_grads_max_abs: largest |torch - onnx| of ``token_grads`` (0.0 without it).
        token_grads_scale: largest |token gradient| torch produced (0.0 without them).
        decompositions_max_rel: largest |torch - onnx| of each decomposition output
            (``mix_grams``, ``mix_grams_ln``, ``class_contributions``, ``head_norms``) over its
            largest |value|,
            the worst of them (0.0 without them).
        tail_input_max_abs: largest |torch - onnx| of ``tail_input`` (export/tail.py; 0.0 without it).
        tail_input_scale: largest |token| of ``tail_input`` torch produced (0.0 without it).
    """

    logits_max_abs: float
    attentions_max_abs: float
    logits_scale: float
    row_sum_max_err: float
    grads_max_abs: float = 0.0
    grads_scale: float = 0.0
    tokens_max_abs: float = 0.0
    tokens_scale: float = 0.0
    token_grads_max_abs: float = 0.0
    token_grads_scale: float = 0.0
    decompositions_max_rel: float = 0.0
    tail_input_max_abs: float = 0.0
    tail_input_scale: float = 0.0


def gradient_module(wrapper: nn.Module) -> nn.Module:
    """The ``(input, target) -> (logits, attentions, attention_grads, tokens, token_grads)`` module.

    Args:
        wrapper: :class:`ViTWithAttention`, or a wrapper with its own ``gradient_module()``
            (:class:`export.hf.HFWithAttention`).

    Returns:
        :class:`export.gradients.AttentionGradients` (or the wrapper's subclass of it).
    """
    own = getattr(wrapper, "gradient_module", None)
    return own() if callable(own) else AttentionGradients(wrapper)


def _as_wrapper(model: nn.Module, meta: ModelMeta) -> tuple[nn.Module, bool]:
    # a wrapper already, or one around a wrapper (export/tail.py's TailInput adds outputs)
    if (isinstance(model, ViTWithAttention) or callable(getattr(model, "set_deltas", None))
            or hasattr(model, "extra_outputs")):
        return model, False
    return ViTWithAttention(model, heads=meta.head_fusion, attentions="attentions" in meta.outputs), True


def measure_parity(model: nn.Module, onnx_path: str | Path, meta: ModelMeta, *, batch: int = 2,
                   seed: int = 0) -> ParityResult:
    """Run torch and onnxruntime on the same random inputs and measure the differences.

    Args:
        model: the timm model or its :class:`ViTWithAttention` wrapper, or a transformers
            model's :class:`export.hf.HFWithAttention`, that the file came from.
        onnx_path: the exported file.
        meta: the file's metadata (input size, outputs, head fusion).
        batch: size of the main batch; a batch of 1 is run as well to exercise the dynamic axis.
        seed: seed of the ``torch.randn`` inputs.

    Returns:
        The differences, the logit scale and the row-sum error (see :class:`ParityResult`).

    Raises:
        ExportError: the file's inputs, outputs or shapes are not what ``meta`` says.
    """
    if batch < 1:
        raise ExportError(f"parity batch must be >= 1; got {batch}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *meta.input_size), generator=gen, dtype=torch.float32)
    # The first image's gradient is of an explicit class (the last one), every other image's
    # of its predicted class; the single-image run uses the predicted class.
    targets = torch.full((batch,), -1, dtype=torch.int64)
    targets[0] = meta.num_classes - 1
    runs = [(x, targets)] if batch == 1 else [(x, targets), (x[:1].clone(), targets.new_full((1,), -1))]
    session = ort_session(onnx_path)
    in_names = tuple(i.name for i in session.get_inputs())
    out_names = tuple(o.name for o in session.get_outputs())
    if in_names != meta.inputs or out_names != meta.outputs:
        raise ExportError(f"{onnx_path}: graph inputs/outputs {in_names}/{out_names} differ from the "
                          f"metadata's {meta.inputs}/{meta.outputs}")
    wrapper, owned = _as_wrapper(model, meta)
    was_training = wrapper.model.training
    wrapper.model.eval()
    d_logits = d_attn = scale = row_err = 0.0
    # output name -> [largest |torch - onnx|, largest |torch|] for the outputs without extra checks
    plain = {name: [0.0, 0.0] for name in ("attention_grads", "tokens", "token_grads", *DECOMPOSED, "tail_input")}
    try:
        for xb, tb in runs:
            feed = {"input": xb.numpy()}
            if meta.has_gradients:
                ref = gradient_module(wrapper)(xb, tb)
                feed["target"] = tb.numpy()
            else:
                # A transformers model's reference is transformers itself (eager attention,
                # output_attentions=True), not the wrapper's own capture.
                reference = getattr(wrapper, "reference", None)
                with torch.no_grad():
                    ref = reference(xb) if callable(reference) else wrapper(xb)
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = session.run(None, feed)
            for name, r, g in zip(meta.outputs, ref, got):
                r = r.detach().numpy()
                if g.shape != r.shape or g.dtype != np.float32:
                    raise ExportError(f"{onnx_path}: output {name!r} is {g.dtype}{list(g.shape)}; "
                                      f"torch gives float32{list(r.shape)}")
                if not np.isfinite(g).all():
                    raise ExportError(f"{onnx_path}: output {name!r} has NaN or Inf values")
                diff = float(np.abs(g.astype(np.float64) - r).max())
                if name == "logits":
                    d_logits = max(d_logits, diff)
                    scale = max(scale, float(np.abs(r).max()))
                elif name in plain:
                    plain[name][0] = max(plain[name][0], diff)
                    plain[name][1] = max(plain[name][1], float(np.abs(r).max()))
                else:
                    d_attn = max(d_attn, diff)
                    expect = (xb.shape[0], meta.num_layers, meta.output_heads, meta.num_tokens, meta.num_tokens)
                    if g.shape != expect:
                        raise ExportError(f"{onnx_path}: attentions shape {g.shape}; metadata says {expect}")
                    if meta.head_fusion in ("none", "mean"):
                        row_err = max(row_err, float(np.abs(g.sum(-1, dtype=np.float64) - 1.0).max()))
    finally:
        wrapper.model.train(was_training)
        if owned:
            wrapper.close()
    decomposed = max((d / s if s > 0 else d for d, s in (plain[n] for n in DECOMPOSED)), default=0.0)
    return ParityResult(d_logits, d_attn, scale, row_err, *plain["attention_grads"], *plain["tokens"],
                        *plain["token_grads"], decomposed, *plain["tail_input"])


def check_parity(model: nn.Module, onnx_path: str | Path, meta: ModelMeta, *, batch: int = 2,
                 seed: int = 0) -> tuple[float, float]:
    """Largest differences between the torch model and the ONNX file on seeded random inputs.

    Args:
        model: the timm model (or its :class:`ViTWithAttention` wrapper) the file came from.
        onnx_path: the exported file.
        meta: the file's metadata.
        batch: size of the main batch (a batch of 1 is also run, for the dynamic axis).
        seed: seed of the random inputs.

    Returns:
        ``(logits_max_abs, attentions_max_abs)``; the second is 0.0 for a logits-only file.

    Raises:
        ExportError: the graph's names or shapes disagree with ``meta``, or its attention rows
            (unfused or mean-fused) do not sum to 1 within :data:`ROW_SUM_ATOL`.
    """
    result = measure_parity(model, onnx_path, meta, batch=batch, seed=seed)
    if result.row_sum_max_err > ROW_SUM_ATOL:
        raise ExportError(f"{onnx_path}: attention rows sum to 1 +- {result.row_sum_max_err:.2e}; "
                          f"expected within {ROW_SUM_ATOL:.0e}")
    return result.logits_max_abs, result.attentions_max_abs
