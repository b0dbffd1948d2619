"""The :class:`Objective` type: a differentiable score of activations, one value per batch item, and its algebra.

An objective maps the captured activations ``acts: {layer: Tensor}`` to a tensor of shape (B,): one score per
batch item, to be *maximized*. Objectives compose with ``+ - * /`` (with numbers and with each other) and unary
minus; :func:`on_item` and :func:`per_item` restrict them to batch items. The constructors live in
:mod:`nnfeat.engine.objectives` (units) and :mod:`nnfeat.engine.regularizers` (image priors, batch terms).

Minimized units read the pre-activation. The minimum of a unit after a ReLU is 0 (a flat image reaches it), so a
unit term (``channel``/``neuron``) that enters the objective with a negative sign -- ``-layer3:5``,
``-0.5*layer3:5``, ``x - layer3:5`` -- reads the input of the ReLU that made its layer's output, where the
capture found one (Lucid's ``*_pre_relu`` layers). The sign is tracked as objectives compose
(:attr:`Objective.unit_signs`; the factors of a product of objectives keep their own reading), and at evaluation
a negated part sees ``acts[NEGATED] = True``; :func:`unit_activation` then reads ``acts[pre_relu_key(layer)]``
when the capture put it there. A positive term, or a layer that is not a ReLU output, reads ``acts[layer]`` as
before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from nnfeat.errors import NnfeatError
from nnfeat.hooks import pre_relu_key
from nnfeat.layouts import IMAGE, OUTPUT, channel_count
from nnfeat.units import check_position

Acts = dict[str, torch.Tensor]
ScoreFn = Callable[[Acts], torch.Tensor]

#: The key of ``acts`` (a bool, not a tensor) that is True inside a negated part of an objective.
NEGATED = "(negated)"
#: The key of ``acts`` (a bool) that is True inside a factor of a product of objectives: units read as is there.
IN_PRODUCT = "(in product)"


def unit_activation(acts: Acts, layer: str) -> torch.Tensor:
    """The activation a unit term reads: ``layer``'s pre-ReLU value inside a negated part of an objective, where
    the capture found one (``acts[pre_relu_key(layer)]``), else ``acts[layer]``. Same shape either way."""
    if acts.get(NEGATED) and not acts.get(IN_PRODUCT):
        pre = acts.get(pre_relu_key(layer))
        if pre is not None:
            return pre
    return acts[layer]


def _negated_acts(acts: Acts) -> Acts:
    """``acts`` as a negated part sees them (``NEGATED`` flipped; the tensors are the same objects)."""
    return {**acts, NEGATED: not acts.get(NEGATED, False)}


def _plain_acts(acts: Acts) -> Acts:
    """``acts`` as a factor of a product of objectives sees them: its units read as is (a product's sign says
    nothing about its factors')."""
    return acts if acts.get(IN_PRODUCT) else {**acts, IN_PRODUCT: True}


def _flip(signs: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    return tuple((layer, -sign) for layer, sign in signs)


@dataclass(frozen=True)
class UnitRef:
    """A reference to channels (and maybe a position) of a layer, checked against the model before rendering."""

    layer: str
    channels: tuple[int, ...] = ()
    position: tuple[int | None, int | None] | None = None
    vector_length: int | None = None


class Objective:
    """A score per batch item, shape (B,), to maximize. Compose with ``+ - * /`` and unary ``-``.

    Args:
        fn: ``acts -> Tensor (B,)``.
        layers: the layers ``fn`` reads (hooks go on these only).
        description: a readable formula, used in outputs.
        units: channel/position references, validated before a render.
        batch_size: the batch this objective implies (e.g. 16 channels, one per item), or None.
        batch_items: the batch items that parts of it are restricted to (``batch=i`` of a constructor);
            a render needs at least ``max(batch_items) + 1`` items.
        unit_signs: ``(layer, +1 or -1)`` for each unit term (``channel``, ``neuron``), with the sign it enters
            the objective with; the ``-1`` layers are :attr:`minimized_layers` (see the module docstring).
    """

    def __init__(
        self,
        fn: ScoreFn,
        layers: Sequence[str],
        description: str,
        units: Sequence[UnitRef] = (),
        batch_size: int | None = None,
        batch_items: Sequence[int] = (),
        unit_signs: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.fn = fn
        own = (fn.item,) if isinstance(fn, _BatchMasked) else ()
        self.batch_items = tuple(sorted(set(batch_items) | set(own)))
        self.layers = tuple(dict.fromkeys(layers))
        self.description = description
        self.units = tuple(units)
        self.batch_size = batch_size
        self.unit_signs = tuple(unit_signs)

    def __call__(self, acts: Acts) -> torch.Tensor:
        return self.fn(acts)

    def __repr__(self) -> str:
        return f"Objective({self.description})"

    def __str__(self) -> str:
        return self.description

    @property
    def min_batch(self) -> int:
        """The smallest batch this objective works with: its unit count, else the highest ``batch=i`` + 1, else 1."""
        if self.batch_size is not None:
            return self.batch_size
        return self.batch_items[-1] + 1 if self.batch_items else 1

    @property
    def minimized_layers(self) -> tuple[str, ...]:
        """The model layers (not ``output``, not ``image``) with a unit term of negative sign: where the render reads
        the pre-activation if the layer's output comes from a ReLU."""
        return tuple(dict.fromkeys(layer for layer, sign in self.unit_signs
                                   if sign < 0 and layer not in (IMAGE, OUTPUT)))

    def _negated_fn(self) -> ScoreFn:
        """``acts -> self(acts)`` with the unit terms read as a negated part reads them (unchanged without any)."""
        return (lambda acts: self(_negated_acts(acts))) if self.unit_signs else self.fn

    @property
    def model_layers(self) -> tuple[str, ...]:
        """The layers that need a hook on the model (excludes the ``image`` pseudo-layer)."""
        return tuple(layer for layer in self.layers if layer != IMAGE)

    # -- composition -----------------------------------------------------------------------------
    def _combine(self, other: "Objective | float", op: Callable, symbol: str, reverse: bool = False) -> "Objective":
        if isinstance(other, Objective):
            left, right = (other, self) if reverse else (self, other)
            batch = _merge_batch(left.batch_size, right.batch_size)
            if symbol in ("*", "/") and (left.unit_signs or right.unit_signs):  # factors read their units as is
                fn, signs = (lambda acts: op(left(_plain_acts(acts)), right(_plain_acts(acts)))), ()
            elif symbol == "-":
                right_fn = right._negated_fn()
                fn, signs = (lambda acts: op(left(acts), right_fn(acts))), left.unit_signs + _flip(right.unit_signs)
            else:
                fn, signs = (lambda acts: op(left(acts), right(acts))), left.unit_signs + right.unit_signs
            return Objective(fn, left.layers + right.layers, f"{_paren(left)} {symbol} {_paren(right)}",
                             left.units + right.units, batch, left.batch_items + right.batch_items, signs)
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            number = float(other)
            desc = f"{_fmt(number)} {symbol} {_paren(self)}" if reverse else f"{_paren(self)} {symbol} {_fmt(number)}"
            # the objective enters negated in ``number - self``, ``self * -2``, ``-2 * self`` and ``self / -2``
            negated = (symbol == "-" and reverse) or (symbol in ("*", "/") and number < 0)
            own = self._negated_fn() if negated else self.fn
            fn = (lambda acts: op(number, own(acts))) if reverse else (lambda acts: op(own(acts), number))
            return Objective(fn, self.layers, desc, self.units, self.batch_size, self.batch_items,
                             _flip(self.unit_signs) if negated else self.unit_signs)
        return NotImplemented

    def __add__(self, other):
        return self._combine(other, torch.add, "+")

    def __radd__(self, other):
        return self._combine(other, torch.add, "+", reverse=True)

    def __sub__(self, other):
        return self._combine(other, lambda a, b: a - b, "-")

    def __rsub__(self, other):
        return self._combine(other, lambda a, b: a - b, "-", reverse=True)

    def __mul__(self, other):
        return self._combine(other, lambda a, b: a * b, "*")

    def __rmul__(self, other):
        return self._combine(other, lambda a, b: a * b, "*", reverse=True)

    def __truediv__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            raise NnfeatError("objective divided by zero: use a non-zero number")
        return self._combine(other, lambda a, b: a / b, "/")

    def __neg__(self) -> "Objective":
        own = self._negated_fn()
        return Objective(lambda acts: -own(acts), self.layers, f"-{_paren(self)}", self.units, self.batch_size,
                         self.batch_items, _flip(self.unit_signs))

    def __pos__(self) -> "Objective":
        return self

    # -- validation ------------------------------------------------------------------------------
    def validate(self, shapes: dict[str, torch.Size], batch: int) -> None:
        """Check every unit against the model's layer ``shapes`` (with batch 1) and the render ``batch``.

        Raises a one-line :class:`NnfeatError` naming the valid channel range or position range.
        """
        if self.batch_size is not None and self.batch_size != batch:
            raise NnfeatError(
                f"objective '{self.description}' has {self.batch_size} units (one per batch item) but batch is {batch}; "
                f"use batch {self.batch_size}"
            )
        if self.batch_items and self.batch_items[-1] >= batch:
            raise NnfeatError(
                f"objective '{self.description}' uses batch item {self.batch_items[-1]} but the batch has {batch} "
                f"item(s): use batch {self.batch_items[-1] + 1} or more"
            )
        for unit in self.units:
            if unit.layer == IMAGE:
                continue
            if unit.layer not in shapes:
                part = 'target("KEY:3")' if unit.layer == OUTPUT else "a layer inside it"
                raise NnfeatError(f"objective '{self.description}' reads channels of '{unit.layer}', which is not a "
                                  f"tensor (a dict or tuple output): name the part with {part}")
            shape = tuple(shapes[unit.layer][1:])
            n_channels = channel_count(shape)
            for c in unit.channels:
                if not 0 <= c < n_channels:
                    raise NnfeatError(
                        f"channel {c} out of range for layer '{unit.layer}': valid channels are 0..{n_channels - 1}"
                    )
            if unit.vector_length is not None and unit.vector_length != n_channels:
                raise NnfeatError(
                    f"direction for layer '{unit.layer}' has length {unit.vector_length}; the layer has {n_channels} channels"
                )
            if unit.position is not None:
                _check_position(unit.layer, shape, unit.position)


def _check_position(layer: str, shape: tuple[int, ...], position: tuple[int | None, int | None]) -> None:
    """``(y, x)`` of a neuron (None: the centre) checked with the unit grammar's rule for this layout."""
    y, x = position
    if len(shape) == 3:
        check_position(layer, shape, (y, x))
    elif len(shape) == 2:
        check_position(layer, shape, (x,))


def _merge_batch(a: int | None, b: int | None) -> int | None:
    if a is not None and b is not None and a != b:
        raise NnfeatError(f"cannot combine objectives with {a} and {b} units per batch: use the same count")
    return a if a is not None else b


def _fmt(number: float) -> str:
    return f"{number:g}"


def _paren(obj: Objective) -> str:
    d = obj.description
    return f"({d})" if any(s in d for s in (" + ", " - ", " * ", " / ")) else d


def _q(layer: str) -> str:
    """A layer name as a quoted expression argument."""
    return f'"{layer}"'


class _BatchMasked:
    """``fn`` restricted to batch item ``item``: ``acts -> (B,)``, zero except at ``item``.

    The one-hot mask is built once per (shape, dtype, device) and reused, not allocated every step."""

    def __init__(self, fn: ScoreFn, item: int) -> None:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise NnfeatError(f"batch must be a batch item index 0, 1, ...; got {item!r}")
        self.fn, self.item = fn, item
        self._masks: dict[tuple, torch.Tensor] = {}

    def __call__(self, acts: Acts) -> torch.Tensor:
        values = self.fn(acts)
        key = (tuple(values.shape), values.dtype, values.device)
        mask = self._masks.get(key)
        if mask is None:
            mask = torch.zeros(values.shape, dtype=values.dtype, device=values.device)
            mask[self.item] = 1.0
            self._masks[key] = mask
        return values * mask


def on_item(objective: Objective, item: int) -> Objective:
    """``objective`` restricted to batch item ``item`` (zero for every other item): (B,) -> (B,)."""
    return Objective(_BatchMasked(objective.fn, item), objective.layers, f"[{item}] {_paren(objective)}",
                     objective.units, objective.batch_size, objective.batch_items, objective.unit_signs)


def per_item(objectives: Sequence[Objective]) -> Objective:
    """Different objectives in one render: item i maximizes ``objectives[i]`` only (one forward pass for all).

    Each term is evaluated on the whole batch (vectorized) and masked to its item, so the cost is one small
    reduction per objective, not a forward pass per item. For one objective kind over many units, prefer a
    unit list (``channel("layer3", [0, 1, 2])``), which is a single gather.
    """
    objectives = list(objectives)
    if not objectives:
        raise NnfeatError("per_item needs at least one objective")
    total = on_item(objectives[0], 0)
    for i, objective in enumerate(objectives[1:], start=1):
        total = total + on_item(objective, i)
    total.batch_size = len(objectives)
    total.description = f"{len(objectives)} objectives, one per batch item"
    return total
