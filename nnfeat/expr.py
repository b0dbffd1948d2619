"""The objective expression grammar used on the command line.

Examples::

    layer3:5                         channel 5 of layer3
    layer3.1.conv2:7                 dotted PyTorch names work
    -layer3:5                        minimize instead
    linear:3 - 0.5*diversity("layer2")
    neuron("layer3", 5, x=4, y=4)
    logit(3) + 2*softmax(3) / 4

``NAME:K`` is shorthand for ``channel("NAME", K)``. The expression is parsed with :mod:`ast` and walked
against a whitelist: numbers, strings, lists of numbers, ``+ - * /``, unary ``-``/``+`` and calls of the
constructors in :data:`nnfeat.objectives.CONSTRUCTORS`. Nothing is ever evaluated as Python; attribute
access, names, subscripts, lambdas and everything else are refused with a one-line error that shows
where the expression broke.
"""

from __future__ import annotations

import ast
import re

from nnfeat.errors import NnfeatError, nearest
from nnfeat.objectives import CONSTRUCTORS, Objective, channel

_SHORTHAND = re.compile(r"([A-Za-z_][\w.]*(?:#\d+)?):(\d+)")


def _expand_shorthand(text: str) -> tuple[str, list[int]]:
    """Rewrite ``NAME:K`` outside string literals as ``channel("NAME", K)``.

    Returns the new text and, for each of its characters, the column of the original text it came from.
    """
    out: list[str] = []
    origin: list[int] = []
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
        match = _SHORTHAND.match(text, i)
        if match and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_.")):
            repl = f'channel("{match.group(1)}", {match.group(2)})'
            out.extend(repl)
            origin.extend([i] * len(repl))
            i = match.end()
            continue
        out.append(ch)
        origin.append(i)
        i += 1
    origin.append(len(text))
    return "".join(out), origin


def _where(text: str, column: int) -> str:
    column = max(0, min(column, len(text)))
    return f"at column {column + 1}: {text[:column]}⟨here⟩{text[column:]}"


def parse_objective(text: str) -> Objective:
    """Parse an objective expression (see the module docstring) into an :class:`Objective`."""
    if not isinstance(text, str) or not text.strip():
        raise NnfeatError("empty objective expression: try e.g. 'layer3:5'")
    source = text.strip()
    expanded, origin = _expand_shorthand(source)
    try:
        tree = ast.parse(expanded, mode="eval")
    except SyntaxError as err:
        offset = err.offset or 0
        if offset < 1:  # Python reports no position when the input ends too early
            col, reason = len(source), "unexpected end of expression"
        else:
            col, reason = origin[min(offset - 1, len(origin) - 1)], err.msg
        raise NnfeatError(f"bad objective expression {_where(source, col)} ({reason})") from None
    return _Walker(source, origin).visit(tree.body)


class _Walker:
    def __init__(self, source: str, origin: list[int]) -> None:
        self.source = source
        self.origin = origin

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


__all__ = ["parse_objective", "channel"]
