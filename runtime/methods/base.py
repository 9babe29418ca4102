"""Shared pieces of the explanation methods: the Method record, input checks, normalisation.

Every method returns saliency maps (B, gh, gw) float32 in [0, 1] on the token grid. What it
reads depends on its kind (:mod:`~attnmap.runtime.methods.kinds`): attention methods read attention probabilities
``attentions`` of shape (B, L, H, N, N), perturbation methods run the model on perturbed
inputs, feature methods read token features and their gradients. The helpers here hold what
they share: checking shapes against a :class:`~attnmap.runtime.core.meta.TokenLayout`, fusing
heads, building the start vector of the target row, cutting the patch columns out and min-max
normalising.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from attnmap.runtime.core.errors import ExplainError
from attnmap.runtime.core.options import OptionSpec
from attnmap.runtime.core.meta import TokenLayout
from attnmap.runtime.methods.kinds import ATTENTION, Kind, kind_of

# How a method may fuse a layer's heads at run time (an export may also keep them: "none", see
# runtime/core/meta.py's EXPORT_HEAD_FUSIONS).
HEAD_FUSIONS = ("mean", "max", "min")

# A map whose spread is below this fraction of its magnitude is float32 rounding noise, not
# signal: uniform attention pushed through 12 layers comes out uniform only to a few ulps,
# and stretching those ulps to [0, 1] would draw a random checkerboard.
CONSTANT_RTOL = 1e-5


@dataclass(frozen=True)
class Method:
    """One registered explanation method.

    Attributes:
        name: registry key and CLI ``--method`` choice.
        fn: returns (B, gh, gw) float32 in [0, 1]; how it is called depends on ``kind``
            (:mod:`~attnmap.runtime.methods.kinds`):

            * ``"attention"``: ``fn(attentions, layout, *, grads=None, **options)`` with
              (B, L, H, N, N) attention probabilities (and their gradients).
            * ``"perturbation"``: ``fn(x, forward, classes, layout, **options)`` with ``x`` the
              (B, 3, H, W) float32 preprocessed input, ``forward(x_chunk)`` -> (b, C) float32
              softmax probabilities of a chunk of inputs, ``classes`` (B,) int64 the class
              explained per image.
            * ``"features"``: ``fn(tokens, token_grads, layout, **options)`` with (B, N, D)
              token features and d y_c / d tokens.
        needs_gradients: True when the model must be exported with gradients (``grads`` for
            attention methods, ``token_grads`` for feature methods).
        options: option name -> its :class:`~attnmap.runtime.core.options.OptionSpec` (type,
            default, range, choices, help): the one declaration every front derives from.
        summary: one line for ``--help``.
        kind: the method's :class:`~attnmap.runtime.methods.kinds.Kind`: what it reads from
            the file and how it is called.
    """

    name: str
    fn: Callable[..., np.ndarray]
    needs_gradients: bool
    options: Mapping[str, OptionSpec]
    summary: str = ""
    kind: Kind = ATTENTION

    @property
    def defaults(self) -> dict[str, Any]:
        """Option name -> default value."""
        return {name: spec.default for name, spec in self.options.items()}

    @property
    def class_specific(self) -> bool:
        """True when the map explains one class, which may be chosen: gradient methods (the
        gradient of that class), perturbation methods (its probability) and feature methods."""
        return self.needs_gradients or self.kind.class_specific

    @property
    def reruns_model(self) -> bool:
        """True when the method runs the model again on many perturbed inputs per frame (too slow
        for a live view, which offers only the other methods)."""
        return self.kind.reruns_model


def make_method(name: str, fn: Callable[..., np.ndarray], summary: str, specs: Mapping[str, OptionSpec], *,
                needs_gradients: bool = False, kind: "str | Kind" = ATTENTION) -> Method:
    """Build a :class:`Method` whose options are ``fn``'s keyword-only parameters.

    The defaults are read from ``fn``'s signature, so a default changed in the function is the
    default every front shows; ``specs`` gives each option's type, range, choices and help.

    Args:
        name: registry key.
        fn: the method; its keyword-only parameters other than ``grads`` are its options.
        summary: one line for ``--help``.
        specs: option name -> spec (its ``default`` is replaced by the signature's); every
            option of ``fn`` must have one.
        needs_gradients: whether the model must be exported with gradients.
        kind: what ``fn`` reads: a :class:`~attnmap.runtime.methods.kinds.Kind` or the name of
            a registered one (see :class:`Method`).

    Returns:
        The frozen :class:`Method`.

    Raises:
        TypeError: an option of ``fn`` has no spec, a spec names no option of ``fn``, or an
            unknown kind (a programming error, raised at import).
    """
    kind = kind_of(kind)
    params = {p.name: p.default for p in inspect.signature(fn).parameters.values()
              if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "grads"}
    if set(params) != set(specs):
        raise TypeError(f"method {name!r}: options {sorted(params)} but specs for {sorted(specs)}")
    options = {p: dataclasses.replace(specs[p], name=p, default=default) for p, default in params.items()}
    return Method(name=name, fn=fn, needs_gradients=needs_gradients, options=options, summary=summary, kind=kind)


# --------------------------------------------------------------------------- input checks
def check_layout(layout: TokenLayout) -> None:
    """Raise ExplainError unless ``layout`` describes a usable token sequence.

    Args:
        layout: prefix count, patch grid and target row.
    """
    if not isinstance(layout, TokenLayout):
        raise ExplainError(f"layout must be a runtime.core.meta.TokenLayout; got {type(layout).__name__}")
    rows, cols = layout.grid
    if layout.num_prefix < 0 or rows <= 0 or cols <= 0:
        raise ExplainError(f"layout needs num_prefix >= 0 and a positive grid; got "
                           f"num_prefix={layout.num_prefix}, grid={layout.grid}")
    t = layout.target_row
    if t is not None and not 0 <= t < layout.num_tokens:
        raise ExplainError(f"layout.target_row must be None or in [0, {layout.num_tokens}); got {t}")


def check_attentions(attentions: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """Check the attention tensor against ``layout`` and return it as float32.

    Args:
        attentions: (B, L, H, N, N) attention probabilities (rows sum to 1), any real dtype.
        layout: token layout; N must equal ``layout.num_tokens``.

    Returns:
        The same values as float32 (no copy when they already are float32). The strides are
        kept: the runtime hands over a ``[B, L, ...]`` view of a ``[L, B, ...]`` buffer, whose
        layers ``a[:, l]`` are contiguous, and a contiguous copy of it would cost what the
        split outputs saved (see runtime/graph.py).
    """
    check_layout(layout)
    a = np.asarray(attentions)
    if a.ndim != 5:
        raise ExplainError(f"attentions must be 5-D (B,L,H,N,N); got shape {a.shape}")
    if a.shape[3] != a.shape[4]:
        raise ExplainError(f"attentions must be square in the last two axes (B,L,H,N,N); got shape {a.shape}")
    if min(a.shape) == 0:
        raise ExplainError(f"attentions has an empty axis; got shape {a.shape}")
    n = layout.num_tokens
    if a.shape[3] != n:
        raise ExplainError(
            f"attentions have N={a.shape[3]} tokens but the layout expects {n} "
            f"({layout.num_prefix} prefix + {layout.grid[0]}x{layout.grid[1]} patches); got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ExplainError(f"attentions must be real numbers; got dtype {a.dtype}")
    return np.asarray(a, dtype=np.float32)


def check_grads(grads: np.ndarray | None, attentions: np.ndarray, method: str) -> np.ndarray:
    """Check the attention gradients of a gradient method and return them as float32.

    Args:
        grads: (B, L, H, N, N) d y_c / d A, or None.
        attentions: the already-checked (B, L, H, N, N) attentions.
        method: method name, for the messages.

    Returns:
        ``grads`` as float32 (strides kept, as for the attentions).
    """
    if grads is None:
        raise ExplainError(f"method {method!r} needs attention gradients; export the model with --gradients")
    g = np.asarray(grads)
    if g.shape != attentions.shape:
        raise ExplainError(f"grads must have the shape of attentions {attentions.shape}; got shape {g.shape}")
    if not (np.issubdtype(g.dtype, np.floating) or np.issubdtype(g.dtype, np.integer)):
        raise ExplainError(f"grads must be real numbers; got dtype {g.dtype}")
    return np.asarray(g, dtype=np.float32)


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """Raise ExplainError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ExplainError(f"{name} must be one of {choices}; got {value!r}")


def check_int(name: str, value: Any) -> int:
    """Return ``value`` as int, or raise ExplainError if it is not an integer (bools refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ExplainError(f"{name} must be an integer; got {value!r}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` as bool, or raise ExplainError if it is not a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise ExplainError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def resolve_index(name: str, value: Any, size: int, what: str) -> int:
    """Turn a possibly negative index into one in [0, size), Python style.

    Args:
        name: option name for the message.
        value: the index; -1 is the last.
        size: length of the indexed axis.
        what: what the axis holds ("layers", "heads"), for the message.

    Returns:
        The index in [0, size).
    """
    i = check_int(name, value)
    if not -size <= i < size:
        raise ExplainError(f"{name} must be in [{-size}, {size}) for {size} {what}; got {i}")
    return i % size


def check_discard_ratio(value: Any) -> float:
    """Return ``value`` as float, or raise ExplainError unless it lies in [0, 1)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ExplainError(f"discard_ratio must be a number in [0, 1); got {value!r}")
    r = float(value)
    if not 0.0 <= r < 1.0:
        raise ExplainError(f"discard_ratio must be in [0, 1); got {r}")
    return r


# --------------------------------------------------------------------------- shared maths
def fuse_heads(a: np.ndarray, how: str, axis: int = 1) -> np.ndarray:
    """Fuse the head axis of attention (or relevance) tensors.

    Args:
        a: float32 array with a head axis, e.g. (B, H, N, N).
        how: ``"mean"``, ``"max"`` or ``"min"``.
        axis: the head axis.

    Returns:
        A new float32 array without the head axis.
    """
    check_choice("head_fusion", how, HEAD_FUSIONS)
    # Head by head over whole (N, N) planes rather than ``a.max(axis)``: NumPy's reduction over
    # a middle axis walks the planes element by element, about twice the time. The mean is
    # sum-then-scale (NumPy's mean(dtype=float32) takes a path several times slower still).
    pick = {"mean": np.add, "max": np.maximum, "min": np.minimum}[how]
    lead = (slice(None),) * (axis % a.ndim)
    count = a.shape[axis]
    if a.dtype != np.float32 or count == 1:
        a = a.astype(np.float32)  # a copy for one head too: the result is always a new array
    if count == 1:
        return a[lead + (0,)]
    # the first two heads combined into a new array: no separate copy of the first head
    fused = pick(a[lead + (0,)], a[lead + (1,)])
    for h in range(2, count):
        pick(fused, a[lead + (h,)], out=fused)
    if how == "mean":
        fused *= np.float32(1.0 / count)
    return fused


def start_vector(layout: TokenLayout, batch: int) -> np.ndarray:
    """Row vector that selects the target row: e_t, or the mean row (1/N)·1 when target is None.

    Args:
        layout: token layout.
        batch: B.

    Returns:
        (B, N) float32.
    """
    n = layout.num_tokens
    if layout.target_row is None:
        return np.full((batch, n), 1.0 / n, dtype=np.float32)
    v = np.zeros((batch, n), dtype=np.float32)
    v[:, layout.target_row] = 1.0
    return v


def target_rows(m: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """Target row of each matrix in ``m``: row ``target_row``, or the mean of all rows if None.

    Args:
        m: (..., N, N) array.
        layout: token layout.

    Returns:
        (..., N) array.
    """
    if layout.target_row is None:
        return m.mean(axis=-2, dtype=np.float32)
    return m[..., layout.target_row, :]


def patch_maps(rows: np.ndarray, layout: TokenLayout, method: str) -> np.ndarray:
    """Cut the patch columns out of target rows, reshape them to the grid and normalise.

    Args:
        rows: (B, N) relevance of every token for the target.
        layout: token layout; patches are columns ``num_prefix:`` in row-major grid order.
        method: method name, for the message when the values are not finite.

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    return grid_maps(rows[:, layout.num_prefix:], layout, method)


def grid_maps(patches: np.ndarray, layout: TokenLayout, method: str) -> np.ndarray:
    """Reshape per-patch relevance (B, gh * gw), row-major, to (B, gh, gw) and normalise.

    Args:
        patches: (B, gh * gw) relevance of the patch tokens.
        layout: token layout (its grid).
        method: method name, for the message when the values are not finite.

    Returns:
        (B, gh, gw) float32 in [0, 1].
    """
    gh, gw = layout.grid
    maps = patches.reshape(patches.shape[0], gh, gw)
    try:
        return normalize_maps(maps)
    except ExplainError as exc:
        raise ExplainError(f"method {method!r} produced NaN or inf; the attentions or grads "
                           "contain non-finite values") from exc


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Min-max normalise each map to [0, 1].

    A constant map (spread below ``CONSTANT_RTOL`` of its magnitude, i.e. float32 rounding
    noise) carries no ranking: it becomes all ones when its value is > 0 and all zeros
    otherwise, so uniform attention reads "everything equally" and an all-zero relevance reads
    "nothing"; there is no division by zero and no NaN. Non-finite input raises ExplainError.

    Args:
        maps: (B, ...) real array, one map per leading index (usually (B, gh, gw)).

    Returns:
        float32 array of the same shape with values in [0, 1].
    """
    m = np.asarray(maps)
    if m.ndim < 2:
        raise ExplainError(f"maps must be (B, ...) with at least 2 axes; got shape {m.shape}")
    x = m.reshape(m.shape[0], -1).astype(np.float64)  # one row per map: the reductions run on axis 1
    lo = x.min(axis=1)
    hi = x.max(axis=1)
    # a NaN anywhere makes its row's min and max NaN, and an infinity is a min or a max: the
    # extremes alone tell whether the map is finite
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ExplainError(f"maps must be finite; got NaN or inf in an array of shape {m.shape}")
    # map by map with Python floats (float64, as NumPy's): a handful of maps per call, and the
    # scalar arithmetic costs less than NumPy's on one-element arrays
    for row, low, high in zip(x, lo.tolist(), hi.tolist()):
        spread = high - low
        if spread <= CONSTANT_RTOL * max(abs(high), abs(low)):
            row[:] = 1.0 if high > 0 else 0.0
        else:
            # (x - lo) / (hi - lo) lies in [0, 1] without a clip: x - lo >= 0, and correctly
            # rounded subtraction and division are monotonic, so nothing exceeds 1
            row -= low
            row /= spread
    return x.astype(np.float32).reshape(m.shape)


def softmax(logits: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Row-wise softmax of (B, C) logits, computed in float64 and returned as ``dtype``."""
    z = np.asarray(logits).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z if dtype is np.float64 else z.astype(dtype)
