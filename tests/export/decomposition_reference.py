"""Independent torch references of the forward-only decompositions, from the papers' formulas.

Nothing here calls attnmap's export or runtime code. Each block's tensors come from forward
hooks on the real model (its input x, LN1's output z, the softmax probabilities α, the input x'
of norm2, the MLP's pre-activation, the final norm's input), and every head's value-output
vector u^h_j = (z_j W_V^h + b_V^h) W_O^h is obtained by running the block's own attention
module on z with its probabilities replaced by the identity on head h and zero elsewhere, so the
module's output is u^h_j + b_O (no weight is sliced by hand). The token terms are then built as
explicit D-vectors, T_i(x_j) = γ1 ⊙ Σ_h α^h_ij u^h_j + δ_ij x_i, checked to add up to x'_i, and
the maps are computed as full N x N matrix products in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_scale(block, index: int):
    ls = getattr(block, f"ls{index}", None)
    if ls is not None and hasattr(ls, "gamma"):
        return ls.gamma.detach()
    gamma = getattr(block, f"gamma_{index}", None)
    return gamma.detach() if isinstance(gamma, torch.Tensor) else None


def _replace_probs(attn, probs):
    """A hook on ``attn.attn_drop`` that makes the module use ``probs``."""
    return attn.attn_drop.register_forward_hook(lambda m, i, o: probs.to(o.dtype).expand_as(o).clone())


def capture(model, x: torch.Tensor) -> dict:
    """Run ``model`` once on ``x`` and record what every block uses (see the module docstring)."""
    blocks = list(model.blocks)
    rec = {"blocks": [{} for _ in blocks]}
    handles = []
    saved = [(b.attn, b.attn.fused_attn) for b in blocks if hasattr(b.attn, "fused_attn")]
    for attn, _ in saved:
        attn.fused_attn = False
    for blk, r in zip(blocks, rec["blocks"]):
        handles.append(blk.norm1.register_forward_hook(lambda m, i, o, r=r: r.update(x=i[0], z=o)))
        handles.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o, r=r: r.update(alpha=o)))
        handles.append(blk.norm2.register_forward_pre_hook(lambda m, i, r=r: r.update(x_mid=i[0])))
        fc1 = getattr(blk.mlp, "fc1", None)
        if fc1 is not None:
            handles.append(fc1.register_forward_hook(lambda m, i, o, r=r: r.update(pre=o)))
        handles.append(blk.register_forward_hook(lambda m, i, o, r=r: r.update(out=o)))
    handles.append(model.norm.register_forward_pre_hook(lambda m, i: rec.update(final_in=i[0])))
    try:
        with torch.no_grad():
            rec["logits"] = model(x)
            for blk, r in zip(blocks, rec["blocks"]):
                kwargs = _attn_kwargs(model, blk)
                attn = blk.attn
                b, heads, n, _ = r["alpha"].shape
                eye = torch.eye(n, dtype=torch.float32)
                outs = []
                for h in range(heads + 1):  # the last run: all-zero probabilities, output = b_O
                    probs = torch.zeros(1, heads, n, n)
                    if h < heads:
                        probs[0, h] = eye
                    handle = _replace_probs(attn, probs)
                    try:
                        outs.append(attn(r["z"], **kwargs))
                    finally:
                        handle.remove()
                r["b_o"] = outs[-1][0, 0]
                r["u"] = torch.stack([o - r["b_o"] for o in outs[:-1]], dim=1)  # [B, H, N, D]
    finally:
        for handle in handles:
            handle.remove()
        for attn, flag in saved:
            attn.fused_attn = flag
    return rec


def _attn_kwargs(model, blk) -> dict:
    """What the model's forward passes to a block's attention besides x (rope, shared bias)."""
    kwargs = {}
    rope = getattr(model, "rope", None)
    if rope is not None and hasattr(rope, "get_embed"):
        kwargs["rope"] = rope.get_embed()
    if getattr(model, "rel_pos_bias", None) is not None:
        kwargs["shared_rel_pos_bias"] = model.rel_pos_bias()
    return kwargs


def token_terms(block, r: dict) -> torch.Tensor:
    """T[b, i, j] = γ1 ⊙ Σ_h α^h_ij u^h_j + δ_ij x_i, float64 [B, N, N, D]; checks Σ_j T + γ1 b_O == x'."""
    g1 = layer_scale(block, 1)
    alpha, u, x = r["alpha"].double(), r["u"].double(), r["x"].double()
    w = u * (g1.double() if g1 is not None else 1.0)
    t = torch.einsum("bhij,bhjd->bijd", alpha, w)
    n = x.shape[1]
    t[:, torch.arange(n), torch.arange(n)] += x
    bias = r["b_o"].double() * (g1.double() if g1 is not None else 1.0)
    total = t.sum(dim=2) + bias
    err = (total - r["x_mid"].double()).abs().max().item()
    assert err <= 1e-4 * max(1.0, r["x_mid"].abs().max().item()), f"token terms do not add up to x': {err}"
    return t


def attn_norm_matrix(block, r: dict, residual: bool = True) -> torch.Tensor:
    """Kobayashi 2020 edge weights ||γ1 ⊙ Σ_h α^h_ij u^h_j|| (+ δ_ij ||x_i||), [B, N, N] float64."""
    g1 = layer_scale(block, 1)
    w = r["u"].double() * (g1.double() if g1 is not None else 1.0)
    m = torch.einsum("bhij,bhjd->bijd", r["alpha"].double(), w).norm(dim=-1)
    if residual:
        n = m.shape[1]
        m[:, torch.arange(n), torch.arange(n)] += r["x"].double().norm(dim=-1)
    return m


def linear_ln(y: torch.Tensor, norm, total: torch.Tensor) -> torch.Tensor:
    """g(y) = γ ⊙ (y − mean(y)) / σ(total), the LayerNorm linearised at ``total`` (no β)."""
    sigma = torch.sqrt(total.double().var(dim=-1, unbiased=False) + norm.eps)
    gamma = norm.weight.double() if norm.weight is not None else 1.0
    centred = y - y.mean(dim=-1, keepdim=True)
    while sigma.dim() < centred.dim():
        sigma = sigma.unsqueeze(-1)
    return gamma * centred / sigma


def globenc_matrix(block, r: dict) -> torch.Tensor:
    """GlobEnc for a pre-LN block: ||norm2 linearised at x'_i (T_i(x_j))||, [B, N, N] float64."""
    t = token_terms(block, r)
    return linear_ln(t, block.norm2, r["x_mid"][:, :, None, :]).norm(dim=-1)


def rollout_row(matrices: list[torch.Tensor], target: int | None, v: torch.Tensor | None = None) -> torch.Tensor:
    """The target row (or ``v``) times M̂_(last) ··· M̂_0 with rows renormalised, [B, N]."""
    b, n, _ = matrices[0].shape
    if v is None:
        v = torch.zeros(b, n, dtype=torch.float64)
        if target is None:
            v[:] = 1.0 / n
        else:
            v[:, target] = 1.0
    for m in reversed(matrices):
        v = torch.einsum("bi,bij->bj", v, m / m.sum(dim=-1, keepdim=True))
    return v


def minmax_patches(v: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    p = v[:, prefix:]
    lo, hi = p.min(dim=1, keepdim=True).values, p.max(dim=1, keepdim=True).values
    return ((p - lo) / (hi - lo)).reshape(v.shape[0], *grid)


def class_contributions(model, rec: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """DecompX through the last block and the head: ([B, N, C] token parts, [B, C] bias part).

    Token parts of the class token after the attention sub-layer, d_j = T_0(x_j), and the bias
    γ1 ⊙ b_O; then norm2 linearised at x'_0, the GELU as GELU(a)/a at the model's own fc1 output
    a, fc2, the layer scale, the residual, the final norm linearised at its own input, the head.
    """
    block = list(model.blocks)[-1]
    r = rec["blocks"][-1]
    t = token_terms(block, r)
    d = t[:, 0]  # [B, N, D]
    g1, g2 = layer_scale(block, 1), layer_scale(block, 2)
    bias = r["b_o"].double() * (g1.double() if g1 is not None else 1.0)
    bias = bias.expand(d.shape[0], -1)
    x_mid0 = r["x_mid"][:, 0]
    n2 = block.norm2
    e = linear_ln(d, n2, x_mid0)
    e_bias = linear_ln(bias, n2, x_mid0) + n2.bias.double()
    a = r["pre"][:, 0].double()  # the model's own fc1 output for the class token
    ratio = F.gelu(a) / a
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    f = ratio[:, None] * (e @ fc1.weight.double().t())
    f_bias = ratio * (e_bias @ fc1.weight.double().t() + fc1.bias.double())
    m = f @ fc2.weight.double().t()
    m_bias = f_bias @ fc2.weight.double().t() + fc2.bias.double()
    s2 = g2.double() if g2 is not None else 1.0
    p, p_bias = d + s2 * m, bias + s2 * m_bias
    final0 = rec["final_in"][:, 0]
    q = linear_ln(p, model.norm, final0)
    q_bias = linear_ln(p_bias, model.norm, final0) + model.norm.bias.double()
    head = model.head
    return q @ head.weight.double().t(), q_bias @ head.weight.double().t() + head.bias.double()
