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
#: ... and a sheet of one tile until it is at least this many.
SINGLE_TILE = 256
_FONT_SIZE = 12
_PAD = 4
_BACKGROUND = (255, 255, 255)
_TEXT = (40, 40, 40)


def upscale_factor(height: int, width: int, min_tile: int = MIN_TILE) -> int:
    """The smallest integer factor that makes a ``height`` x ``width`` tile at least ``min_tile`` px on its long side."""
    return max(1, math.ceil(min_tile / max(1, height, width)))


def font(size: int = _FONT_SIZE):
    """Pillow's default font at ``size`` px (the fixed bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


_font = font


def _wrapped(text: str, font, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    """``text`` broken into lines no wider than ``width`` px: at spaces, and a word wider than a line at
    characters (nothing is cut off)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= width:
            lines[-1] += " " + word
            continue
        while draw.textlength(word, font=font) > width and len(word) > 1:  # a word wider than the line
            cut = max(1, next(k for k in range(len(word), 0, -1)
                              if draw.textlength(word[:k], font=font) <= width or k == 1))
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines or [""]


def labelled_sheet(images: torch.Tensor, captions: Sequence[str] | None = None, *, ncol: int | None = None,
                   title: str | None = None, min_tile: int = MIN_TILE, lines: int | None = None) -> np.ndarray:
    """A captioned contact sheet.

    Args:
        images: (B, 3, H, W) (or (B, 1, H, W)) in [0, 1]; tiles are upscaled (nearest) to >= ``min_tile`` px
            (one tile alone to >= :data:`SINGLE_TILE` px).
        captions: one text per image (up to ``lines`` lines each, split at ``\\n``; a line wider than its tile is
            wrapped, never cut), or None.
        ncol: tiles per row (default: about square).
        title: a line above the grid (wrapped to the sheet's width), or None.
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
    factor = upscale_factor(h, w, max(min_tile, SINGLE_TILE) if b == 1 else min_tile)
    th, tw = h * factor, w * factor
    ncol = max(1, min(b, ncol or math.ceil(math.sqrt(b))))
    nrow = max(1, math.ceil(b / ncol))
    font = _font()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cell_w = max(tw, 8)
    width = ncol * (cell_w + _PAD) + _PAD
    # each caption's lines (``lines`` of them at most, split at "\n"), each wrapped to the tile's width
    captions = [[part for line in str(c).split("\n")[:lines] for part in _wrapped(line, font, cell_w, draw)]
                for c in (captions if captions is not None else [])]
    n_lines = max([lines or 0] + [len(c) for c in captions])
    title_lines = _wrapped(title, font, width - 2 * _PAD, draw) if title else []
    line_h = _FONT_SIZE + 3
    cap_h = n_lines * line_h + (2 if n_lines else 0)
    title_h = len(title_lines) * line_h + 2 * _PAD if title else 0
    sheet = Image.new("RGB", (width, title_h + nrow * (th + cap_h + _PAD) + _PAD), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for k, text in enumerate(title_lines):
        draw.text((_PAD, _PAD + k * line_h), text, fill=_TEXT, font=font)
    tiles = to_uint8(images.repeat_interleave(factor, -2).repeat_interleave(factor, -1).permute(0, 2, 3, 1).numpy())
    for i in range(b):  # assembling a picture once, not a hot path
        r, c = divmod(i, ncol)
        x, y = _PAD + c * (cell_w + _PAD), title_h + _PAD + r * (th + cap_h + _PAD)
        sheet.paste(Image.fromarray(tiles[i]), (x, y))
        if i < len(captions):
            for k, text in enumerate(captions[i]):
                draw.text((x, y + th + 2 + k * line_h), text, fill=_TEXT, font=font)
    return np.asarray(sheet)




def wrap_text(text: str, width: int, font=None) -> list[str]:
    """``text`` broken into lines no wider than ``width`` px: at spaces, a word wider than a line at characters."""
    return _wrapped(text, font or _font(), width, ImageDraw.Draw(Image.new("RGB", (1, 1))))


def colour_bar(table: torch.Tensor | np.ndarray, low: str, high: str, note: str, width: int, *,
               middle: str | None = None, min_width: int = 300) -> np.ndarray:
    """The strip under a figure that states its colour scale: ``table`` ((n, 3) colours in [0, 1], low to high)
    as a ramp between the numbers ``low`` and ``high`` (``middle`` written at its centre, e.g. ``"0"``), and
    ``note`` (what the scale measures) wrapped below it. Returns (H, max(width, min_width), 3) uint8."""
    font = _font()
    width = max(int(width), min_width)
    lines = wrap_text(note, width - 8, font)
    bar = Image.new("RGB", (width, 22 + 15 * len(lines) + 4), _BACKGROUND)
    draw = ImageDraw.Draw(bar)
    colours = (np.asarray(table, dtype=np.float64) * 255).round().astype(np.uint8)
    x0, x1 = 60, width - 60
    ramp = colours[np.linspace(0, len(colours) - 1, x1 - x0).astype(int)]
    bar.paste(Image.fromarray(np.repeat(ramp[None], 12, 0)), (x0, 4))
    draw.text((4, 4), low, fill=_TEXT, font=font)
    draw.text((x1 + 4, 4), high, fill=_TEXT, font=font)
    if middle is not None:
        centre = colours[len(colours) // 2].astype(int)
        ink = (255, 255, 255) if centre.mean() < 160 else _TEXT
        draw.text(((x0 + x1) // 2 - 3, 4), middle, fill=ink, font=font)
    for i, line in enumerate(lines):
        draw.text((4, 22 + 15 * i), line, fill=_TEXT, font=font)
    return np.asarray(bar)


def stack_rows(parts: Sequence[np.ndarray]) -> np.ndarray:
    """(H_i, W_i, 3) uint8 pictures one above the other, left-aligned, padded with white to the widest."""
    width = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255)
                           for p in parts], 0)


__all__ = ["MIN_TILE", "labelled_sheet", "upscale_factor", "wrap_text", "colour_bar", "stack_rows"]
