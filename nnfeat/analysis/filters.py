"""Convolution filters as pictures: tensors in, tensors out (drawn by :mod:`nnfeat.views.filters_page`).

A weight ``w`` becomes a value in [0, 1] by one **symmetric** rule, so zero is always exactly mid-grey and a
weight's sign reads the same in every tile::

    value = w / (2 * m) + 0.5        (m = max |w| over the layer, or over the filter with scale="filter")

so ``-m`` -> 0 (black), ``0`` -> 0.5 (mid-grey), ``+m`` -> 1 (white). A first convolution that reads RGB is shown
as one RGB tile per filter (its three input channels are the red, green and blue of the tile: a filter that
adds red looks red, one that subtracts red looks cyan); deeper layers as one **grey** tile per input channel,
by the same rule (grey was chosen over a blue-white-red map because it keeps zero at exactly 0.5 with no colour
table, and it reads the same as each channel of the RGB tiles). Grouped and depthwise convolutions work as they
are stored: a filter has ``in_channels / groups`` input channels.

This is the classic first-layer picture of Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep
Convolutional Neural Networks" (NeurIPS 2012), Fig. 3, with the signed, zero-centred scale made explicit.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from nnfeat.errors import NnfeatError, nearest
from nnfeat.hooks import layer_root
from nnfeat.layouts import parse_layer_ref

SCALES = ("layer", "filter")
#: the colour of the 1-px gutter between the input-channel tiles of one filter (no weight maps to it)
GUTTER = (1.0, 0.8, 0.3)


def conv_layers(model: nn.Module) -> list[str]:
    """The dotted names of every 2-D convolution (``nn.Conv2d`` and its subclasses) of ``model``, in module
    order (for an nnfeat ``Model``: names inside its network)."""
    return [name for name, m in layer_root(model).named_modules() if name and isinstance(m, nn.Conv2d)]


def _conv_hint(name: str, convs: Sequence[str]) -> str:
    near = nearest(name, convs) or list(convs[:3])
    more = f" ({len(convs)} in all)" if len(convs) > len(near) else ""
    return f"conv layers: {', '.join(near)}{more}"


def find_conv(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Conv2d]:
    """(name, module) of the convolution ``layer`` names (``#call``/``[element]`` suffixes ignored: the weights
    are the same for every call), default the first ``nn.Conv2d`` in module order.

    One-line errors: a model without convolutions; an unknown name or a module that is not a 2-D convolution
    (a Linear, a block, a ReLU), naming the nearest conv layers.
    """
    convs = conv_layers(model)
    if not convs:
        raise NnfeatError(f"model '{getattr(model, 'name', type(model).__name__)}' has no 2-D convolution: "
                          "filters shows nn.Conv2d weights")
    if layer is None:
        name = convs[0]
    else:
        name = parse_layer_ref(layer).base
    modules = dict(layer_root(model).named_modules())
    if name not in modules:
        raise NnfeatError(f"unknown layer '{layer}'; {_conv_hint(name, convs)} (see `nnfeat layers MODEL`)")
    module = modules[name]
    if not isinstance(module, nn.Conv2d):
        raise NnfeatError(f"layer '{name}' ({type(module).__name__}) is not a 2-D convolution: filters shows "
                          f"conv weights; {_conv_hint(name, convs)}")
    return name, module


def conv_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The filters of ``conv`` as a float32 CPU tensor (O, I / groups, kh, kw), detached."""
    return conv.weight.detach().float().cpu()


def filter_bounds(weight: torch.Tensor, scale: str = "layer") -> torch.Tensor:
    """(O, I, kh, kw) -> (O,) the ``m`` of each filter's scale: max |w| over the whole layer (``layer``,
    the same number for every filter) or over each filter (``filter``). An all-zero layer or filter gets 0."""
    if scale not in SCALES:
        raise NnfeatError(f"unknown scale '{scale}': use {' or '.join(SCALES)}")
    per_filter = weight.abs().flatten(1).amax(1)
    return per_filter.amax().expand_as(per_filter).clone() if scale == "layer" else per_filter


def signed_unit(weight: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """(O, ...) weights and (O,) bounds -> values in [0, 1]: ``w / (2 m) + 0.5`` (0 -> exactly 0.5; an all-zero
    filter, m = 0, is all 0.5)."""
    m = bounds.float().reshape(-1, *([1] * (weight.dim() - 1)))
    m = torch.where(m > 0, m, torch.ones_like(m))
    return (weight.float() / (2 * m) + 0.5).clamp_(0, 1)


def filter_tiles(weight: torch.Tensor, scale: str = "layer") -> torch.Tensor:
    """RGB tiles of first-layer filters: (O, 3, kh, kw) weights -> (O, 3, kh, kw) in [0, 1], input channel c as
    colour channel c, by the symmetric rule of the module docstring."""
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise NnfeatError(f"RGB filter tiles need weights of shape (O, 3, kh, kw); got {tuple(weight.shape)}: "
                          "use per-input-channel tiles")
    return signed_unit(weight, filter_bounds(weight, scale))


def channel_tiles(weight: torch.Tensor, scale: str = "layer") -> torch.Tensor:
    """Grey tiles, one per (filter, input channel): (O, I, kh, kw) -> (O, I, kh, kw) in [0, 1], zero exactly
    0.5, by the symmetric rule of the module docstring."""
    if weight.dim() != 4:
        raise NnfeatError(f"conv weights have shape (O, I, kh, kw); got {tuple(weight.shape)}")
    return signed_unit(weight, filter_bounds(weight, scale))


def channel_mosaic(tiles: torch.Tensor, ncol: int | None = None, gutter: Sequence[float] = GUTTER,
                   zoom: int | None = None) -> torch.Tensor:
    """Each filter's grey input-channel tiles as one RGB picture: (O, I, kh, kw) -> (O, 3, R*(z*kh+1)-1,
    C*(z*kw+1)-1), channel i at row i // C, column i % C (C = ``ncol``, default ceil(sqrt(I))), each tile
    enlarged ``zoom`` times (nearest; default: to about 8 px) and separated by a 1-px ``gutter`` colour (also
    the colour of unused cells)."""
    zoom = max(1, zoom or 8 // max(tiles.shape[-2:]))
    tiles = tiles.repeat_interleave(zoom, -2).repeat_interleave(zoom, -1)
    o, i, kh, kw = tiles.shape
    ncol = max(1, min(i, ncol or math.ceil(math.sqrt(i))))
    nrow = math.ceil(i / ncol)
    grid = torch.full((o, nrow * ncol, kh + 1, kw + 1), -1.0, dtype=torch.float32)  # -1 marks the gutter
    grid[:, :i, :kh, :kw] = tiles.float()
    grid = grid.view(o, nrow, ncol, kh + 1, kw + 1).permute(0, 1, 3, 2, 4).reshape(o, nrow * (kh + 1), ncol * (kw + 1))
    grid = grid[:, :-1, :-1]
    rgb = grid.unsqueeze(1).expand(-1, 3, -1, -1).clone()
    colour = torch.tensor(list(gutter), dtype=torch.float32).view(1, 3, 1, 1).expand_as(rgb)
    return torch.where((grid < 0).unsqueeze(1).expand_as(rgb), colour, rgb)


def filter_stats(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """(O, I, kh, kw) -> ``{"max_abs": (O,), "norm": (O,)}``: each filter's largest |w| and its L2 norm."""
    flat = weight.float().flatten(1)
    return {"max_abs": flat.abs().amax(1), "norm": flat.norm(dim=1)}


def input_channel_offsets(conv: nn.Conv2d) -> torch.Tensor:
    """(O,) the first input channel of the layer input each filter reads (its group's start; 0 unless grouped)."""
    per_group_out = conv.out_channels // conv.groups
    per_group_in = conv.in_channels // conv.groups
    return torch.arange(conv.out_channels) // per_group_out * per_group_in


__all__ = ["SCALES", "GUTTER", "conv_layers", "find_conv", "conv_weight", "filter_bounds", "signed_unit",
           "filter_tiles", "channel_tiles", "channel_mosaic", "filter_stats", "input_channel_offsets"]
