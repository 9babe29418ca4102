"""TailModel: the tail graph an ``attnmap export --tail`` file carries in its metadata, as a session.

The file's main graph emits ``tail_input`` ``[B, N, D]``, the tokens entering the last block;
its metadata holds, under :data:`TAIL_KEY`, a second ONNX graph (base64 of its protobuf bytes):
``(tail_input [b, N, D], token_weights [b, N]) -> logits [b, C]``, the last block, the final
norm and the head, with each token weighted on the last block's skip path and at its first
LayerNorm's output (all weights 1: the unmodified network; see ``export/tail.py``). Methods that
rerun only the end of the network (ViT-ReciproCAM) run it here, many weighted copies of one
image's tokens per run, without the blocks before.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from attnmap.runtime.core.errors import ExplainError, ModelError
from attnmap.runtime.core.meta import ModelMeta
from attnmap.runtime.model.graph import first_line
from attnmap.runtime.model.session import ORT_ERRORS, session_options

TAIL_KEY = "attnmap.tail"
TAIL_INPUTS = ("tail_input", "token_weights")


class TailModel:
    """The tail graph of one file, in its own onnxruntime session (same providers and threads).

    Args:
        props: the file's ``metadata_props`` (key -> string), which hold :data:`TAIL_KEY`.
        meta: the file's metadata (token count and classes, to check the graph against).
        path: the file, named in messages.
        providers: onnxruntime providers, in order (the main session's).
        sess_options: the session options (the main session's threads and settings).

    Raises:
        ExplainError: the file carries no tail (it was exported without ``--tail``).
        ModelError: the stored tail is not a graph onnxruntime loads, or does not take
            ``(tail_input [b, N, D], token_weights [b, N])`` and give ``logits [b, C]``.
    """

    def __init__(self, props: Mapping[str, str], meta: ModelMeta, path: str | Path,
                 providers: Sequence[str], sess_options: ort.SessionOptions | None = None):
        self.path = Path(path)
        name = self.path.name
        if not meta.has_tail or TAIL_KEY not in props:
            raise ExplainError(f"model {name!r} carries no tail graph (the last block, norm and head), which "
                               "reciprocam reruns; re-export it with `attnmap export --tail`")
        try:
            graph = base64.b64decode(props[TAIL_KEY].encode("ascii"), validate=True)
            self.session = ort.InferenceSession(graph, sess_options=sess_options, providers=list(providers))
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise ModelError(f"model {name!r}: its tail graph ({TAIL_KEY!r} metadata) is not base64 text") from exc
        except ORT_ERRORS as exc:
            raise ModelError(f"model {name!r}: onnxruntime cannot load its tail graph: {first_line(exc)}") from exc
        ins = {i.name: i.shape for i in self.session.get_inputs()}
        outs = {o.name: o.shape for o in self.session.get_outputs()}
        n = meta.num_tokens
        if (set(ins) != set(TAIL_INPUTS) or "logits" not in outs or ins["tail_input"][1] != n
                or ins["token_weights"][1:] != [n] or outs["logits"][1] != meta.num_classes):
            raise ModelError(f"model {name!r}: its tail graph takes {ins} and gives {outs}; expected tail_input "
                             f"[b, {n}, D], token_weights [b, {n}] and logits [b, {meta.num_classes}]")
        self.width = int(ins["tail_input"][2])
        self.num_tokens = n

    def logits(self, tokens: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(b, C) float32 logits of the tail on weighted tokens.

        Args:
            tokens: (b, N, D) float32 tokens entering the last block.
            weights: (b, N) float32 the weight of each token (1: unmodified, 0: removed).

        Raises:
            ExplainError: shapes that do not fit the tail.
            ModelError: onnxruntime failed.
        """
        t = np.ascontiguousarray(tokens, dtype=np.float32)
        w = np.ascontiguousarray(weights, dtype=np.float32)
        if t.ndim != 3 or t.shape[1:] != (self.num_tokens, self.width) or w.shape != t.shape[:2]:
            raise ExplainError(f"the tail takes tokens (b, {self.num_tokens}, {self.width}) and weights "
                               f"(b, {self.num_tokens}); got {t.shape} and {w.shape}")
        try:
            return self.session.run(["logits"], {"tail_input": t, "token_weights": w})[0]
        except ORT_ERRORS as exc:
            raise ModelError(f"onnxruntime failed on the tail of {self.path.name!r}: {first_line(exc)}") from exc

    @classmethod
    def of(cls, model) -> "TailModel":
        """The tail of an :class:`~attnmap.runtime.model.session.OnnxModel`'s file, on the model's
        providers with its session options (threads, no spinning)."""
        props = model.session.get_modelmeta().custom_metadata_map
        return cls(props, model.meta, model.path, model.session.get_providers(), session_options(model.threads, memory_arena=model.memory_arena))
