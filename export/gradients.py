"""Attention gradients inside the ONNX graph: class-specific explanations with no torch at runtime.

A file exported with ``gradients=True`` takes a second input ``target`` (int64 ``[B]``; a
negative value means the predicted class, the argmax of the logits the graph itself computes)
and emits, beside ``logits`` and ``attentions``:

    attention_grads[b, l] = d logit[b, t_b] / d A_l[b]        float32 [B, L, H, N, N]
    tokens[b]             = T[b] = blocks[-1].norm1(x_{L-1})[b]  float32 [B, N, D]
    token_grads[b]        = d logit[b, t_b] / d T[b]           float32 [B, N, D]

``attention_grads`` is the gradient of image b's own target logit with respect to block l's
softmax probabilities, which Chefer et al. (2021), Grad-SAM and gradient rollout weight the
attention with. ``tokens`` and ``token_grads`` feed Grad-CAM (runtime/methods/gradcam.py).

Which token tensor, and why. ``T`` is the OUTPUT of the last block's first LayerNorm
(``blocks[-1].norm1``), every token (prefix tokens included), before the attention reads it:
the tensor pytorch-grad-cam documents for ViTs (``target_layers = [model.blocks[-1].norm1]``;
its forward hook keeps the layer's output, its backward hook the gradient at that output).
The obvious "last feature map", the last block's output, does not work for a class-token
model: the head reads only the class token (the final norm acts per token), so the gradient
at every patch token of that output is exactly 0 and so would be every map. The last block's
norm1 output is the last place where patch tokens still reach the class token, through the
last attention; its gradient is the class evidence routed through that attention. The block's
input (the residual stream before norm1) was not chosen: it is not normalised, so its scale
differs from token to token and from channel to channel and the largest channels dominate
the channel-weighted sum; and it is not the tensor pytorch-grad-cam users compare with.

How the graph is built. :class:`AttentionGradients` runs the wrapped model once with a zero
``delta_l`` added to each block's probabilities (:meth:`ViTWithAttention.set_deltas`), so that
``d y / d delta_l = d y / d A_l``, and calls ``torch.autograd.grad`` on the selected logits.
:func:`trace_gradients` records that forward *and* its backward as one aten-level FX graph with
``make_fx(tracing_mode="symbolic")``, which keeps the batch size a symbol; the exporter then
turns that graph into ONNX with ``torch.onnx.export(dynamo=True)`` like any other module. The
backward reads the activations the forward saved, so the forward runs once, and because only
the deltas are differentiated, no weight gradient is ever computed.

Two routes that look simpler do not work with torch 2.15, which is why this one is used:

* ``torch.onnx.export`` (``torch.export``) of a module whose forward calls
  ``torch.autograd.grad`` or ``torch.func.vjp`` fails: the exporter meets fake tensors it
  cannot lift ("fake tensor in the exported program constant's list", "Cannot access data
  pointer of Tensor that doesn't have storage").
* ``make_fx`` of ``torch.func.vjp`` traces, but functorch's decomposition of ``linear`` reads
  concrete sizes and specialises the batch axis to the example's size.

``T`` is captured by a forward hook on ``blocks[-1].norm1`` that records the output, and its
gradient is taken with respect to that intermediate tensor in the same ``autograd.grad`` call
(no extra forward, and no weight gradient). The hook lives only for one forward call.

Head fusion is refused with gradients: the class-specific methods weight each head's attention
by its own gradient before averaging (``mean_h((G ⊙ A)⁺)``), which fused heads cannot give back.
"""

from __future__ import annotations

import torch
from torch import nn

from attnmap.runtime.core.errors import ExportError

from .vit_attn import ViTWithAttention, describe_tokens

__all__ = ["GRADIENT_INPUTS", "GRADIENT_OUTPUTS", "GRAD_RTOL", "AttentionGradients", "check_gradient_options",
           "token_layer", "trace_gradients"]

GRADIENT_INPUTS = ("input", "target")
GRADIENT_OUTPUTS = ("logits", "attentions", "attention_grads", "tokens", "token_grads")
# Parity tolerance of the exported gradients: |onnx - torch| <= GRAD_RTOL * max |torch grads|.
GRAD_RTOL = 1e-4


def check_gradient_options(heads: str, attentions: bool) -> None:
    """Refuse export options that cannot carry attention gradients.

    Args:
        heads: the requested head fusion; gradients need ``"none"``.
        attentions: whether attentions are exported; gradients need them.

    Raises:
        ExportError: ``heads`` is not ``"none"``, or ``attentions`` is False.
    """
    if heads != "none":
        raise ExportError(f"gradients=True needs every head (heads='none'); got heads={heads!r}: class-specific "
                          "methods weight each head's attention by its own gradient before fusing heads")
    if not attentions:
        raise ExportError("gradients=True needs attentions=True: the gradient methods weight the attention "
                          "probabilities by their gradients")


class AttentionGradients(nn.Module):
    """``(input, target) -> (logits, attentions, attention_grads, tokens, token_grads)``.

    Wraps a :class:`ViTWithAttention`; see the module docstring for what each output is.

    Every image's gradient is of ITS OWN target logit although one backward pass serves the
    whole batch: the pass differentiates ``s = Σ_b logit[b, t_b]``, and images never interact
    in a ViT (LayerNorm, attention and MLP all act within one image; there is no batch norm),
    so ``d logit[b', t_b'] / d A_l[b] = 0`` for ``b' != b`` and ``d s / d A_l[b]`` is exactly
    ``d logit[b, t_b] / d A_l[b]``.

    Args:
        wrapper: the wrapped model, built with ``heads="none"`` and ``attentions=True``.

    Raises:
        ExportError: the wrapper fuses heads or has no attention outputs, or the model's last
            block has no ``norm1``.
    """

    def __init__(self, wrapper: ViTWithAttention) -> None:
        super().__init__()
        check_gradient_options(wrapper.heads, wrapper.attentions)
        prefix, grid, _ = describe_tokens(wrapper.model)
        self.wrapper = wrapper
        self.training = wrapper.training
        self.num_tokens = len(prefix) + grid[0] * grid[1]
        # In a list: it is a submodule of wrapper.model already, and must not be registered twice.
        self._token_layer = [token_layer(wrapper.model)]

    def forward(self, x: torch.Tensor, target: torch.Tensor):
        """Forward pass, and the gradients of each image's target logit.

        Args:
            x: images, float32 ``[B, 3, H, W]``, normalised as the model expects.
            target: int64 ``[B]`` class per image; a negative value picks the predicted class.

        Returns:
            ``(logits, attentions, attention_grads, tokens, token_grads)``: float32 ``[B, C]``,
            ``[B, L, H, N, N]``, ``[B, L, H, N, N]`` (``d logit[b, t_b] / d attentions[b]``),
            ``[B, N, D]`` (the last block's norm1 output) and ``[B, N, D]``
            (``d logit[b, t_b] / d tokens[b]``), all detached.

        Raises:
            ExportError: the last block's norm1 did not run exactly once.
        """
        shape = (x.shape[0], self.wrapper.num_heads, self.num_tokens, self.num_tokens)
        captured: list[torch.Tensor] = []
        handle = self._token_layer[0].register_forward_hook(lambda _m, _i, out: captured.append(out))
        with torch.enable_grad():
            deltas = [x.new_zeros(shape).requires_grad_(True) for _ in range(self.wrapper.num_layers)]
            self.wrapper.set_deltas(deltas)
            try:
                logits, attentions = self.wrapper(x)
            finally:
                self.wrapper.set_deltas(None)
                handle.remove()
            if len(captured) != 1:
                raise ExportError(f"the last block's norm1 ran {len(captured)} times in one forward; Grad-CAM's "
                                  "token features need it to run exactly once")
            tokens = captured[0]
            predicted = logits.detach().argmax(dim=-1)
            chosen = torch.where(target < 0, predicted, target)
            # Summing over the batch is exact per image: see the class docstring.
            selected = logits.gather(1, chosen[:, None]).sum()
            *grads, token_grads = torch.autograd.grad(selected, [*deltas, tokens])
        return (logits.detach(), attentions.detach(), torch.stack(grads, dim=1), tokens.detach(),
                token_grads)


def token_layer(model: nn.Module) -> nn.Module:
    """The module whose output Grad-CAM reads: the last block's ``norm1``.

    Args:
        model: a timm ViT-family model (``model.blocks`` checked by :func:`describe_tokens`).

    Returns:
        ``model.blocks[-1].norm1``; its output is float32 ``[B, N, D]``.

    Raises:
        ExportError: the last block has no ``norm1`` module.
    """
    last = list(model.blocks.children())[-1]
    norm = getattr(last, "norm1", None)
    if not isinstance(norm, nn.Module):
        raise ExportError(f"{type(model).__name__}: the last block ({type(last).__name__}) has no norm1 module, "
                          "whose output attnmap exports as Grad-CAM's token features")
    return norm


def trace_gradients(module: AttentionGradients, example: torch.Tensor) -> torch.fx.GraphModule:
    """Record the forward and backward of ``module`` as one FX graph with a symbolic batch.

    Args:
        module: the gradient module (its model in eval mode).
        example: float32 ``[B, 3, H, W]`` example input with B >= 2 (a size-1 axis would be
            specialised to a constant); only its shape matters, the trace runs on fake tensors.

    Returns:
        A ``torch.fx.GraphModule`` in eval mode with ``forward(input, target)`` returning
        ``(logits, attentions, attention_grads, tokens, token_grads)``; the weights are its
        constants.

    Raises:
        ExportError: the example batch is smaller than 2.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    if example.ndim != 4 or example.shape[0] < 2:
        raise ExportError(f"trace_gradients needs an example batch [B>=2, C, H, W]; got shape {tuple(example.shape)}")
    target = torch.full((example.shape[0],), -1, dtype=torch.int64)
    # The weights are real tensors among fake inputs; make_fx records them as constants.
    traced = make_fx(module, decomposition_table=_backward_decompositions(), tracing_mode="symbolic",
                     _allow_non_fake_inputs=True)(example, target)
    return _with_model_names(traced, module.wrapper.model)


def _backward_decompositions() -> dict:
    """torch's decompositions of the ``*_backward`` aten ops into forward-style ops.

    The ONNX translator lacks several backward ops (``silu_backward`` of EVA's SwiGLU MLP, for
    one); their decompositions are plain elementwise and reduction ops it does translate.
    """
    from torch._decomp import decomposition_table

    return {op: fn for op, fn in decomposition_table.items() if "backward" in op.name()}


def _with_model_names(traced: torch.fx.GraphModule, model: nn.Module) -> torch.fx.GraphModule:
    """Give the traced constants the model's own names (``model.blocks.0.attn.qkv.weight``).

    make_fx calls them ``_param_constant<i>``. With the model's names, the weights the ONNX
    exporter stores as they are (``model.pos_embed``, biases ...) are named as in a file
    exported without gradients; those it stores pre-transposed get its own names in both.
    """
    names = {id(t): f"model.{n}" for n, t in (*model.named_parameters(), *model.named_buffers())}
    root = nn.Module()
    root.model = model
    for node in traced.graph.nodes:
        if node.op != "get_attr":
            continue
        value = getattr(traced, node.target)
        if id(value) in names:
            node.target = names[id(value)]
        else:  # a constant the trace made itself (e.g. a scalar tensor): keep it under its name
            root.register_buffer(node.target, value)
    graph = torch.fx.GraphModule(root, traced.graph)
    graph.recompile()
    return graph.eval()
