"""A unit's activations over tokens as coloured tokens with their values (the "neuron view" of ecco, Alammar
2021): PNG rows (:func:`value_row`, :func:`rows_sheet`) and an offline HTML page (:func:`rows_page`), from plain
data (token strings and their values).

A row is a line of tokens (as the tokenizer spells them, whitespace made visible), each token on a box whose
colour is the unit's activation there on one stated scale (:class:`~nnfeat.views.token_strip.StripScale`:
blue-white-red around 0 for signed values, else the viridis-like ramp), its value written under it; a token
with no value (past a text's end) is left white, and the row's centre token (the context's own token) is framed.
A section is a heading and its rows (a unit's top contexts, then its bottom ones), on its own scale (stated in
its heading) or on the figure's (stated once, with a colour bar). Every figure's and page's
bytes depend only on the input: no random ids, no scripts, no network.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from nnfeat.io import write_text
from nnfeat.views.sheets import stack_rows, wrap_text
from nnfeat.views.templating import fill_template
from nnfeat.views.token_strip import StripScale, _font, _shown, scale_note, strip_colours, token_strips_sheet

__all__ = ["Row", "Section", "value_row", "rows_sheet", "rows_page", "row_colours", "shared_scale"]

_BG, _INK, _FAINT, _FRAME = (255, 255, 255), (30, 30, 30), (110, 110, 110), (230, 20, 20)
_SMALL, _TEXT = _font(10), _font(12)
_PAD, _BOX_H, _MIN_W = 6, 32, 26
CSP = "default-src 'none'; style-src 'unsafe-inline'"


@dataclass
class Row:
    """One row of coloured tokens.

    Attributes:
        tokens: the tokens.
        values: one value per token (NaN: none, drawn white).
        label: the text at the row's left (rank, value, where it came from).
        centre: the index of the framed token, or None.
    """

    tokens: list[str]
    values: list[float]
    label: str = ""
    centre: int | None = None


@dataclass
class Section:
    """A heading, its rows (with an optional sub-heading per group of rows: ``groups`` = [(title, rows)]) and its
    colour scale."""

    title: str
    groups: list[tuple[str, list[Row]]]
    scale: StripScale

    @property
    def heading(self) -> str:
        ramp = "blue-white-red, 0 white" if self.scale.signed else "viridis-like"
        return f"{self.title}  (colour {ramp}, {self.scale.low:.4g} .. {self.scale.high:.4g})"


def shared_scale(sections: Sequence[Section]) -> StripScale | None:
    """The sections' one scale, or None when they have several."""
    scales = {s.scale for s in sections}
    return next(iter(scales)) if len(scales) == 1 else None


def row_colours(values: Sequence[float], scale: StripScale) -> np.ndarray:
    """(T,) values -> (T, 3) uint8 colours on ``scale``; NaN -> white."""
    v = torch.tensor([float(x) for x in values], dtype=torch.float32).reshape(1, -1)
    missing = torch.isnan(v)[0].numpy()
    colours = strip_colours(torch.nan_to_num(v, nan=0.0), scale)[0].copy()
    colours[missing] = 255
    return colours


def _ink(colour) -> tuple[int, int, int]:
    r, g, b = (int(c) for c in colour)
    return (255, 255, 255) if 0.299 * r + 0.587 * g + 0.114 * b < 120 else _INK


def _value(x: float) -> str:
    return "" if x != x else f"{x:.2f}" if abs(x) < 100 else f"{x:.3g}"


def value_row(row: Row, scale: StripScale, *, label_width: int = 0, max_width: int = 1400) -> np.ndarray:
    """One row drawn: the label, then each token on its colour with its value under it (wrapping past
    ``max_width`` px). (H, W, 3) uint8."""
    shown = [_shown(t) for t in row.tokens]
    widths = [max(_MIN_W, math.ceil(max(_TEXT.getlength(s), _SMALL.getlength(_value(v)))) + 8)
              for s, v in zip(shown, row.values)]
    label_w = max(label_width, math.ceil(_SMALL.getlength(row.label)) + 10 if row.label else 0)
    lines: list[list[int]] = [[]]
    used = label_w
    for t, w in enumerate(widths):  # wrapping tokens into lines: drawing, once per row
        if lines[-1] and used + w > max_width:
            lines.append([])
            used = label_w
        lines[-1].append(t)
        used += w
    colours = row_colours(row.values, scale)
    width = max(label_w + sum(widths[t] for t in line) for line in lines) + _PAD
    picture = Image.new("RGB", (width, len(lines) * (_BOX_H + 4) + 4), _BG)
    draw = ImageDraw.Draw(picture)
    if row.label:
        draw.text((4, 4 + (_BOX_H - 12) // 2), row.label, fill=_FAINT, font=_SMALL)
    for n, line in enumerate(lines):
        y, x = 2 + n * (_BOX_H + 4), label_w
        for t in line:
            w, colour = widths[t], tuple(int(c) for c in colours[t])
            draw.rectangle([x + 1, y, x + w - 2, y + _BOX_H - 1], fill=colour,
                           outline=_FRAME if t == row.centre else None, width=2 if t == row.centre else 0)
            ink = _ink(colour)
            draw.text((x + (w - _TEXT.getlength(shown[t])) // 2, y + 3), shown[t], fill=ink, font=_TEXT)
            text = _value(row.values[t])
            draw.text((x + (w - _SMALL.getlength(text)) // 2, y + 18), text, fill=ink, font=_SMALL)
            x += w
    return np.asarray(picture)


def _heading(text: str, width: int, font=_TEXT, height: int = 20) -> np.ndarray:
    picture = Image.new("RGB", (max(width, 200), height), _BG)
    ImageDraw.Draw(picture).text((_PAD, (height - 12) // 2), text, fill=_INK, font=font)
    return np.asarray(picture)


def rows_sheet(sections: Sequence[Section], what: str, *, title: str = "") -> np.ndarray:
    """Every section's heading and rows one above the other, with the title and (one shared scale) its colour bar
    or (a scale per section) a note saying so. (H, W, 3) uint8."""
    label_w = max((math.ceil(_SMALL.getlength(r.label)) + 10 for s in sections for _, rows in s.groups for r in rows
                   if r.label), default=0)
    parts = []
    for section in sections:  # one block per unit: drawing
        block = [value_row(r, section.scale, label_width=label_w) for _, rows in section.groups for r in rows]
        width = max([b.shape[1] for b in block] + [300])
        drawn = [_heading(section.heading, width, _TEXT, 22)]
        rows = iter(block)
        for name, group in section.groups:
            if name:
                drawn.append(_heading(name, width, _SMALL, 16))
            drawn += [next(rows) for _ in group]
        parts.append(stack_rows(drawn))
    scale = shared_scale(sections)
    if scale is not None:
        return token_strips_sheet(parts, scale, scale_note(scale, what), title=title)
    width = max(max(p.shape[1] for p in parts), 300)
    note = f"{what}; each unit on its own colour scale (in its heading)"
    lines = [_heading(line, width, _TEXT, 18) for line in wrap_text(title, width - 2 * _PAD, _TEXT)] if title else []
    tail = [_heading(line, width, _SMALL, 16) for line in wrap_text(note, width - 2 * _PAD, _SMALL)]
    return stack_rows([*lines, *parts, *tail])


def _css_colour(colour) -> str:
    return "#%02x%02x%02x" % tuple(int(c) for c in colour)


def _row_html(row: Row, scale: StripScale) -> str:
    colours = row_colours(row.values, scale)
    cells = []
    for t, (token, value) in enumerate(zip(row.tokens, row.values)):
        colour = colours[t]
        cls = ' class="c"' if t == row.centre else ""
        tip = "" if value != value else f' title="{html.escape(_value(value))}"'
        cells.append(f'<span{cls}{tip} style="background:{_css_colour(colour)};color:{_css_colour(_ink(colour))}">'
                     f'{html.escape(_shown(token))}<small>{html.escape(_value(value))}</small></span>')
    label = f'<span class="l">{html.escape(row.label)}</span>' if row.label else ""
    return f'<div class="r">{label}{"".join(cells)}</div>\n'


_STYLE = """body{font:13px/1.4 sans-serif;margin:16px;color:#222}
h1{font-size:16px}h2{font-size:14px;margin:18px 0 4px}h3{font-size:12px;color:#555;margin:6px 0 2px}
.r{display:flex;flex-wrap:wrap;align-items:stretch;margin:2px 0}
.r span{display:inline-flex;flex-direction:column;align-items:center;padding:1px 4px;margin:0 1px;min-width:18px;
font-family:monospace;border:2px solid transparent}
.r span small{font-size:10px}.r span.c{border-color:#e61414}
.r span.l{color:#666;font-family:sans-serif;min-width:190px;align-items:flex-start}
.bar{display:flex;height:12px;width:320px;margin:4px 0}.bar i{flex:1}
code{background:#f4f4f4;padding:2px 4px;display:inline-block;max-width:100%;overflow-wrap:anywhere}
"""


def _bar(scale: StripScale) -> str:
    stops = "".join(f'<i style="background:{_css_colour(c)}"></i>' for c in
                    (scale.table[:: max(1, len(scale.table) // 32)] * 255).round().to(torch.uint8).tolist())
    return f'<div class="bar" title="{scale.low:.4g} .. {scale.high:.4g}">{stops}</div>\n'


def rows_page(path: str | Path, sections: Sequence[Section], what: str, *, title: str,
              command: str | None = None, notes: Sequence[str] = ()) -> Path:
    """Write the sections as one offline HTML page (inline style, no scripts, no network; the same bytes for the
    same input) to ``path``."""
    scale = shared_scale(sections)
    note = scale_note(scale, what) if scale else f"{what}; each unit on its own colour scale (in its heading)"
    body = [f"<h1>{html.escape(title)}</h1>\n", f"<p>{html.escape(note)}</p>\n", _bar(scale) if scale else ""]
    body += [f"<p>note: {html.escape(n)}</p>\n" for n in notes]
    if command:
        body.append(f"<p>command: <code>{html.escape(command)}</code></p>\n")
    for section in sections:  # one block per unit
        body.append(f"<h2>{html.escape(section.heading)}</h2>\n{'' if scale else _bar(section.scale)}")
        for name, rows in section.groups:
            if name:
                body.append(f"<h3>{html.escape(name)}</h3>\n")
            body += [_row_html(r, section.scale) for r in rows]
    document = fill_template("page.html", title=html.escape(title), csp=CSP, css=_STYLE, body="".join(body))
    return write_text(path, document)
