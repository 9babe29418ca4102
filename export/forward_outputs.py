"""The forward-only explanation outputs of a timm export: which options they go with, and the
wrapper that emits them.

Three outputs are computed in the forward pass from what the blocks already hold
(:class:`export.decomposition.ViTWithBlockInputs`), for maps that need no backward pass:

- ``norms=True``: ``head_norms`` (:mod:`export.norms`), for the ``head-norm`` map;
- ``contributions=True``: ``class_contributions`` float32 ``[B, N, C]``, each token's part of
  every logit through the last block, the final norm and the head
  (:func:`export.decomposition.class_contributions`), for ``decompx`` with ``start_layer=-1``;
  with ``norms=True`` as well, both in one file;
- ``decompositions=True``: the Grams ``mix_grams`` / ``mix_grams_ln`` (and the contributions
  where the model supports them) for ``attn-norm``, ``globenc`` and ``decompx``'s carry-back.

A contributions-only file computes the last block's ``w^h_j`` (one output projection per head)
and the class token's few linearised vectors: no Gram, no per-block product.
"""

from __future__ import annotations

import torch
from torch import nn

from attnmap.runtime.core.errors import ExportError

from .decomposition import CONTRIBUTION_OUTPUT, ViTWithBlockInputs, ViTWithDecompositions
from .norms import ViTWithNorms

__all__ = ["ViTWithContributions", "check_forward_options", "forward_wrapper"]

# why each output needs every head, in the refusal of fused heads
_PER_HEAD = {
    "norms": "the map weights each head's attention by that head's norms",
    "contributions": "the class token's parts pair each head's attention with its own value-output vectors",
    "decompositions": "the norm of Σ_h α^h_ij u^h_j pairs each head's attention with its own value vectors",
}


def check_forward_options(heads: str, attentions: bool, gradients: bool, tail: bool, *, norms: bool = False,
                          contributions: bool = False, decompositions: bool = False) -> None:
    """Refuse export options the forward-only outputs asked for cannot go with.

    Args:
        heads, attentions, gradients, tail: the export's other options.
        norms, contributions, decompositions: the forward-only outputs asked for.

    Raises:
        ExportError: fused heads (each output pairs a head's attention with that head's
            vectors), no attentions (the maps weight the attention), gradients (these outputs
            are for files without a backward pass), a tail, decompositions with norms (their
            ``mix_grams`` hold the same norms) or with contributions (they emit them already).
    """
    asked = [name for name, on in (("norms", norms), ("contributions", contributions),
                                   ("decompositions", decompositions)) if on]
    if not asked:
        return
    option = " and ".join(f"{name}=True" for name in asked)
    if decompositions and norms:
        raise ExportError("norms=True and decompositions=True cannot be combined: the decompositions' mix_grams "
                          "hold the same norms on their diagonal")
    if decompositions and contributions:
        raise ExportError("contributions=True and decompositions=True cannot be combined: decompositions=True "
                          "already emits class_contributions (where the model supports them)")
    if heads != "none":
        raise ExportError(f"{option} needs every head (heads='none'); got heads={heads!r}: "
                          f"{_PER_HEAD[asked[0]]}")
    if not attentions:
        raise ExportError(f"{option} needs attentions=True: the maps weight the attention by these outputs")
    if gradients:
        raise ExportError(f"{option} and gradients=True cannot be combined in one file; these outputs are for "
                          "files without a backward pass")
    if tail:
        raise ExportError(f"{option} and tail=True do not go together yet; export two files")


class ViTWithContributions(ViTWithBlockInputs):
    """A timm ViT that returns ``(logits, attentions, class_contributions)``.

    Only the last block's values are read (one output projection per head); the other blocks
    run as in a plain attention export.

    Args:
        model: a timm ViT-family model with pre-LN blocks whose class contributions apply
            (:func:`export.decomposition.contributions_supported`).

    Raises:
        ExportError: a block outside the decomposable layout, or a model the contributions do
            not apply to (the reason named).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, contributions=True)
        self.output_names = ("logits", "attentions", CONTRIBUTION_OUTPUT)

    def _last_values(self, index: int, z: torch.Tensor) -> torch.Tensor | None:
        return self._values(index, z) if index == self.num_layers - 1 else None

    def forward(self, x: torch.Tensor):
        """Run the model.

        Args:
            x: images, float32 ``[B, 3, H, W]``, normalised as the model expects.

        Returns:
            ``(logits, attentions, class_contributions)``: float32 ``[B, C]``,
            ``[B, L, H, N, N]`` and ``[B, N, C]``.
        """
        logits, attentions, inputs, values = self._capture(x, self._last_values)
        b, n, _ = inputs[-1][0].shape
        v = values[-1].reshape(b, n, self.num_heads, -1).transpose(1, 2)  # [B, H, N, d]
        return logits, attentions, self._class_contributions(inputs, self._head_outputs(self.num_layers - 1, v))


def forward_wrapper(model: nn.Module, *, norms: bool = False, contributions: bool = False,
                    decompositions: bool = False) -> ViTWithBlockInputs:
    """The wrapper that emits the forward-only outputs asked for (checked by
    :func:`check_forward_options`); use it as a context manager.

    Raises:
        ExportError: none asked for, or the wrapper's own refusals (block layout, a model the
            contributions do not apply to).
    """
    if decompositions:
        return ViTWithDecompositions(model, contributions=None)
    if norms:
        return ViTWithNorms(model, contributions=contributions)
    if contributions:
        return ViTWithContributions(model)
    raise ExportError("no forward-only output asked for (norms, contributions or decompositions)")
