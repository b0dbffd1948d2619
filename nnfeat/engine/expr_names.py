"""The name table of the objective expression grammar (:mod:`nnfeat.engine.expr`): how each argument of the
constructors in :data:`nnfeat.engine.objectives.CONSTRUCTORS` is checked, by name (each check returns None or
what the argument should be, for a one-line error), and the constructors that need a (B, C, H, W) map.
"""

from __future__ import annotations

import inspect
from typing import Callable

from nnfeat.engine.expr_text import MAX_CHANNELS, MAX_LAYER_NAME, MAX_NUMBER
from nnfeat.engine.objectives import CONSTRUCTORS


def fmt_number(number: float) -> str:
    """A number as errors show it: ``1e+06`` for floats, all digits for integers."""
    return f"{number:g}" if isinstance(number, float) else str(number)


def is_number(value) -> bool:
    """Whether ``value`` is an int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- the arguments of the constructors, checked by name -------------------------------------------------
def _index_ok(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_NUMBER


def _layer(value) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return 'a layer name in quotes, e.g. "layer3"'
    if len(value) > MAX_LAYER_NAME:
        return f"a layer name of at most {MAX_LAYER_NAME} characters"
    return None


def _indices(value) -> str | None:
    what = f"a channel index 0..{MAX_NUMBER} or a non-empty list of them"
    if _index_ok(value):
        return None
    if isinstance(value, list) and value and all(_index_ok(v) for v in value):
        return None if len(value) <= MAX_CHANNELS else f"a list of at most {MAX_CHANNELS} channels"
    return what


def _index(value) -> str | None:
    return None if _index_ok(value) else f"an integer 0..{MAX_NUMBER}"


def _positive_int(value) -> str | None:
    return None if _index_ok(value) and value >= 1 else f"an integer 1..{MAX_NUMBER}"


def _vector(value) -> str | None:
    if isinstance(value, list) and value and len(value) <= MAX_CHANNELS and all(is_number(v) for v in value):
        return None
    return f"a non-empty list of at most {MAX_CHANNELS} numbers, one per channel"


def _in_range(lo: float, hi: float, note: str = "") -> Callable[[object], str | None]:
    def check(value) -> str | None:
        return None if is_number(value) and lo <= value <= hi else f"a number in {fmt_number(lo)}..{fmt_number(hi)}{note}"
    return check


#: parameter name -> check returning None or what the argument should be.
_ARGUMENTS: dict[str, Callable[[object], str | None]] = {
    "layer": _layer,
    "channel": _indices,
    "cls": _indices,
    "x": _index,
    "y": _index,
    "batch": _index,
    "max_distance": _positive_int,
    "vectors": _vector,
    "cossim_pow": _in_range(0, 8),
    "decay_ratio": _in_range(1, MAX_NUMBER, " (far neighbours weigh less)"),
    "constant": _in_range(-MAX_NUMBER, MAX_NUMBER),
    "sigma": _in_range(0.1, 8, " pixels"),
    "target": lambda v: None if isinstance(v, str) and v.strip() else 'a target in quotes, e.g. "out:3@mask"',
    "group": lambda v: None if _index_ok(v) and v >= 2 else f"an integer 2..{MAX_NUMBER}",
}


def argument_check(function: Callable, param: str) -> Callable[[object], str | None]:
    """The check for ``param`` of ``function``: by name, else from its annotation (a parameter added later)."""
    if param in _ARGUMENTS:
        return _ARGUMENTS[param]
    annotation = str(inspect.signature(function).parameters[param].annotation)
    if "float" in annotation:
        return _in_range(-MAX_NUMBER, MAX_NUMBER)
    if "int" in annotation:
        return _index
    if "str" in annotation:
        return _layer
    return lambda value: None


#: constructors that read a (B, C, H, W) map, with the parameter giving a blur radius (or None).
MAP_ONLY = {"total_variation": None, "tv": None, "blur": "sigma"}


def signature(name: str) -> str:
    """``name(param, param=default, ...)`` of the constructor ``name``, for errors."""
    params = inspect.signature(CONSTRUCTORS[name]).parameters.values()
    return f"{name}({', '.join(p.name if p.default is p.empty else f'{p.name}={p.default!r}' for p in params)})"

