"""Activation heatmaps: where in an image a layer's channels respond (tensors in, tensors out).

* :func:`layer_maps` -- one batched forward pass, stopped at the layer: (B, C, h, w) maps (token layers
  folded onto their patch grid by :func:`nnfeat.analysis.tokens.fold_tokens`);
* :func:`heatmaps` -- the maps of some channels (``reduce="channels"``), or their sum or L2 norm over the
  channels (one map each);
* :func:`strongest_channels` -- channels ordered by their mean activation over the batch;
* :func:`upsample` -- bilinear to input resolution;
* :func:`color_scale`, :func:`colorize`, :func:`overlay` -- one colour scale per figure (or per map),
  a built-in viridis-like table for one-signed maps and a blue-white-red table, symmetric around 0,
  for signed ones; no matplotlib.

No Python loop runs over images or channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnfeat.analysis.tokens import fold_tokens, token_grid
from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.layouts import size2

REDUCES = ("channels", "sum", "norm")
SCALES = ("figure", "per-map")

# -- colour tables ------------------------------------------------------------------------------------
_VIRIDIS_ANCHORS = [  # (position, r, g, b): a viridis-like dark-violet -> teal -> yellow ramp
    (0.000, 0.267, 0.005, 0.329), (0.125, 0.283, 0.141, 0.458), (0.250, 0.254, 0.265, 0.530),
    (0.375, 0.207, 0.372, 0.553), (0.500, 0.164, 0.471, 0.558), (0.625, 0.128, 0.567, 0.551),
    (0.750, 0.135, 0.659, 0.518), (0.875, 0.267, 0.749, 0.441), (0.940, 0.560, 0.830, 0.270),
    (1.000, 0.993, 0.906, 0.144)]
_SIGNED_ANCHORS = [  # blue -> white -> red, white at the middle (0)
    (0.0, 0.230, 0.299, 0.754), (0.25, 0.552, 0.690, 0.996), (0.5, 0.970, 0.970, 0.970),
    (0.75, 0.957, 0.604, 0.482), (1.0, 0.706, 0.016, 0.150)]


def _table(anchors, n: int = 256) -> torch.Tensor:
    pos = torch.tensor([a[0] for a in anchors], dtype=torch.float64)
    rgb = torch.tensor([a[1:] for a in anchors], dtype=torch.float64)
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    hi = torch.searchsorted(pos, t, right=False).clamp(1, len(pos) - 1)
    lo = hi - 1
    frac = ((t - pos[lo]) / (pos[hi] - pos[lo])).unsqueeze(1)
    return (rgb[lo] * (1 - frac) + rgb[hi] * frac).float()


#: (256, 3) colour tables in [0, 1]
COLORMAPS = {"viridis": _table(_VIRIDIS_ANCHORS), "signed": _table(_SIGNED_ANCHORS)}


# -- maps ---------------------------------------------------------------------------------------------
def spatial_maps(act: torch.Tensor, model: nn.Module, input_size: Sequence[int], layer: str = "layer") -> torch.Tensor:
    """An activation as (B, C, h, w): maps as they are, tokens folded onto their grid; vectors are an error."""
    if act.dim() == 4:
        return act
    if act.dim() == 3:
        return fold_tokens(act, model, input_size)
    raise no_spatial_map(layer, tuple(act.shape[1:]))


def no_spatial_map(layer: str, shape_wo_batch: Sequence[int]) -> NnfeatError:
    shape = "x".join(str(s) for s in shape_wo_batch) or "scalar"
    return NnfeatError(f"layer '{layer}' has no spatial map (shape {shape}): pick a conv or token layer")


def check_spatial(model, layer: str, size: Sequence[int] | None = None) -> tuple[int, ...]:
    """The layer's activation shape (without batch) at ``size``; a one-line error unless it is a conv map or a
    token sequence that folds onto a grid."""
    size = size2(tuple(size or model.input_size))
    shape = tuple(model.layer_shapes([layer], size)[layer][1:])
    if len(shape) == 3:
        return shape
    if len(shape) == 2:
        _, gh, gw = token_grid(model, shape[0], size)
        return shape[1], gh, gw
    raise no_spatial_map(layer, shape)


@torch.no_grad()
def layer_maps(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] -> the layer's (B, C, h, w) maps, float32, from one forward pass that
    stops at the layer. ``model`` may be the fast network of :func:`nnfeat.analysis.fast_path.fast_network`
    (its channels-last maps come back contiguous)."""
    with ActivationCapture(model, [layer]) as capture:
        act = capture(images)[layer]
    return spatial_maps(act, model, images.shape[-2:], layer).float().contiguous()


def reduce_maps(maps: torch.Tensor, channels: Sequence[int] | None = None, reduce: str = "channels") -> torch.Tensor:
    """(B, C, h, w) -> (B, K, h, w): the ``channels`` (default all), or their ``sum`` / ``norm`` (K = 1)."""
    if reduce not in REDUCES:
        raise NnfeatError(f"unknown reduce '{reduce}': use {', '.join(REDUCES)}")
    if channels is not None:
        maps = maps.index_select(1, torch.as_tensor(list(channels), dtype=torch.long, device=maps.device))
    if reduce == "sum":
        return maps.sum(1, keepdim=True)
    if reduce == "norm":
        return maps.square().sum(1, keepdim=True).sqrt()
    return maps


def heatmaps(model: nn.Module, layer: str, images: torch.Tensor, channels: Sequence[int] | None = None,
             reduce: str = "channels") -> torch.Tensor:
    """The heatmaps of ``layer`` for a batch: (B, 3, H, W) -> (B, K, h, w) at the layer's resolution.

    ``channels``: which channels (None: all); ``reduce``: ``channels`` (one map per channel), ``sum`` or
    ``norm`` (the sum / L2 norm over the channels: one map). One forward pass, stopped at the layer.
    """
    return reduce_maps(layer_maps(model, layer, images), channels, reduce)


def strongest_channels(maps: torch.Tensor, k: int) -> list[int]:
    """The ``k`` channels of (B, C, h, w) maps with the highest mean activation over the batch, strongest first
    (ties: the lower channel first)."""
    means = maps.float().mean((0, 2, 3)).cpu()
    order = torch.sort(means, descending=True, stable=True).indices
    return order[:max(0, int(k))].tolist()


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, K, h, w) -> (B, K, H, W), bilinear (align_corners=False)."""
    size = size2(tuple(size))
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)


# -- colour -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColorScale:
    """Colour limits: ``vmin``/``vmax`` (B, K) tensors (equal everywhere for a figure scale), ``signed`` (blue-
    white-red, symmetric around 0) or not (viridis-like), ``mode`` ``figure`` or ``per-map``, ``dead`` (B, K)
    bool: constant maps, drawn in one flat colour, never stretched."""

    vmin: torch.Tensor
    vmax: torch.Tensor
    signed: bool
    mode: str
    dead: torch.Tensor

    @property
    def colormap(self) -> str:
        return "signed" if self.signed else "viridis"


def dead_maps(maps: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) -> (B, K) bool: maps whose values are all the same (up to float rounding)."""
    lo, hi = maps.amin((-2, -1)), maps.amax((-2, -1))
    return (hi - lo) <= 1e-6 * torch.maximum(lo.abs(), hi.abs()).clamp_min(1.0)


def color_scale(maps: torch.Tensor, scale: str = "figure", signed: bool | None = None) -> ColorScale:
    """The colour limits of (B, K, h, w) maps: one range for the whole figure (``figure``) or one per map
    (``per-map``). Signed (the maps hold both signs, unless ``signed`` says otherwise): symmetric around 0.
    Dead maps are left out of a figure's range when other maps vary."""
    if scale not in SCALES:
        raise NnfeatError(f"unknown scale '{scale}': use {' or '.join(SCALES)}")
    maps = maps.float()
    lo, hi = maps.amin((-2, -1)), maps.amax((-2, -1))  # (B, K)
    dead = dead_maps(maps)
    if signed is None:
        signed = bool(lo.min() < 0) and bool(hi.max() > 0)
    if scale == "figure":
        live = ~dead if bool((~dead).any()) else torch.ones_like(dead)
        vmin = lo[live].min().expand_as(lo)
        vmax = hi[live].max().expand_as(hi)
    else:
        vmin, vmax = lo, hi
    if signed:
        bound = torch.maximum(vmin.abs(), vmax.abs())
        vmin, vmax = -bound, bound
    # a constant range (dead map on its own scale): widen it so nothing divides by zero; the map stays flat
    flat = (vmax - vmin) <= 1e-12
    vmin = torch.where(flat, vmin - 0.5, vmin).contiguous()
    vmax = torch.where(flat, vmax + 0.5, vmax).contiguous()
    return ColorScale(vmin, vmax, signed, scale, dead)


def colorize(maps: torch.Tensor, vmin: torch.Tensor | float, vmax: torch.Tensor | float,
             colormap: str = "viridis") -> torch.Tensor:
    """(B, K, H, W) maps -> (B, K, 3, H, W) colours in [0, 1] from the built-in table ``colormap`` (``viridis``
    or ``signed``); ``vmin``/``vmax`` are numbers or (B, K) tensors."""
    table = COLORMAPS[colormap].to(maps.device)
    vmin = torch.as_tensor(vmin, dtype=torch.float32, device=maps.device)
    vmax = torch.as_tensor(vmax, dtype=torch.float32, device=maps.device)
    if vmin.dim() == 2:
        vmin, vmax = vmin[..., None, None], vmax[..., None, None]
    t = ((maps.float() - vmin) / (vmax - vmin).clamp_min(1e-12)).clamp_(0, 1)
    index = t.mul_(len(table) - 1).round_().long()
    return table[index].movedim(-1, -3)  # (B, K, H, W, 3) -> (B, K, 3, H, W)


def overlay(images: torch.Tensor, maps: torch.Tensor, vmin: torch.Tensor | float, vmax: torch.Tensor | float,
            colormap: str = "viridis", alpha: float = 0.6) -> torch.Tensor:
    """Colour ``maps`` and lay them over ``images`` (B, 3, H, W) in [0, 1].

    ``maps`` (B, H, W) -> (B, 3, H, W); (B, K, H, W) -> (B, K, 3, H, W). Maps at another resolution are
    upsampled (bilinear) to the images' first.
    """
    single = maps.dim() == 3
    if single:
        maps = maps.unsqueeze(1)
    maps = upsample(maps, images.shape[-2:])
    colours = colorize(maps, vmin, vmax, colormap)
    out = colours.mul_(alpha).add_(images.float().unsqueeze(1), alpha=1 - alpha)
    return out[:, 0] if single else out


__all__ = ["REDUCES", "SCALES", "COLORMAPS", "ColorScale", "spatial_maps", "check_spatial", "layer_maps",
           "reduce_maps", "heatmaps", "strongest_channels", "upsample", "dead_maps", "color_scale", "colorize",
           "overlay", "no_spatial_map"]
