"""What a live session's keys (and serve's page controls) change: method, layer, head, colour
map, fit mode, pause.

Kept apart from the session so that the key handling is a pure function of a small state object
and can be tested without a window or a model.

=========  ==============================================================================
key        effect
=========  ==============================================================================
``m``      next explanation method (of those the model can run)
``[ ]``    previous / next layer: ``layer`` of raw attention, ``start_layer`` of rollout
           and the gradient methods
``h``      next head (``attention``: fused -> 0 -> 1 … -> fused), or next head fusion
           (``rollout``: mean -> max -> min)
``c``      next colour map (jet, turbo, inferno, viridis, magma, hot, bone)
``f``      next fit mode (crop -> squash -> letterbox)
space      pause / resume
``s``      save a snapshot (PNG) of the frame on screen
``q`` Esc  quit
=========  ==============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attnmap.runtime.draw.style import OverlayStyle
from attnmap.runtime.image.preprocess import FITS
from attnmap.runtime.methods import METHODS

_ESC = 27


@dataclass
class LiveState:
    """The settings the live view's keys change.

    Attributes:
        method: current method name.
        options: options given by the caller; kept for every method that accepts them.
        fit: current fit mode.
        style: current overlay style (``c`` changes its colour map).
        methods: methods ``m`` cycles through.
        num_layers: L, for the layer keys.
        num_heads: heads in the attentions output, for ``h``.
        layer: layer chosen with ``[ ]``, or None for the method's default.
        head: head chosen with ``h`` (methods with a ``head`` option), or None for fused.
        head_fusion: fusion chosen with ``h`` (methods with ``head_fusion``), or None for the default.
        paused: True while paused.
        version: bumped by every change that alters the map (so smoothing restarts).
        fused: the file's heads were fused at export (``h`` then has nothing to cycle).
    """

    method: str
    options: dict[str, Any]
    fit: str
    style: OverlayStyle
    methods: tuple[str, ...] = field(default_factory=lambda: tuple(METHODS))
    num_layers: int = 1
    num_heads: int = 1
    layer: int | None = None
    head: int | None = None
    head_fusion: str | None = None
    paused: bool = False
    version: int = 0
    fused: bool = False

    @property
    def colormap(self) -> str:
        """The current colour map name."""
        return self.style.colormap

    def describe(self) -> str:
        """One HUD line: method, the layer/head settings in force, and the fit mode."""
        shown = [f"{k}={v}" for k, v in method_options(self).items()
                 if k in ("layer", "start_layer", "head", "head_fusion")]
        return "  ".join([self.method, *shown, f"fit={self.fit}"])


def method_options(state: LiveState) -> dict[str, Any]:
    """The option dict for ``state.method``: the caller's options plus the keys' choices.

    Caller options that the current method does not take are left out: they were given for
    the method the run started with, and ``m`` may have switched to another one.
    """
    spec = METHODS[state.method]
    opts = {name: value for name, value in state.options.items() if name in spec.options}
    if state.layer is not None:
        if "layer" in spec.options:
            opts["layer"] = state.layer
        elif "start_layer" in spec.options:
            opts["start_layer"] = state.layer
    if state.head is not None and "head" in spec.options:
        opts["head"] = state.head
    if state.head_fusion is not None and "head_fusion" in spec.options:
        opts["head_fusion"] = state.head_fusion
    return opts


def apply_key(state: LiveState, key: int) -> tuple[str | None, str]:
    """Apply one key press to ``state`` (in place).

    Args:
        state: the live view's state.
        key: an OpenCV key code (``cv2.waitKey() & 0xFF``), e.g. ``ord("m")``.

    Returns:
        ``(action, note)``: action is ``"quit"``, ``"snapshot"``, ``"changed"`` or None
        (key ignored); note is a short text for the HUD ("" when there is nothing to say).
    """
    if key in (_ESC, ord("q"), ord("Q")):
        return "quit", ""
    if key == ord("s"):
        return "snapshot", "snapshot saved"
    if key == ord(" "):
        state.paused = not state.paused
        return "changed", "paused" if state.paused else ""
    if key == ord("m"):
        if state.method not in state.methods:
            state.methods = (state.method,) + tuple(state.methods)
        i = state.methods.index(state.method)
        state.method = state.methods[(i + 1) % len(state.methods)]
        _changed(state)
        return "changed", f"method {state.method}"
    if key in (ord("["), ord("]")):
        return _step_layer(state, -1 if key == ord("[") else 1)
    if key == ord("h"):
        return _step_head(state)
    if key == ord("c"):
        state.style = state.style.next_colormap()
        return "changed", f"colours {state.colormap}"
    if key == ord("f"):
        i = FITS.index(state.fit) if state.fit in FITS else -1
        state.fit = FITS[(i + 1) % len(FITS)]
        _changed(state)
        return "changed", f"fit {state.fit}"
    return None, ""


def _step_layer(state: LiveState, step: int) -> tuple[str | None, str]:
    spec = METHODS[state.method]
    name = "layer" if "layer" in spec.options else "start_layer" if "start_layer" in spec.options else None
    if name is None:
        return None, f"{state.method} has no layer choice"
    current = state.layer if state.layer is not None else state.options.get(name, spec.options[name].default)
    state.layer = spec.options[name].step(current, step, size=state.num_layers)
    _changed(state)
    return "changed", f"{name} {state.layer}"


def _step_head(state: LiveState) -> tuple[str | None, str]:
    spec = METHODS[state.method]
    if state.num_heads <= 1:
        return None, "heads fused at export: one head output" if state.fused else "the model has one head"
    if "head" in spec.options:
        state.head = spec.options["head"].step(state.head, 1, size=state.num_heads)
        _changed(state)
        return "changed", "heads fused" if state.head is None else f"head {state.head}"
    if "head_fusion" in spec.options:
        current = state.head_fusion or state.options.get("head_fusion", spec.options["head_fusion"].default)
        state.head_fusion = spec.options["head_fusion"].step(current, 1)
        _changed(state)
        return "changed", f"head fusion {state.head_fusion}"
    return None, f"{state.method} has no head choice"


def _changed(state: LiveState) -> None:
    state.version += 1
