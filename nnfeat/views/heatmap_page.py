"""The heatmap figures, drawn from plain data: the sheet (per image, the image and its heatmap overlays), its
colour bar and the per-image pictures that :class:`nnfeat.ops.heatmap.HeatmapResult` saves.

The colour bar states the figure's one scale (its numbers: min and max; symmetric around 0 for signed maps) or,
with ``scale.mode == "per-map"``, says that each map's caption gives its range. Dead (constant) maps are
captioned ``dead (constant X)``. ``scale`` is an :class:`nnfeat.analysis.heatmap.ColorScale` with (B, K) limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nnfeat.analysis.heatmap import COLORMAPS, ColorScale, colorize
from nnfeat.io import save_image
from nnfeat.views.sheets import colour_bar, labelled_sheet, stack_rows

__all__ = ["map_caption", "image_caption", "heatmap_captions", "heatmap_title", "heatmap_tiles", "heatmap_colour_bar",
           "heatmap_sheet", "write_heatmap_pictures"]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def map_caption(maps: torch.Tensor, scale: ColorScale, labels: Sequence[str], i: int, j: int) -> str:
    """The caption of map ``j`` of image ``i`` (``maps`` (B, K, h, w)): its name, then its maximum, its range
    (per-map scale) or ``dead (constant X)``."""
    m = maps[i, j]
    if bool(scale.dead[i, j]):
        return f"{labels[j]}\ndead (constant {_fmt(float(m.flatten()[0]))})"
    if scale.mode == "per-map":
        return f"{labels[j]}\n{_fmt(float(scale.vmin[i, j]))}..{_fmt(float(scale.vmax[i, j]))}"
    return f"{labels[j]}\nmax {_fmt(float(m.max()))}"


def image_caption(index: int | str, label: str | None) -> str:
    """``image <index>`` (an image's name, such as a file's relative path, as it is) and, on a second line, its label."""
    return (index if isinstance(index, str) else f"image {index}") + (f"\n{label}" if label is not None else "")


def heatmap_captions(maps: torch.Tensor, scale: ColorScale, labels: Sequence[str], indices: Sequence[int | str],
                     image_labels: Sequence[str | None]) -> list[str]:
    """One caption per sheet tile: per image, the image's, then each of its K maps'."""
    out = []
    for i in range(maps.shape[0]):
        out.append(image_caption(indices[i], image_labels[i]))
        out.extend(map_caption(maps, scale, labels, i, j) for j in range(maps.shape[1]))
    return out


def heatmap_title(model: str, units: str, reduce: str, source: str) -> str:
    what = units if reduce == "channels" else f"{reduce} of {units}"
    return f"{model}  {what}  heatmaps ({source})"


def heatmap_tiles(inputs: torch.Tensor, overlays: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images and (B, K, 3, H, W) overlays -> (B * (K + 1), 3, H, W): per image, it and its overlays."""
    return torch.cat([inputs.unsqueeze(1).cpu(), overlays.cpu()], 1).flatten(0, 1)


def heatmap_colour_bar(scale: ColorScale, width: int) -> np.ndarray:
    """A strip: the colour table with its numbers (figure scale) or a note (per-map)."""
    symmetric = " (symmetric around 0)" if scale.signed else ""
    if scale.mode == "figure":
        lo, hi = _fmt(float(scale.vmin.flatten()[0])), _fmt(float(scale.vmax.flatten()[0]))
        note = "one colour scale for every map" + symmetric
    else:
        lo, hi = "min", "max"
        note = "per-map scale: each caption gives its map's range" + symmetric
    return colour_bar(COLORMAPS[scale.colormap], lo, hi, note, width, min_width=240)


def heatmap_sheet(tiles: torch.Tensor, captions: Sequence[str], columns: int, title: str, scale: ColorScale
                  ) -> np.ndarray:
    """The captioned grid of ``tiles`` (``columns`` per row) with the colour bar under it: (H, W, 3) uint8."""
    grid = labelled_sheet(tiles, captions, ncol=columns, title=title)
    return stack_rows([grid, heatmap_colour_bar(scale, grid.shape[1])])


def write_heatmap_pictures(out: Path, inputs: torch.Tensor, overlays: torch.Tensor, maps: torch.Tensor,
                           scale: ColorScale, captions: Sequence[str], labels: Sequence[str]) -> list[str]:
    """Per image ``image-<i>.png`` (the image and its overlays, captioned as on the sheet: ``captions``) and
    ``image-<i>-channels.png`` (the maps alone, coloured on ``scale``); returns the file names."""
    files = []
    k = maps.shape[1]
    flat = colorize(maps, scale.vmin, scale.vmax, scale.colormap).cpu()
    for i in range(maps.shape[0]):
        row = torch.cat([inputs[i:i + 1].cpu(), overlays[i].cpu()])
        files.append(save_image(out / f"image-{i}.png",
                                labelled_sheet(row, captions[i * (k + 1):(i + 1) * (k + 1)], ncol=k + 1)).name)
        names = [map_caption(maps, scale, labels, i, j) for j in range(k)]
        files.append(save_image(out / f"image-{i}-channels.png", labelled_sheet(flat[i], names)).name)
    return files
