"""The tail of a ViT, exported into the same file: the last block, the final norm and the head.

ViT-ReciproCAM (:mod:`attnmap.runtime.methods.reciprocam`) reruns only the end of the network,
on N_p masked copies of the tokens that enter the last block. ``attnmap export --tail``
(``export_onnx(..., tail=True)``) therefore adds two things to the one ``.onnx`` file:

* an output ``tail_input`` ``[B, N, D]`` float32 of the main graph: the tokens entering the last
  block (prefix tokens first), captured by a forward pre-hook on ``model.blocks[-1]``;
* the tail itself, ``(tail_input [b, N, D], token_weights [b, N]) -> logits [b, C]`` (see
  :class:`TailModule` for where the weights act), as a second ONNX graph with its own dynamic
  batch axis, serialised (base64 of the protobuf bytes) under the metadata key
  :data:`~attnmap.runtime.model.tail.TAIL_KEY`.

Why a second graph in the metadata and not one graph: the tail runs at another batch size
(N_p copies per image) and on another input than the image, and an ONNX graph cannot be entered
half-way; a sidecar file would break the one-file rule. The cost is the last block's and the
head's weights stored twice (DeiT-Tiny: 2.5 MB, about 3.4 MB as base64, in a 22 MB file).

The tail is the timm ``VisionTransformer`` code path after the blocks, exactly (with all
weights 1): ``forward_head(norm(blocks[-1](x)))`` (pooling by class token or mean, ``fc_norm``, the head;
a distilled DeiT averages its two heads in eval). Families whose blocks take more than the
tokens (EVA's rotary embedding, BEiT's shared relative position bias) and transformers models
are refused. The export checks the tail graph against torch on the parity batch's own
``tail_input`` and requires its logits to equal the full model's.
"""

from __future__ import annotations

import base64
import logging
import warnings
from typing import Any, Callable

import torch
from torch import nn

from attnmap.runtime.core.errors import ExportError
from attnmap.runtime.core.meta import ModelMeta

__all__ = ["TAIL_OUTPUT", "TAIL_WEIGHTS", "TailInput", "TailModule", "with_tail", "tail_proto", "check_tail"]

TAIL_OUTPUT = "tail_input"
TAIL_WEIGHTS = "token_weights"  # the tail graph's second input, [b, N]
# the same key the runtime reads (runtime/model/tail.py); spelled here so that the export does
# not import the runtime's model floor (onnxruntime) at import time
TAIL_KEY = "attnmap.tail"


def _check_family(model: nn.Module, model_name: str) -> None:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ExportError(f"tail=True exports the last block of a timm VisionTransformer (ViT, DeiT, DINOv2, "
                          f"registers); {model_name} is a {type(model).__name__}, whose blocks take more than the "
                          "tokens (or a different head path)")
    if len(model.blocks) < 1:
        raise ExportError(f"{model_name} has no blocks to take the tail from")
    from timm.models.vision_transformer import Block

    if type(model.blocks[-1]) is not Block:
        raise ExportError(f"tail=True needs timm's plain Block as the last block (pre-norm attention then MLP); "
                          f"{model_name}'s is a {type(model.blocks[-1]).__name__}")


class TailModule(nn.Module):
    """``(tokens [b, N, D], token_weights [b, N]) -> logits [b, C]``: the last block, the final
    norm and the head of a timm ViT, with every token of the last block's input weighted.

    With ``w = token_weights[..., None]`` the last (timm ``Block``) block computes
    ``y = w * x + ls1(attn(w * norm1(x)))`` and then ``y + ls2(mlp(norm2(y)))``: the same weight
    scales a token on the skip path and at the output of the first LayerNorm, which is where
    openvino-xai's ViTReciproCAM puts its mosaic masks (the LayerNorm sees the unmasked token).
    All weights 1 is the unmodified network; weights that are 0 or 1 and a token fed already
    masked give the other placement (masking before the LayerNorm).

    Args:
        model: a timm ``VisionTransformer`` (eval mode); its modules are used, not copied.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training

    def forward(self, tokens: torch.Tensor, token_weights: torch.Tensor) -> torch.Tensor:
        """Run the end of the network on ``tokens`` (float32 ``[b, N, D]``, prefix tokens first)
        weighted by ``token_weights`` (float32 ``[b, N]``)."""
        m, blk = self.model, self.model.blocks[-1]
        w = token_weights.unsqueeze(-1)
        x = w * tokens + blk.drop_path1(blk.ls1(blk.attn(w * blk.norm1(tokens))))
        x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        return m.forward_head(m.norm(x))


class TailInput(nn.Module):
    """A :class:`~export.vit_attn.ViTWithAttention` that also returns the tokens entering the last block.

    Its forward returns the wrapper's outputs followed by ``tail_input`` ``[B, N, D]``; the
    exporter names that extra output from :attr:`extra_outputs` and calls :meth:`finish_proto`
    on the traced graph, which adds the tail graph to its metadata.

    Args:
        wrapper: the ViTWithAttention around a timm ``VisionTransformer``.
        atol: logits tolerance of the tail's parity check (scaled by ``max(1, max|logit|)``).
        log: receives the tail's parity line.
    """

    extra_outputs = (TAIL_OUTPUT,)

    def __init__(self, wrapper: nn.Module, *, atol: float = 1e-4, log: Callable[[str], None] = print) -> None:
        super().__init__()
        self.wrapper = wrapper
        self.model = wrapper.model
        self.training = wrapper.training
        self.attentions = wrapper.attentions
        self.atol = atol
        self.log = log
        self._seen: list[torch.Tensor] = []

    def _grab(self, module: nn.Module, args: tuple) -> None:
        self._seen.append(args[0])

    def forward(self, x: torch.Tensor):
        """``(logits, [attentions,] tail_input)`` for images ``x`` ``[B, 3, H, W]``."""
        self._seen = []
        handle = self.model.blocks[-1].register_forward_pre_hook(self._grab)
        try:
            out = self.wrapper(x)
        finally:
            handle.remove()
        seen, self._seen = self._seen, []
        if len(seen) != 1:
            raise ExportError(f"the last block ran {len(seen)} times in one forward; expected once")
        return (*(out if isinstance(out, tuple) else (out,)), seen[0])

    def finish_proto(self, proto: Any, input_size: tuple[int, ...], opset: int | None) -> None:
        """Add the tail graph, parity-checked, to ``proto``'s metadata (in place)."""
        import onnx

        tail = tail_proto(self.model, input_size, opset)
        worst, scale = check_tail(self.model, tail, input_size)
        tol = self.atol * max(1.0, scale)
        if not worst <= tol:
            raise ExportError(f"parity check failed for the tail: logits max |torch - onnx| {worst:.2e} > {tol:.2e}; "
                              "no file written")
        self.log(f"tail (last block, norm, head): {tail.ByteSize() / 2**20:.1f} MB, parity logits max |d| {worst:.2e}")
        props = {p.key: p.value for p in proto.metadata_props}
        props[TAIL_KEY] = base64.b64encode(tail.SerializeToString()).decode("ascii")
        onnx.helper.set_model_props(proto, props)


def with_tail(wrapper: nn.Module, meta: ModelMeta, *, atol: float = 1e-4,
              log: Callable[[str], None] = print) -> tuple[TailInput, ModelMeta]:
    """Wrap ``wrapper`` so that the export also writes the tail; the metadata names ``tail_input``.

    Raises:
        ExportError: a model outside the timm ``VisionTransformer`` family, or a gradient export
            (the tail is for forward-only methods; export them as two files).
    """
    _check_family(wrapper.model, meta.model_name)
    if meta.has_gradients:
        raise ExportError("tail=True and gradients=True do not go together: ViT-ReciproCAM needs no gradients; "
                          "export the tail into a file without them")
    return TailInput(wrapper, atol=atol, log=log), meta.replace(outputs=(*meta.outputs, TAIL_OUTPUT))


def tail_proto(model: nn.Module, input_size: tuple[int, ...], opset: int | None):
    """Trace :class:`TailModule` of ``model`` into an ``onnx.ModelProto`` with a dynamic batch axis.

    Args:
        model: the timm ``VisionTransformer``, eval mode.
        input_size: ``(C, H, W)`` of the model input (gives the token count N).
        opset: ONNX opset; None uses the exporter's default.
    """
    tail = TailModule(model).eval()
    n = int(model.patch_embed.num_patches) + int(model.num_prefix_tokens)
    example = (torch.zeros((2, n, int(model.embed_dim)), dtype=torch.float32), torch.ones((2, n), dtype=torch.float32))
    batch = torch.export.Dim("batch", min=1)
    folding_log = logging.getLogger("onnxscript.optimizer._constant_folding")
    level = folding_log.level
    folding_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used")
            program = torch.onnx.export(tail, example, None, input_names=[TAIL_OUTPUT, TAIL_WEIGHTS],
                                        output_names=["logits"], opset_version=opset, dynamo=True,
                                        external_data=False, dynamic_shapes=({0: batch}, {0: batch}),
                                        optimize=True, verbose=False)
    except Exception as exc:  # torch.export and onnxscript raise many types; report the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx could not export the tail of the model: {first}") from exc
    finally:
        folding_log.setLevel(level)
    return program.model_proto


def check_tail(model: nn.Module, proto, input_size: tuple[int, ...], *, seed: int = 0) -> tuple[float, float]:
    """Largest |torch - onnx| of the tail's logits on real ``tail_input`` tokens, and the logit scale.

    The file's tail runs with all weights 1 and with seeded random weights in [0, 1].

    The tokens are those a seeded random image batch (2 images, and 1 for the dynamic axis)
    brings to the last block; the torch tail's logits must also equal the full model's (else
    the tail is not the rest of the network, and :class:`ExportError` says so).
    """
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *input_size), generator=gen, dtype=torch.float32)
    seen: list[torch.Tensor] = []
    handle = model.blocks[-1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            full = model(x)
    finally:
        handle.remove()
    tokens = seen[-1]
    # the weights of the check: all 1 (the unmodified network, compared with the full model) for
    # the reference, random in [0, 1] for the comparison with the file
    ones = torch.ones(tokens.shape[:2], dtype=torch.float32)
    weights = torch.rand(tokens.shape[:2], generator=gen, dtype=torch.float32)
    with torch.no_grad():
        ref = TailModule(model)(tokens, ones)
        weighted = TailModule(model)(tokens, weights)
    if not torch.allclose(ref, full, atol=1e-5 * max(1.0, float(full.abs().max())), rtol=0):
        raise ExportError("the tail (last block, norm, head) does not reproduce the model's logits: this model's "
                          "forward does more after its blocks than timm's VisionTransformer")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for w, want in ((ones, ref), (weights, weighted), (weights[:1], weighted[:1])):
        got = session.run(None, {TAIL_OUTPUT: tokens[:len(w)].numpy(), TAIL_WEIGHTS: w.numpy()})[0]
        worst = max(worst, float((torch.from_numpy(got).double() - want.double()).abs().max()))
    return worst, float(max(ref.abs().max(), weighted.abs().max()))
