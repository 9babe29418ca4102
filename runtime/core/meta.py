"""ModelMeta: the one metadata schema attnmap embeds in, and reads from, an ONNX file.

The exporter writes a single JSON document under the ``"attnmap"`` key of the ONNX
``metadata_props``; the runtime reads it back with :meth:`ModelMeta.from_props`. Field names
follow timm's ``pretrained_cfg`` (``input_size``, ``mean``, ``std``, ``interpolation``,
``crop_pct``, ``crop_mode``, ``label_names``) so that a timm user recognises them.

Token layout. A sequence holds ``num_prefix_tokens`` prefix tokens first, in the order the
model concatenates them (``prefix_tokens`` names each one's kind: ``"class"``,
``"distillation"`` or ``"register"``), then ``grid_size[0] * grid_size[1]`` patch tokens in
row-major order. Explanations read the class token's row (index 0) when the model has a
class token, else the mean of all token rows (see :attr:`ModelMeta.target_row`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping

from attnmap.runtime.core.errors import MetadataError

SCHEMA_VERSION = 1
PROPS_KEY = "attnmap"

PREFIX_KINDS = ("class", "distillation", "register")
POOLINGS = ("token", "avg")
# How an export may fuse the heads ("none": keep them); a method fuses them at run time with
# runtime/methods/base.py's HEAD_FUSIONS, the same without "none".
EXPORT_HEAD_FUSIONS = ("none", "mean", "max", "min")
CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "lanczos")
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
# Outputs of a file exported with decompositions (export/decomposition.py), besides logits and attentions.
DECOMPOSITION_OUTPUTS = ("mix_grams", "mix_grams_ln")
# Output of a file exported with norms (export/decomposition.py): per block and token the norms
# ||γ1 ⊙ u^h_j|| of each head's value-output vector and ||x_j|| of the block input, [B, L, N, H+1].
NORMS_OUTPUT = "head_norms"
# The fidelity record (runtime/precision/fidelity.py, Fidelity.to_dict) must hold these.
FIDELITY_FIELDS = ("images", "source", "top1_agreement", "max_prob_diff", "maps", "thresholds")


@dataclass(frozen=True)
class TokenLayout:
    """Where the patch tokens sit in the sequence, and which row explanations read.

    Attributes:
        num_prefix: tokens before the patches (class, distillation, register tokens).
        grid: ``(rows, cols)`` of the patch grid; patches are row-major after the prefix.
        target_row: row read as "the model's view" (0 for a class token), or None for the
            mean of all token rows (class-token-free models).
        stochastic: every row of every attention matrix is a probability distribution (a
            softmax's output: it sums to 1), as an exported model's attentions are unless
            its heads were fused by max or min. Rollout then mixes in the residual as
            Abnar & Zuidema write it, 0.5·A + 0.5·I, without summing rows to renormalise.
    """

    num_prefix: int
    grid: tuple[int, int]
    target_row: int | None = 0
    stochastic: bool = False

    @property
    def num_tokens(self) -> int:
        """Sequence length N."""
        return self.num_prefix + self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class ModelMeta:
    """Everything the runtime needs to preprocess, run and explain one exported model.

    Attributes:
        model_name: timm model name, e.g. ``"deit_tiny_patch16_224"``.
        input_size: ``(C, H, W)`` of the graph input, as in timm's ``pretrained_cfg``.
        mean: per-channel RGB mean, in [0, 1] pixel units.
        std: per-channel RGB std, in [0, 1] pixel units.
        interpolation: resize interpolation of the eval transform (``"bicubic"`` ...).
        crop_pct: eval transform's crop fraction: resize to ``size / crop_pct``, then crop.
        crop_mode: timm's crop mode: ``"center"``, ``"squash"`` or ``"border"``.
        patch_size: ``(ph, pw)`` in input pixels.
        grid_size: ``(rows, cols)`` of the patch-token grid.
        prefix_tokens: kinds of the prefix tokens, in sequence order.
        pooling: ``"token"`` (class token feeds the head) or ``"avg"`` (mean of patch tokens).
        num_layers: number of attention blocks L in the ``attentions`` output.
        num_heads: the model's attention heads per block.
        head_fusion: ``"none"`` (output keeps all heads) or how heads were fused in the graph
            (``"mean"``, ``"max"``, ``"min"``; the output's H axis is then 1).
        num_classes: size of the logits.
        label_names: one name per class (may be empty, then labels read ``"class_<i>"``).
        outputs: graph output names, e.g. ``("logits", "attentions")``; a gradient export adds
            ``"attention_grads"``, ``"tokens"`` and ``"token_grads"`` (see
            :attr:`has_gradients`, :attr:`has_token_grads`); a decomposition export adds
            ``"mix_grams"``, ``"mix_grams_ln"`` and (token-pooled models) ``"class_contributions"``;
            a norms export ``"head_norms"`` (:attr:`has_head_norms`); a tail export
            ``"tail_input"`` (:attr:`has_tail`).
        inputs: graph input names, e.g. ``("input",)`` or ``("input", "target")``.
        exporter: versions of the tools that wrote the file (attnmap, torch, timm, onnx, opset).
        extra: free-form notes (e.g. how a shipped model was trained); never needed to run.
        precision: ``"fp32"`` (as exported), ``"fp16"``, ``"int8"`` or ``"bf16"`` (converted by
            ``attnmap quantize`` / ``export --precision``; inputs and outputs stay float32,
            except an fp16 file's attentions where it was asked for). Files from before this
            field read as ``"fp32"``.
        fidelity: for fp16, int8 and bf16 files, the fidelity gate's figures against the fp32 file
            (:meth:`attnmap.runtime.precision.fidelity.Fidelity.to_dict`: ``images``, ``source``,
            ``top1_agreement``, ``max_prob_diff``, ``maps``, ``thresholds``); empty for fp32.
        schema_version: version of this schema.
    """

    model_name: str
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float
    crop_mode: str
    patch_size: tuple[int, int]
    grid_size: tuple[int, int]
    prefix_tokens: tuple[str, ...]
    pooling: str
    num_layers: int
    num_heads: int
    head_fusion: str
    num_classes: int
    label_names: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ("logits", "attentions")
    inputs: tuple[str, ...] = ("input",)
    exporter: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    fidelity: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        # Coerce JSON lists back to tuples so that equality and hashing behave.
        for name in ("input_size", "mean", "std", "patch_size", "grid_size", "prefix_tokens",
                     "label_names", "outputs", "inputs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "exporter", dict(self.exporter))
        object.__setattr__(self, "extra", dict(self.extra))
        object.__setattr__(self, "fidelity", dict(self.fidelity))
        self._validate()

    # ----------------------------------------------------------------- derived values
    @property
    def num_prefix_tokens(self) -> int:
        """Number of tokens before the patch tokens."""
        return len(self.prefix_tokens)

    @property
    def num_patches(self) -> int:
        """Number of patch tokens, ``rows * cols``."""
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_tokens(self) -> int:
        """Sequence length N = prefix tokens + patch tokens."""
        return self.num_prefix_tokens + self.num_patches

    @property
    def has_class_token(self) -> bool:
        """True when the first prefix token is a class token."""
        return bool(self.prefix_tokens) and self.prefix_tokens[0] == "class"

    @property
    def target_row(self) -> int | None:
        """Row of the attention matrices that explanations read: 0 for a class token, else None.

        None means "the mean of all token rows", which is what a class-token-free model
        (average pooling) is explained with.
        """
        return 0 if self.has_class_token else None

    @cached_property
    def layout(self) -> TokenLayout:
        """The token layout explanation methods need (built once: every explanation reads it)."""
        return TokenLayout(self.num_prefix_tokens, (int(self.grid_size[0]), int(self.grid_size[1])),
                           self.target_row, stochastic=self.head_fusion in ("none", "mean"))

    @property
    def output_heads(self) -> int:
        """Size of the H axis of the ``attentions`` output (1 when heads were fused)."""
        return 1 if self.head_fusion != "none" else self.num_heads

    @property
    def has_gradients(self) -> bool:
        """True when the graph emits ``attention_grads`` (class-specific methods)."""
        return "attention_grads" in self.outputs

    @property
    def has_token_grads(self) -> bool:
        """True when the graph emits ``tokens`` and ``token_grads`` (Grad-CAM's inputs).

        Both are float32 ``[B, N, D]``: the output of the last block's ``norm1`` (every token,
        prefix tokens first) and d logit[target] / d it. Files exported with gradients before
        these outputs existed have ``has_gradients`` but not this; they load and run as before,
        and Grad-CAM asks for a re-export.
        """
        return "tokens" in self.outputs and "token_grads" in self.outputs

    @property
    def has_decompositions(self) -> bool:
        """True when the graph emits ``mix_grams`` and ``mix_grams_ln`` (forward-only norm-based
        methods; ``attnmap export --decompositions``), both float32 ``[B, L, N, H+1, H+1]``."""
        return all(n in self.outputs for n in DECOMPOSITION_OUTPUTS)

    @property
    def has_head_norms(self) -> bool:
        """True when the graph emits ``head_norms`` float32 ``[B, L, N, H+1]`` (the per-head
        value-output norms and the block input's norm; ``attnmap export --norms``)."""
        return NORMS_OUTPUT in self.outputs

    @property
    def has_class_contributions(self) -> bool:
        """True when the graph also emits ``class_contributions`` float32 ``[B, N, C]``."""
        return "class_contributions" in self.outputs

    @property
    def has_tail(self) -> bool:
        """True when the graph emits ``tail_input`` and the file carries the tail graph.

        ``tail_input`` is float32 ``[B, N, D]``: the tokens entering the last block (prefix
        tokens first). The tail (the last block, the final norm and the head, ``tail_input ->
        logits``) is a second ONNX graph stored under the ``"attnmap.tail"`` metadata key
        (``attnmap export --tail``; runtime/model/tail.py loads it). ViT-ReciproCAM reads both.
        """
        return "tail_input" in self.outputs

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the graph input."""
        return int(self.input_size[1]), int(self.input_size[2])

    def label(self, index: int) -> str:
        """Human-readable name of class ``index``."""
        if 0 <= index < len(self.label_names):
            return self.label_names[index]
        return f"class_{index}"

    # ----------------------------------------------------------------- (de)serialisation
    def to_json(self) -> str:
        """Serialise to the JSON document stored in the ONNX metadata."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    def to_props(self) -> dict[str, str]:
        """Return ``{"attnmap": json}``, ready for ONNX ``metadata_props``."""
        return {PROPS_KEY: self.to_json()}

    @classmethod
    def from_json(cls, text: str, source: str = "<metadata>") -> "ModelMeta":
        """Parse the JSON document; ``source`` names the file in error messages.

        Raises:
            MetadataError: the text is not a JSON object, its ``schema_version`` is not this
                one, a field is unknown, missing or of the wrong JSON type, or a value is out
                of its range. The message names ``source`` and the field.
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise MetadataError(f"{source}: attnmap metadata is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise MetadataError(f"{source}: attnmap metadata must be a JSON object; got {type(data).__name__}")
        if "schema_version" not in data:
            raise MetadataError(f"{source}: attnmap metadata lacks 'schema_version'; re-export the model "
                                "with `attnmap export`")
        version = data["schema_version"]
        if version != SCHEMA_VERSION or not _is_int(version):
            newer = _is_int(version) and version > SCHEMA_VERSION
            hint = ("it was written by a newer attnmap: upgrade attnmap, or re-export the model with this one"
                    if newer else "re-export the model with this attnmap")
            raise MetadataError(f"{source}: attnmap metadata schema_version {version!r} is not supported "
                                f"(this attnmap reads version {SCHEMA_VERSION}); {hint}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise MetadataError(f"{source}: unknown attnmap metadata fields {unknown}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in data and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if missing:
            raise MetadataError(f"{source}: attnmap metadata lacks required fields {missing}")
        for name, value in data.items():
            want, ok = _JSON_TYPES[name]
            if not ok(value):
                shown = json.dumps(value)
                shown = shown if len(shown) <= 80 else shown[:77] + "..."
                raise MetadataError(f"{source}: attnmap metadata field {name!r} must be {want}; got {shown}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"{source}: invalid attnmap metadata: {exc}") from exc

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "<model>") -> "ModelMeta":
        """Read the schema from ONNX ``metadata_props`` (a mapping of key to string).

        Raises:
            MetadataError: there is no ``"attnmap"`` key (the file was not exported by
                ``attnmap export``), or its document does not parse (see :meth:`from_json`).
        """
        if PROPS_KEY not in props:
            keys = sorted(props)
            found = f"its metadata keys are {keys}" if keys else "it has no metadata at all"
            raise MetadataError(
                f"{source}: no attnmap metadata (key {PROPS_KEY!r}) in this ONNX file ({found}), so it was "
                "not exported by `attnmap export`; export the model with `attnmap export`")
        return cls.from_json(props[PROPS_KEY], source)

    def replace(self, **changes: Any) -> "ModelMeta":
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- validation
    def _validate(self) -> None:
        """Raise ValueError naming the first field whose value is out of its range."""
        def fail(msg: str) -> None:
            raise ValueError(msg)

        if len(self.input_size) != 3 or any(int(v) <= 0 for v in self.input_size):
            fail(f"input_size must be 3 positive ints (C, H, W); got {self.input_size}")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.input_size[0]:
                fail(f"{name} needs {self.input_size[0]} values (one per input channel); got {getattr(self, name)}")
        if any(s <= 0 for s in self.std):
            fail(f"std must be positive; got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            fail(f"interpolation must be one of {INTERPOLATIONS}; got {self.interpolation!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            fail(f"crop_pct must be in (0, 1]; got {self.crop_pct}")
        if self.crop_mode not in CROP_MODES:
            fail(f"crop_mode must be one of {CROP_MODES}; got {self.crop_mode!r}")
        for name in ("patch_size", "grid_size"):
            value = getattr(self, name)
            if len(value) != 2 or min(value) <= 0:
                fail(f"{name} must be 2 positive ints (rows, cols); got {value}")
        bad = [k for k in self.prefix_tokens if k not in PREFIX_KINDS]
        if bad:
            fail(f"prefix_tokens kinds must be in {PREFIX_KINDS}; got {bad}")
        if self.pooling not in POOLINGS:
            fail(f"pooling must be one of {POOLINGS}; got {self.pooling!r}")
        if self.pooling == "token" and not self.has_class_token:
            fail("pooling 'token' needs a class token first in prefix_tokens")
        if self.head_fusion not in EXPORT_HEAD_FUSIONS:
            fail(f"head_fusion must be one of {EXPORT_HEAD_FUSIONS}; got {self.head_fusion!r}")
        for name in ("num_layers", "num_heads", "num_classes"):
            if getattr(self, name) <= 0:
                fail(f"{name} must be positive; got {getattr(self, name)}")
        if self.label_names and len(self.label_names) != self.num_classes:
            fail(f"label_names has {len(self.label_names)} names for {self.num_classes} classes")
        if "logits" not in self.outputs:
            fail(f"outputs must include 'logits'; got {self.outputs}")
        for name in ("outputs", "inputs"):
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                fail(f"{name} names a tensor twice; got {getattr(self, name)}")
        if not self.inputs:
            fail("inputs must name the image input first; got ()")
        if self.has_gradients and "target" not in self.inputs:
            fail(f"outputs has 'attention_grads', so inputs needs 'target'; got {self.inputs}")
        if self.precision not in PRECISIONS:
            fail(f"precision must be one of {PRECISIONS}; got {self.precision!r}")
        if self.fidelity:
            lacking = [k for k in FIDELITY_FIELDS if k not in self.fidelity]
            if lacking:
                fail(f"fidelity lacks {lacking}; it must hold {list(FIDELITY_FIELDS)}")
            for key in ("top1_agreement", "max_prob_diff"):
                if not _is_number(self.fidelity[key]) or not 0.0 <= self.fidelity[key] <= 1.0:
                    fail(f"fidelity {key} must be a number in [0, 1]; got {self.fidelity[key]!r}")
            if not isinstance(self.fidelity["maps"], dict):
                fail(f"fidelity maps must be an object (method -> figures); got {self.fidelity['maps']!r}")
        grams = [n for n in DECOMPOSITION_OUTPUTS if n in self.outputs]
        if grams and (not self.has_decompositions or "attentions" not in self.outputs or self.head_fusion != "none"):
            fail(f"outputs {grams} need both {list(DECOMPOSITION_OUTPUTS)}, 'attentions' and head_fusion 'none'; got "
                 f"outputs {self.outputs} and head_fusion {self.head_fusion!r}")
        if self.has_head_norms and ("attentions" not in self.outputs or self.head_fusion != "none"):
            fail(f"output {NORMS_OUTPUT!r} needs 'attentions' and head_fusion 'none'; got outputs {self.outputs} "
                 f"and head_fusion {self.head_fusion!r}")
        if self.has_class_contributions and ("attentions" not in self.outputs or not self.has_class_token):
            fail(f"output 'class_contributions' needs 'attentions' and a class token; got outputs {self.outputs} and "
                 f"prefix_tokens {self.prefix_tokens}")
        if self.has_tail and self.has_gradients:
            fail(f"outputs has 'tail_input' and 'attention_grads'; a tail export has no gradients; got {self.outputs}")
        if "token_grads" in self.outputs and ("tokens" not in self.outputs or "target" not in self.inputs):
            fail(f"outputs has 'token_grads', so outputs needs 'tokens' and inputs needs 'target'; got outputs "
                 f"{self.outputs} and inputs {self.inputs}")


# --------------------------------------------------------------------- JSON field types
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, float) and math.isfinite(value)) or _is_int(value)


def _list_of(test: Callable[[Any], bool], size: int | None = None) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and (size is None or len(v) == size) and all(test(x) for x in v)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


# What each field must be in the JSON document, checked before any value is used: a number
# stored as a string (ultralytics' str(v) habit) is an error here, never coerced.
_JSON_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "model_name": ("a string", _is_str),
    "input_size": ("a list of 3 ints (C, H, W)", _list_of(_is_int, 3)),
    "mean": ("a list of finite numbers", _list_of(_is_number)),
    "std": ("a list of finite numbers", _list_of(_is_number)),
    "interpolation": ("a string", _is_str),
    "crop_pct": ("a finite number", _is_number),
    "crop_mode": ("a string", _is_str),
    "patch_size": ("a list of 2 ints (rows, cols)", _list_of(_is_int, 2)),
    "grid_size": ("a list of 2 ints (rows, cols)", _list_of(_is_int, 2)),
    "prefix_tokens": ("a list of strings", _list_of(_is_str)),
    "pooling": ("a string", _is_str),
    "num_layers": ("an int", _is_int),
    "num_heads": ("an int", _is_int),
    "head_fusion": ("a string", _is_str),
    "num_classes": ("an int", _is_int),
    "label_names": ("a list of strings", _list_of(_is_str)),
    "outputs": ("a list of strings", _list_of(_is_str)),
    "inputs": ("a list of strings", _list_of(_is_str)),
    "exporter": ("an object", lambda v: isinstance(v, dict)),
    "extra": ("an object", lambda v: isinstance(v, dict)),
    "precision": ("a string", _is_str),
    "fidelity": ("an object", lambda v: isinstance(v, dict)),
    "schema_version": ("an int", _is_int),
}
