"""Forward-only decompositions in the graph: the small tensors the norm-based maps need.

A file exported with ``decompositions=True`` emits, beside ``logits`` and ``attentions``:

    mix_grams[b, l, j]    = Gram([w^1_j, ..., w^H_j, x_j])                float32 [B, L, N, H+1, H+1]
    mix_grams_ln[b, l, j] = Gram([g(w^1_j), ..., g(w^H_j), g(x_j)])       float32 [B, L, N, H+1, H+1]
    class_contributions[b, j, c]  (token-pooled models with a GELU MLP)   float32 [B, N, C]

Notation of one pre-LN block (``../shared/METHODS.md``): ``x`` is the residual stream entering
block l, ``z = norm1(x)``, ``u^h_j = (z_j W_V^h + b_V^h) W_O^h`` the value-output vector of head
h at token j, ``w^h_j = γ1 ⊙ u^h_j`` (γ1 the layer scale, 1 when absent), so that the block's
attention sub-layer gives

    x'_i = Σ_j T_i(x_j) + γ1 ⊙ b_O,    T_i(x_j) = Σ_h α^h_ij w^h_j + δ_ij x_i.

``g(y) = γ2 ⊙ (y − mean(y))`` is the block's ``norm2`` (the LayerNorm that reads x') without its
division by σ(x'_i) and its bias: the part of LayerNorm that is linear in each term once the
statistics are the total's (GlobEnc's linearisation). The division by σ(x'_i) scales a whole
row of a mixing matrix and cancels in the row normalisation, so it is not emitted.

With these Grams every norm the methods read is a quadratic form in the attention weights,
``||T_i(x_j)||² = Σ_hg α^h_ij α^g_ij G_j[h,g] + δ_ij (2 Σ_h α^h_ii G_i[h,H] + G_i[H,H])``, which
NumPy evaluates for all i, j in O(N² H²) (``runtime/methods/decomposition.py``). The Grams cost
about one output projection per block (``u`` for every head) and two (N, H+1, H+1) products.

``class_contributions`` is the class-specific decomposition (DecompX-style) of the class token
through the LAST block, the final norm and the head; see :func:`class_contributions`.

The hooks capture the tensors the block uses: the input of ``norm1`` (x), its output (z), and
the probabilities (:class:`ViTWithAttention`'s hook), and the values: the last third of the
fused ``qkv`` Linear's output where the module runs it (timm's ``Attention``), or the ``v_proj``
Linear's (EVA-02 with unfused projections), else (BEiT, fused EVA with q/v biases, which call
``F.linear`` with a concatenated bias that no module hook sees) recomputed from z with the
module's own value weights.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from attnmap.runtime.core.errors import ExportError
from attnmap.runtime.core.meta import DECOMPOSITION_OUTPUTS

from .vit_attn import ViTWithAttention

__all__ = ["DECOMPOSITION_OUTPUTS", "CONTRIBUTION_OUTPUT", "DECOMP_RTOL", "check_decomposition_options",
           "ViTWithBlockInputs", "ViTWithDecompositions", "value_weights", "block_parts", "layer_scale",
           "contributions_supported"]

CONTRIBUTION_OUTPUT = "class_contributions"


def value_weights(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The value projection of a timm attention module: ``v = z @ W.T + b``.

    Args:
        attn: timm ``Attention`` (ViT, DeiT, DINOv2), BEiT's ``Attention`` or ``EvaAttention``.

    Returns:
        ``(W, b)``: float32 ``[A, D]`` and ``[A]`` (or None without a value bias), A = heads x head dim.
        Call it inside the traced forward: the slices are graph operations on the parameters.

    Raises:
        ExportError: the module normalises or gates its output before the projection (then the
            value path is not linear per token and the decomposition does not apply).
    """
    check_value_path(attn)
    qkv = getattr(attn, "qkv", None)
    if qkv is None:
        proj = attn.v_proj
        return proj.weight, proj.bias
    a = qkv.weight.shape[0] // 3
    weight = qkv.weight[2 * a:]
    if getattr(attn, "v_bias", None) is not None:
        return weight, attn.v_bias
    return weight, None if qkv.bias is None else qkv.bias[2 * a:]


def check_value_path(attn: nn.Module) -> None:
    """Raise ExportError where the attention output is normalised or gated before its projection."""
    if not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity) or getattr(attn, "gate", None) is not None:
        raise ExportError(f"{type(attn).__name__} normalises or gates the attention output before its projection; "
                          "the norm-based decompositions need a linear value path")


def layer_scale(block: nn.Module, index: int) -> torch.Tensor | None:
    """Layer scale γ of the residual branch ``index`` (1: attention, 2: MLP), or None."""
    ls = getattr(block, f"ls{index}", None)
    if ls is not None and hasattr(ls, "gamma"):
        return ls.gamma
    gamma = getattr(block, f"gamma_{index}", None)
    return gamma if isinstance(gamma, torch.Tensor) else None


def block_parts(block: nn.Module) -> dict:
    """The modules and weights of one pre-LN block that the decompositions read.

    Raises:
        ExportError: the block is not ``x + γ1 attn(norm1(x))`` then ``+ γ2 mlp(norm2(.))`` with
            LayerNorms (a post-norm or RMSNorm block, or one without ``norm1``/``norm2``).
    """
    norm1, norm2 = getattr(block, "norm1", None), getattr(block, "norm2", None)
    if not isinstance(norm1, nn.LayerNorm) or not isinstance(norm2, nn.LayerNorm):
        raise ExportError(f"{type(block).__name__}: the norm-based decompositions need a pre-LN block with "
                          f"LayerNorm norm1 and norm2; got {type(norm1).__name__} and {type(norm2).__name__}")
    if "PostNorm" in type(block).__name__ or "ResPost" in type(block).__name__:
        raise ExportError(f"{type(block).__name__} normalises after the residual sum (post-norm); the "
                          "decompositions are written for pre-LN blocks")
    check_value_path(block.attn)
    return {"norm1": norm1, "norm2": norm2, "attn": block.attn, "proj": block.attn.proj, "block": block,
            "mlp": block.mlp}


def contributions_supported(model: nn.Module) -> str | None:
    """None when :func:`class_contributions` applies to ``model``, else why not (one line)."""
    if getattr(model, "global_pool", None) != "token" or getattr(model, "dist_token", None) is not None:
        return "the class-specific decomposition reads one class token ('token' pooling, no distillation token)"
    last = list(model.blocks.children())[-1]
    mlp = getattr(last, "mlp", None)
    if not all(isinstance(getattr(mlp, n, None), nn.Linear) for n in ("fc1", "fc2")) \
            or not isinstance(getattr(mlp, "act", None), nn.GELU) \
            or not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        return "the last block's MLP is not fc1 -> GELU -> fc2 (the activation is linearised as GELU(a)/a)"
    if not isinstance(getattr(model, "norm", None), nn.LayerNorm):
        return "the final norm is not a LayerNorm"
    if not isinstance(getattr(model, "fc_norm", nn.Identity()), (nn.Identity, nn.LayerNorm)):
        return "the pooled feature's norm (fc_norm) is not a LayerNorm"
    if not isinstance(getattr(model, "head", None), nn.Linear):
        return "the head is not one Linear layer"
    return None


def _gram(vecs: torch.Tensor) -> torch.Tensor:
    """``[B, N, K, K]`` Gram matrices of ``[B, N, K, D]`` vectors, token by token.

    As a broadcast product and a sum over D, not a batched matmul: onnxruntime runs the
    (K x D) @ (D x K) products of N tokens (K = H + 1, a handful) as N tiny GEMMs, which took
    three times as long on DeiT-Tiny.
    """
    return (vecs.unsqueeze(3) * vecs.unsqueeze(2)).sum(dim=-1)


def _centre(y: torch.Tensor) -> torch.Tensor:
    return y - y.mean(dim=-1, keepdim=True)


def _linear_norm(parts: torch.Tensor, bias: torch.Tensor, norm: nn.LayerNorm, total: torch.Tensor):
    """LayerNorm of ``Σ parts + bias`` linearised with the total's statistics.

    ``LN(Σ_k y_k) = Σ_k γ ⊙ (y_k − mean(y_k)) / σ + (γ ⊙ (b − mean(b)) / σ + β)`` with σ that of
    ``total`` (= Σ parts + bias); exact for the sum, as centring and scaling are linear.

    Args:
        parts: ``[B, N, D]`` the token parts; bias: ``[B, D]``; total: ``[B, D]``.
    """
    sigma = torch.sqrt(total.var(dim=-1, unbiased=False, keepdim=True) + norm.eps)  # [B, 1]
    gamma = norm.weight if norm.weight is not None else 1.0
    beta = norm.bias if norm.bias is not None else 0.0
    return gamma * _centre(parts) / sigma[:, None], gamma * _centre(bias) / sigma + beta


def class_contributions(model: nn.Module, parts: dict, x: torch.Tensor, w: torch.Tensor,
                        probs: torch.Tensor) -> torch.Tensor:
    """Token contributions to every logit through the last block (DecompX-style), ``[B, N, C]``.

    The class token's state after the last block's attention sub-layer splits exactly into
    token parts and a bias: ``x'_0 = Σ_j d_j + γ1 ⊙ b_O`` with ``d_j = Σ_h α^h_0j w^h_j + δ_0j x_0``
    (the token parts of the block's input x). Each part then goes through the rest of the model
    with every non-linearity linearised at the total, as DecompX (Modarressi et al. 2023) does:
    norm2 and the final norm(s) with the total's mean and σ (:func:`_linear_norm`); the MLP's
    GELU as ``GELU(a)/a`` per neuron, ``a`` the total pre-activation (``act(a) = (act(a)/a) ⊙ a``
    distributes over the parts of ``a``); layer scales, residuals and the head are linear. The
    biases (b_O, b_1, b_2, the norms' β and the head's b) form one extra "bias" part that the
    file does not emit: ``Σ_j class_contributions[:, j] + bias == logits``.

    Args:
        model: the timm model; parts: :func:`block_parts` of its last block.
        x: ``[B, N, D]`` the last block's input; w: ``[B, N, H, D]`` its ``w^h_j``;
        probs: ``[B, H, N, N]`` its attention probabilities.
    """
    d = torch.einsum("bhj,bjhd->bjd", probs[:, :, 0, :], w)
    d = torch.cat([d[:, :1] + x[:, :1], d[:, 1:]], dim=1)
    gamma1 = layer_scale(parts["block"], 1)
    gamma1 = gamma1 if gamma1 is not None else 1.0
    b_o = parts["proj"].bias if parts["proj"].bias is not None else torch.zeros_like(x[0, 0])
    bias = (gamma1 * b_o).expand(x.shape[0], -1)
    total = d.sum(dim=1) + bias
    e, e_bias = _linear_norm(d, bias, parts["norm2"], total)
    mlp = parts["mlp"]
    pre = F.linear(e.sum(dim=1) + e_bias, mlp.fc1.weight, mlp.fc1.bias)  # [B, 4D] the total's fc1
    ratio = mlp.act(pre) / torch.where(pre == 0, torch.ones_like(pre), pre)
    ratio = torch.where(pre == 0, torch.full_like(pre, 0.5), ratio)  # GELU(a)/a -> GELU'(0) = 1/2
    f = ratio[:, None] * F.linear(e, mlp.fc1.weight)
    f_bias = ratio * F.linear(e_bias, mlp.fc1.weight, mlp.fc1.bias)
    m, m_bias = F.linear(f, mlp.fc2.weight), F.linear(f_bias, mlp.fc2.weight, mlp.fc2.bias)
    gamma2 = layer_scale(parts["block"], 2)
    gamma2 = gamma2 if gamma2 is not None else 1.0
    p, p_bias = d + gamma2 * m, bias + gamma2 * m_bias
    q, q_bias = _linear_norm(p, p_bias, model.norm, p.sum(dim=1) + p_bias)
    if isinstance(getattr(model, "fc_norm", None), nn.LayerNorm):
        q, q_bias = _linear_norm(q, q_bias, model.fc_norm, q.sum(dim=1) + q_bias)
    return F.linear(q, model.head.weight)


class ViTWithBlockInputs(ViTWithAttention):
    """A :class:`ViTWithAttention` (every head) that also captures, per pre-LN block, the residual
    stream x entering it, z = norm1(x) and the values the block used.

    The base of the wrappers whose extra outputs are computed from these tensors
    (:class:`ViTWithDecompositions`, :class:`export.norms.ViTWithNorms`); call :meth:`_capture`
    in their forward.

    Raises:
        ExportError: a block outside the decomposable layout (see :func:`block_parts`).
    """

    def __init__(self, model: nn.Module) -> None:
        blocks = list(model.blocks.children())
        parts = [block_parts(b) for b in blocks]  # raises before any hook is set
        super().__init__(model, heads="none", attentions=True)
        # In a list: the parts hold submodules of model already registered there.
        self._parts = [parts]
        self._inputs: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(blocks)
        self._qkv: list[torch.Tensor | None] = [None] * len(blocks)
        self._v: list[torch.Tensor | None] = [None] * len(blocks)
        for i, p in enumerate(parts):
            self._handles.append(p["norm1"].register_forward_hook(functools.partial(self._norm_hook, i)))
            # Where the attention runs its fused qkv Linear (timm's Attention) or its value Linear
            # (EVA-02's unfused v_proj) as a module, its output holds the values the block uses:
            # read them there instead of a second value projection. BEiT and fused EVA call
            # F.linear with a concatenated bias, which no hook sees; their values are recomputed
            # from z (value_weights).
            qkv, v_proj = getattr(p["attn"], "qkv", None), getattr(p["attn"], "v_proj", None)
            if isinstance(qkv, nn.Linear) and getattr(p["attn"], "v_bias", None) is None:
                self._handles.append(qkv.register_forward_hook(functools.partial(self._qkv_hook, i)))
            elif qkv is None and isinstance(v_proj, nn.Linear):
                self._handles.append(v_proj.register_forward_hook(functools.partial(self._v_hook, i)))

    def _norm_hook(self, index: int, module: nn.Module, inputs: tuple, output: torch.Tensor):
        if self._capturing:
            self._inputs[index] = (inputs[0], output)
        return None

    def _qkv_hook(self, index: int, module: nn.Module, inputs: tuple, output: torch.Tensor):
        if self._capturing:
            self._qkv[index] = output
        return None

    def _v_hook(self, index: int, module: nn.Module, inputs: tuple, output: torch.Tensor):
        if self._capturing:
            self._v[index] = output
        return None

    def _values(self, index: int, z: torch.Tensor) -> torch.Tensor:
        """``[B, N, A]`` the values block ``index`` used: its qkv output's last third, its v_proj
        output, or z W_V + b_V."""
        qkv = self._qkv[index]
        if qkv is not None:
            return qkv[..., 2 * (qkv.shape[-1] // 3):]
        if self._v[index] is not None:
            return self._v[index]
        weight, bias = value_weights(self._parts[0][index]["attn"])
        return F.linear(z, weight, bias)

    def _clear(self) -> None:
        self._inputs = [None] * self.num_layers
        self._qkv = [None] * self.num_layers
        self._v = [None] * self.num_layers

    def _capture(self, x: torch.Tensor, read: Callable[[int, torch.Tensor], torch.Tensor] | None = None):
        """Run the model: ``(logits, attentions, [(x_l, z_l) per block], [values_l per block])``,
        the values read by ``read(l, z_l)``, default :meth:`_values` (``[B, N, A]``)."""
        read = self._values if read is None else read
        self._clear()
        try:
            logits, attentions = super().forward(x)
            if any(v is None for v in self._inputs):
                raise ExportError("a block's norm1 did not run during the forward pass; cannot decompose it")
            inputs = list(self._inputs)
            values = [read(l, z) for l, (_, z) in enumerate(inputs)]
        finally:
            self._clear()
        return logits, attentions, inputs, values


class ViTWithDecompositions(ViTWithBlockInputs):
    """A timm ViT that returns ``(logits, attentions, mix_grams, mix_grams_ln[, class_contributions])``.

    Args:
        model: a timm ViT-family model with pre-LN blocks (see :func:`block_parts`).
        contributions: also emit ``class_contributions`` (needs :func:`contributions_supported`);
            None: where the model supports them.

    Raises:
        ExportError: a block outside the decomposable layout, or contributions asked for a
            model they do not apply to.
    """

    def __init__(self, model: nn.Module, contributions: bool | None = True) -> None:
        super().__init__(model)
        why = contributions_supported(model)
        if contributions and why is not None:
            self.close()
            raise ExportError(f"{type(model).__name__}: no class contributions: {why}")
        contributions = why is None if contributions is None else contributions
        self.contributions = bool(contributions)
        self.output_names = ("logits", "attentions", *DECOMPOSITION_OUTPUTS) + (
            (CONTRIBUTION_OUTPUT,) if contributions else ())
        # The last block's probabilities as the block used them, for the class contributions:
        # reading them from the stacked `attentions` would make the stack a tensor other nodes
        # read, which keeps the runtime from splitting it into per-layer outputs (an extra
        # 5.6 MB copy per DeiT-Tiny image; runtime/model/graph.py).
        self._last_probs: torch.Tensor | None = None
        self._handles.append(self._parts[0][-1]["attn"].attn_drop.register_forward_hook(self._probs_hook))

    def _probs_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor):
        if self._capturing:
            self._last_probs = output
        return None

    def forward(self, x: torch.Tensor):
        """Run the model; see the module docstring for the outputs' definitions and shapes."""
        logits, attentions, inputs, values = self._capture(x)
        grams, grams_ln, contrib = [], [], None
        for l, p in enumerate(self._parts[0]):
            stream, z = inputs[l]
            b, n, dim = stream.shape
            heads = self.num_heads
            v = values[l].reshape(b, n, heads, -1).transpose(1, 2)  # [B, H, N, d]
            w_o = p["proj"].weight
            w_o = w_o.t().reshape(heads, -1, w_o.shape[0])  # [H, d, D]: the rows of W_O head h feeds
            u = torch.matmul(v, w_o)  # [B, H, N, D]
            gamma1 = layer_scale(p["block"], 1)
            if gamma1 is not None:
                u = u * gamma1
            w = u.transpose(1, 2)  # [B, N, H, D]
            vecs = torch.cat([w, stream[:, :, None, :]], dim=2)  # [B, N, H+1, D]
            grams.append(_gram(vecs))
            norm2 = p["norm2"]
            g = _centre(vecs) * (norm2.weight if norm2.weight is not None else 1.0)
            grams_ln.append(_gram(g))
            if self.contributions and l == self.num_layers - 1:
                contrib = class_contributions(self.model, p, stream, w, self._last_probs)
        self._last_probs = None
        out = (logits, attentions, torch.stack(grams, dim=1), torch.stack(grams_ln, dim=1))
        return out + ((contrib,) if contrib is not None else ())


# Parity tolerance of the decomposition outputs: |onnx - torch| <= DECOMP_RTOL * max |torch|.
DECOMP_RTOL = 1e-5


def check_decomposition_options(heads: str, attentions: bool, gradients: bool) -> None:
    """Refuse export options the decomposition outputs cannot go with.

    Raises:
        ExportError: fused heads (the Grams pair every head's weights), no attentions, or
            gradients (the gradient graph has its own fixed outputs).
    """
    if heads != "none":
        raise ExportError(f"decompositions=True needs every head (heads='none'); got heads={heads!r}: the norm "
                          "of Σ_h α^h_ij u^h_j pairs each head's attention with its own value vectors")
    if not attentions:
        raise ExportError("decompositions=True needs attentions=True: the maps weight the attention by the norms")
    if gradients:
        raise ExportError("decompositions=True and gradients=True cannot be combined in one file yet; the "
                          "decompositions are for files without a backward pass")
