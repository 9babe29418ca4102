"""Explanation methods: (B, gh, gw) float32 saliency maps in [0, 1] on the token grid.

Every method is a plain function registered in :data:`METHODS` with one typed spec per option
and a kind (:class:`~attnmap.runtime.methods.base.Method`): attention methods
``fn(attentions, layout, *, grads=None, **options)``, perturbation methods
``fn(x, forward, classes, layout, **options)`` that run the model on perturbed inputs, and
feature methods ``fn(tokens, token_grads, layout, **options)``; each kind is an adapter object
(:mod:`~attnmap.runtime.methods.kinds`) that says what it reads and how it is called.
:func:`attention_maps` runs an attention method by name after checking its options
(:func:`check_options`); :meth:`attnmap.Explainer.maps` runs any kind. The CLI's flags, the
library's checks and the live view's keys all derive from those specs.

    >>> maps = attention_maps("rollout", attentions, meta.layout, discard_ratio=0.9)
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from attnmap.runtime.core.errors import ExplainError, MethodOptionError, OptionError, suggest
from attnmap.runtime.core.meta import ModelMeta, TokenLayout
from attnmap.runtime.core.options import OptionSpec, check_names
from attnmap.runtime.methods.attention import raw_attention
from attnmap.runtime.methods.causal import TOKEN_MASKS, vit_cx
from attnmap.runtime.methods.intuition import FEEDBACK, beyond_intuition
from attnmap.runtime.methods.base import HEAD_FUSIONS, Method, make_method, normalize_maps
from attnmap.runtime.methods.gradcam import gradcam
from attnmap.runtime.methods.flow import attention_flow
from attnmap.runtime.methods.gradient import chefer, gradsam, product_rule
from attnmap.runtime.methods.contribution import decompx
from attnmap.runtime.methods.decomposition import attn_norm, globenc, head_norm
from attnmap.runtime.methods.kinds import (ATTENTION, CONTRIBUTION, DECOMPOSITION, FEATURES, KINDS, NORMS, PERTURBATION,
                                           TAIL, Kind)
from attnmap.runtime.methods.perturbation import OCCLUSION_BASELINES, occlusion, rise
from attnmap.runtime.methods.reciprocam import SCORES, reciprocam
from attnmap.runtime.methods.rollout import attention_rollout, grad_rollout

__all__ = ["AUTO", "KINDS", "LIVE_DEFAULTS", "METHODS", "Kind", "Method", "attention_maps", "check_method_use",
           "check_options", "default_method", "resolve_method", "get_method", "normalize_maps", "runs_on",
           "attention_flow", "attention_rollout", "grad_rollout",
           "raw_attention", "chefer", "gradsam", "product_rule", "occlusion", "rise", "gradcam", "attn_norm",
           "head_norm", "globenc", "decompx", "reciprocam", "beyond_intuition", "vit_cx"]

# One declaration per option; methods that share an option share its spec (the default comes
# from each function's signature).
_HEAD_FUSION = OptionSpec("head_fusion", str, None, "How the heads of a layer are fused.", choices=HEAD_FUSIONS)
_DISCARD = OptionSpec("discard_ratio", float, None,
                      "Fraction of each layer's lowest fused attention set to zero (vit-explain).",
                      low=0.0, high=1.0, high_open=True)
_RESIDUAL = OptionSpec("residual", bool, None, "Mix in the identity for the residual path: 0.5 A + 0.5 I.")
_START = OptionSpec("start_layer", int, None, "First layer of the propagation.", axis="layers")
_LAYER = OptionSpec("layer", int, None, "Which layer's attention to show.", axis="layers")
_HEAD = OptionSpec("head", int, None, "One head's attention (default: the heads fused).", axis="heads")
_EPS = OptionSpec("eps", float, None, "Shift of the product rule's factors (stability).", low=0.0, low_open=True)
# Upper bounds are absolute (a value past them is absurd on any model); what a value costs on a
# given model is checked against a budget before any work starts (methods/cost.py).
_FORWARD_BATCH = OptionSpec("forward_batch", int, None, "Perturbed inputs per model run (memory vs speed).", low=1,
                            high=4096)
_OCCLUSION = {
    "window": OptionSpec("window", int, None, "Occluder side in input pixels (default: the patch size).", low=1,
                          high=4096),
    "stride": OptionSpec("stride", int, None, "Occluder step in input pixels, <= window (default: the window).",
                         low=1, high=4096),
    "baseline": OptionSpec("baseline", str, None, "What the occluder shows: the mean colour or the blurred input.",
                           choices=OCCLUSION_BASELINES),
    "forward_batch": _FORWARD_BATCH}
_RISE = {
    "masks": OptionSpec("masks", int, None, "Number of random RISE masks N (noise falls as 1/sqrt(N)).", low=1,
                         high=1_000_000),
    "p": OptionSpec("p", float, None, "Probability that a mask cell is kept.", low=0.0, low_open=True, high=1.0),
    "cells": OptionSpec("cells", int, None, "Side s of the masks' low-resolution grid (s x s cells).", low=1,
                         high=1024),
    "mask_seed": OptionSpec("mask_seed", int, None, "Seed of the RISE masks (same seed, same map).", low=0),
    "forward_batch": _FORWARD_BATCH}

METHODS: dict[str, Method] = {m.name: m for m in (
    make_method("rollout", attention_rollout,
                "Attention rollout (Abnar & Zuidema 2020): residual-mixed attention composed over layers.",
                {"head_fusion": _HEAD_FUSION, "discard_ratio": _DISCARD, "residual": _RESIDUAL,
                 "start_layer": _START}),
    make_method("attention", raw_attention,
                "Raw attention of one layer (default the last) from the class token, one head or fused.",
                {"layer": _LAYER, "head": _HEAD, "head_fusion": _HEAD_FUSION}),
    make_method("flow", attention_flow,
                "Attention flow (Abnar & Zuidema 2020): exact max-flow per patch, by SciPy (extra 'flow').",
                {"head_fusion": _HEAD_FUSION, "residual": _RESIDUAL, "start_layer": _START}),
    make_method("chefer", chefer,
                "Gradient-weighted relevance (Chefer et al. 2021): R += mean_h((G*A)+) R over layers.",
                {"start_layer": _START}, needs_gradients=True),
    make_method("grad_rollout", grad_rollout,
                "Gradient rollout (vit-explain): rollout of mean_h(relu(A*G)) per layer.",
                {"discard_ratio": _DISCARD, "residual": _RESIDUAL, "start_layer": _START}, needs_gradients=True),
    make_method("gradsam", gradsam,
                "Grad-SAM (Barkan et al. 2021): mean over layers and heads of relu(G)*A.",
                {"start_layer": _START}, needs_gradients=True),
    make_method("product", product_rule,
                "Product rule: product over blocks of the shifted mean_h(A*G) of the class token.",
                {"eps": _EPS, "start_layer": _START}, needs_gradients=True),
    make_method("occlusion", occlusion,
                "Occlusion: drop of the class probability as a patch-sized occluder slides over the input.",
                _OCCLUSION, kind=PERTURBATION),
    make_method("rise", rise,
                "RISE (Petsiuk et al. 2018): class probability of N randomly masked inputs, weighting the masks.",
                _RISE, kind=PERTURBATION),
)}

METHODS["attn-norm"] = make_method(
    "attn-norm", attn_norm,
    "Attention norm (Kobayashi et al. 2020): edges ||sum_h a_ij u_j|| + ||x_i||, rolled out.",
    {"residual": OptionSpec("residual", bool, None, "Add the residual stream's norm ||x_i|| on the diagonal."),
     "start_layer": _START}, kind=DECOMPOSITION)
METHODS["head-norm"] = make_method(
    "head-norm", head_norm,
    "Attention norms head by head (Kobayashi et al. 2020): sum_h a_ij ||u_j|| + ||x_i||, rolled out.",
    {"residual": OptionSpec("residual", bool, None, "Add the residual stream's norm ||x_i|| on the diagonal."),
     "start_layer": _START}, kind=NORMS)
METHODS["globenc"] = make_method(
    "globenc", globenc,
    "GlobEnc (Modarressi et al. 2022): token terms + residual through LN, as norms, rolled out.",
    {"start_layer": _START}, kind=DECOMPOSITION)
METHODS["decompx"] = make_method(
    "decompx", decompx,
    "DecompX-style (Modarressi et al. 2023): tokens' parts of the class logit, no backward pass.",
    {"start_layer": _START}, kind=CONTRIBUTION)
_RECIPROCAM = {
    "gaussian": OptionSpec("gaussian", bool, None,
                           "Keep each patch's 3x3 neighbourhood, Gaussian-weighted (else the patch alone)."),
    "score": OptionSpec("score", str, None, "Which class score of each masked copy is the map: logit or softmax.",
                        choices=SCORES),
    "forward_batch": _FORWARD_BATCH}  # here the masked token copies per tail run

METHODS["reciprocam"] = make_method(
    "reciprocam", reciprocam,
    "ViT-ReciproCAM (Byun & Lee 2023): class score of the last block per Gaussian-masked token copy.",
    _RECIPROCAM, kind=TAIL)

METHODS["gradcam"] = make_method(
    "gradcam", gradcam, "Grad-CAM (Selvaraju et al. 2017) on the last block's patch tokens: relu(sum_k a_k A_k).",
    {}, needs_gradients=True, kind=FEATURES)
METHODS["beyond_intuition"] = make_method(
    "beyond_intuition", beyond_intuition,
    "Beyond Intuition (Chen et al. 2023), head-wise: weighted attention x integrated gradients.",
    {"start_layer": _START}, needs_gradients=True, kind=FEEDBACK)
METHODS["vit_cx"] = make_method(
    "vit_cx", vit_cx,
    "ViT-CX (Xie et al. 2023): clustered embedding masks weighted by their causal impact.",
    {"distance_threshold": OptionSpec("distance_threshold", float, None,
                                      "Cosine distance below which embedding masks are clustered together.",
                                      low=0.0, high=2.0),
     "noise": OptionSpec("noise", float, None, "Std of the Gaussian noise in the masked-out region (normalised "
                                               "input units).", low=0.0, high=10.0),
     "noise_seed": OptionSpec("noise_seed", int, None, "Seed of the noise (same seed, same map).", low=0),
     "forward_batch": _FORWARD_BATCH}, kind=TOKEN_MASKS)


def get_method(method: str) -> Method:
    """The registered method called ``method``, or a MethodOptionError with close matches."""
    m = METHODS.get(method) if isinstance(method, str) else None
    if m is None:
        raise MethodOptionError(f"unknown explanation method {method!r}; expected one of "
                                f"{', '.join(METHODS)}.{suggest(str(method), METHODS)}")
    return m


def check_options(method: str, options: Mapping[str, Any], meta: ModelMeta | None = None, *,
                  model: str | None = None) -> dict[str, Any]:
    """Check a method's options against its specs (and, given ``meta``, against the model).

    Args:
        method: a key of :data:`METHODS`.
        options: option name -> value, as given.
        meta: the model's metadata: layer and head indices are then checked against its layers
            and head outputs, and options that a head-fused file cannot honour are refused.
        model: how messages name the model (``"'deit.onnx'"``); default "a model".

    Returns:
        The options with values converted to their declared types.

    Raises:
        MethodOptionError: unknown method or option, wrong type, out of range or choices, or
            a head choice on a file whose heads were fused at export.
    """
    m = get_method(method)
    owner = f"method {m.name!r}"
    fused = None if meta is None or meta.head_fusion == "none" else meta.head_fusion
    try:
        check_names(dict(options), m.options, owner)
        if fused is not None and options.get("head") is not None:
            raise OptionError(
                f"option 'head' of {owner} does not apply: this file's heads were fused at export "
                f"(`attnmap export --heads {fused}`), so it has one head output; re-export without --heads "
                "to see single heads")
        out = {}
        for name, value in options.items():
            spec = m.options[name]
            size = None
            if meta is not None and spec.axis is not None:
                size = meta.num_layers if spec.axis == "layers" else meta.output_heads
            out[name] = spec.check(value, owner=owner, size=size, model=model or "a model")
        if fused is not None and out.get("head_fusion", fused) != fused:
            raise OptionError(
                f"option head_fusion={out['head_fusion']!r} of {owner} cannot apply: this file's heads were "
                f"already fused by {fused!r} at export; re-export without --heads to choose the fusion")
    except OptionError as exc:
        raise MethodOptionError(str(exc)) from exc
    return out


# ``method="auto"`` (the default of explain, live and serve): the first of LIVE_DEFAULTS the file can
# run. Each is a one-pass map within the live budget (<= 1.10x plain inference at 224), most
# faithful first, as `attnmap evaluate` ranked them on DeiT-Tiny's shared photos and on the shipped
# model's synthetic images (README, "Which map to trust, and what it costs").
AUTO = "auto"
LIVE_DEFAULTS = ("head-norm", "rollout")


def default_method(meta: ModelMeta) -> str:
    """The most faithful live method ``meta``'s file can run (:data:`LIVE_DEFAULTS`)."""
    for name in LIVE_DEFAULTS:
        if runs_on(name, meta):
            return name
    return "rollout"  # check_method_use then says what the file lacks


def resolve_method(method: str, meta: ModelMeta) -> str:
    """``method``, or :func:`default_method` of ``meta`` for :data:`AUTO`."""
    return default_method(meta) if method == AUTO else method


def check_method_use(method: str, meta: ModelMeta, *, class_given: bool = False, model: str = "this model") -> Method:
    """The registered method, after checking that it can run on ``meta``'s model as asked.

    Args:
        method: a key of :data:`METHODS`.
        meta: the model's metadata.
        class_given: a class to explain was given (only class-specific methods take one:
            gradient, perturbation and feature methods).
        model: how messages name the model (``"'deit.onnx'"``).

    Raises:
        MethodOptionError: unknown method, or a class given to a class-agnostic method.
        ExplainError: the model lacks what the method reads (see ``Kind.check_model``): a
            method that needs gradients on a model exported without them (perturbation
            methods need none).
    """
    m = get_method(method)
    if class_given and not m.class_specific:
        raise MethodOptionError(f"method {m.name!r} is class-agnostic, so a class to explain does not apply; use a "
                                "class-specific method (" + ", ".join(n for n, x in METHODS.items()
                                                                      if x.class_specific) + ")")
    m.kind.check_model(m, meta, model)
    return m


def runs_on(method: str, meta: ModelMeta) -> bool:
    """Whether ``meta``'s model can run ``method`` (:func:`check_method_use` passes)."""
    try:
        check_method_use(method, meta)
    except (ExplainError, MethodOptionError):
        return False
    return True


def attention_maps(method: str, attentions: np.ndarray, layout: TokenLayout, *,
                   grads: np.ndarray | None = None, **options: Any) -> np.ndarray:
    """Run the attention method ``method`` with checked options.

    Perturbation and feature methods read the model input or token features, not attentions:
    run them with :meth:`attnmap.Explainer.maps` (or ``Explainer.explain``).

    Args:
        method: an attention method of :data:`METHODS` (``"rollout"``, ``"attention"``, ``"chefer"`` ...).
        attentions: (B, L, H, N, N) float attention probabilities, N == ``layout.num_tokens``.
        layout: token layout (prefix count, grid, target row) of the model.
        grads: (B, L, H, N, N) float d y_c / d A, needed by gradient methods, else ignored.
        **options: the method's options (see ``METHODS[method].options``).

    Returns:
        (B, gh, gw) float32 saliency in [0, 1].

    Raises:
        MethodOptionError: unknown method or option, or an option value of the wrong type or
            outside its choices or range.
        ExplainError: wrong shapes, a gradient method without ``grads``, or a method that is
            not an attention method.
    """
    m = get_method(method)
    checked = check_options(method, options)
    if m.kind is not ATTENTION:
        rerun_input = m.reruns_model and not getattr(m.kind, "reruns_tail", False)
        call = "maps(outputs, method, x=x_nchw)" if rerun_input else "maps(outputs, method)"
        raise ExplainError(f"method {m.name!r} is a {m.kind} method, not an attention method; run it with "
                           f"Explainer.{call} or Explainer.explain")
    if m.needs_gradients and grads is None:
        raise ExplainError(f"method {m.name!r} needs attention gradients; export the model with --gradients")
    return m.fn(attentions, layout, grads=grads, **checked)
