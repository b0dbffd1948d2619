"""The filters figures, drawn from plain data: the sheet of signed filter tiles (zero at mid-grey; the rule is
:mod:`nnfeat.analysis.filters`), the strip under it that states the scale, the row sheet (filter tile | its
unit's render | its top dataset examples) and the per-filter pictures that
:class:`nnfeat.ops.filters.FiltersResult` saves.

Shapes: ``weight`` (F, I, kh, kw) raw weights of the shown filters; ``tiles`` (F, 3, h, w) in [0, 1];
``channel_tiles`` (F, I, kh, kw) grey in [0, 1]; ``bounds`` (F,) each filter's max |w| scale; ``renders``
(F, 3, H, W) or None; ``examples`` (F, k, 3, S, S) or None.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nnfeat.analysis.filters import channel_mosaic
from nnfeat.io import save_image
from nnfeat.views.sheets import colour_bar, labelled_sheet, stack_rows

__all__ = ["CAPTIONED_CHANNELS", "ROW_TILE", "fit_tiles", "row_size", "row_tiles", "filter_caption",
           "filters_captions", "filters_title", "scale_note", "scale_strip", "filters_sheet", "write_filter_pictures"]

#: filters with more input channels than this get one mosaic picture instead of captioned tiles
CAPTIONED_CHANNELS = 64
#: renders and examples are shown at most this many pixels on a side in the sheet
ROW_TILE = 128


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def fit_tiles(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, h, w) -> (B, 3, size, size): enlarged by a whole factor (nearest) or shrunk (antialiased) to fit,
    centred on white."""
    images = images.float().cpu()
    h, w = images.shape[-2:]
    side = max(h, w)
    if side <= size:
        factor = size // side
        images = images.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    else:
        shape = (max(1, round(h * size / side)), max(1, round(w * size / side)))
        images = F.interpolate(images, size=shape, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    h, w = images.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top), value=1.0)


def row_size(tiles: torch.Tensor, renders: torch.Tensor | None, examples: torch.Tensor | None) -> int:
    """The side of every tile of a row sheet (renders and examples at most :data:`ROW_TILE`; a filter mosaic
    larger than that sets it)."""
    sides = [int(tiles.shape[-1]), int(tiles.shape[-2])]
    if renders is not None:
        sides.append(min(ROW_TILE, max(renders.shape[-2:])))
    if examples is not None:
        sides.append(min(ROW_TILE, max(examples.shape[-2:])))
    return max(sides)


def row_tiles(tiles: torch.Tensor, renders: torch.Tensor | None, examples: torch.Tensor | None) -> torch.Tensor:
    """The tiles of the sheet: ``tiles`` alone, or with renders / examples one row per filter (filter tile,
    render, examples), every tile :func:`row_size` square."""
    if renders is None and examples is None:
        return tiles
    size = row_size(tiles, renders, examples)
    columns = [fit_tiles(tiles, size).unsqueeze(1)]
    if renders is not None:
        columns.append(fit_tiles(renders, size).unsqueeze(1))
    if examples is not None:
        f, k = examples.shape[:2]
        columns.append(fit_tiles(examples.flatten(0, 1), size).view(f, k, 3, size, size))
    return torch.cat(columns, 1).flatten(0, 1)


def filter_caption(index: int, weight: torch.Tensor, offset: int, grouped: bool) -> str:
    """``filter <index>`` and its max |w| (``weight`` (I, kh, kw)); the input channels it reads when it reads
    from ``offset`` on or the layer is ``grouped``."""
    what = f"max|w| {_fmt(float(weight.abs().max()))}"
    if offset or grouped:
        what += f"  in {offset}..{offset + weight.shape[0] - 1}"
    return f"filter {index}\n{what}"


def filters_captions(indices: Sequence[int], weight: torch.Tensor, offsets: Sequence[int], grouped: bool,
                     render_values: torch.Tensor | None = None,
                     example_records: Sequence[Sequence[dict]] | None = None) -> list[str]:
    """One caption per sheet tile: per filter its own, then its render's value and its examples' scores (when
    given)."""
    if render_values is None and example_records is None:
        return [filter_caption(o, weight[i], offsets[i], grouped) for i, o in enumerate(indices)]
    out = []
    for i, o in enumerate(indices):
        out.append(filter_caption(o, weight[i], offsets[i], grouped))
        if render_values is not None:
            out.append(f"render\n{_fmt(float(render_values[i]))}")
        for j, ex in enumerate(example_records[i] if example_records is not None else []):
            label = f" {ex['label_name']}" if ex.get("label_name") is not None else ""
            out.append(f"top {j + 1}\n{_fmt(ex['score'])}{label}")
    return out


def filters_title(model: str, layer: str, shape: Sequence[int], shown: int, total: int) -> str:
    o, i, kh, kw = shape
    more = f", showing {shown} of {total}" if shown < total else ""
    return f"{model}  {layer}  filters {o}x{i}x{kh}x{kw}{more}"


def scale_note(scale: str, bounds: torch.Tensor, rgb: bool, capped: bool, shown: int, total: int) -> str:
    """What the tiles' grey levels mean (``scale``: ``layer`` or ``filter``), how the tiles are laid out, and the
    cap on the filters shown."""
    zero = "0 = mid-grey"
    if scale == "layer":
        m = _fmt(float(bounds[0])) if len(bounds) else "0"
        text = f"one symmetric scale for the layer: max |w| = {m} ({zero})"
    else:
        text = f"per-filter symmetric scale: each caption gives its filter's max |w| ({zero})"
    if rgb:
        text += "; RGB tiles: input channels 0, 1, 2 as red, green, blue"
    else:
        text += "; each filter: its input channels as grey tiles, row by row"
    if capped:
        text += f"; first {shown} of {total} filters (--max-filters)"
    return text


def scale_strip(scale: str, bounds: torch.Tensor, note: str, width: int) -> np.ndarray:
    """A strip: the grey ramp from -m (black) through 0 (mid-grey) to +m (white), with its numbers, and ``note``
    wrapped to the width."""
    if scale == "layer" and len(bounds):
        lo, hi = f"-{_fmt(float(bounds[0]))}", f"+{_fmt(float(bounds[0]))}"
    else:
        lo, hi = "-max|w|", "+max|w|"
    grey = torch.linspace(0, 1, 256).unsqueeze(1).expand(256, 3)
    return colour_bar(grey, lo, hi, note, width, middle="0", min_width=320)


def filters_sheet(tiles: torch.Tensor, captions: Sequence[str], columns: int | None, title: str, scale: str,
                  bounds: torch.Tensor, note: str) -> np.ndarray:
    """The captioned grid of ``tiles`` with the scale strip under it: (H, W, 3) uint8."""
    grid = labelled_sheet(tiles, captions, ncol=columns, title=title)
    return stack_rows([grid, scale_strip(scale, bounds, note, grid.shape[1])])


def write_filter_pictures(out: Path, layer: str, indices: Sequence[int], weight: torch.Tensor, bounds: torch.Tensor,
                          channel_tiles: torch.Tensor, offsets: Sequence[int], rgb: bool,
                          renders: torch.Tensor | None = None) -> list[str]:
    """Per shown filter ``filter-NNNN.png`` (its input channels as captioned grey tiles; one mosaic for more than
    :data:`CAPTIONED_CHANNELS`) and, with ``renders``, ``render-NNNN.png``; returns the file names."""
    files = []
    names = ("R", "G", "B") if rgb else None
    for i, o in enumerate(indices):
        title = f"{layer} filter {o}: max|w| {_fmt(float(weight[i].abs().max()))}, " \
                f"scale \u00b1{_fmt(float(bounds[i]))}"
        channels = channel_tiles[i]
        if len(channels) <= CAPTIONED_CHANNELS:
            caps = list(names) if names else [f"in {offsets[i] + c}" for c in range(len(channels))]
            picture = labelled_sheet(channels.unsqueeze(1), caps, title=title)
        else:
            mosaic = channel_mosaic(channels.unsqueeze(0))
            picture = labelled_sheet(mosaic, [f"in {offsets[i]}..{offsets[i] + len(channels) - 1}, "
                                              f"row by row"], title=title, min_tile=512)
        files.append(save_image(out / f"filter-{o:04d}.png", picture).name)
        if renders is not None:
            files.append(save_image(out / f"render-{o:04d}.png", renders[i]).name)
    return files
