"""What one explanation costs before it runs: model runs per image and memory at once.

A perturbation method's options decide its work: RISE runs the model once per mask, occlusion
once per occluder position, and both run ``forward_batch`` perturbed inputs at a time, each
holding the model's activations. :func:`estimate` turns a method's options and the model's
metadata into a :class:`Cost` without running anything, and :func:`check_budget` refuses a
cost over a :class:`Budget` with the figures, so that ``masks=10**9`` or ``forward_batch=4000``
is one clear error instead of minutes of work or a ``MemoryError``. The library and the CLI
check against :data:`LIBRARY_BUDGET` unless given another; ``attnmap serve`` has a tighter one.

The memory figure is an estimate for a ViT on onnxruntime's CPU arena: per perturbed input,
the input itself, the perturbation's own buffers and :data:`ACTIVATION_LAYERS` layers'
worth of activations (tokens N, heads h, width 64 h: ``N (h N + 4 * 64 h)`` float32 per
layer). Calibrated on DeiT-Tiny, whose resident memory grows by about 6.5 MB per unit of
``forward_batch`` (issue 27); the estimate gives 8.6 MB.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Mapping

from attnmap.runtime.core.errors import MethodOptionError
from attnmap.runtime.core.meta import ModelMeta

ACTIVATION_LAYERS = 6  # layers of activations onnxruntime's arena holds per input at its peak
HEAD_WIDTH = 64  # a ViT head's width (DeiT, ViT, BEiT ...): the embedding is 64 x heads
_F32, _F64 = 4, 8


class WorkLimitError(MethodOptionError):
    """An explanation whose estimated cost is over the budget it runs under (a MethodOptionError:
    the options asked for too much)."""


@dataclass(frozen=True)
class Budget:
    """The most work one image's explanation may ask for.

    Attributes:
        max_forward_passes: model runs per image (one input each): RISE's masks + 1,
            occlusion's positions + 2, reciprocam's patches + 1 (tail runs, counted whole),
            ViT-CX's 2 x (embedding width) + 1 at most, Beyond Intuition's integration
            steps + 1, 1 for the other methods.
        max_batch_bytes: estimated memory the method holds at once (its perturbed inputs,
            masks and one model run's activations).

    Raises:
        MethodOptionError: a limit that is not a positive integer.
    """

    max_forward_passes: int = 200_000
    max_batch_bytes: int = 4 * 1024 ** 3

    def __post_init__(self) -> None:
        for name in ("max_forward_passes", "max_batch_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MethodOptionError(f"{name} must be a positive integer; got {value!r}")


LIBRARY_BUDGET = Budget()  # about 20 min of RISE on DeiT-Tiny on 2 cores; 4 GiB at once


@dataclass(frozen=True)
class Cost:
    """The estimated cost of explaining one image.

    Attributes:
        forward_passes: model runs (one input each) per image.
        batch: inputs per model run (``forward_batch``, at most the runs there are).
        batch_bytes: estimated memory held at once, in bytes.
        unit_bytes: the part of ``batch_bytes`` each input of a run adds.
    """

    forward_passes: int
    batch: int
    batch_bytes: int
    unit_bytes: int


def unit_bytes(meta: ModelMeta) -> int:
    """Estimated bytes one input of a model run holds: the input and its activations."""
    _, h, w = meta.input_size
    n, heads = meta.num_tokens, meta.num_heads
    return _F32 * (3 * h * w + ACTIVATION_LAYERS * n * (heads * n + 4 * HEAD_WIDTH * heads))


def estimate(method: str, options: Mapping[str, Any], meta: ModelMeta) -> Cost:
    """The cost of explaining one image with ``method`` and ``options`` on ``meta``'s model.

    Args:
        method: a key of :data:`~attnmap.runtime.methods.METHODS`.
        options: the method's options as given (missing ones take the function's defaults);
            values are read as numbers, not checked (see :func:`check_options`).
        meta: the model's metadata (input size, tokens, heads, layers).

    Returns:
        The :class:`Cost`; nothing is run or allocated.
    """
    from attnmap.runtime.methods import get_method

    m = get_method(method)
    opts = {**_defaults(m.fn), **{k: v for k, v in options.items() if v is not None}}
    _, h, w = meta.input_size
    unit = unit_bytes(meta)
    input_bytes = _F32 * 3 * h * w
    if m.name == "occlusion":
        py, px = meta.patch_size
        wy, wx = (py, px) if opts.get("window") is None else (int(opts["window"]),) * 2
        sy, sx = (wy, wx) if opts.get("stride") is None else (int(opts["stride"]),) * 2
        runs = _positions(h, wy, sy) * _positions(w, wx, sx)
        batch = max(1, min(int(opts["forward_batch"]), runs))
        # the chunk's occluded copies and their runs, the baseline image, per-pixel scores
        held = batch * (unit + input_bytes) + input_bytes + _F64 * (2 * h * w + runs)
        return Cost(runs + 2, batch, held, unit + input_bytes)  # + the model's pass and the clean one
    if m.name == "rise":
        n, s = int(opts["masks"]), int(opts["cells"])
        ch, cw = -(-h // s), -(-w // s)
        batch = max(1, min(int(opts["forward_batch"]), n))
        grids = n * s * s * (_F64 + 1)  # the draw's float64 uniforms, kept as bool
        upsampled = _F32 * ((s + 1) * ch * (s + 1) * cw + s * s)
        per_input = unit + input_bytes + 2 * _F32 * h * w  # the masked copy, its mask and the product
        held = grids + upsampled + batch * per_input + _F64 * h * w
        return Cost(n + 1, batch, held, per_input)
    if m.name == "reciprocam":
        # N_p tail runs (one block and the head each, counted as model runs: an upper bound) and
        # the model's pass; a tail run holds its copies' tokens, weights and one block's activations
        copies = meta.num_patches
        batch = max(1, min(int(opts["forward_batch"]), copies))
        n, heads = meta.num_tokens, meta.num_heads
        width = HEAD_WIDTH * heads
        per_copy = _F32 * (n * width + n + n * (heads * n + 4 * width))
        held = batch * per_copy + _F32 * copies * n + _F64 * copies
        return Cost(copies + 1, batch, held, per_copy)
    if m.name == "vit_cx":
        # at most one mask per embedding dimension (D = 64 x heads) survives the clustering; each
        # mask runs twice (masked, and noise only), plus the clean input
        d = HEAD_WIDTH * meta.num_heads
        batch = max(1, min(int(opts["forward_batch"]), 2 * d))
        per_input = unit + 2 * input_bytes  # the masked or noisy copy and its noise
        held = 2 * d * _F32 * h * w + batch * per_input + _F64 * 2 * h * w  # masks (and their clusters)
        return Cost(2 * d + 1, batch, held, per_input)
    outputs = _F32 * meta.num_layers * meta.output_heads * meta.num_tokens ** 2 * (2 if m.needs_gradients else 1)
    if m.name == "beyond_intuition":
        from attnmap.runtime.methods.intuition import FEEDBACK_STEPS

        # the pass at the input and one per integrated-gradient step, each a full gradient run
        return Cost(FEEDBACK_STEPS + 1, 1, unit + 2 * outputs, unit + outputs)
    # one run of the full model: its activations and the attention (and gradient) outputs it returns
    outputs = _F32 * meta.num_layers * meta.output_heads * meta.num_tokens ** 2 * (2 if m.needs_gradients else 1)
    return Cost(1, 1, unit + outputs, unit + outputs)


def check_budget(method: str, options: Mapping[str, Any], meta: ModelMeta, budget: Budget | None = None,
                 *, limit_names: Mapping[str, str] | None = None) -> Cost:
    """:func:`estimate`, refused when over ``budget``, before any work starts.

    Args:
        method: a key of :data:`~attnmap.runtime.methods.METHODS`.
        options: the method's (checked) options.
        meta: the model's metadata.
        budget: the limits; default :data:`LIBRARY_BUDGET`.
        limit_names: how the message names each limit (``{"max_forward_passes":
            "the server's --max-forward-passes"}``); default the parameter names.

    Returns:
        The :class:`Cost`, within the budget.

    Raises:
        WorkLimitError: more model runs per image than ``max_forward_passes``, or more
            memory at once than ``max_batch_bytes``, with the figures and the options to lower.
    """
    budget = budget or LIBRARY_BUDGET
    names = {"max_forward_passes": "max_forward_passes", "max_batch_bytes": "max_batch_bytes", **(limit_names or {})}
    cost = estimate(method, options, meta)
    given = ", ".join(f"{k}={v}" for k, v in options.items() if v is not None)
    asked = f"method {method!r}" + (f" with {given}" if given else "")
    if cost.forward_passes > budget.max_forward_passes:
        lower = {"rise": "masks", "occlusion": "a larger window and stride",
                 "reciprocam": "the budget (it runs once per patch)"}.get(method, "the options")
        raise WorkLimitError(f"{asked} runs the model {cost.forward_passes:,} times per image, over the limit of "
                             f"{budget.max_forward_passes:,} ({names['max_forward_passes']}); lower {lower}")
    if cost.batch_bytes > budget.max_batch_bytes:
        raise WorkLimitError(f"{asked} needs about {_size(cost.batch_bytes)} at once ({cost.batch} inputs per model "
                             f"run at about {_size(cost.unit_bytes)} each), over the limit of "
                             f"{_size(budget.max_batch_bytes)} ({names['max_batch_bytes']}); lower forward_batch"
                             + (" or masks x cells^2" if method == "rise" else ""))
    return cost


def _positions(size: int, window: int, stride: int) -> int:
    """How many occluder positions cover ``size`` pixels (as ``occluder_positions`` places them)."""
    if window > size or stride < 1:
        return 1  # the method refuses it before running
    n = (size - window) // stride + 1
    return n + (1 if (n - 1) * stride + window < size else 0)


def _defaults(fn) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


def _size(n: int) -> str:
    for unit, scale in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"
