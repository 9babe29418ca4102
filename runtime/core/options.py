"""Typed option specs: one declaration per option, from which every front derives its checks.

Each explanation method declares its options once (:class:`OptionSpec`: type, default, range,
choices, help). The CLI builds its flags from them, the library and the live view check
values with :meth:`OptionSpec.check`, and the live view's keys step through values with
:meth:`OptionSpec.step`, so a value one front accepts is never refused by another.

Options that index the model's layers or heads (``axis="layers"`` / ``"heads"``) take their
range from the model: ``layer=-1`` is the last layer, and on a file whose heads were fused at
export there is one head output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from attnmap.runtime.core.errors import OptionError, suggest

KINDS = (bool, int, float, str)
AXES = ("layers", "heads")


@dataclass(frozen=True)
class OptionSpec:
    """The declaration of one option.

    Attributes:
        name: the keyword (``discard_ratio``); the CLI flag is ``--discard-ratio``.
        kind: ``bool``, ``int``, ``float`` or ``str``.
        default: the value used when the option is not given; None means "not set" (for
            ``head``: the heads fused).
        help: one line for ``--help`` and ``attnmap methods``.
        choices: the allowed values, for options restricted to a set.
        low: smallest allowed value (numbers), or None.
        high: largest allowed value (numbers), or None.
        high_open: True when ``high`` itself is not allowed (``discard_ratio < 1``).
        low_open: True when ``low`` itself is not allowed (``eps > 0``).
        axis: ``"layers"`` or ``"heads"`` when the value indexes the model's layers or head
            outputs (negative counts from the end); its range comes from the model.
    """

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    low_open: bool = False
    axis: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TypeError(f"option {self.name!r}: kind must be one of {KINDS}; got {self.kind!r}")
        if self.axis is not None and self.axis not in AXES:
            raise TypeError(f"option {self.name!r}: axis must be one of {AXES}; got {self.axis!r}")

    @property
    def nullable(self) -> bool:
        """True when None (not set) is a valid value."""
        return self.default is None

    def describe(self) -> str:
        """What values are allowed, in words: ``a number in [0, 1)``, ``one of mean, max, min``."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind is bool:
            return "true or false"
        if self.axis is not None:
            what = "a layer index" if self.axis == "layers" else "a head index"
            return f"{what} (negative counts from the end)"
        noun = "an integer" if self.kind is int else "a number" if self.kind is float else "text"
        if self.low is None and self.high is None:
            return noun
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        low = "-inf" if self.low is None else self._number(self.low)
        high = "inf" if self.high is None else self._number(self.high)
        return f"{noun} in {lo}{low}, {high}{hi}"

    def _number(self, value: float) -> str:
        return f"{int(value):,}" if self.kind is int else f"{value:g}"  # 1,000,000, not 1e+06

    def check(self, value: Any, *, owner: str = "", size: int | None = None, model: str = "a model") -> Any:
        """Return ``value`` converted to the option's type, or raise :class:`OptionError`.

        Args:
            value: the value given (numpy scalars are accepted; ``"0.9"`` text is not).
            owner: who the option belongs to, for the message (``"method 'rollout'"``).
            size: for ``axis`` options, the number of layers or head outputs of the model; the
                value must then lie in ``[-size, size)``. None skips that check.
            model: how the range message names the model (``"'deit.onnx'"``).

        Returns:
            The value as a Python ``bool``, ``int``, ``float`` or ``str`` (None where allowed).
        """
        where = f" of {owner}" if owner else ""
        if value is None:
            if self.nullable:
                return None
            raise OptionError(f"option {self.name!r}{where} must be {self.describe()}; got None")
        is_bool = isinstance(value, (bool, np.bool_))
        if self.kind is bool:
            ok = is_bool
        elif self.kind is int:
            ok = isinstance(value, (int, np.integer)) and not is_bool
        elif self.kind is float:
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not is_bool
        else:
            ok = isinstance(value, str)
        if not ok:
            raise OptionError(f"option {self.name!r}{where} must be {self.describe()}; "
                              f"got {value!r} ({type(value).__name__})")
        value = self.kind(value)
        if self.choices and value not in self.choices:
            raise OptionError(f"option {self.name!r}{where} must be {self.describe()}; got {value!r}."
                              + suggest(str(value), [str(c) for c in self.choices]))
        if self.kind is float and not np.isfinite(value):
            raise OptionError(f"option {self.name!r}{where} must be {self.describe()}; got {value!r}")
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise OptionError(f"option {self.name!r}{where} must be {self.describe()}; got {value!r}")
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise OptionError(f"option {self.name!r}{where} must be {self.describe()}; got {value!r}")
        if self.axis is not None and size is not None and not -size <= value < size:
            what = "layers" if self.axis == "layers" else "head outputs"
            raise OptionError(f"option {self.name!r}{where} must be in [{-size}, {size}) for {model} with "
                              f"{size} {what}; got {value}")
        return value

    def parse(self, text: str, *, owner: str = "", size: int | None = None) -> Any:
        """Convert command-line text (``"0.9"``, ``"true"``, ``"-1"``, ``"none"``) and :meth:`check` it.

        Raises:
            OptionError: text that is not of the option's kind, or a value :meth:`check` refuses.
        """
        where = f" of {owner}" if owner else ""
        t = str(text).strip()
        if t.lower() in ("none", "null", "") and self.nullable:
            return None
        try:
            if self.kind is bool:
                words = {"true": True, "1": True, "yes": True, "on": True,
                         "false": False, "0": False, "no": False, "off": False}
                value: Any = words[t.lower()]
            else:
                value = self.kind(t)
        except (KeyError, ValueError) as exc:
            raise OptionError(f"option {self.name!r}{where} must be {self.describe()}; got {t!r}") from exc
        return self.check(value, owner=owner, size=size)

    def step(self, current: Any, delta: int = 1, *, size: int | None = None) -> Any:
        """The next value when a key cycles this option (the live view's ``[`` ``]`` and ``h``).

        Choices cycle in order; ``axis`` options cycle through ``0 .. size - 1`` (a nullable one
        passes through None, "fused", after the last index); booleans flip.

        Args:
            current: the value in force (None: not set).
            delta: +1 for the next value, -1 for the previous.
            size: layers or head outputs of the model, for ``axis`` options.
        """
        if self.choices:
            values = list(self.choices)
            i = values.index(current) if current in values else -1
            return values[(i + delta) % len(values)]
        if self.kind is bool:
            return not bool(current if current is not None else self.default)
        if self.axis is not None and size:
            ring: list[Any] = list(range(size)) + ([None] if self.nullable else [])
            cur = current if current is None else int(current) % size
            i = ring.index(cur) if cur in ring else -1
            return ring[(i + delta) % len(ring)]
        raise OptionError(f"option {self.name!r} has no values to step through")


def check_names(given: dict[str, Any], specs: dict[str, OptionSpec], owner: str) -> None:
    """Raise OptionError for the first name in ``given`` that ``specs`` does not declare."""
    for name in given:
        if name not in specs:
            known = ", ".join(specs) or "none"
            raise OptionError(f"{owner} has no option {name!r} (its options: {known})." + suggest(name, specs))
