"""Channels over tokens, drawn under the text: :func:`token_strip` (one text) and :func:`token_strips_sheet`
(several texts and the figure's colour bar), from plain data (token strings and a (K, T) array).

A text is drawn as a row of its tokens (as the tokenizer spells them; whitespace made visible, long tokens cut
with an ellipsis), and under each token a column of K cells, one per channel row (the channel's label at the
left): the cell's colour is that channel's activation at that token on one stated scale (blue-white-red,
symmetric around 0, when the values hold both signs; else the viridis-like ramp from the scale's low to its
high). Long texts wrap onto further rows of tokens, each with its own strip under it, so no figure is wider than
``max_width`` px. Every figure's bytes depend only on its input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from nnfeat.analysis.heatmap import COLORMAPS
from nnfeat.errors import NnfeatError
from nnfeat.views.sheets import colour_bar, stack_rows, wrap_text
from nnfeat.views.sheets import font as _font
from nnfeat.views.token_text import drawn_token, wrap_cells

__all__ = ["StripScale", "strip_colours", "token_strip", "token_strips_sheet", "scale_note"]

_BG, _INK, _FAINT = (255, 255, 255), (40, 40, 40), (120, 120, 120)
_CELL_H = 14            # px per channel row
_MIN_CELL_W = 22        # px per token at least
_TOKEN_CHARS = 12       # tokens are cut to this many characters
_PAD = 6




_SMALL, _TEXT = _font(10), _font(12)


@dataclass(frozen=True)
class StripScale:
    """One colour scale: values from ``low`` to ``high``; ``signed``: blue-white-red with 0 at white (``low`` =
    -``high``), else the viridis-like ramp."""

    low: float
    high: float
    signed: bool

    @property
    def table(self) -> torch.Tensor:
        return COLORMAPS["signed" if self.signed else "viridis"]


def scale_note(scale: StripScale, what: str) -> str:
    ramp = "blue-white-red, 0 white" if scale.signed else "viridis-like"
    return f"{what}; one colour scale ({ramp}) from {scale.low:.4g} to {scale.high:.4g}"


def strip_colours(values: torch.Tensor, scale: StripScale) -> np.ndarray:
    """(K, T) values -> (K, T, 3) uint8 colours on ``scale`` (values outside it take the end colours)."""
    table = (scale.table * 255).round().to(torch.uint8)
    span = max(scale.high - scale.low, 1e-12)
    index = ((values.float() - scale.low) / span).clamp(0, 1).mul(len(table) - 1).round().long()
    return table[index].numpy()


def _shown(token: str) -> str:
    return drawn_token(token, _TOKEN_CHARS)


def _width(text: str, font) -> int:
    return int(math.ceil(font.getlength(text)))


def token_strip(tokens: Sequence[str], values, labels: Sequence[str], scale: StripScale, *,
                title: str | None = None, max_width: int = 1200) -> np.ndarray:
    """One text: its tokens in a row and, under each, ``values[:, t]`` as K coloured cells.

    Args:
        tokens: the T tokens as the tokenizer spells them.
        values: (K, T) activations (array or tensor), one row per channel.
        labels: K row labels (the channel numbers), written at the left of each row.
        scale: the colour scale (the caller states it once per figure).
        title: a line above the text.
        max_width: the widest the picture may be; longer texts wrap onto further rows.

    Returns:
        (H, W, 3) uint8.
    """
    values = torch.as_tensor(np.asarray(values) if not torch.is_tensor(values) else values).detach().float().cpu()
    if values.dim() != 2 or values.shape[1] != len(tokens) or values.shape[0] != len(labels):
        raise NnfeatError(f"token strip: values must be (labels, tokens) = ({len(labels)}, {len(tokens)}); got "
                          f"{tuple(values.shape)}")
    shown = [_shown(t) for t in tokens]
    label_w = 8 + max((_width(str(s), _SMALL) for s in labels), default=0)
    widths = [max(_MIN_CELL_W, _width(s, _TEXT) + 6) for s in shown]
    rows = wrap_cells(widths, label_w, max_width)
    colours = strip_colours(values, scale)
    k = len(labels)
    row_h = 16 + k * _CELL_H + _PAD
    title_h = 18 if title else 0
    width = max(label_w + sum(widths[t] for t in row) for row in rows) + _PAD
    if title:
        width = max(width, min(max_width, _width(title, _TEXT) + 2 * _PAD))
    picture = Image.new("RGB", (width, title_h + len(rows) * row_h + _PAD), _BG)
    draw = ImageDraw.Draw(picture)
    if title:
        draw.text((_PAD, 3), title, fill=_INK, font=_TEXT)
    for r, row in enumerate(rows):
        y0 = title_h + r * row_h
        for j, label in enumerate(labels):
            draw.text((label_w - 4 - _width(str(label), _SMALL), y0 + 16 + j * _CELL_H + 1), str(label),
                      fill=_FAINT, font=_SMALL)
        x = label_w
        for t in row:
            w = widths[t]
            draw.text((x + (w - _width(shown[t], _TEXT)) // 2, y0 + 1), shown[t], fill=_INK, font=_TEXT)
            cells = np.repeat(np.repeat(colours[:, t][:, None], _CELL_H, 0), w - 2, 1)  # (K*_CELL_H, w-2, 3)
            picture.paste(Image.fromarray(np.ascontiguousarray(cells)), (x + 1, y0 + 16))
            x += w
    return np.asarray(picture)


def token_strips_sheet(strips: Sequence[np.ndarray], scale: StripScale | None, note: str, *, title: str = ""
                       ) -> np.ndarray:
    """Strips one above the other, a title line above and, when they share ``scale``, its colour bar with
    ``note`` under them. (H, W, 3) uint8."""
    if not strips:
        raise NnfeatError("token strips: nothing to draw")
    width = max(s.shape[1] for s in strips)
    parts = []
    if title:
        lines = wrap_text(title, max(width, 300) - 2 * _PAD, _TEXT)
        head = Image.new("RGB", (max(width, 300), 6 + 16 * len(lines)), _BG)
        draw = ImageDraw.Draw(head)
        for i, line in enumerate(lines):
            draw.text((_PAD, 4 + 16 * i), line, fill=_INK, font=_TEXT)
        parts.append(np.asarray(head))
    parts += list(strips)
    if scale is not None:
        parts.append(colour_bar(scale.table, f"{scale.low:.3g}", f"{scale.high:.3g}", note, width,
                                middle="0" if scale.signed else None))
    else:
        parts.append(colour_bar(COLORMAPS["viridis"], "low", "high", note, width))
    return stack_rows(parts)
