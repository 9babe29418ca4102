"""Method kinds: what a kind of explanation method needs from the model file and how it is called.

A kind is a small adapter object. The engine and the :class:`~attnmap.Explainer` never test a
kind's name: they ask the method's kind to check the model (:meth:`Kind.check_model`), to run
the forward pass the maps need (:meth:`Kind.forward`) and to compute the maps from that pass
(:meth:`Kind.maps`). Adding a kind is one subclass here (or anywhere: a method may carry any
:class:`Kind` object), adding a method one entry in :data:`~attnmap.runtime.methods.METHODS`.

=============  ===============================  =========================================================
kind           reads                            calls ``Method.fn`` as
=============  ===============================  =========================================================
attention      attentions (and their grads)     ``fn(attentions, layout, *, grads=None, **options)``
perturbation   the model input and the model    ``fn(x, forward, classes, layout, **options)``
features       token features and their grads   ``fn(tokens, token_grads, layout, **options)``
decomposition  attentions and the norm Grams    ``fn(outputs, layout, None, **options)``
norms          attentions and the head norms    ``fn(outputs, layout, None, **options)``
contribution   the class parts (+ norm Grams)   ``fn(outputs, layout, classes, **options)``
tail           the last block's input tokens    ``fn(tail_input, tail, classes, layout, **options)``
=============  ===============================  =========================================================

A kind that reruns only the end of the network (``reruns_tail``) is handed ``tail``, the file's
tail graph (``tail(tokens, weights) -> logits``, ``runtime/model/tail.py``), beside ``forward``.

``outputs`` below is the forward pass of the model input
(:class:`~attnmap.runtime.model.session.Outputs`: ``logits``, ``attentions``, ``grads``,
``targets``, ``tokens``, ``token_grads``, ``head_norms``, ``tail_input`` ...), read by
attribute so that this floor does not import the model floor.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from attnmap.runtime.core.errors import ExplainError

Infer = Callable[..., Any]  # infer(x_nchw, target=None) -> Outputs
Forward = Callable[[np.ndarray], np.ndarray]  # forward(x_chunk) -> (b, C) float32 probabilities
Tail = Callable[[np.ndarray, np.ndarray], np.ndarray]  # tail(tokens, weights) -> (b, C) float32 logits


class Kind:
    """What a kind of method reads and how it is called; subclasses override what differs.

    Attributes:
        name: the kind's name (``"attention"`` ...), shown by ``GET /v1/methods``.
        reads: what the method reads from the forward pass or the model, for messages and
            listings (``"attentions"``, ``"grads"``, ``"tokens"``, ``"token_grads"``,
            ``"input"``).
        class_specific: every method of the kind explains one class, which may be chosen
            (attention methods are class-specific only when they read gradients).
        reruns_model: the method runs the model again on many perturbed copies of each input;
            a live view cannot afford that per frame.
        splits: a batch's maps may be computed in contiguous parts on several threads (the
            method is vectorised over the batch and reads only ``outputs``).
        reruns_tail: the method reruns the file's tail graph (last block, norm, head), so
            :meth:`maps` takes a ``tail`` keyword beside ``forward``.
    """

    name = "kind"
    reads: tuple[str, ...] = ()
    class_specific = False
    reruns_model = False
    splits = False
    reruns_tail = False

    def __repr__(self) -> str:
        return f"<method kind {self.name!r}>"

    def __str__(self) -> str:
        return self.name

    def check_model(self, method, meta, model: str) -> None:
        """Raise ExplainError when ``meta``'s model lacks what ``method`` reads.

        Args:
            method: the :class:`~attnmap.runtime.methods.base.Method`.
            meta: the model's :class:`~attnmap.runtime.core.meta.ModelMeta`.
            model: how messages name the model (``"'deit.onnx'"``).
        """
        if method.needs_gradients and not meta.has_gradients:
            raise ExplainError(f"method {method.name!r} needs attention gradients, and {model} has none; "
                               "re-export the model with `attnmap export --gradients`")

    def forward(self, infer: Infer, x: np.ndarray, targets: np.ndarray | None, meta) -> Any:
        """The forward pass of ``x`` that :meth:`maps` reads, its ``targets`` the classes explained.

        The classes go to the model where it takes them (a gradient model); a model without
        gradients runs as it is and the classes are recorded as the outputs' ``targets``
        (a kind that reads no gradients explains a chosen class on any model).

        Args:
            infer: the model with its extra outputs, ``infer(x, target=None) -> Outputs``.
            x: (B, 3, H, W) float32 the preprocessed input.
            targets: (B,) int64 the class each map explains, or None for the prediction.
            meta: the model's metadata.

        Raises:
            ExplainError: ``targets`` that do not give one class per input.
        """
        given = None if targets is None else np.asarray(targets, dtype=np.int64).reshape(-1)
        outputs = infer(x, target=given if meta.has_gradients else None)
        if given is None:
            return outputs
        if given.shape != (len(outputs),):
            raise ExplainError(f"target must give one class per image ({len(outputs)}); got {given.tolist()}")
        return outputs if outputs.targets is not None else dataclasses.replace(outputs, targets=given)

    def split_bytes(self, outputs) -> int:
        """Bytes the maps of ``outputs`` read (0: never split); see ``runtime/engine/parts.py``."""
        return 0

    def maps(self, method, outputs, layout, options: Mapping[str, Any], *, x: np.ndarray | None = None,
             forward: Forward | None = None, classes: np.ndarray | None = None) -> np.ndarray:
        """(B, gh, gw) float32 maps in [0, 1] of ``method`` with checked ``options``.

        Args:
            method: the :class:`~attnmap.runtime.methods.base.Method`.
            outputs: the forward pass of ``x`` (:meth:`forward`).
            layout: the model's :class:`~attnmap.runtime.core.meta.TokenLayout`.
            options: the method's options, already checked.
            x: (B, 3, H, W) float32 the model input (kinds that rerun the model).
            forward: the logits-only model as probabilities (kinds that rerun the model).
            classes: (B,) the class each map explains (default: ``outputs.targets``, else the
                prediction).
        """
        raise NotImplementedError


class AttentionKind(Kind):
    """Methods on the attention probabilities (and, for gradient methods, their gradients)."""

    name = "attention"
    reads = ("attentions", "grads")
    splits = True

    def split_bytes(self, outputs) -> int:
        if outputs.attentions is None:
            return 0
        return outputs.attentions.nbytes + (0 if outputs.grads is None else outputs.grads.nbytes)

    def maps(self, method, outputs, layout, options, *, x=None, forward=None, classes=None) -> np.ndarray:
        if outputs.attentions is None:
            raise ExplainError("these outputs carry no attentions; run infer(), not infer_plain(), on a model "
                               "exported with attentions")
        if method.needs_gradients and outputs.grads is None:
            raise ExplainError(f"method {method.name!r} needs attention gradients; export the model with --gradients")
        return method.fn(outputs.attentions, layout, grads=outputs.grads, **options)


class PerturbationKind(Kind):
    """Methods that run the logits-only model on perturbed copies of the input (no attentions,
    no gradients needed, so a plain model explains a chosen class too)."""

    name = "perturbation"
    reads = ("input",)
    class_specific = True
    reruns_model = True

    def forward(self, infer, x, targets, meta):
        # The model runs as for any method (attentions included, so that the same outputs serve
        # every method, in ``evaluate``); the classes explained are recorded, the predictions
        # where none were chosen.
        outputs = super().forward(infer, x, targets, meta)
        return outputs if outputs.targets is not None else dataclasses.replace(outputs,
                                                                               targets=explained_classes(outputs))

    def maps(self, method, outputs, layout, options, *, x=None, forward=None, classes=None) -> np.ndarray:
        if x is None or forward is None:
            raise ExplainError(f"method {method.name!r} runs the model on perturbed inputs, so it needs the "
                               "(B, 3, H, W) model input: maps(outputs, method, x=x_nchw)")
        if np.shape(x)[:1] != (len(outputs),):
            raise ExplainError(f"x must hold the {len(outputs)} inputs of these outputs; got shape {np.shape(x)}")
        chosen = explained_classes(outputs) if classes is None else np.asarray(classes).reshape(-1)
        if chosen.shape != (len(outputs),):
            raise ExplainError(f"classes must give one class per image ({len(outputs)}); got {chosen.tolist()}")
        return method.fn(x, forward, chosen, layout, **options)


class FeaturesKind(Kind):
    """Methods on the last block's token features and their gradients (Grad-CAM)."""

    name = "features"
    reads = ("tokens", "token_grads")
    class_specific = True

    def check_model(self, method, meta, model):
        super().check_model(method, meta, model)
        if not meta.has_token_grads:
            raise ExplainError(f"method {method.name!r} needs the token features and their gradients, and {model} "
                               "has none (an export from before they were added); re-export with "
                               "`attnmap export --gradients`")

    def maps(self, method, outputs, layout, options, *, x=None, forward=None, classes=None) -> np.ndarray:
        return method.fn(getattr(outputs, "tokens", None), getattr(outputs, "token_grads", None), layout, **options)


class DecompositionKind(Kind):
    """Forward-only norm-based methods: attentions and the per-token Grams of the decomposition
    outputs (``attnmap export --decompositions``); no gradients, no extra model run."""

    name = "decomposition"
    reads = ("attentions", "mix_grams", "mix_grams_ln")
    splits = True

    def check_model(self, method, meta, model):
        super().check_model(method, meta, model)
        lacking = [n for n in self.reads if n not in meta.outputs]
        if lacking:
            raise ExplainError(f"method {method.name!r} needs the decomposition outputs {lacking}, and {model} has "
                               "none; re-export it with `attnmap export --decompositions`")

    def split_bytes(self, outputs) -> int:
        return sum(getattr(outputs, n).nbytes for n in self.reads if getattr(outputs, n, None) is not None)

    def maps(self, method, outputs, layout, options, *, x=None, forward=None, classes=None) -> np.ndarray:
        if outputs.attentions is None:
            raise ExplainError("these outputs carry no attentions; run infer(), not infer_plain(), on a model "
                               "exported with --decompositions")
        return method.fn(outputs, layout, None, **options)


class NormsKind(DecompositionKind):
    """Forward-only methods on the attentions and the per-head value-output norms (``head_norms``,
    ``attnmap export --norms``; a ``--decompositions`` file's Grams hold them on their diagonal)."""

    name = "norms"
    reads = ("attentions", "head_norms")

    def check_model(self, method, meta, model):
        Kind.check_model(self, method, meta, model)
        if not (getattr(meta, "has_head_norms", False) or meta.has_decompositions):
            raise ExplainError(f"method {method.name!r} needs the per-head norms (head_norms), and {model} has "
                               "none; re-export it with `attnmap export --norms` (or --decompositions)")

    def split_bytes(self, outputs) -> int:
        return sum(getattr(outputs, n).nbytes for n in ("attentions", "head_norms", "mix_grams")
                   if getattr(outputs, n, None) is not None)


class ContributionKind(DecompositionKind):
    """Forward-only class-specific decomposition: each token's part of every logit
    (``class_contributions``), so any class is explained from the one forward pass."""

    name = "contribution"
    reads = ("attentions", "class_contributions")
    class_specific = True

    def check_model(self, method, meta, model):
        Kind.check_model(self, method, meta, model)
        if not meta.has_class_contributions:
            raise ExplainError(f"method {method.name!r} needs the class contributions (class_contributions), and "
                               f"{model} has none; re-export it with `attnmap export --contributions` (or "
                               "--decompositions), a model with one class token and a GELU MLP")

    def split_bytes(self, outputs) -> int:
        return sum(getattr(outputs, n).nbytes for n in ("attentions", "class_contributions", "mix_grams_ln")
                   if getattr(outputs, n, None) is not None)

    def maps(self, method, outputs, layout, options, *, x=None, forward=None, classes=None) -> np.ndarray:
        if outputs.attentions is None:
            raise ExplainError("these outputs carry no attentions; run infer(), not infer_plain(), on a model "
                               "exported with --decompositions")
        chosen = explained_classes(outputs) if classes is None else np.asarray(classes).reshape(-1)
        if chosen.shape != (len(outputs),):
            raise ExplainError(f"classes must give one class per image ({len(outputs)}); got {chosen.tolist()}")
        return method.fn(outputs, layout, chosen, **options)


class TailKind(Kind):
    """Methods that rerun only the tail (last block, final norm, head) on many modified copies of
    the tokens entering the last block (ViT-ReciproCAM): a file exported with ``--tail``, no
    gradients needed, so a chosen class is explained on it too."""

    name = "tail"
    reads = ("tail_input",)
    class_specific = True
    reruns_model = True  # N_p tail runs per image: about N_p / L model runs, too many for a live view
    reruns_tail = True

    def check_model(self, method, meta, model):
        super().check_model(method, meta, model)
        if not getattr(meta, "has_tail", False):
            raise ExplainError(f"method {method.name!r} reruns the model's last block on masked copies of its input "
                               f"tokens, and {model} has neither those tokens nor its tail graph; re-export with "
                               "`attnmap export --tail`")

    def forward(self, infer, x, targets, meta):
        # as a perturbation method: the classes explained are recorded, the predictions where none were chosen
        outputs = super().forward(infer, x, targets, meta)
        return outputs if outputs.targets is not None else dataclasses.replace(outputs,
                                                                               targets=explained_classes(outputs))

    def maps(self, method, outputs, layout, options, *, x=None, forward=None, classes=None,
             tail: Tail | None = None) -> np.ndarray:
        tokens = getattr(outputs, "tail_input", None)
        if tokens is None or tail is None:
            raise ExplainError(f"method {method.name!r} needs the tokens entering the last block and the tail graph "
                               "of a file exported with `attnmap export --tail`: run it with Explainer.maps or "
                               "Explainer.explain on such a file")
        chosen = explained_classes(outputs) if classes is None else np.asarray(classes).reshape(-1)
        if chosen.shape != (len(outputs),):
            raise ExplainError(f"classes must give one class per image ({len(outputs)}); got {chosen.tolist()}")
        return method.fn(tokens, tail, chosen, layout, **options)


ATTENTION, PERTURBATION, FEATURES = AttentionKind(), PerturbationKind(), FeaturesKind()
DECOMPOSITION, NORMS, CONTRIBUTION, TAIL = DecompositionKind(), NormsKind(), ContributionKind(), TailKind()
KINDS: dict[str, Kind] = {k.name: k for k in (ATTENTION, PERTURBATION, FEATURES, DECOMPOSITION, NORMS, CONTRIBUTION,
                                              TAIL)}


def kind_of(kind: "str | Kind") -> Kind:
    """The :class:`Kind` object for a kind or its registered name.

    Raises:
        TypeError: an unknown name (a programming error, raised at import).
    """
    if isinstance(kind, Kind):
        return kind
    if kind not in KINDS:
        raise TypeError(f"kind must be a Kind or one of {tuple(KINDS)}; got {kind!r}")
    return KINDS[kind]


def explained_classes(outputs) -> np.ndarray:
    """(B,) int64: ``outputs.targets`` where the model ran for chosen classes, else the argmax of the logits."""
    if outputs.targets is not None:
        return np.asarray(outputs.targets, dtype=np.int64)
    return np.asarray(outputs.logits).argmax(axis=1).astype(np.int64)
