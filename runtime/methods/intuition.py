"""Beyond Intuition (Chen et al., TMLR 2023, "Beyond Intuition: Rethinking Token Attributions inside
Transformers"), head-wise: attention perception times reasoning feedback.

The paper splits ∂y_c/∂(tokens) by the chain rule into two factors and approximates each:

* **Attention perception, head-wise** (how tokens mix into the pooled token). In block l, each
  head h is weighted by its importance ``I_h = E_ij |(A_hᵀ ∇A_h)_ij|`` (the mean absolute entry of
  the attention map's transpose times its gradient), normalised over the heads to sum to 1; the
  block's map is ``Ā_l = Σ_h I_h A_h``, and the blocks compose like Chefer et al.'s rule:
  ``R = I; R ← R + Ā_l R`` for l = start .. L (later blocks on the left).
* **Reasoning feedback** (how the pooled token moves the class score), de-noised with integrated
  gradients on the last attention map: ``W = E_h[(1/k Σ_{α} ∇A_L(α x))⁺]`` over k = ``steps``
  inputs α x, α = 0, 1/(k-1), ..., 1 (the input scaled in the normalised space, so α = 0 is the
  model's mean colour), the positive part taken after the average and before the head mean.

The map is the target's row of ``W ⊙ R`` over the patch columns. The integrated gradients need
the gradient model run ``steps`` more times per image (the kind below does that in its forward
pass), so the method is as costly as ``steps`` + 1 backward passes and is not offered live.

Not implemented: the paper's token-wise perception (BT-T), which weights tokens by the norm of
their value projections over their inputs; attnmap files carry neither. State of choices the
paper leaves open: ``start_layer`` defaults to the first block (every block composed).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods.base import check_attentions, check_grads, patch_maps, resolve_index, start_vector
from attnmap.runtime.methods.kinds import AttentionKind, explained_classes


class FeedbackKind(AttentionKind):
    """Attention methods that also read the last attention map's gradients integrated over
    scaled inputs (Beyond Intuition's reasoning feedback): the forward pass runs the gradient
    model ``steps`` more times and hands the average over as ``outputs.feedback``."""

    name = "attention+feedback"
    reruns_model = True
    splits = False

    def forward(self, infer, x, targets, meta, *, steps: int | None = None):
        steps = FEEDBACK_STEPS if steps is None else steps
        outputs = super().forward(infer, x, targets, meta)
        classes = explained_classes(outputs)
        total = None
        for alpha in np.linspace(0.0, 1.0, int(steps)):
            g = infer(np.float32(alpha) * x, target=classes).grads
            if g is None:
                raise ExplainError("Beyond Intuition needs attention gradients; export the model with --gradients")
            last = np.array(g[:, -1], dtype=np.float64)  # copied: the run's buffers are reused
            total = last if total is None else total + last
        return with_feedback(outputs, (total / int(steps)).astype(np.float32))

    def maps(self, method, outputs, layout, options, *, x=None, forward=None, classes=None) -> np.ndarray:
        feedback = getattr(outputs, "feedback", None)
        if feedback is None:
            raise ExplainError(f"method {method.name!r} needs the integrated gradients of the last attention map; "
                               "run its forward pass (Explainer.forward / explain), not infer()")
        if method.needs_gradients and outputs.grads is None:
            raise ExplainError(f"method {method.name!r} needs attention gradients; export the model with --gradients")
        return method.fn(outputs.attentions, layout, feedback, grads=outputs.grads, **options)


FEEDBACK_STEPS = 20  # the integrated gradients' k (the paper's setting)
FEEDBACK = FeedbackKind()
_WITH_FEEDBACK: dict[type, type] = {}


def with_feedback(outputs, feedback: np.ndarray):
    """``outputs`` (a forward pass, any dataclass with ``slice``) carrying ``feedback`` (B, H, N, N)
    too; ``slice`` and ``select`` keep it."""
    base = type(outputs)
    cls = _WITH_FEEDBACK.get(base)
    if cls is None:
        def slice_(self, start, stop):
            return with_feedback(base.slice(self, start, stop), self.feedback[start:stop])

        cls = dataclasses.make_dataclass(f"{base.__name__}WithFeedback", [("feedback", object, None)], bases=(base,),
                                         frozen=True, namespace={"slice": slice_})
        _WITH_FEEDBACK[base] = cls
    fields = {f.name: getattr(outputs, f.name) for f in dataclasses.fields(base)}
    return cls(**fields, feedback=feedback)


def head_importance(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(B, H) ``I_h = mean_ij |(A_hᵀ G_h)_ij|`` normalised to sum 1 over heads (uniform where all are 0).

    Args:
        a: (B, H, N, N) one block's attention probabilities.
        g: (B, H, N, N) their gradients.
    """
    imp = np.abs(np.matmul(np.swapaxes(a, -1, -2), g)).mean(axis=(-1, -2), dtype=np.float64)
    total = imp.sum(axis=1, keepdims=True)
    heads = a.shape[1]
    return np.where(total > 0, imp / np.where(total > 0, total, 1.0), 1.0 / heads)


def beyond_intuition(attentions: np.ndarray, layout: TokenLayout, feedback: np.ndarray | None = None, *,
                     grads: np.ndarray | None = None, start_layer: int = 0) -> np.ndarray:
    """Beyond Intuition, head-wise (Chen et al. 2023): target row of ``W ⊙ R`` (module docstring).

    Args:
        attentions: (B, L, H, N, N) float attention probabilities; not modified.
        layout: token layout (target row None = mean of all rows).
        feedback: (B, H, N, N) d y_c / d A_L averaged over the scaled inputs; required (a
            positional argument: it is data, not an option).
        grads: (B, L, H, N, N) d y_c / d A_l at the input; required.
        start_layer: first block of the perception's product (negative counts from the end).

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    a = check_attentions(attentions, layout)
    g = check_grads(grads, a, "beyond_intuition")
    f = np.asarray(feedback, dtype=np.float32) if feedback is not None else None
    if f is None or f.shape != (a.shape[0], *a.shape[2:]):
        raise ExplainError(f"feedback must be (B, H, N, N) {(a.shape[0], *a.shape[2:])}; got "
                           f"{None if f is None else f.shape}")
    start = resolve_index("start_layer", start_layer, a.shape[1], "layers")
    w = np.maximum(f.astype(np.float64), 0.0).mean(axis=1)  # (B, N, N): the head mean after the positive part

    def fused(l: int) -> np.ndarray:
        al = a[:, l].astype(np.float64)
        return np.einsum("bh,bhij->bij", head_importance(al, g[:, l].astype(np.float64)), al)

    t = layout.target_row
    if t is not None:
        # R = (I + Ā_L) ... (I + Ā_start): its target row from the left, v <- v + v Ā_l
        v = start_vector(layout, a.shape[0]).astype(np.float64)
        for l in range(a.shape[1] - 1, start - 1, -1):
            v = v + np.matmul(v[:, None, :], fused(l))[:, 0]
        rows = w[:, t] * v
    else:
        # the mean row of W ⊙ R needs every row of R
        r = np.broadcast_to(np.eye(a.shape[-1]), (a.shape[0], a.shape[-1], a.shape[-1])).copy()
        for l in range(start, a.shape[1]):
            r = r + np.matmul(fused(l), r)
        rows = (w * r).mean(axis=1)
    return patch_maps(rows.astype(np.float32), layout, "beyond_intuition")


__all__ = ["FEEDBACK", "FEEDBACK_STEPS", "FeedbackKind", "beyond_intuition", "head_importance", "with_feedback"]
