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

A unit (``neuron``, ``channel``) that enters the objective with a negative sign (``-layer3:5``) is minimized on
its layer's pre-ReLU value where the layer's output comes from a ReLU (see :mod:`nnfeat.engine.objective`).

The pseudo-layer ``"image"`` is the parameterized image (B, 3, H, W) in [0,1] before the transforms.

This module is the whole vocabulary (and :data:`CONSTRUCTORS`, the names the expression grammar may call);
it defines the unit objectives and re-exports the :class:`Objective` type and its composition from
:mod:`nnfeat.engine.objective` and the regularizers from :mod:`nnfeat.engine.regularizers`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

# the Objective type, its composition and the regularizers, re-exported: this module is the vocabulary
from nnfeat.engine.objective import (Acts, Objective, ScoreFn, UnitRef, _BatchMasked, _fmt, _q,  # noqa: F401
                                     on_item, per_item, unit_activation)
from nnfeat.engine.regularizers import alignment, blur, diversity, l1, total_variation
from nnfeat.errors import NnfeatError, shorten
from nnfeat.layouts import IMAGE, OUTPUT, at_position, channels_first  # noqa: F401 - IMAGE: the pseudo-layer
from nnfeat.targets import EXAMPLES, parse_target, resolve_target, target_scores
from nnfeat.units import format_units


def _select_channels(view: torch.Tensor, channels: Sequence[int]) -> torch.Tensor:
    """(B, C, ...) and channel list of length 1 or B -> (B, ...) with item i's channel."""
    if len(channels) == 1:
        return view[:, channels[0]]
    if view.shape[0] != len(channels):
        raise NnfeatError(f"{len(channels)} channels given, one per batch item, but the batch has {view.shape[0]} items")
    index = torch.as_tensor(channels, device=view.device).view(-1, 1, *([1] * (view.dim() - 2)))
    return view.gather(1, index.expand(-1, 1, *view.shape[2:])).squeeze(1)


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
        return _select_channels(at_position(unit_activation(acts, layer), x, y), channels)

    if x is None and y is None:
        desc = f"neuron({_q(layer)}, {_chan_arg(channels)})"
    elif y is None:
        desc = format_units(layer, channels, (x,))
    elif x is not None:
        desc = format_units(layer, channels, (y, x))
    else:
        desc = f"neuron({_q(layer)}, {_chan_arg(channels)}, y={y})"
    return Objective(_batch_mask(fn, batch), [layer], _batch_desc(desc, batch),
                     [UnitRef(layer, channels, (y, x))], _units_batch(channels), unit_signs=[(layer, 1)])


def channel(layer: str, channel: int | Sequence[int], batch: int | None = None) -> Objective:
    """Mean over positions of ``layer[b, c]`` (one channel, or one channel per batch item)."""
    channels = _as_channels(channel)

    def fn(acts: Acts) -> torch.Tensor:
        return _select_channels(channels_first(unit_activation(acts, layer)), channels).mean(-1)

    desc = format_units(layer, channels) if batch is None else f"channel({_q(layer)}, {_chan_arg(channels)}, batch={batch})"
    return Objective(_batch_mask(fn, batch), [layer], desc, [UnitRef(layer, channels)], _units_batch(channels),
                     unit_signs=[(layer, 1)])


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

def target(target: str, batch: int | None = None) -> Objective:
    """The score of the network output that ``target`` names, in the target grammar saliency and uncertainty
    read (:mod:`nnfeat.targets`): ``"out:3"`` (class 3 of the dict output's ``out``; on a (B, K, H, W) map its
    sum over every pixel), ``"out:3@mask"`` (summed over the pixels class 3 wins), ``"out:3@8:24,16:40"`` (over
    a box of output pixels), ``"0:3"`` (element 0 of a tuple output), ``"value"`` / ``"head:value"`` (a
    regression output, (B,) or (B, 1)), ``"pred"`` (the predicted class).

    A mask or predicted class is found afresh from each step's output (no gradient flows through the choice);
    an image whose class wins no pixel yet (a render starting from noise) scores the class over its whole map.
    Class names are not looked up here: give a class index.

    Raises:
        NnfeatError: one line for a target the grammar does not read, or a class name.

    >>> target("out:3@mask").description
    'target("out:3@mask")'
    """
    parsed = parse_target(target)
    if isinstance(parsed.cls, str):
        raise NnfeatError(f"target(\"{target}\") names class '{parsed.cls}': an objective takes a class index "
                          f"(e.g. {EXAMPLES})")

    checked: list[bool] = []  # the class range is checked on the first call only: later steps run sync-free

    def fn(acts: Acts) -> torch.Tensor:
        output, check = acts[OUTPUT], not checked
        score = target_scores(output, resolve_target(output, parsed, empty_mask="all", check=check), check=check)
        if check:
            checked.append(True)
        return score

    return Objective(_batch_mask(fn, batch), [OUTPUT], _batch_desc(f'target("{target}")', batch))


def _as_vectors(vectors) -> torch.Tensor:
    vec = torch.as_tensor(vectors, dtype=torch.float32)
    if vec.dim() not in (1, 2):
        raise NnfeatError(f"direction must have shape (C,) or (B, C); got {tuple(vec.shape)}")
    return vec


def _chan_arg(channels: tuple[int, ...]) -> str:
    """Channels as an expression argument: ``5`` or ``[0, 1, 2]``."""
    return str(channels[0]) if len(channels) == 1 else "[" + ", ".join(map(str, channels)) + "]"


def _batch_desc(desc: str, batch: int | None) -> str:
    """``desc`` with a ``batch=i`` argument added before its closing parenthesis (descriptions stay expressions)."""
    if batch is None:
        return desc
    if desc.endswith(")"):
        return f"{desc[:-1]}, batch={batch})"
    return f"[{batch}] {desc}"


#: The constructors the expression grammar may call, by name.
CONSTRUCTORS: dict[str, Callable[..., Objective]] = {
    "neuron": neuron,
    "channel": channel,
    "deepdream": deepdream,
    "layer": deepdream,
    "direction": direction,
    "direction_neuron_cossim": direction_neuron_cossim,
    "logit": logit,
    "softmax": softmax,
    "target": target,
    "diversity": diversity,
    "alignment": alignment,
    "l1": l1,
    "total_variation": total_variation,
    "tv": total_variation,
    "blur": blur,
}
