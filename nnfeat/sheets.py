"""Contact sheets a person can read: tiles upscaled (nearest) to a visible size, each captioned, a title on top.

``labelled_sheet(images, captions)`` -> (H, W, 3) uint8. Every saved sheet of nnfeat (render, microscope,
examples) and every Jupyter picture of a result is one of these.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from nnfeat.io import to_uint8

#: Tiles are upscaled by an integer factor until they are at least this many pixels on their long side.
MIN_TILE = 96
_FONT_SIZE = 12
_PAD = 4
_BACKGROUND = (255, 255, 255)
_TEXT = (40, 40, 40)


def upscale_factor(height: int, width: int, min_tile: int = MIN_TILE) -> int:
    """The smallest integer factor that makes a ``height`` x ``width`` tile at least ``min_tile`` px on its long side."""
    return max(1, math.ceil(min_tile / max(1, height, width)))


def _font(size: int = _FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(text: str, font, width: int, draw: ImageDraw.ImageDraw) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` px."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def labelled_sheet(images: torch.Tensor, captions: Sequence[str] | None = None, *, ncol: int | None = None,
                   title: str | None = None, min_tile: int = MIN_TILE, lines: int | None = None) -> np.ndarray:
    """A captioned contact sheet.

    Args:
        images: (B, 3, H, W) (or (B, 1, H, W)) in [0, 1]; tiles are upscaled (nearest) to >= ``min_tile`` px.
        captions: one text per image (up to ``lines`` lines each, split at ``\\n``), or None.
        ncol: tiles per row (default: about square).
        title: a line above the grid, or None.
        lines: caption lines per tile (default: the most any caption has).
    Returns:
        (H', W', 3) uint8 array.
    """
    images = images.detach().float().cpu().clamp(0, 1)
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W); got {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    b, _, h, w = images.shape
    factor = upscale_factor(h, w, min_tile)
    th, tw = h * factor, w * factor
    ncol = max(1, min(b, ncol or math.ceil(math.sqrt(b))))
    nrow = max(1, math.ceil(b / ncol))
    captions = [str(c) for c in captions] if captions is not None else []
    lines = lines if lines is not None else max((c.count("\n") + 1 for c in captions), default=0)
    font = _font()
    line_h = _FONT_SIZE + 3
    cap_h = lines * line_h + (2 if lines else 0)
    title_h = line_h + 2 * _PAD if title else 0
    cell_w = max(tw, 8)
    sheet = Image.new("RGB", (ncol * (cell_w + _PAD) + _PAD, title_h + nrow * (th + cap_h + _PAD) + _PAD), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((_PAD, _PAD), _fit(title, font, sheet.width - 2 * _PAD, draw), fill=_TEXT, font=font)
    tiles = to_uint8(images.repeat_interleave(factor, -2).repeat_interleave(factor, -1).permute(0, 2, 3, 1).numpy())
    for i in range(b):  # assembling a picture once, not a hot path
        r, c = divmod(i, ncol)
        x, y = _PAD + c * (cell_w + _PAD), title_h + _PAD + r * (th + cap_h + _PAD)
        sheet.paste(Image.fromarray(tiles[i]), (x, y))
        if i < len(captions):
            for k, text in enumerate(captions[i].split("\n")[:lines]):
                draw.text((x, y + th + 2 + k * line_h), _fit(text, font, cell_w, draw), fill=_TEXT, font=font)
    return np.asarray(sheet)


__all__ = ["MIN_TILE", "labelled_sheet", "upscale_factor"]
