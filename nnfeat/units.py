"""The one unit grammar: which units of a layer a command or function means.

Every command that takes units (``render``, ``microscope``, ``examples``, ``atlas``, ...) and the Python API
(``render(model, "layer3:0..3")``, ``microscope(model, "layer3")``, ``model.units("layer3:5")``) read the
same text the same way::

    UNITS     := LAYER [":" SELECTOR] ["@" POSITION]
    LAYER     := a layer reference (dotted module name, optional #CALL and [ELEMENT]; see nnfeat.layouts)
    SELECTOR  := "*" | ITEM ("," ITEM)*          ITEM := INT | INT ".." INT   (both ends included)
    POSITION  := Y "," X  (a conv map's row and column) | T  (a token index)

============================  ======================================================
``layer3``, ``layer3:*``      every channel of ``layer3``
``layer3:5``                  channel 5
``layer3:0,4,7``              channels 0, 4 and 7
``layer3:0..15``              channels 0 to 15 (16 channels; both ends included)
``layer3:0..3,8``             channels 0, 1, 2, 3 and 8
``layer3:5@4,6``              channel 5 at row 4, column 6 of the map (a neuron)
``blocks.3:7@0``              channel 7 of token 0 (the class token) of a token layer
``output:3``                  the network's output (logit) 3
============================  ======================================================

No unit form contains ``+ - * /``, so inside an objective expression a unit can never be read as
arithmetic: ``layer3:0..3 - 0.5*diversity("layer3")`` is four channels minus a diversity term.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from nnfeat.errors import NnfeatError
from nnfeat.layouts import channel_count, parse_layer_ref

_INT = r"\d+"
_ITEM = rf"{_INT}(?:\.\.{_INT})?"
#: The pieces of the grammar as regular expressions (the objective grammar builds its shorthand from them).
LAYER_PATTERN = r"\w[\w.]*(?:#\d+)?(?:\[\d+\])?"
SELECTOR_PATTERN = rf"\*|{_ITEM}(?:,{_ITEM})*"
POSITION_PATTERN = rf"{_INT}(?:,{_INT})?"
UNITS_PATTERN = rf"(?P<layer>{LAYER_PATTERN})(?::(?P<selector>{SELECTOR_PATTERN}))?(?:@(?P<position>{POSITION_PATTERN}))?"
_FULL = re.compile(rf"^{UNITS_PATTERN}$")

EXAMPLES = "layer3, layer3:5, layer3:0,4,7, layer3:0..15, layer3:5@4,6"


@dataclass(frozen=True)
class Units:
    """Parsed units, not yet checked against a model.

    Attributes:
        layer: the layer reference.
        channels: the channels in the order given, or None for every channel.
        position: (y, x) on a map, (t,) for a token, or None (no position: whole-map units).
        text: the text it was parsed from.
    """

    layer: str
    channels: tuple[int, ...] | None = None
    position: tuple[int, ...] | None = None
    text: str = ""

    def __str__(self) -> str:
        return self.text or format_units(self.layer, self.channels, self.position)

    def channel_list(self, shape_wo_batch: Sequence[int]) -> list[int]:
        """The channels, checked against the layer's activation shape (without batch), e.g. (64, 8, 8).

        Raises a one-line error naming the valid range for a channel or position outside it.
        """
        count = channel_count(shape_wo_batch)
        channels = list(range(count)) if self.channels is None else list(self.channels)
        for c in channels:
            if not 0 <= c < count:
                raise NnfeatError(f"channel {c} out of range for layer '{self.layer}': valid channels are "
                                  f"0..{count - 1}")
        if self.position is not None:
            check_position(self.layer, shape_wo_batch, self.position)
        return channels

    @property
    def xy(self) -> tuple[int | None, int | None]:
        """The position as ``(x, y)`` keyword values for ``neuron`` (tokens: x is the token index)."""
        if self.position is None:
            return None, None
        if len(self.position) == 1:
            return self.position[0], None
        return self.position[1], self.position[0]


def parse_units(text: str, *, what: str = "units") -> Units:
    """Parse ``text`` (see the module docstring) into :class:`Units`, or a one-line error with examples."""
    if not isinstance(text, str):
        raise NnfeatError(f"{what} must be text such as {EXAMPLES}; got {type(text).__name__}")
    source = text.strip()
    match = _FULL.match(source)
    if not match:
        hint = ""
        if re.search(r":\d+-\d+", source):
            hint = " (a range is written A..B, e.g. layer3:0..3: '-' would be arithmetic)"
        elif ":" in source and re.search(r":\d+:\d+", source):
            hint = " (a range is written A..B, e.g. layer3:0..63)"
        raise NnfeatError(f"bad {what} '{_short(source)}'{hint}: expected LAYER[:CHANNELS][@POSITION], e.g. {EXAMPLES}")
    parse_layer_ref(match["layer"])  # the layer part must be a valid reference
    return Units(match["layer"], _selector(match["selector"], source), _position(match["position"]), source)


def is_units(text: str) -> bool:
    """Whether ``text`` as a whole is a units string (used by the objective grammar)."""
    return isinstance(text, str) and bool(_FULL.match(text.strip()))


def format_units(layer: str, channels: Sequence[int] | None = None, position: Sequence[int] | None = None) -> str:
    """The canonical text of units: ``format_units("layer3", [0, 1, 2, 3])`` -> ``"layer3:0..3"``."""
    text = layer
    if channels is not None:
        text += ":" + format_channels(channels)
    if position is not None:
        text += "@" + ",".join(str(int(p)) for p in position)
    return text


def format_channels(channels: Sequence[int]) -> str:
    """``[0, 1, 2, 3, 8]`` -> ``"0..3,8"`` (runs of 3 or more consecutive channels become ranges)."""
    channels = [int(c) for c in channels]
    parts: list[str] = []
    i = 0
    while i < len(channels):
        j = i
        while j + 1 < len(channels) and channels[j + 1] == channels[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{channels[i]}..{channels[j]}")
        else:
            parts.extend(str(c) for c in channels[i:j + 1])
        i = j + 1
    return ",".join(parts)


def check_position(layer: str, shape_wo_batch: Sequence[int], position: Sequence[int | None]) -> None:
    """One-line errors for a position outside the layer: maps take (y, x), tokens (t,), vectors none."""
    shape = tuple(shape_wo_batch)
    if len(shape) == 3:
        if len(position) != 2:
            raise NnfeatError(f"layer '{layer}' is a {shape[1]}x{shape[2]} map: give a position as @Y,X "
                              f"(Y in 0..{shape[1] - 1}, X in 0..{shape[2] - 1})")
        for axis, value, size in (("y", position[0], shape[1]), ("x", position[1], shape[2])):
            if value is not None and not 0 <= value < size:
                raise NnfeatError(f"{axis}={value} out of range for layer '{layer}' of size {shape[1]}x{shape[2]}: "
                                  f"valid {axis} is 0..{size - 1}")
    elif len(shape) == 2:
        if len(position) != 1:
            raise NnfeatError(f"layer '{layer}' has {shape[0]} tokens: give a position as @T with T in 0..{shape[0] - 1}")
        if position[0] is not None and not 0 <= position[0] < shape[0]:
            raise NnfeatError(f"token {position[0]} out of range for layer '{layer}' with {shape[0]} tokens: valid is "
                              f"0..{shape[0] - 1}")
    else:
        raise NnfeatError(f"layer '{layer}' is a vector (no positions): drop the @POSITION")


#: the largest index a unit text may name, and the most channels one units text may select (each is one
#: batch image): bigger numbers are refused before ``range`` is built (``layer3:0..999999999999``)
MAX_INDEX = 1_000_000
MAX_CHANNELS = 4096


def _index(text: str, source: str) -> int:
    digits = text.strip()
    if len(digits.lstrip("-")) > 7 or abs(int(digits)) > MAX_INDEX:
        raise NnfeatError(f"index '{_short(digits, 20)}' in '{_short(source)}' is out of range: indices are "
                          f"0..{MAX_INDEX:,}")
    return int(digits)


def _selector(text: str | None, source: str) -> tuple[int, ...] | None:
    if text is None or text == "*":
        return None
    channels: list[int] = []
    for item in text.split(","):
        lo, dots, hi = item.partition("..")
        if dots:
            a, b = _index(lo, source), _index(hi, source)
            if b < a:
                raise NnfeatError(f"empty channel range '{item}' in '{_short(source)}': write A..B with A <= B")
            if len(channels) + b - a + 1 > MAX_CHANNELS:
                raise NnfeatError(f"'{_short(source)}' selects more than {MAX_CHANNELS} channels (one batch image "
                                  "each): select fewer, e.g. A..B in parts")
            channels.extend(range(a, b + 1))
        else:
            channels.append(_index(item, source))
    if len(channels) > MAX_CHANNELS:
        raise NnfeatError(f"'{_short(source)}' selects more than {MAX_CHANNELS} channels: select fewer")
    return tuple(channels)


def _position(text: str | None, source: str = "") -> tuple[int, ...] | None:
    return None if text is None else tuple(_index(p, source or text) for p in text.split(","))


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


__all__ = ["Units", "parse_units", "is_units", "format_units", "format_channels", "check_position", "UNITS_PATTERN",
           "LAYER_PATTERN", "SELECTOR_PATTERN", "POSITION_PATTERN",
           "EXAMPLES"]
