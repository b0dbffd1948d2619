"""Activation layouts and layer references: the leaf module every stage shares (imports torch and nnfeat.errors only).

Layer references
    ``name`` (a dotted PyTorch module name), ``name#k`` (the k-th call, 0-based, of a module called
    several times in one pass, e.g. a shared ``ReLU``), ``name[i]`` (element i of a module that returns a
    tuple, e.g. ``nn.MultiheadAttention`` -> ``(output, weights)``; default element 0), both together as
    ``name#k[i]``; and two virtual layers: :data:`OUTPUT` (the network's output) and :data:`IMAGE` (the
    rendered image itself, for image penalties).

Activation layouts (the channel axis is found from the rank)
    * (B, C, H, W) convolutional maps: a position is (y, x);
    * (B, N, C) token sequences (ViT blocks): a position is the token index;
    * (B, C) vectors (logits): one position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch

from nnfeat.errors import NnfeatError

#: Virtual layer: the network's final output (logits); no hook is needed for it.
OUTPUT = "output"
#: Pseudo-layer: the parameterized image (B, 3, H, W) in [0, 1] before the transforms.
IMAGE = "image"

_REF = re.compile(r"^(?P<base>[^#\[\]]+?)(?:#(?P<call>\d+))?(?:\[(?P<element>\d+)\])?$")


@dataclass(frozen=True)
class LayerRef:
    """A parsed layer reference: module ``base``, its ``call`` (0-based) and the tuple ``element`` (0)."""

    base: str
    call: int = 0
    element: int = 0


def parse_layer_ref(layer: str) -> LayerRef:
    """``"relu#2"`` -> LayerRef("relu", 2, 0); ``"attn[1]"`` -> LayerRef("attn", 0, 1); ``"relu"`` -> call 0."""
    match = _REF.match(layer)
    if not match:
        raise NnfeatError(f"bad layer reference '{layer}': expected NAME, NAME#CALL, NAME[ELEMENT] or NAME#CALL[ELEMENT]")
    return LayerRef(match["base"], int(match["call"] or 0), int(match["element"] or 0))


def base_name(layer: str) -> str:
    """The module name of a layer reference, without ``#call`` and ``[element]``."""
    return parse_layer_ref(layer).base


def size2(size: int | Sequence[int]) -> tuple[int, int]:
    """``32`` -> (32, 32); ``(H, W)`` -> (H, W)."""
    if isinstance(size, int):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def check_activation(act: torch.Tensor) -> torch.Tensor:
    """``act`` unchanged if it has one of the supported layouts, else a one-line :class:`NnfeatError`."""
    if not torch.is_tensor(act) or act.dim() not in (2, 3, 4):
        shape = tuple(act.shape) if torch.is_tensor(act) else type(act).__name__
        raise NnfeatError(f"unsupported activation {shape}: expected (B,C,H,W) maps, (B,N,C) tokens or (B,C) vectors")
    return act


def channel_count(shape_wo_batch: Sequence[int]) -> int:
    """Channels of an activation shape without its batch axis: (C,H,W) -> C, (N,C) -> C, (C,) -> C."""
    shape = tuple(shape_wo_batch)
    if len(shape) == 3:
        return shape[0]
    return shape[-1] if shape else 1


def position_count(shape_wo_batch: Sequence[int]) -> int:
    """Positions of an activation shape without batch: (C,H,W) -> H*W, (N,C) -> N, (C,) -> 1."""
    shape = tuple(shape_wo_batch)
    if len(shape) == 3:
        return shape[1] * shape[2]
    return shape[0] if len(shape) == 2 else 1


def channels_first(act: torch.Tensor) -> torch.Tensor:
    """Any supported activation -> (B, C, P) with P the flattened positions (1 for vectors)."""
    act = check_activation(act)
    if act.dim() == 4:
        return act.flatten(2)
    if act.dim() == 3:
        return act.transpose(1, 2)
    return act.unsqueeze(-1)


def positions_view(act: torch.Tensor) -> torch.Tensor:
    """Any supported activation -> (B, P, C): maps give positions y*W+x; tokens (B,N,C) as they are; vectors P=1."""
    act = check_activation(act)
    if act.dim() == 4:
        return act.flatten(2).transpose(1, 2)
    if act.dim() == 3:
        return act
    return act.unsqueeze(1)


def at_position(act: torch.Tensor, x: int | None, y: int | None) -> torch.Tensor:
    """The vector at one position -> (B, C): maps at (y, x) (centre by default); tokens at token ``x``
    (the middle token by default); vectors as they are."""
    act = check_activation(act)
    if act.dim() == 4:
        h, w = act.shape[-2:]
        return act[:, :, h // 2 if y is None else y, w // 2 if x is None else x]
    if act.dim() == 3:
        n = act.shape[1]
        return act[:, n // 2 if x is None else x, :]
    return act


__all__ = ["OUTPUT", "IMAGE", "LayerRef", "parse_layer_ref", "base_name", "size2",
           "check_activation", "channel_count", "position_count", "channels_first", "positions_view", "at_position"]
