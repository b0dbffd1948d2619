"""The objective expression grammar used on the command line and by ``render(model, "text")``.

Examples::

    layer3:5                         channel 5 of layer3 (units: see nnfeat.units)
    layer3:0..15                     channels 0..15, one per batch item
    layer3                           every channel of layer3, one per batch item (a whole expression only)
    layer3.1.conv2:7                 dotted PyTorch names work
    layer3:5@4,6                     the neuron at row 4, column 6
    -layer3:5                        minimize instead
    output:3 - 0.5*diversity("layer2")
    neuron("layer3", 5, x=4, y=4)
    logit(3) + 2*softmax(3) / 4

A units string (:mod:`nnfeat.units`) inside an expression stands for ``channel(...)`` (or ``neuron(...)`` with
a position); a whole expression that is a units string, such as ``layer3``, means exactly those units.
The expression is parsed with :mod:`ast` and walked against a whitelist: numbers, strings, lists of
numbers, ``+ - * /``, unary ``-``/``+`` and calls of the constructors in
:data:`nnfeat.objectives.CONSTRUCTORS`. Nothing is ever evaluated as Python; attribute access, names,
subscripts, lambdas and everything else are refused with a one-line error that shows where the
expression broke. Inside an expression a layer whose name starts with a digit goes in quotes:
``channel("0", 5)``.
"""

from __future__ import annotations

import ast
import re
from typing import Callable

from nnfeat.errors import NnfeatError, nearest
from nnfeat.objectives import CONSTRUCTORS, Objective, channel, neuron
from nnfeat.units import LAYER_PATTERN, POSITION_PATTERN, SELECTOR_PATTERN, UNITS_PATTERN, Units, parse_units

#: A unit inside an expression: the unit grammar with its ``:SELECTOR``, the layer starting with a letter.
_SHORTHAND = re.compile(rf"(?=[A-Za-z_]){LAYER_PATTERN}:(?:{SELECTOR_PATTERN})(?:@(?:{POSITION_PATTERN}))?")
_WHOLE = re.compile(rf"^(?=[A-Za-z_]){UNITS_PATTERN}$")
_DASH_RANGE = re.compile(r"-\d")
_UNIT_CALL = "__unit__"
#: The longest expression accepted (longer text is refused before parsing).
MAX_LENGTH = 10_000


def _expand_shorthand(text: str) -> tuple[str, list[int], list[Units]]:
    """Rewrite each unit ``LAYER:SELECTOR[@POSITION]`` outside string literals as ``__unit__(k)``.

    Returns the new text, for each of its characters the column of the original text it came from, and
    the parsed units (``k`` indexes them).
    """
    out: list[str] = []
    origin: list[int] = []
    units: list[Units] = []
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
        match = _SHORTHAND.match(text, i) if (ch.isalpha() or ch == "_") else None
        if match and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_.")):
            if _DASH_RANGE.match(text, match.end()):
                bad = text[i:match.end() + 2]
                raise NnfeatError(f"bad objective expression {_where(text, match.end())}: '{bad}' is not a unit; "
                                  f"a channel range is written A..B (e.g. {match.group(0)}..{text[match.end() + 1]}); "
                                  "to subtract a number put spaces around '-'")
            repl = f"{_UNIT_CALL}({len(units)})"
            units.append(parse_units(match.group(0)))
            out.extend(repl)
            origin.extend([i] * len(repl))
            i = match.end()
            continue
        out.append(ch)
        origin.append(i)
        i += 1
    origin.append(len(text))
    return "".join(out), origin, units


def _where(text: str, column: int) -> str:
    column = max(0, min(column, len(text)))
    return f"at column {column + 1}: {text[:column]}⟨here⟩{text[column:]}"


ChannelCount = Callable[[str], int]


def parse_objective(text: str, model=None) -> Objective:
    """Parse an objective expression (see the module docstring) into an :class:`Objective`.

    ``model`` (an nnfeat ``Model``), when given, resolves "every channel" (``layer3``, ``layer3:*``) to the
    layer's channel count; without it such units are a one-line error.
    """
    if not isinstance(text, str) or not text.strip():
        raise NnfeatError("empty objective expression: try e.g. 'layer3:5'")
    source = text.strip()
    if len(source) > MAX_LENGTH:
        raise NnfeatError(f"objective expression of {len(source)} characters is too long: at most {MAX_LENGTH}")
    count = _channel_counter(model)
    if _WHOLE.match(source):
        return units_objective(parse_units(source), count)
    expanded, origin, units = _expand_shorthand(source)
    try:
        tree = ast.parse(expanded, mode="eval")
    except SyntaxError as err:
        offset = err.offset or 0
        if offset < 1:  # Python reports no position when the input ends too early
            col, reason = len(source), "unexpected end of expression"
        else:
            col, reason = origin[min(offset - 1, len(origin) - 1)], err.msg
        raise NnfeatError(f"bad objective expression {_where(source, col)} ({reason})") from None
    return _Walker(source, origin, units, count).visit(tree.body)


def units_objective(units: Units, count: ChannelCount | None = None) -> Objective:
    """The objective a units string stands for: ``channel`` (mean over positions), or ``neuron`` with a position.

    ``count(layer)`` gives a layer's channel count, needed for "every channel" units.
    """
    channels = units.channels
    if channels is None:
        if count is None:
            raise NnfeatError(f"'{units}' means every channel of '{units.layer}': that needs the model "
                              f"(pass it to parse_objective), or list the channels, e.g. {units.layer}:0..15")
        channels = tuple(range(count(units.layer)))
    if units.position is None:
        return channel(units.layer, list(channels))
    x, y = units.xy
    return neuron(units.layer, list(channels), x=x, y=y)


def _channel_counter(model) -> ChannelCount | None:
    if model is None:
        return None
    from nnfeat.layouts import channel_count

    def count(layer: str) -> int:
        model.check_layer(layer)
        return channel_count(tuple(model.layer_shapes([layer])[layer][1:]))

    return count


class _Walker:
    def __init__(self, source: str, origin: list[int], units: list[Units], count: ChannelCount | None) -> None:
        self.source = source
        self.origin = origin
        self.units = units
        self.count = count

    def fail(self, node: ast.AST, message: str) -> NnfeatError:
        col = self.origin[min(getattr(node, "col_offset", 0), len(self.origin) - 1)]
        return NnfeatError(f"bad objective expression {_where(self.source, col)}: {message}")

    def visit(self, node: ast.AST):
        if isinstance(node, ast.BinOp):
            left, right = self.visit(node.left), self.visit(node.right)
            ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
                   ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}
            op = ops.get(type(node.op))
            if op is None:
                raise self.fail(node, f"operator {type(node.op).__name__} is not allowed; use + - * /")
            if not isinstance(left, Objective) and not isinstance(right, Objective):
                if isinstance(left, (int, float)) and isinstance(right, (int, float)):
                    if isinstance(node.op, ast.Div) and right == 0:
                        raise self.fail(node, "division by zero")
                    return op(left, right)
                raise self.fail(node, "arithmetic needs numbers or objectives")
            if isinstance(left, (str, list)) or isinstance(right, (str, list)):
                raise self.fail(node, "cannot combine an objective with a string or list")
            return op(left, right)
        if isinstance(node, ast.UnaryOp):
            value = self.visit(node.operand)
            if isinstance(node.op, ast.USub) and isinstance(value, (Objective, int, float)):
                return -value
            if isinstance(node.op, ast.UAdd) and isinstance(value, (Objective, int, float)):
                return value
            raise self.fail(node, "only unary - and + are allowed")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float, str)):
                raise self.fail(node, f"constant {node.value!r} is not allowed; use numbers or strings")
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            values = [self.visit(e) for e in node.elts]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise self.fail(node, "lists may hold numbers only")
            return values
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Attribute):
            raise self.fail(node, "attribute access is not allowed")
        if isinstance(node, ast.Name):
            hint = nearest(node.id, CONSTRUCTORS)
            more = f"; did you mean {hint[0]}(...)?" if hint else ""
            raise self.fail(node, f"unknown name '{node.id}': layers go in quotes or as LAYER:CHANNEL{more}")
        raise self.fail(node, f"{type(node).__name__} is not allowed in an objective expression")

    def call(self, node: ast.Call):
        if isinstance(node.func, ast.Attribute):
            raise self.fail(node.func, "attribute access is not allowed")
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, "only calls of objective functions are allowed")
        name = node.func.id
        if name == _UNIT_CALL:
            return units_objective(self.units[node.args[0].value], self.count)
        if name not in CONSTRUCTORS:
            hint = nearest(name, CONSTRUCTORS)
            extra = f"; did you mean {hint[0]}?" if hint else f"; known: {', '.join(sorted(CONSTRUCTORS))}"
            raise self.fail(node, f"unknown function '{name}'{extra}")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise self.fail(node, "* and ** arguments are not allowed")
        args = [self.visit(a) for a in node.args]
        kwargs = {k.arg: self.visit(k.value) for k in node.keywords}
        for value in [*args, *kwargs.values()]:
            if isinstance(value, Objective):
                raise self.fail(node, f"{name}() takes layer names and numbers, not objectives")
        try:
            return CONSTRUCTORS[name](*args, **kwargs)
        except TypeError as err:
            message = str(err).replace("()", "", 1) if "()" in str(err) else str(err)
            raise self.fail(node, f"bad arguments for {name}(): {message}") from None


__all__ = ["parse_objective", "units_objective", "MAX_LENGTH"]
