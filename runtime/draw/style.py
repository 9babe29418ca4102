"""How explanations are drawn, as one object built once at the edge and handed down whole.

The CLI builds an :class:`OverlayStyle` from its flags, a request handler from its fields, the
live view from its keys; offline explain, live, video and :meth:`Explanation.overlay` all take
that object, never loose keywords. Building it checks every field, so a bad style fails before
any frame is read, and the same value is accepted or refused the same way by every front.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from attnmap.runtime.core.errors import OptionError, suggest
from attnmap.runtime.draw.overlay import COLORMAPS, MODES, HeatmapOverlay, LabelOverlay, colormap_id

# The colour maps the live view's ``c`` key cycles through: the perceptually useful few.
CYCLE_COLORMAPS = tuple(c for c in ("jet", "turbo", "inferno", "viridis", "magma", "hot", "bone") if c in COLORMAPS)


@dataclass(frozen=True)
class OverlayStyle:
    """The look of an overlay.

    Attributes:
        colormap: an OpenCV colour map name in any case (``"jet"``, ``"Inferno"``); stored in
            lower case.
        alpha: strength in [0, 1] (see :class:`~attnmap.runtime.draw.overlay.HeatmapOverlay`).
        blur: Gaussian smoothing, sigma as a fraction of the shorter side, in [0, 1].
        mode: ``"blend"`` (colour map over the image) or ``"mask"`` (image times the map).
        label: draw the caption (top-1 label and probability, the method or explained class).

    Raises:
        OptionError: a field out of range or unknown (with close matches suggested).
    """

    colormap: str = "jet"
    alpha: float = 0.5
    blur: float = 0.0
    mode: str = "blend"
    label: bool = True
    _heat: HeatmapOverlay = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.colormap, str):
            colormap_id(self.colormap)  # raises with suggestions
            object.__setattr__(self, "colormap", self.colormap.lower())
        else:
            cid = colormap_id(self.colormap)
            object.__setattr__(self, "colormap", next(n for n, v in COLORMAPS.items() if v == cid))
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise OptionError(f"alpha must be a number in [0, 1]; got {self.alpha!r}")
        if isinstance(self.blur, bool) or not isinstance(self.blur, (int, float)) or not 0.0 <= self.blur <= 1.0:
            raise OptionError(f"blur must be a fraction of the shorter image side in [0, 1]; got {self.blur!r}")
        if self.mode not in MODES:
            raise OptionError(f"unknown overlay mode {self.mode!r}; expected one of {', '.join(MODES)}."
                              + suggest(str(self.mode), MODES))
        if not isinstance(self.label, bool):
            raise OptionError(f"label must be True or False; got {self.label!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "blur", float(self.blur))
        object.__setattr__(self, "_heat", HeatmapOverlay(colormap=self.colormap, alpha=self.alpha,
                                                         blur=self.blur, mode=self.mode))

    @property
    def heatmap(self) -> HeatmapOverlay:
        """The heatmap annotator of this style (built once)."""
        return self._heat

    @property
    def caption(self) -> LabelOverlay:
        """The caption annotator of this style."""
        return _LABEL

    def replace(self, **changes: Any) -> "OverlayStyle":
        """A copy with some fields changed (checked like a new style)."""
        unknown = [k for k in changes if k not in _FIELDS]
        if unknown:
            raise OptionError(f"overlay style has no field {unknown[0]!r}; fields: {', '.join(_FIELDS)}."
                              + suggest(unknown[0], _FIELDS))
        return dataclasses.replace(self, **changes)

    def next_colormap(self) -> "OverlayStyle":
        """This style with the next colour map of :data:`CYCLE_COLORMAPS` (the live ``c`` key)."""
        names = list(CYCLE_COLORMAPS)
        i = names.index(self.colormap) if self.colormap in names else -1
        return self.replace(colormap=names[(i + 1) % len(names)])


_FIELDS = ("colormap", "alpha", "blur", "mode", "label")
_LABEL = LabelOverlay()
