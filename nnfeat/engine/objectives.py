"""Objectives: differentiable scores of activations, one value per batch item.

An :class:`Objective` maps the captured activations ``acts: {layer: Tensor}`` to a tensor of shape (B,):
one score per batch item, to be *maximized*. Objectives compose with ``+ - * /`` (with numbers and with
each other) and unary minus, so ``channel("layer3", 5) - 0.05 * total_variation()`` is an objective.
``render`` maximizes the sum over the batch, so each item follows its own score.

Activation layouts understood by every constructor (the channel axis is found from the rank):

* (B, C, H, W) convolutional maps; "position" means (y, x).
* (B, N, C) token sequences, e.g. ViT blocks; "position" means the token index ``x``.
* (B, C) vectors, e.g. logits.

Units can differ per batch item: ``channel("layer3", [0, 1, 2, 3])`` asks item i for channel i, so one
forward pass renders one unit per batch item. ``batch=i`` restricts an objective to item i.

Sign conventions follow Lucid: ``l1``, ``total_variation`` and ``blur`` return positive *penalties*
(subtract them); ``diversity`` and ``alignment`` return rewards (add them).

The pseudo-layer ``"image"`` is the parameterized image (B, 3, H, W) in [0,1] before the transforms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from nnfeat.errors import NnfeatError, shorten
from nnfeat.imageops import gaussian_blur
from nnfeat.layouts import IMAGE, OUTPUT, at_position, channel_count, channels_first
from nnfeat.units import check_position, format_units

Acts = dict[str, torch.Tensor]
ScoreFn = Callable[[Acts], torch.Tensor]


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
    """

    def __init__(
        self,
        fn: ScoreFn,
        layers: Sequence[str],
        description: str,
        units: Sequence[UnitRef] = (),
        batch_size: int | None = None,
        batch_items: Sequence[int] = (),
    ) -> None:
        self.fn = fn
        own = (fn.item,) if isinstance(fn, _BatchMasked) else ()
        self.batch_items = tuple(sorted(set(batch_items) | set(own)))
        self.layers = tuple(dict.fromkeys(layers))
        self.description = description
        self.units = tuple(units)
        self.batch_size = batch_size

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
    def model_layers(self) -> tuple[str, ...]:
        """The layers that need a hook on the model (excludes the ``image`` pseudo-layer)."""
        return tuple(layer for layer in self.layers if layer != IMAGE)

    # -- composition -----------------------------------------------------------------------------
    def _combine(self, other: "Objective | float", op: Callable, symbol: str, reverse: bool = False) -> "Objective":
        if isinstance(other, Objective):
            left, right = (other, self) if reverse else (self, other)
            batch = _merge_batch(left.batch_size, right.batch_size)
            return Objective(
                lambda acts: op(left(acts), right(acts)),
                left.layers + right.layers,
                f"{_paren(left)} {symbol} {_paren(right)}",
                left.units + right.units,
                batch,
                left.batch_items + right.batch_items,
            )
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            number = float(other)
            desc = f"{_fmt(number)} {symbol} {_paren(self)}" if reverse else f"{_paren(self)} {symbol} {_fmt(number)}"
            fn = (lambda acts: op(number, self(acts))) if reverse else (lambda acts: op(self(acts), number))
            return Objective(fn, self.layers, desc, self.units, self.batch_size, self.batch_items)
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
        return Objective(lambda acts: -self(acts), self.layers, f"-{_paren(self)}", self.units, self.batch_size,
                         self.batch_items)

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


def _select_channels(view: torch.Tensor, channels: Sequence[int]) -> torch.Tensor:
    """(B, C, ...) and channel list of length 1 or B -> (B, ...) with item i's channel."""
    if len(channels) == 1:
        return view[:, channels[0]]
    if view.shape[0] != len(channels):
        raise NnfeatError(f"{len(channels)} channels given, one per batch item, but the batch has {view.shape[0]} items")
    index = torch.as_tensor(channels, device=view.device).view(-1, 1, *([1] * (view.dim() - 2)))
    return view.gather(1, index.expand(-1, 1, *view.shape[2:])).squeeze(1)


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


def _batch_mask(fn: ScoreFn, batch: int | None) -> ScoreFn:
    return fn if batch is None else _BatchMasked(fn, batch)


def _as_channels(channel: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(channel, bool):
        raise NnfeatError("channel must be an integer")
    if isinstance(channel, int):
        return (channel,)
    if torch.is_tensor(channel):
        return tuple(int(c) for c in channel.flatten().tolist())
    values = list(channel)
    try:
        whole = all(not isinstance(c, bool) and float(c).is_integer() for c in values)
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise NnfeatError(f"channels must be whole numbers; got {shorten(str(values))}")
    channels = tuple(int(c) for c in values)
    if not channels:
        raise NnfeatError("empty channel list: give at least one channel")
    return channels


def _units_batch(channels: tuple[int, ...]) -> int | None:
    return len(channels) if len(channels) > 1 else None


# ---------------------------------------------------------------------------------------------------
# Constructors


def neuron(layer: str, channel: int | Sequence[int], x: int | None = None, y: int | None = None,
           batch: int | None = None) -> Objective:
    """``layer[b, c, y, x]``; position defaults to the centre. For tokens (B,N,C), ``x`` is the token index."""
    channels = _as_channels(channel)

    def fn(acts: Acts) -> torch.Tensor:
        return _select_channels(at_position(acts[layer], x, y), channels)

    if x is None and y is None:
        desc = f"neuron({_q(layer)}, {_chan_arg(channels)})"
    elif y is None:
        desc = format_units(layer, channels, (x,))
    elif x is not None:
        desc = format_units(layer, channels, (y, x))
    else:
        desc = f"neuron({_q(layer)}, {_chan_arg(channels)}, y={y})"
    return Objective(_batch_mask(fn, batch), [layer], _batch_desc(desc, batch),
                     [UnitRef(layer, channels, (y, x))], _units_batch(channels))


def channel(layer: str, channel: int | Sequence[int], batch: int | None = None) -> Objective:
    """Mean over positions of ``layer[b, c]`` (one channel, or one channel per batch item)."""
    channels = _as_channels(channel)

    def fn(acts: Acts) -> torch.Tensor:
        return _select_channels(channels_first(acts[layer]), channels).mean(-1)

    desc = format_units(layer, channels) if batch is None else f"channel({_q(layer)}, {_chan_arg(channels)}, batch={batch})"
    return Objective(_batch_mask(fn, batch), [layer], desc, [UnitRef(layer, channels)], _units_batch(channels))


def deepdream(layer: str, batch: int | None = None) -> Objective:
    """Mean of ``layer**2`` per item (DeepDream, the "layer" objective)."""

    def fn(acts: Acts) -> torch.Tensor:
        return acts[layer].flatten(1).pow(2).mean(1)

    return Objective(_batch_mask(fn, batch), [layer], _batch_desc(f"deepdream({_q(layer)})", batch), [UnitRef(layer)])


layer_objective = deepdream


def direction(layer: str, vectors: torch.Tensor | Sequence[float], batch: int | None = None) -> Objective:
    """Dot product with a direction along the channel axis, averaged over positions.

    ``vectors``: (C,) for one direction, or (B, C) for one direction per batch item.
    """
    vec = _as_vectors(vectors)

    def fn(acts: Acts) -> torch.Tensor:
        view = channels_first(acts[layer])  # (B, C, S)
        v = vec.to(view.device, view.dtype)
        return (view * v.unsqueeze(-1)).sum(1).mean(-1)

    return Objective(_batch_mask(fn, batch), [layer], f"direction({_q(layer)}, <{vec.shape[-1]}-vector>)",
                     [UnitRef(layer, vector_length=vec.shape[-1])], vec.shape[0] if vec.dim() == 2 else None)


def direction_neuron_cossim(layer: str, vectors: torch.Tensor | Sequence[float], x: int | None = None,
                            y: int | None = None, cossim_pow: float = 2.0, batch: int | None = None) -> Objective:
    """Activation Atlas icon objective at one position (centre by default): ``dot * max(cos, 0.1) ** p``.

    With ``h`` (B,C) the activation at the position and ``v`` (C,) or (B,C) the direction:
    ``dot = mean_c(h * v)``, ``cos = dot / (1e-4 + |h|)`` (Carter et al., "Activation Atlas", Distill 2019). Whitening, if any, is applied to
    ``v`` by the caller.
    """
    vec = _as_vectors(vectors)

    def fn(acts: Acts) -> torch.Tensor:
        h = at_position(acts[layer], x, y)
        v = vec.to(h.device, h.dtype)
        dot = (h * v).mean(-1)
        cos = (dot / (1e-4 + h.norm(dim=-1))).clamp_min(0.1)
        return dot * cos.pow(cossim_pow)

    return Objective(_batch_mask(fn, batch), [layer],
                     f"direction_neuron_cossim({_q(layer)}, <{vec.shape[-1]}-vector>, cossim_pow={_fmt(cossim_pow)})",
                     [UnitRef(layer, position=(y, x), vector_length=vec.shape[-1])],
                     vec.shape[0] if vec.dim() == 2 else None)


def logit(cls: int | Sequence[int], batch: int | None = None) -> Objective:
    """The network output (logit) of class ``cls`` (or one class per batch item)."""
    obj = channel(OUTPUT, cls, batch)
    obj.description = _batch_desc(f"logit({_chan_arg(_as_channels(cls))})", batch)
    return obj


def softmax(cls: int | Sequence[int], batch: int | None = None) -> Objective:
    """The softmax probability of class ``cls`` (or one class per batch item)."""
    classes = _as_channels(cls)

    def fn(acts: Acts) -> torch.Tensor:
        return _select_channels(torch.softmax(acts[OUTPUT].flatten(1), dim=1), classes)

    return Objective(_batch_mask(fn, batch), [OUTPUT], _batch_desc(f"softmax({_chan_arg(classes)})", batch),
                     [UnitRef(OUTPUT, classes)], _units_batch(classes))


def diversity(layer: str, group: int | None = None) -> Objective:
    """Reward for batch items that differ in style: ``-(mean cosine similarity of item i's Gram matrix with the others)``
    (Olah et al. 2017, "Feature Visualization"; Lucid weighs it about 1e2 against a channel objective).

    ``group``: compare each item only with the others of its block of ``group`` consecutive items (B must be a
    multiple of ``group``), so several units' diversity renders share one batch: items 0..g-1 are one unit's, g..2g-1
    the next one's. Needs at least 2 items per block. Gram matrices (B, C, C) from activations (B, C, S).
    """

    def fn(acts: Acts) -> torch.Tensor:
        view = channels_first(acts[layer])  # (B, C, S)
        b = view.shape[0]
        g = b if group is None else group
        if g < 2 or b < 2:
            raise NnfeatError("diversity needs a batch of at least 2 images: use --batch 2 or more")
        if b % g:
            raise NnfeatError(f"diversity(group={g}) needs a batch that is a multiple of {g}; got {b}")
        gram = torch.bmm(view, view.transpose(1, 2)).flatten(1) / view.shape[-1]
        gram = F.normalize(gram, dim=1).view(b // g, g, -1)
        sim = torch.bmm(gram, gram.transpose(1, 2))  # (B/g, g, g)
        off_diagonal = sim.sum(2) - sim.diagonal(dim1=1, dim2=2)
        return (-off_diagonal / (g - 1)).flatten()

    desc = f"diversity({_q(layer)})" if group is None else f"diversity({_q(layer)}, group={group})"
    return Objective(fn, [layer], desc, [UnitRef(layer)])


def alignment(layer: str, decay_ratio: float = 2.0, max_distance: int = 4) -> Objective:
    """Reward for neighbouring batch items having similar activations (for interpolations).

    ``-sum_d sum_i mean((a_i - a_{i+d})**2) / decay_ratio**d`` for d = 1..max_distance, shared equally by the items.
    """

    def fn(acts: Acts) -> torch.Tensor:
        act = acts[layer].flatten(1)
        b = act.shape[0]
        total = act.new_zeros(())
        for d in range(1, min(max_distance, b - 1) + 1):  # a loop over distances, not over batch items
            total = total + (act[d:] - act[:-d]).pow(2).mean(1).sum() / decay_ratio**d
        return (-total / b).expand(b)

    extra = "" if (decay_ratio, max_distance) == (2.0, 4) else f", {_fmt(decay_ratio)}, {int(max_distance)}"
    return Objective(fn, [layer], f"alignment({_q(layer)}{extra})", [UnitRef(layer)])


def l1(constant: float = 0.5, layer: str = IMAGE) -> Objective:
    """Penalty ``mean |x - constant|`` per item (default: the image, toward grey 0.5). Subtract it."""

    def fn(acts: Acts) -> torch.Tensor:
        return (acts[layer] - constant).abs().flatten(1).mean(1)

    return Objective(fn, [layer], f"l1({_fmt(constant)}, {_q(layer)})" if layer != IMAGE else (
        "l1()" if constant == 0.5 else f"l1({_fmt(constant)})"), [UnitRef(layer)])


def total_variation(layer: str = IMAGE) -> Objective:
    """Penalty: mean absolute difference of neighbouring pixels per item. Subtract it."""

    def fn(acts: Acts) -> torch.Tensor:
        img = acts[layer]
        dy = (img[..., 1:, :] - img[..., :-1, :]).abs().flatten(1).mean(1)
        dx = (img[..., :, 1:] - img[..., :, :-1]).abs().flatten(1).mean(1)
        return dx + dy

    return Objective(fn, [layer], "total_variation()" if layer == IMAGE else f"total_variation({_q(layer)})",
                     [UnitRef(layer)])


def blur(layer: str = IMAGE, sigma: float = 1.0) -> Objective:
    """Penalty ``0.5 * mean((x - stop_grad(blur(x)))**2)``: its gradient pulls the image toward its own blur."""
    def fn(acts: Acts) -> torch.Tensor:
        img = acts[layer]
        blurred = gaussian_blur(img.detach(), sigma)
        return 0.5 * (img - blurred).pow(2).flatten(1).mean(1)

    return Objective(fn, [layer], "blur()" if (layer, sigma) == (IMAGE, 1.0) else f"blur({_q(layer)}, {_fmt(sigma)})",
                     [UnitRef(layer)])


def _as_vectors(vectors) -> torch.Tensor:
    vec = torch.as_tensor(vectors, dtype=torch.float32)
    if vec.dim() not in (1, 2):
        raise NnfeatError(f"direction must have shape (C,) or (B, C); got {tuple(vec.shape)}")
    return vec


def _chan_arg(channels: tuple[int, ...]) -> str:
    """Channels as an expression argument: ``5`` or ``[0, 1, 2]``."""
    return str(channels[0]) if len(channels) == 1 else "[" + ", ".join(map(str, channels)) + "]"


def _q(layer: str) -> str:
    return f'"{layer}"'


def _batch_desc(desc: str, batch: int | None) -> str:
    """``desc`` with a ``batch=i`` argument added before its closing parenthesis (descriptions stay expressions)."""
    if batch is None:
        return desc
    if desc.endswith(")"):
        return f"{desc[:-1]}, batch={batch})"
    return f"[{batch}] {desc}"


#: The constructors the expression grammar may call, by name.
def on_item(objective: Objective, item: int) -> Objective:
    """``objective`` restricted to batch item ``item`` (zero for every other item): (B,) -> (B,)."""
    return Objective(_BatchMasked(objective.fn, item), objective.layers, f"[{item}] {_paren(objective)}",
                     objective.units, objective.batch_size, objective.batch_items)


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


CONSTRUCTORS: dict[str, Callable[..., Objective]] = {
    "neuron": neuron,
    "channel": channel,
    "deepdream": deepdream,
    "layer": deepdream,
    "direction": direction,
    "direction_neuron_cossim": direction_neuron_cossim,
    "logit": logit,
    "softmax": softmax,
    "diversity": diversity,
    "alignment": alignment,
    "l1": l1,
    "total_variation": total_variation,
    "tv": total_variation,
    "blur": blur,
}
