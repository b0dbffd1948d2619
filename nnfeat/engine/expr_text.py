"""The text side of the objective expression grammar (:mod:`nnfeat.engine.expr`): the size limits, the rewrite
of unit shorthand (``layer3:0..3``) into calls, and the error position shown in every refusal.
"""

from __future__ import annotations

import re

from nnfeat.errors import NnfeatError, shorten
from nnfeat.units import LAYER_PATTERN, POSITION_PATTERN, SELECTOR_PATTERN, UNITS_PATTERN, Units, parse_units

#: A unit inside an expression: the unit grammar with its ``:SELECTOR``, the layer starting with a letter.
_SHORTHAND = re.compile(rf"(?=[A-Za-z_]){LAYER_PATTERN}:(?:{SELECTOR_PATTERN})(?:@(?:{POSITION_PATTERN}))?")
#: A whole expression that is one units string (``layer3``, ``layer3:0..15``).
WHOLE_UNITS = re.compile(rf"^(?=[A-Za-z_]){UNITS_PATTERN}$")
_DASH_RANGE = re.compile(r"-\d")
#: The call a unit inside an expression is rewritten to: ``__unit__(k)`` for the k-th unit.
UNIT_CALL = "__unit__"
#: The longest expression accepted (longer text is refused before parsing).
MAX_LENGTH = 10_000
#: The deepest nesting accepted: brackets, unary signs, calls and each operator of a chain count one level.
MAX_DEPTH = 100
#: The largest magnitude of any number (written or computed), index, and of the product of an objective's weights.
MAX_NUMBER = 1_000_000
#: The most channels one unit or list may name (one image per channel).
MAX_CHANNELS = 4096
#: The most objectives multiplied together in one product.
MAX_FACTORS = 4
#: The longest layer name (module names are short; a longer one is a paste error).
MAX_LAYER_NAME = 200
#: How much of the expression an error shows on each side of the place where it broke.
_CONTEXT = 30
#: Line breaks and tabs count as spaces.
WHITESPACE = str.maketrans({"\n": " ", "\r": " ", "\t": " "})
_UNIT_INT = re.compile(r"(?<!\w)\d+")


def expand_shorthand(text: str) -> tuple[str, list[int], list[Units], dict[int, int]]:
    """Rewrite each unit ``LAYER:SELECTOR[@POSITION]`` outside string literals as ``__unit__(k)``.

    Returns the new text, for each of its characters the column of the original text it came from, the
    parsed units (``k`` indexes them) and, for each inserted call, its column in the new text -> ``k``
    (a ``__unit__`` the user typed is not one of them).
    """
    out: list[str] = []
    origin: list[int] = []
    units: list[Units] = []
    calls: dict[int, int] = {}
    i = 0
    quote = None
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
            out.append(ch)
            origin.append(i)
            i += 1
            continue
        if ch in "\"'":
            quote = ch
            out.append(ch)
            origin.append(i)
            i += 1
            continue
        starts_word = (ch.isalpha() or ch == "_") and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_."))
        match = _SHORTHAND.match(text, i) if starts_word else None  # (tried at word starts only: linear time)
        if match:
            if _DASH_RANGE.match(text, match.end()):
                bad = text[i:match.end() + 2]
                raise NnfeatError(f"bad objective expression {where(text, match.end())}: '{shorten(bad, 40)}' is "
                                  f"not a unit; a channel range is written A..B (e.g. "
                                  f"{shorten(match.group(0), 40)}..{text[match.end() + 1]}); "
                                  "to subtract a number put spaces around '-'")
            calls[len(out)] = len(units)
            repl = f"{UNIT_CALL}({len(units)})"
            units.append(checked_units(match.group(0), text, i))
            out.extend(repl)
            origin.extend([i] * len(repl))
            i = match.end()
            continue
        out.append(ch)
        origin.append(i)
        i += 1
    origin.append(len(text))
    return "".join(out), origin, units, calls


def checked_units(unit_text: str, source: str, column: int) -> Units:
    """``parse_units(unit_text)`` after checking its numbers against :data:`MAX_NUMBER` and its channel count
    against :data:`MAX_CHANNELS` (so ``layer3:0..999999999999`` fails at once instead of listing the range)."""
    layer_end = unit_text.find(":") if ":" in unit_text else len(unit_text)
    if len(unit_text[:layer_end]) > MAX_LAYER_NAME:
        raise NnfeatError(f"bad objective expression {where(source, column)}: a layer name of {layer_end} "
                          f"characters: at most {MAX_LAYER_NAME}")
    numbers = _UNIT_INT.finditer(unit_text)
    for number in numbers:
        if len(number.group(0)) > len(str(MAX_NUMBER)) or int(number.group(0)) > MAX_NUMBER:
            raise NnfeatError(f"bad objective expression {where(source, column + number.start())}: index "
                              f"{shorten(number.group(0), 20)} is too large: indices go up to {MAX_NUMBER}")
    if layer_end < len(unit_text):
        selector = unit_text[layer_end + 1:].partition("@")[0]
        total = 0
        for item in selector.split(","):
            lo, dots, hi = item.partition("..")
            total += (int(hi) - int(lo) + 1) if dots and int(hi) >= int(lo) else 1
        if total > MAX_CHANNELS:
            raise NnfeatError(f"bad objective expression {where(source, column)}: '{shorten(unit_text, 40)}' names "
                              f"{total} channels: at most {MAX_CHANNELS} (one image per channel)")
    return parse_units(unit_text)


def printable(text: str) -> str:
    """``text`` with every non-printable character written as its escape (errors stay on one line)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def where(text: str, column: int) -> str:
    """``at column N: ...before⟨here⟩after...``, showing at most :data:`_CONTEXT` characters on each side."""
    column = max(0, min(column, len(text)))
    before, after = text[max(0, column - _CONTEXT):column], text[column:column + _CONTEXT]
    head = "..." if column > _CONTEXT else ""
    tail = "..." if column + _CONTEXT < len(text) else ""
    total = f" ({len(text)} characters)" if head or tail else ""
    return f"at column {column + 1}{total}: {head}{printable(before)}⟨here⟩{printable(after)}{tail}"

