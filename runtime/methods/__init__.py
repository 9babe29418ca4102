"""Explanation methods: attention tensors in, (B, gh, gw) float32 saliency maps in [0, 1] out.

Every method is a plain function ``fn(attentions, layout, *, grads=None, **options)``
registered in :data:`METHODS` with one typed spec per option; :func:`explain` looks one up by
name and checks the options (:func:`check_options`) before calling it. The CLI's flags, the
library's checks and the live view's keys all derive from those specs.

    >>> maps = explain("rollout", attentions, meta.layout, discard_ratio=0.9)
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from attnmap.runtime.core.errors import ExplainError, MethodOptionError, OptionError, suggest
from attnmap.runtime.core.meta import ModelMeta, TokenLayout
from attnmap.runtime.core.options import OptionSpec, check_names
from attnmap.runtime.methods.attention import raw_attention
from attnmap.runtime.methods.base import HEAD_FUSIONS, Method, make_method, normalize_maps
from attnmap.runtime.methods.flow import attention_flow, MAX_FLOW_TOKENS
from attnmap.runtime.methods.gradient import chefer, gradsam, product_rule
from attnmap.runtime.methods.rollout import attention_rollout, grad_rollout

__all__ = ["EXPLAINERS", "METHODS", "MAX_FLOW_TOKENS", "Method", "check_method_use", "check_options", "explain", "normalize_maps",
           "attention_flow", "attention_rollout", "grad_rollout", "raw_attention", "chefer", "gradsam",
           "product_rule"]

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

METHODS: dict[str, Method] = {m.name: m for m in (
    make_method("rollout", attention_rollout,
                "Attention rollout (Abnar & Zuidema 2020): residual-mixed attention composed over layers.",
                {"head_fusion": _HEAD_FUSION, "discard_ratio": _DISCARD, "residual": _RESIDUAL,
                 "start_layer": _START}),
    make_method("attention", raw_attention,
                "Raw attention of one layer (default the last) from the class token, one head or fused.",
                {"layer": _LAYER, "head": _HEAD, "head_fusion": _HEAD_FUSION}),
    make_method("flow", attention_flow,
                f"Attention flow (Abnar & Zuidema 2020): max-flow per patch; slow, N <= {MAX_FLOW_TOKENS} tokens.",
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
)}
EXPLAINERS = METHODS  # the name earlier releases used


def get_method(method: str) -> Method:
    """The registered method called ``method``, or a MethodOptionError with close matches."""
    m = METHODS.get(method) if isinstance(method, str) else None
    if m is None:
        raise MethodOptionError(f"unknown explanation method {method!r}; expected one of "
                                f"{', '.join(METHODS)}.{suggest(str(method), METHODS)}")
    return m


def check_options(method: str, options: Mapping[str, Any], meta: ModelMeta | None = None) -> dict[str, Any]:
    """Check a method's options against its specs (and, given ``meta``, against the model).

    Args:
        method: a key of :data:`METHODS`.
        options: option name -> value, as given.
        meta: the model's metadata: layer and head indices are then checked against its layers
            and head outputs, and options that a head-fused file cannot honour are refused.

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
            out[name] = spec.check(value, owner=owner, size=size)
        if fused is not None and out.get("head_fusion", fused) != fused:
            raise OptionError(
                f"option head_fusion={out['head_fusion']!r} of {owner} cannot apply: this file's heads were "
                f"already fused by {fused!r} at export; re-export without --heads to choose the fusion")
    except OptionError as exc:
        raise MethodOptionError(str(exc)) from exc
    return out


def check_method_use(method: str, meta: ModelMeta, *, class_given: bool = False, model: str = "this model") -> Method:
    """The registered method, after checking that it can run on ``meta``'s model as asked.

    Args:
        method: a key of :data:`METHODS`.
        meta: the model's metadata.
        class_given: a class to explain was given (only class-specific methods take one).
        model: how messages name the model (``"'deit.onnx'"``).

    Raises:
        MethodOptionError: unknown method, or a class given to a class-agnostic method.
        ExplainError: a class-specific method on a model exported without gradients.
    """
    m = get_method(method)
    if class_given and not m.needs_gradients:
        raise MethodOptionError(f"method {m.name!r} is class-agnostic, so a class to explain does not apply; use a "
                                "class-specific method (" + ", ".join(n for n, x in METHODS.items()
                                                                      if x.needs_gradients) + ")")
    if m.needs_gradients and not meta.has_gradients:
        raise ExplainError(f"method {m.name!r} needs attention gradients, and {model} has none; "
                           "re-export the model with `attnmap export --gradients`")
    return m


def explain(method: str, attentions: np.ndarray, layout: TokenLayout, *,
            grads: np.ndarray | None = None, **options: Any) -> np.ndarray:
    """Run the explanation method ``method`` with checked options.

    Args:
        method: a key of :data:`METHODS` (``"rollout"``, ``"attention"``, ``"chefer"`` ...).
        attentions: (B, L, H, N, N) float attention probabilities, N == ``layout.num_tokens``.
        layout: token layout (prefix count, grid, target row) of the model.
        grads: (B, L, H, N, N) float d y_c / d A, needed by gradient methods, else ignored.
        **options: the method's options (see ``METHODS[method].options``).

    Returns:
        (B, gh, gw) float32 saliency in [0, 1].

    Raises:
        MethodOptionError: unknown method or option, or an option value of the wrong type or
            outside its choices or range.
        ExplainError: wrong shapes, or a gradient method without ``grads``.
    """
    m = get_method(method)
    opts = check_options(method, options)
    if m.needs_gradients and grads is None:
        raise ExplainError(f"method {m.name!r} needs attention gradients; export the model with --gradients")
    return m.fn(attentions, layout, grads=grads, **opts)
