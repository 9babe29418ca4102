"""The page's controls: the live view's state as JSON, and checked changes to it.

``POST /v1/stream/state`` takes a JSON object with any of the fields below and changes the
same :class:`~attnmap.runtime.engine.live.state.LiveState` the live window's keys change. The
whole change is checked first, against the model and the method's option specs, and applied
only when every field is valid, so the running loop never sees a half-made state.

=============  ====================================================================
field          value
=============  ====================================================================
``method``     one of the state's methods (those the model can run)
``layer``      a layer index for ``layer`` / ``start_layer``, or null for the default
``head``       a head index, or null for the heads fused (methods with ``head``)
``head_fusion`` one of mean, max, min, or null (methods with ``head_fusion``)
``colormap``   an OpenCV colour map name
``fit``        crop, squash or letterbox
``smooth``     EMA weight of the previous map in [0, 1)
``paused``     true or false
=============  ====================================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

from attnmap.runtime.core.errors import OptionError, suggest
from attnmap.runtime.draw.style import CYCLE_COLORMAPS
from attnmap.runtime.engine.live.session import check_smooth
from attnmap.runtime.engine.live.state import LiveState, method_options
from attnmap.runtime.image.preprocess import FITS
from attnmap.runtime.methods import METHODS, check_method_use, check_options

FIELDS = ("method", "layer", "head", "head_fusion", "colormap", "fit", "smooth", "paused")


def describe(state: LiveState, smooth: float) -> dict[str, Any]:
    """The state as the page reads it: current values and the choices for each control."""
    spec = METHODS[state.method].options
    layer_option = "layer" if "layer" in spec else "start_layer" if "start_layer" in spec else None
    fusion = spec.get("head_fusion")
    return {
        "method": state.method, "methods": list(state.methods),
        "layer": state.layer, "layer_option": layer_option, "num_layers": state.num_layers,
        "head": state.head, "has_head": "head" in spec and state.num_heads > 1, "num_heads": state.num_heads,
        "head_fusion": state.head_fusion, "head_fusions": list(fusion.choices) if fusion is not None else [],
        "colormap": state.colormap, "colormaps": list(CYCLE_COLORMAPS),
        "fit": state.fit, "fits": list(FITS), "smooth": smooth, "paused": state.paused,
        "options": method_options(state), "version": state.version,
    }


def apply_changes(state: LiveState, changes: Any, meta, smooth: float) -> tuple[LiveState, float]:
    """Check ``changes`` and return the state (and smoothing) they make; ``state`` is not touched.

    Args:
        state: the current state.
        changes: the request's JSON object.
        meta: the model's :class:`~attnmap.runtime.core.meta.ModelMeta`.
        smooth: the current smoothing weight.

    Returns:
        ``(new_state, new_smooth)``; ``new_state.version`` is bumped when the map changes.

    Raises:
        OptionError: not an object, an unknown field (close names suggested), or a value the
            field does not allow (the message names the field, what was expected and what came).
    """
    if not isinstance(changes, dict):
        raise OptionError(f"the state change must be a JSON object with fields among {', '.join(FIELDS)}; "
                          f"got {type(changes).__name__}")
    for name in changes:
        if name not in FIELDS:
            raise OptionError(f"unknown state field {name!r}; fields: {', '.join(FIELDS)}." + suggest(str(name), FIELDS))
    new = dataclasses.replace(state)
    if "method" in changes:
        method = changes["method"]
        if method not in state.methods:
            raise OptionError(f"method must be one of {', '.join(state.methods)}; got {method!r}."
                              + suggest(str(method), state.methods))
        new.method = method
    spec = METHODS[new.method].options
    if "layer" in changes:
        name = "layer" if "layer" in spec else "start_layer" if "start_layer" in spec else None
        if name is None and changes["layer"] is not None:
            raise OptionError(f"layer: method {new.method!r} has no layer choice")
        # null is "the method's default" (the option left unset), whatever the option's own default.
        new.layer = None if name is None or changes["layer"] is None else \
            spec[name].check(changes["layer"], owner=f"method {new.method!r}", size=state.num_layers)
    if "head" in changes:
        if "head" not in spec and changes["head"] is not None:
            raise OptionError(f"head: method {new.method!r} has no head choice")
        new.head = None if "head" not in spec or changes["head"] is None else \
            spec["head"].check(changes["head"], owner=f"method {new.method!r}", size=state.num_heads)
    if "head_fusion" in changes:
        if "head_fusion" not in spec and changes["head_fusion"] is not None:
            raise OptionError(f"head_fusion: method {new.method!r} has no head fusion choice")
        new.head_fusion = None if "head_fusion" not in spec or changes["head_fusion"] is None else \
            spec["head_fusion"].check(changes["head_fusion"], owner=f"method {new.method!r}")
    if "fit" in changes:
        if changes["fit"] not in FITS:
            raise OptionError(f"fit must be one of {', '.join(FITS)}; got {changes['fit']!r}."
                              + suggest(str(changes["fit"]), FITS))
        new.fit = changes["fit"]
    if "colormap" in changes:
        if not isinstance(changes["colormap"], str):
            raise OptionError(f"colormap must be a colour map name such as jet; got {changes['colormap']!r}")
        new.style = state.style.replace(colormap=changes["colormap"])
    if "paused" in changes:
        if not isinstance(changes["paused"], bool):
            raise OptionError(f"paused must be true or false; got {changes['paused']!r}")
        new.paused = changes["paused"]
    if "smooth" in changes:
        smooth = check_smooth(changes["smooth"])
    # The whole combination must run: the method on this model, its options (a head on a
    # head-fused file is refused here, not in the loop).
    check_method_use(new.method, meta)
    check_options(new.method, method_options(new), meta)
    if (new.method, new.layer, new.head, new.head_fusion, new.fit) != \
            (state.method, state.layer, state.head, state.head_fusion, state.fit):
        new.version = state.version + 1
    return new, smooth


def commit(live: LiveState, new: LiveState) -> None:
    """Copy a checked state into the one the loop reads; the version goes last, so the loop
    rebuilds its engine only once every field is in place."""
    for f in dataclasses.fields(LiveState):
        if f.name != "version":
            setattr(live, f.name, getattr(new, f.name))
    live.version = new.version
