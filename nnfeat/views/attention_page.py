"""The attention figures, drawn from plain data (:class:`AttentionFigure`): per image a layers x heads grid (each
row one attention layer: the input, then the query token's attention over the patches per head, or fused over
the heads, overlaid on the image), one colour bar for the grid (or, with ``per_head``, each map on its own scale, its limits under its
tile), and the attention rollout (Abnar & Zuidema
2020) and gradient-weighted rollout (Chefer et al. 2021) as figures of their own, each with its own scale.
:class:`nnfeat.ops.attention.AttentionResult` draws its sheet and its ``image-<i>.png`` files with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nnfeat.analysis.heatmap import COLORMAPS, ColorScale
from nnfeat.views.sheets import colour_bar, labelled_sheet, stack_rows

__all__ = ["HEAD_SCALE_NOTE", "SCALE_CHOICES", "SHEET_TILE", "AttentionFigure", "colorbar", "head_label",
           "image_caption", "map_limits", "small"]

#: the head maps' colour scale: one for the figure (default) or one per head map
SCALE_CHOICES = ("figure", "per-map")
#: what the colour bar says under a figure whose maps each have their own scale
HEAD_SCALE_NOTE = "each head has its own scale (limits under each tile): attention weight from that map's min to its max"

#: the largest tile edge on the sheet (bigger inputs are shown downscaled; the maps keep their grid)
SHEET_TILE = 112


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def head_label(head: int | str, index: int) -> str:
    """The name of map ``index`` of a layer: ``head <index>`` (every head), ``head <head>`` (one head) or
    ``<mean|max> of heads``."""
    return f"head {index}" if head == "all" else (f"head {head}" if isinstance(head, int) else f"{head} of heads")


def image_caption(index: int | str, label: str | None, prediction: str | None) -> str:
    """Two lines: the image (``image <index>``, or its name as it is) and its label, its prediction (blank when
    there is none)."""
    pred = f"pred {prediction}" if prediction is not None else ""
    return (index if isinstance(index, str) else f"image {index}") + (f" ({label})" if label is not None else "") + f"\n{pred}"


def colorbar(scale: ColorScale, width: int, label: str) -> np.ndarray:
    """A strip under a figure: the colour table with its limits and ``label`` (what the one scale measures)."""
    return colour_bar(COLORMAPS[scale.colormap], _fmt(float(scale.vmin.flatten()[0])),
                      _fmt(float(scale.vmax.flatten()[0])), label, width)


def map_limits(scale: ColorScale, maps: torch.Tensor) -> list[str]:
    """The limits of each map on a per-map ``scale`` (vmin/vmax (B, K)), as written under its tile: ``lo..hi``, or
    ``flat v`` for a constant map (drawn in one colour). ``maps`` (B, K, h, w). Returns B*K texts, row-major."""
    flat_value = maps.flatten(2).amax(-1).flatten().tolist()
    lows, highs, dead = scale.vmin.flatten().tolist(), scale.vmax.flatten().tolist(), scale.dead.flatten().tolist()
    return [f"flat {_fmt(v)}" if d else f"{_fmt(lo)}..{_fmt(hi)}" for lo, hi, d, v in zip(lows, highs, dead, flat_value)]


def small(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> tiles at most :data:`SHEET_TILE` px on the longer side (area downscaling)."""
    h, w = images.shape[-2:]
    if max(h, w) <= SHEET_TILE:
        return images
    size = (max(1, round(h * SHEET_TILE / max(h, w))), max(1, round(w * SHEET_TILE / max(h, w))))
    flat = images.reshape(-1, *images.shape[-3:]).float()
    return F.interpolate(flat, size=size, mode="area").reshape(*images.shape[:-2], *size)


@dataclass
class AttentionFigure:
    """What the attention figures show.

    Attributes:
        inputs: (B, 3, H, W) the images in [0, 1].
        overlays: (B, L, K, 3, H, W) the head maps overlaid on the images; ``maps`` (B, L, K, gh, gw) the maps.
        scale: the head maps' colour scale: one for the figure, or (``per_head``) one per map, vmin/vmax
            (B, L*K).
        layers: the L layer names; ``head_labels`` the K map names (:func:`head_label`).
        image_captions: per image its two caption lines (:func:`image_caption`).
        rollouts: ``{"rollout" / "grad_rollout": (overlays (B, 3, H, W), values (B, gh, gw), scale)}``, in
            figure order.
        fusion: how rollout fused the heads; ``target_names``: per image the gradient rollout's class, or None.
        per_head: each head map on its own scale (its limits written under its tile) instead of one scale.
    """

    inputs: torch.Tensor
    overlays: torch.Tensor
    maps: torch.Tensor
    scale: ColorScale
    layers: Sequence[str]
    head_labels: Sequence[str]
    image_captions: Sequence[str]
    rollouts: dict[str, tuple[torch.Tensor, torch.Tensor, ColorScale]]
    fusion: str
    target_names: Sequence[str] | None = None
    per_head: bool = False

    def grid_captions(self, i: int) -> list[str]:
        """The captions of image ``i``'s layers x (input + heads) grid, row by row (the third line of a map: its
        max, or with ``per_head`` its own colour limits)."""
        k = self.maps.shape[2]
        if self.per_head:
            limits = map_limits(ColorScale(self.scale.vmin[i:i + 1], self.scale.vmax[i:i + 1], self.scale.signed,
                                           self.scale.mode, self.scale.dead[i:i + 1]), self.maps[i:i + 1].flatten(1, 2))
        else:
            limits = [f"max {_fmt(v)}" for v in self.maps[i].flatten(2).amax(-1).flatten().tolist()]
        caps = []
        for l, layer in enumerate(self.layers):
            caps.append(f"{self.image_captions[i] if l == 0 else chr(10)}\n{layer}")
            caps.extend(f"{layer}\n{self.head_labels[j]}\n{limits[l * k + j]}" for j in range(k))
        return caps

    def scale_note(self) -> str:
        """What the grid's colour bar says about its scale."""
        return HEAD_SCALE_NOTE if self.per_head else "one colour scale for every map above"

    def grid_bar(self, width: int) -> np.ndarray:
        """The colour bar under the grid: the figure's limits, or with ``per_head`` ``min``..``max`` and the note
        that each head has its own scale."""
        if not self.per_head:
            return colorbar(self.scale, width, self.scale_note())
        return colour_bar(COLORMAPS[self.scale.colormap], "min", "max", self.scale_note(), width)

    def captions(self) -> list[str]:
        """One caption per image of the result (per image: its head maps, layer by layer, then its rollouts)."""
        heads = self.maps.shape[2]
        out = []
        for i in range(len(self.inputs)):
            caps = self.grid_captions(i)
            out += [c for j, c in enumerate(caps) if j % (heads + 1)]  # leave out the input tiles of the grid
            out += [f"{self.image_captions[i]}\n{name.replace('_', ' ')}" for name in self.rollouts]
        return out

    def grid_tiles(self, rows: slice) -> torch.Tensor:
        """(b, L*(K+1), 3, h, w) tiles of the layers x heads grid of images ``rows``."""
        inputs = small(self.inputs[rows]).unsqueeze(1).unsqueeze(1).expand(-1, len(self.layers), -1, -1, -1, -1)
        grid = torch.cat([inputs, small(self.overlays[rows])], 2)  # (b, L, K+1, 3, h, w)
        return grid.flatten(1, 2)

    def rollout_label(self, name: str) -> str:
        if name == "rollout":
            return f"rollout ({self.fusion} of heads, A/2+I/2)"
        return "gradient rollout (Chefer)"

    def rollout_figure(self, name: str, rows: slice) -> np.ndarray:
        """The rollout ``name`` of images ``rows``: each image beside its overlay, and the figure's colour bar."""
        overlays, values, scale = self.rollouts[name]
        over, values = overlays[rows], values[rows]
        n = len(over)
        tiles = torch.stack([small(self.inputs[rows]), small(over)], 1).flatten(0, 1)
        index = range(rows.start or 0, (rows.start or 0) + n)
        caps = []
        for j, i in enumerate(index):
            what = f"class {self.target_names[i]}" if name == "grad_rollout" else f"{self.fusion} of heads"
            caps += [self.image_captions[i], f"{name.replace('_', ' ')}\n{what}\nmax {_fmt(float(values[j].max()))}"]
        sheet = labelled_sheet(tiles, caps, ncol=2 * min(n, 4), title=self.rollout_label(name), lines=3)
        return stack_rows([sheet, colorbar(scale, sheet.shape[1], "one colour scale for this figure")])

    def figure(self, rows: slice, title: str | None) -> np.ndarray:
        """The grid of images ``rows`` with its colour bar, then each rollout figure: (H, W, 3) uint8."""
        count = len(self.inputs[rows])
        caps = [c for i in range(rows.start or 0, (rows.start or 0) + count) for c in self.grid_captions(i)]
        grid = labelled_sheet(self.grid_tiles(rows).flatten(0, 1), caps, ncol=self.maps.shape[2] + 1, title=title,
                              lines=3)
        parts = [grid, self.grid_bar(grid.shape[1])]
        parts += [self.rollout_figure(name, rows) for name in self.rollouts]
        return stack_rows(parts)
