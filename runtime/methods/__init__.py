"""Explanation methods: attention tensors in, (B, gh, gw) float32 saliency maps in [0, 1] out.

Every method is a plain function ``fn(attentions, layout, *, grads=None, **options)``
registered in :data:`EXPLAINERS`; :func:`explain` looks one up by name and checks the
options before calling it. The CLI builds ``--method`` and its flags from the registry.

    >>> maps = explain("rollout", attentions, meta.layout, discard_ratio=0.9)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnmap.runtime.core.errors import ExplainError, suggest
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods.attention import raw_attention
from attnmap.runtime.methods.base import HEAD_FUSIONS, Method, make_method, normalize_maps
from attnmap.runtime.methods.flow import attention_flow, MAX_FLOW_TOKENS
from attnmap.runtime.methods.gradient import chefer, gradsam, product_rule
from attnmap.runtime.methods.rollout import attention_rollout, grad_rollout

__all__ = ["EXPLAINERS", "MAX_FLOW_TOKENS", "Method", "explain", "normalize_maps", "attention_flow",
           "attention_rollout", "grad_rollout", "raw_attention", "chefer", "gradsam", "product_rule"]

EXPLAINERS: dict[str, Method] = {m.name: m for m in (
    make_method("rollout", attention_rollout,
                "Attention rollout (Abnar & Zuidema 2020): residual-mixed attention composed over layers.",
                choices={"head_fusion": HEAD_FUSIONS}),
    make_method("attention", raw_attention,
                "Raw attention of one layer (default the last) from the class token, one head or fused.",
                choices={"head_fusion": HEAD_FUSIONS}),
    make_method("flow", attention_flow,
                f"Attention flow (Abnar & Zuidema 2020): max-flow per patch; slow, N <= {MAX_FLOW_TOKENS} tokens.",
                choices={"head_fusion": HEAD_FUSIONS}),
    make_method("chefer", chefer,
                "Gradient-weighted relevance (Chefer et al. 2021): R += mean_h((G*A)+) R over layers.",
                needs_gradients=True),
    make_method("grad_rollout", grad_rollout,
                "Gradient rollout (vit-explain): rollout of mean_h(relu(A*G)) per layer.",
                needs_gradients=True),
    make_method("gradsam", gradsam,
                "Grad-SAM (Barkan et al. 2021): mean over layers and heads of relu(G)*A.",
                needs_gradients=True),
    make_method("product", product_rule,
                "Product rule: product over blocks of the shifted mean_h(A*G) of the class token.",
                needs_gradients=True),
)}


def explain(method: str, attentions: np.ndarray, layout: TokenLayout, *,
            grads: np.ndarray | None = None, **options: Any) -> np.ndarray:
    """Run the explanation method ``method`` with checked options.

    Args:
        method: a key of :data:`EXPLAINERS` (``"rollout"``, ``"attention"``, ``"chefer"`` ...).
        attentions: (B, L, H, N, N) float attention probabilities, N == ``layout.num_tokens``.
        layout: token layout (prefix count, grid, target row) of the model.
        grads: (B, L, H, N, N) float d y_c / d A, needed by gradient methods, else ignored.
        **options: the method's options (see ``EXPLAINERS[method].options``).

    Returns:
        (B, gh, gw) float32 saliency in [0, 1].

    Raises:
        ExplainError: unknown method or option, an option value of the wrong type or outside
            its choices or range, wrong shapes, or a gradient method without ``grads``.
    """
    m = EXPLAINERS.get(method) if isinstance(method, str) else None
    if m is None:
        raise ExplainError(f"unknown explanation method {method!r}; expected one of "
                           f"{sorted(EXPLAINERS)}.{suggest(str(method), EXPLAINERS)}")
    for name, value in options.items():
        _check_option(m, name, value)
    if m.needs_gradients and grads is None:
        raise ExplainError(f"method {m.name!r} needs attention gradients; export the model with --gradients")
    return m.fn(attentions, layout, grads=grads, **options)


def _check_option(m: Method, name: str, value: Any) -> None:
    """Check one option's name, its type (that of the default) and its choices."""
    if name not in m.options:
        known = ", ".join(m.options) or "none"
        raise ExplainError(f"method {m.name!r} has no option {name!r} (its options: {known})."
                           f"{suggest(name, m.options)}")
    default = m.options[name]
    is_bool = isinstance(value, (bool, np.bool_))
    if isinstance(default, bool):
        ok = is_bool
    elif isinstance(default, int):
        ok = isinstance(value, (int, np.integer)) and not is_bool
    elif isinstance(default, float):
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not is_bool
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True  # None default: "not set"; the method checks the value itself.
    if not ok:
        raise ExplainError(f"option {name!r} of method {m.name!r} must be {type(default).__name__}; "
                           f"got {value!r} ({type(value).__name__})")
    if name in m.choices and value not in m.choices[name]:
        raise ExplainError(f"option {name!r} of method {m.name!r} must be one of {m.choices[name]}; "
                           f"got {value!r}.{suggest(str(value), m.choices[name])}")
