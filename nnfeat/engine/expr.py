"""The objective expression grammar used on the command line and by ``render(model, "text")``.

Examples::

    layer3:5                         channel 5 of layer3 (units: see nnfeat.units)
    layer3:0..15                     channels 0..15, one per batch item
    layer3                           every channel of layer3, one per batch item (a whole expression only)
    layer3.1.conv2:7                 dotted PyTorch names work
    layer3:5@4,6                     the neuron at row 4, column 6
    -layer3:5                        minimize instead (read before layer3's ReLU: see engine.objective)
    output:3 - 0.5*diversity("layer2")
    neuron("layer3", 5, x=4, y=4)
    logit(3) + 2*softmax(3) / 4

A units string (:mod:`nnfeat.units`) inside an expression stands for ``channel(...)`` (or ``neuron(...)`` with
a position); a whole expression that is a units string, such as ``layer3``, means exactly those units.
The expression is parsed with :mod:`ast` and walked against a whitelist: numbers, strings, lists of
numbers, ``+ - * /``, unary ``-``/``+`` and calls of the constructors in
:data:`nnfeat.engine.objectives.CONSTRUCTORS`. Nothing is ever evaluated as Python; attribute access, names,
subscripts, lambdas and everything else are refused with a one-line error that shows where the
expression broke. Inside an expression a layer whose name starts with a digit goes in quotes:
``channel("0", 5)``.

Limits (each refusal is one line naming the limit), so that no text can hang the parser, exhaust the
stack or memory, or build an objective that overflows to inf/nan on ordinary activations:

* :data:`MAX_LENGTH` characters; line breaks and tabs count as spaces, other control characters are refused;
* :data:`MAX_DEPTH` levels of nesting (brackets, signs, calls and chained operators all count);
* every number, written or computed, finite and within ``±MAX_NUMBER``; indices (channels, positions,
  ``batch``) are integers ``0..MAX_NUMBER``; one unit or list names at most :data:`MAX_CHANNELS` channels;
* the numbers multiplying an objective multiply to at most ``MAX_NUMBER`` (``1e6*(1e6*layer3:0)`` is
  refused), at most :data:`MAX_FACTORS` objectives are multiplied together, and one divides by numbers only
  (an objective divisor is infinite wherever it is 0); ``**`` is not an operator of the grammar;
* arguments are checked by name (``sigma``, ``cossim_pow``, ``decay_ratio``, ... within their ranges).
"""

from __future__ import annotations

import ast
import inspect
import math
import sys
import warnings
from dataclasses import dataclass
from typing import Callable

from nnfeat.engine.expr_names import MAP_ONLY, argument_check, fmt_number, is_number, signature
from nnfeat.engine.expr_text import (MAX_CHANNELS, MAX_DEPTH, MAX_FACTORS, MAX_LAYER_NAME, MAX_LENGTH, MAX_NUMBER,
                                     UNIT_CALL, WHITESPACE, WHOLE_UNITS, checked_units, expand_shorthand, printable,
                                     where)
from nnfeat.engine.objectives import CONSTRUCTORS, Objective, channel, neuron
from nnfeat.errors import NnfeatError, nearest, shorten
from nnfeat.layouts import IMAGE, channel_count
from nnfeat.units import Units

#: ``count(layer)``: the channel count of a layer of the model.
ChannelCount = Callable[[str], int]


def parse_objective(text: str, model=None) -> Objective:
    """Parse an objective expression (see the module docstring) into an :class:`Objective`.

    ``model`` (an nnfeat ``Model``), when given, resolves "every channel" (``layer3``, ``layer3:*``) to the
    layer's channel count, checks the layer names, and that ``total_variation``/``blur`` get a map of the right size;
    without it "every channel" units are a one-line error. Any refusal is one :class:`NnfeatError` line.
    """
    if not isinstance(text, str):
        raise NnfeatError(f"an objective expression is text such as 'layer3:5'; got {type(text).__name__}")
    if not text.strip():
        raise NnfeatError("empty objective expression: try e.g. 'layer3:5'")
    if len(text) > MAX_LENGTH:
        raise NnfeatError(f"objective expression of {len(text)} characters is too long: at most {MAX_LENGTH}")
    source = text.translate(WHITESPACE).strip()
    bad = next((i for i, ch in enumerate(source) if not ch.isprintable()), None)
    if bad is not None:
        raise NnfeatError(f"bad objective expression {where(source, bad)}: control character "
                          f"{repr(source[bad])[1:-1]} is not allowed; write the expression as plain text")
    count = _channel_counter(model)
    objective = units_objective(checked_units(source, source, 0), count) if WHOLE_UNITS.match(source) else \
        _parse_expression(source, count, model)
    if model is not None:  # unknown layers: one line with the nearest names, before any work
        for layer in objective.model_layers:
            model.check_layer(layer)
    return objective


def _parse_expression(source: str, count: ChannelCount | None, model) -> Objective:
    """An expression that is more than one units string -> its Objective (or the one-line error)."""
    expanded, origin, units, calls = expand_shorthand(source)
    try:
        with warnings.catch_warnings():  # "invalid decimal literal" (1if ...) is an error here, not a stderr line
            warnings.simplefilter("error", SyntaxWarning)
            tree = ast.parse(expanded, mode="eval")
    except SyntaxError as err:
        offset = err.offset or 0
        if "integer string conversion" in err.msg:  # an integer literal longer than Python converts
            raise NnfeatError(f"objective expression has a number of more than {sys.get_int_max_str_digits()} "
                              f"digits: numbers must be within -{MAX_NUMBER}..{MAX_NUMBER}") from None
        if offset < 1:  # Python reports no position when the input ends too early
            col, reason = len(source), "unexpected end of expression"
        else:
            col, reason = origin[min(offset - 1, len(origin) - 1)], err.msg
        raise NnfeatError(f"bad objective expression {where(source, col)} ({shorten(reason, 100)})") from None
    except (RecursionError, MemoryError):
        raise NnfeatError(f"objective expression is nested too deeply: at most {MAX_DEPTH} levels "
                          "(brackets, signs and operators)") from None
    walker = _Walker(source, expanded, origin, units, calls, count, model)
    walker.check_depth(tree.body)
    value = walker.visit(tree.body)
    if not isinstance(value, _Term):
        kind = "a number" if isinstance(value, (int, float)) else "a string" if isinstance(value, str) else "a list"
        raise NnfeatError(f"objective expression '{shorten(source, 60)}' is {kind}, not an objective: "
                          "use units such as layer3:5 or a function such as channel(\"layer3\", 5)")
    return value.objective


def units_objective(units: Units, count: ChannelCount | None = None) -> Objective:
    """The objective a units string stands for: ``channel`` (mean over positions), or ``neuron`` with a position.

    ``count(layer)`` gives a layer's channel count, needed for "every channel" units.
    """
    channels = units.channels
    if channels is None:
        if count is None:
            raise NnfeatError(f"'{shorten(str(units), 60)}' means every channel of '{shorten(units.layer, 40)}': that "
                              f"needs the model (pass it to parse_objective), or list the channels, e.g. "
                              f"{shorten(units.layer, 40)}:0..15")
        channels = tuple(range(count(units.layer)))
    if units.position is None:
        return channel(units.layer, list(channels))
    x, y = units.xy
    return neuron(units.layer, list(channels), x=x, y=y)


def _channel_counter(model) -> ChannelCount | None:
    if model is None:
        return None

    def count(layer: str) -> int:
        model.check_layer(layer)
        return channel_count(tuple(model.layer_shapes([layer])[layer][1:]))

    return count


@dataclass(frozen=True)
class _Term:
    """An objective while it is being built: the product of the numbers multiplying it (``weight``, an upper
    bound on how much it scales the activations) and how many objectives are multiplied in it (``factors``)."""

    objective: Objective
    weight: float = 1.0
    factors: int = 1


def _describe(value) -> str:
    """What a walked value is, for error messages."""
    if isinstance(value, _Term):
        return f"the objective {shorten(value.objective.description, 40)}"
    if isinstance(value, str):
        return f"the string '{printable(shorten(value, 40))}'"
    if isinstance(value, list):
        return f"a list of {len(value)} number(s)"
    return f"the number {fmt_number(value)}"


_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


class _Walker:
    def __init__(self, source: str, expanded: str, origin: list[int], units: list[Units], calls: dict[int, int],
                 count: ChannelCount | None, model) -> None:
        self.source = source
        self.origin = origin
        self.units = units
        self.calls = calls
        self.count = count
        self.model = model
        # AST columns are UTF-8 byte offsets into the expanded text; this maps them to characters
        self.char_at: list[int] = []
        for i, ch in enumerate(expanded):
            self.char_at.extend([i] * len(ch.encode("utf-8", "surrogatepass")))
        self.char_at.append(len(expanded))

    def column(self, node: ast.AST) -> int:
        """The column of ``node`` in the expanded text (characters)."""
        offset = getattr(node, "col_offset", 0)
        return self.char_at[min(max(offset, 0), len(self.char_at) - 1)]

    def fail(self, node: ast.AST, message: str) -> NnfeatError:
        col = self.origin[min(self.column(node), len(self.origin) - 1)]
        return NnfeatError(f"bad objective expression {where(self.source, col)}: {message}")

    def check_depth(self, root: ast.AST) -> None:
        """Refuse trees deeper than :data:`MAX_DEPTH` before walking them (the walk recurses)."""
        stack = [(root, 1)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise self.fail(node, f"nested too deeply: at most {MAX_DEPTH} levels (brackets, signs and operators)")
            stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node)
                         if not isinstance(child, (ast.operator, ast.unaryop, ast.expr_context)))

    def number(self, node: ast.AST, value):
        """``value`` if it is a finite number within ±MAX_NUMBER, else the one-line error."""
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) <= MAX_NUMBER:
                return value
        elif isinstance(value, float) and math.isfinite(value) and abs(value) <= MAX_NUMBER:
            return value
        shown = fmt_number(value) if isinstance(value, float) else (
            f"of {len(str(abs(value)))} digits" if abs(value) < 10 ** 4000 else "of more than 4000 digits")
        raise self.fail(node, f"number {shown} is out of range: numbers must be finite and within "
                              f"-{MAX_NUMBER}..{MAX_NUMBER}")

    def weighted(self, node: ast.AST, objective: Objective, weight: float, factors: int) -> _Term:
        if factors > MAX_FACTORS:
            raise self.fail(node, f"a product of {factors} objectives: at most {MAX_FACTORS} objectives multiply "
                                  "each other")
        if not weight <= MAX_NUMBER:  # also catches nan
            raise self.fail(node, f"the numbers multiplying this objective multiply to {fmt_number(float(weight))}: "
                                  f"at most {MAX_NUMBER} (use smaller weights)")
        return _Term(objective, weight, factors)

    def visit(self, node: ast.AST):
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _SYMBOLS:
                raise self.fail(node, f"operator {type(node.op).__name__} is not allowed; use + - * /")
            return self.binop(node, self.visit(node.left), self.visit(node.right))
        if isinstance(node, ast.UnaryOp):
            value = self.visit(node.operand)
            if isinstance(node.op, (ast.USub, ast.UAdd)):
                sign = -1 if isinstance(node.op, ast.USub) else 1
                if isinstance(value, _Term):
                    objective = -value.objective if sign < 0 else value.objective
                    return _Term(objective, value.weight, value.factors)
                if is_number(value):
                    return sign * value
                raise self.fail(node, f"unary {'-' if sign < 0 else '+'} needs a number or an objective, not "
                                      f"{_describe(value)}")
            raise self.fail(node, "only unary - and + are allowed")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float, str)):
                raise self.fail(node, f"constant {shorten(repr(node.value), 40)} is not allowed; use numbers or strings")
            return self.number(node, node.value) if is_number(node.value) else node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            if len(node.elts) > MAX_CHANNELS:
                raise self.fail(node, f"a list of {len(node.elts)} entries: at most {MAX_CHANNELS}")
            values = [self.visit(e) for e in node.elts]
            if not all(is_number(v) for v in values):
                raise self.fail(node, "lists may hold numbers only")
            return values
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Attribute):
            raise self.fail(node, "attribute access is not allowed")
        if isinstance(node, ast.Name):
            hint = nearest(node.id, CONSTRUCTORS)
            more = f"; did you mean {hint[0]}(...)?" if hint else ""
            raise self.fail(node, f"unknown name '{shorten(node.id, 40)}': layers go in quotes or as "
                                  f"LAYER:CHANNEL{more}")
        raise self.fail(node, f"{type(node).__name__} is not allowed in an objective expression")

    def binop(self, node: ast.BinOp, left, right):
        symbol = _SYMBOLS[type(node.op)]
        for value in (left, right):
            if not (is_number(value) or isinstance(value, _Term)):
                raise self.fail(node, f"arithmetic needs numbers or objectives, not {_describe(value)}")
        if symbol == "/" and isinstance(right, _Term):
            raise self.fail(node, "dividing by an objective is not allowed (it is infinite where the objective is "
                                  "0): divide by a number")
        if symbol == "/" and right == 0:
            raise self.fail(node, "divided by zero: divide by a non-zero number")
        if not isinstance(left, _Term) and not isinstance(right, _Term):
            ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
            return self.number(node, ops[symbol](left, right))
        if isinstance(left, _Term) and isinstance(right, _Term):
            if symbol == "*":
                weight, factors = left.weight * right.weight, left.factors + right.factors
            else:
                weight, factors = max(left.weight, right.weight), max(left.factors, right.factors)
            objective = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}[symbol](
                left.objective, right.objective)
            return self.weighted(node, objective, weight, factors)
        term, number = (left, right) if isinstance(left, _Term) else (right, left)
        weight = term.weight
        if symbol == "*":
            weight = term.weight * abs(number)
        elif symbol == "/":
            weight = term.weight / abs(number)  # inf for a tiny divisor: refused below
        ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
        left_value = left.objective if isinstance(left, _Term) else left
        right_value = right.objective if isinstance(right, _Term) else right
        return self.weighted(node, ops[symbol](left_value, right_value), weight, term.factors)

    def call(self, node: ast.Call):
        if isinstance(node.func, ast.Attribute):
            raise self.fail(node.func, "attribute access is not allowed")
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, "only calls of objective functions are allowed")
        name = node.func.id
        if name == UNIT_CALL and self.column(node) in self.calls:
            return _Term(units_objective(self.units[self.calls[self.column(node)]], self.count))
        if name not in CONSTRUCTORS:
            hint = nearest(name, CONSTRUCTORS)
            extra = f"; did you mean {hint[0]}?" if hint else f"; known: {', '.join(sorted(CONSTRUCTORS))}"
            raise self.fail(node, f"unknown function '{shorten(name, 40)}'{extra}")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise self.fail(node, "* and ** arguments are not allowed")
        args = [self.visit(a) for a in node.args]
        kwargs = {k.arg: self.visit(k.value) for k in node.keywords}
        try:
            bound = inspect.signature(CONSTRUCTORS[name]).bind(*args, **kwargs)
        except TypeError as err:
            raise self.fail(node, f"bad arguments for {name}(): {shorten(str(err), 80)}; expected "
                                  f"{signature(name)}") from None
        for param, value in bound.arguments.items():
            expected = argument_check(CONSTRUCTORS[name], param)(value)
            if isinstance(value, _Term) and expected is None:
                expected = "a number"
            if expected is not None:
                unit = isinstance(value, _Term) and param == "layer"
                hint = " (a layer goes in quotes; LAYER:CHANNEL is a unit, an objective)" if unit else ""
                raise self.fail(node, f"argument '{param}' of {name}() must be {expected}; got "
                                      f"{_describe(value)}{hint}")
        layer = bound.arguments.get("layer", IMAGE if name in MAP_ONLY else None)
        if layer == IMAGE and name in ("neuron", "channel"):
            channels = bound.arguments["channel"]
            if any(c > 2 for c in (channels if isinstance(channels, list) else [channels])):
                raise self.fail(node, f"argument 'channel' of {name}() must be 0..2 for the image (RGB)")
        if name in MAP_ONLY:
            sigma = bound.arguments.get("sigma", 1.0) if MAP_ONLY[name] else None
            self.check_map(node, name, layer, sigma)
        try:
            return _Term(CONSTRUCTORS[name](*bound.args, **bound.kwargs))
        except (TypeError, ValueError, OverflowError, RuntimeError) as err:
            raise self.fail(node, f"bad arguments for {name}(): {shorten(str(err), 80)}") from None

    def check_map(self, node: ast.AST, name: str, layer: str, sigma) -> None:
        """With a model: ``total_variation``/``blur`` need a (B, C, H, W) map (and a blur smaller than it)."""
        if self.model is None:
            return
        if layer == IMAGE:
            height, width = self.model.input_size
        else:
            self.model.check_layer(layer)
            shape = tuple(self.model.layer_shapes([layer])[layer][1:])
            if len(shape) != 3:
                raise self.fail(node, f"{name}() needs a (B, C, H, W) map; layer '{shorten(layer, 40)}' has shape "
                                      f"(B, {', '.join(map(str, shape))})")
            height, width = shape[1:]
        side = min(height, width)
        if side < 2:
            raise self.fail(node, f"{name}() needs a map of at least 2x2; '{shorten(layer, 40)}' is {height}x{width}")
        if sigma is not None and max(1, math.ceil(2 * sigma)) >= side:  # the blur's reflect padding must fit
            raise self.fail(node, f"blur sigma {fmt_number(sigma)} is too large for the {height}x{width} map of "
                                  f"'{shorten(layer, 40)}': at most {fmt_number((side - 1) / 2)}")


__all__ = ["parse_objective", "units_objective", "MAX_LENGTH", "MAX_DEPTH", "MAX_NUMBER", "MAX_CHANNELS",
           "MAX_FACTORS", "MAX_LAYER_NAME"]
