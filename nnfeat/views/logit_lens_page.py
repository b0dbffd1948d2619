"""The logit lens drawn from plain data (token strings, (L, T) arrays): :func:`lens_figure` (a picture) and
:func:`lens_table_html` (an offline page of tables).

The figure is a layers x positions grid: the input tokens along the top, one row per layer (the first layer at
the top), and the actual next tokens along the bottom (the last position's is the model's own prediction,
starred). Each cell shows the top token of the lens at that layer and position on a background coloured by its
probability (one viridis-like scale from 0 to 1 for every figure), and under it ``rN``: the rank of the actual
next token (1 = the top token); a red frame marks a cell whose top token is the actual next token. Long texts
wrap onto further panels, each no wider than ``max_width`` px. Same input -> same bytes.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from nnfeat.errors import NnfeatError
from nnfeat.io import write_text
from nnfeat.views.sheets import colour_bar, stack_rows, wrap_text
from nnfeat.views.templating import fill_template
from nnfeat.views.token_strip import StripScale, strip_colours
from nnfeat.views.sheets import font as _font
from nnfeat.views.token_text import drawn_token, wrap_cells

__all__ = ["LENS_NOTE", "lens_colour_bar", "lens_figure", "lens_table_html", "shown_token"]

_BG, _INK, _FAINT, _HIT = (255, 255, 255), (40, 40, 40), (120, 120, 120), (220, 40, 30)
_CELL_H = 30
_MIN_CELL_W = 40
_TOKEN_CHARS = 10
_PAD = 6
_SCALE = StripScale(0.0, 1.0, False)
#: what every lens figure's colour bar says
LENS_NOTE = ("colour: the probability of each cell's top token (softmax of the lens logits), one scale from 0 to 1; "
             "rN: the rank of the actual next token at that layer (1 = top; the last position: the model's own "
             "prediction, starred); red frame: the top token is the actual next token")
_CSP = "default-src 'none'; style-src 'unsafe-inline'"
_CSS = """body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222}
table{border-collapse:collapse;margin:6px 0 18px}
td,th{border:1px solid #ddd;padding:2px 5px;text-align:center;white-space:nowrap}
th{background:#f4f4f4;font-weight:600}
td.hit{outline:2px solid #dc281e;outline-offset:-2px}
td small{display:block;font-size:10px}
.note{color:#555;max-width:60em}
code{background:#f4f4f4;padding:0 3px}
"""




_SMALL, _TEXT = _font(10), _font(12)


def shown_token(token: str, limit: int | None = _TOKEN_CHARS) -> str:
    """A token as figures draw it (:func:`~nnfeat.views.token_text.drawn_token`), cut to ``limit`` characters."""
    return drawn_token(token, limit)


def _width(text: str, font) -> int:
    return int(math.ceil(font.getlength(text)))


def _check(top: Sequence[Sequence[str]], probs, ranks, tokens: Sequence[str], targets: Sequence[str],
           layer_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs.cpu() if torch.is_tensor(probs) else probs, dtype=np.float64)
    ranks = np.asarray(ranks.cpu() if torch.is_tensor(ranks) else ranks, dtype=np.int64)
    shape = (len(layer_names), len(tokens))
    if probs.shape != shape or ranks.shape != shape or len(targets) != len(tokens) or len(top) != shape[0] \
            or any(len(row) != shape[1] for row in top):
        raise NnfeatError(f"logit lens figure: top tokens, probabilities and ranks must be (layers, tokens) = "
                          f"{shape}; got {probs.shape} and {ranks.shape}")
    return probs, ranks


def lens_figure(top: Sequence[Sequence[str]], probs, ranks, tokens: Sequence[str], targets: Sequence[str],
                layer_names: Sequence[str], *, title: str = "", max_width: int = 1400, bar: bool = True
                ) -> np.ndarray:
    """One text's lens as a picture.

    Args:
        top: (L, T) nested lists: the top token of each layer and position.
        probs: (L, T) its probabilities; ``ranks``: (L, T) the rank of the actual next token (1 = top).
        tokens: the T input tokens; ``targets``: the T next tokens (the last: the model's prediction).
        layer_names: L row labels.
        title: a line above (wrapped); ``max_width``: the widest a panel may be (longer texts wrap).
        bar: put the colour bar and :data:`LENS_NOTE` under the grid (a sheet of several figures states it once).

    Returns:
        (H, W, 3) uint8.
    """
    probs, ranks = _check(top, probs, ranks, tokens, targets, layer_names)
    n_layers, n_tokens = probs.shape
    colours = strip_colours(torch.from_numpy(probs), _SCALE)  # (L, T, 3)
    labels = [*layer_names, "input", "next"]
    label_w = 8 + max(_width(str(s), _SMALL) for s in labels)
    cells = [[shown_token(top[l][t]) for l in range(n_layers)] for t in range(n_tokens)]
    shown_in = [shown_token(t) for t in tokens]
    shown_next = [shown_token(t) + ("*" if i == n_tokens - 1 else "") for i, t in enumerate(targets)]
    widths = [max(_MIN_CELL_W, 8 + max(_width(s, _TEXT) for s in (shown_in[t], shown_next[t], *cells[t])))
              for t in range(n_tokens)]
    panels = wrap_cells(widths, label_w, max_width)
    parts = []
    width = max(label_w + sum(widths[t] for t in p) for p in panels) + _PAD
    if title:
        lines = wrap_text(title, max(width, 300) - 2 * _PAD, _TEXT)
        head = Image.new("RGB", (max(width, 300), 6 + 16 * len(lines)), _BG)
        draw = ImageDraw.Draw(head)
        for i, line in enumerate(lines):
            draw.text((_PAD, 4 + 16 * i), line, fill=_INK, font=_TEXT)
        parts.append(np.asarray(head))
    for panel in panels:
        parts.append(_panel(panel, widths, label_w, layer_names, cells, shown_in, shown_next, colours, ranks,
                            top, targets))
    if bar:
        parts.append(lens_colour_bar(width))
    return stack_rows(parts)


def lens_colour_bar(width: int) -> np.ndarray:
    """The colour bar of every lens figure with :data:`LENS_NOTE`, (H, max(width, 300), 3) uint8."""
    return colour_bar(_SCALE.table, "0", "1", LENS_NOTE, width)


def _panel(panel, widths, label_w, layer_names, cells, shown_in, shown_next, colours, ranks, top, targets):
    n_layers = len(layer_names)
    height = 18 + n_layers * _CELL_H + 18 + _PAD
    picture = Image.new("RGB", (label_w + sum(widths[t] for t in panel) + _PAD, height), _BG)
    draw = ImageDraw.Draw(picture)
    rows = [(18 + l * _CELL_H, name) for l, name in enumerate(layer_names)]
    for y, name in [(3, "input"), *[(y + 9, n) for y, n in rows], (18 + n_layers * _CELL_H + 3, "next")]:
        draw.text((label_w - 4 - _width(str(name), _SMALL), y), str(name), fill=_FAINT, font=_SMALL)
    x = label_w
    for t in panel:
        w = widths[t]
        draw.text((x + (w - _width(shown_in[t], _TEXT)) // 2, 2), shown_in[t], fill=_INK, font=_TEXT)
        for l in range(n_layers):
            y = 18 + l * _CELL_H
            colour = tuple(int(c) for c in colours[l, t])
            draw.rectangle((x + 1, y + 1, x + w - 2, y + _CELL_H - 2), fill=colour)
            if top[l][t] == targets[t]:
                draw.rectangle((x + 1, y + 1, x + w - 2, y + _CELL_H - 2), outline=_HIT, width=2)
            ink = (255, 255, 255) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] < 140 else _INK
            word, rank = cells[t][l], f"r{int(ranks[l, t])}"
            draw.text((x + (w - _width(word, _TEXT)) // 2, y + 3), word, fill=ink, font=_TEXT)
            draw.text((x + (w - _width(rank, _SMALL)) // 2, y + 17), rank, fill=ink, font=_SMALL)
        y = 18 + n_layers * _CELL_H + 2
        draw.text((x + (w - _width(shown_next[t], _TEXT)) // 2, y), shown_next[t], fill=_INK, font=_TEXT)
        x += w
    return np.asarray(picture)


def _css_colour(rgb) -> str:
    r, g, b = (int(c) for c in rgb)
    ink = "#fff" if 0.299 * r + 0.587 * g + 0.114 * b < 140 else "#222"
    return f"background:#{r:02x}{g:02x}{b:02x};color:{ink}"


def _table(text: dict) -> str:
    """One text's table: a row per layer, a column per position."""
    probs = np.asarray(text["top_probs"], dtype=np.float64)  # (L, T, k)
    ranks = np.asarray(text["rank"], dtype=np.int64)
    target_probs = np.asarray(text["target_prob"], dtype=np.float64)
    top, tokens, targets, layers = text["top_tokens"], text["tokens"], text["targets"], text["layers"]
    colours = strip_colours(torch.from_numpy(probs[..., 0]), _SCALE)
    esc = lambda s: html.escape(shown_token(s, None))  # noqa: E731
    head = "".join(f"<th title='position {t}'>{esc(tok)}</th>" for t, tok in enumerate(tokens))
    rows = [f"<tr><th>input</th>{head}</tr>"]
    for l, layer in enumerate(layers):  # building the page: one row per layer
        cells = []
        for t in range(len(tokens)):
            listed = ", ".join(f"{shown_token(w, None)} {p:.3f}" for w, p in zip(top[l][t], probs[l, t]))
            tip = (f"top {len(top[l][t])}: {listed}; next {shown_token(targets[t], None)}: rank {ranks[l, t]}, "
                   f"p {target_probs[l, t]:.3f}")
            hit = " class='hit'" if top[l][t][0] == targets[t] else ""
            cells.append(f"<td{hit} style='{_css_colour(colours[l, t])}' title='{html.escape(tip)}'>"
                         f"{esc(top[l][t][0])}<small>{probs[l, t, 0]:.2f} &middot; r{ranks[l, t]}</small></td>")
        rows.append(f"<tr><th>{html.escape(layer)}</th>{''.join(cells)}</tr>")
    nxt = "".join(f"<th>{esc(tok)}{'*' if t == len(targets) - 1 else ''}</th>" for t, tok in enumerate(targets))
    rows.append(f"<tr><th>next</th>{nxt}</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _summary(summary: dict, layers: Sequence[str]) -> str:
    head = "<tr><th>layer</th><th>mean rank</th><th>median rank</th><th>top-1</th><th>mean p(next)</th></tr>"
    rows = [head] + [f"<tr><th>{html.escape(name)}</th><td>{summary['mean_rank'][l]:.2f}</td>"
                     f"<td>{summary['median_rank'][l]:g}</td><td>{100 * summary['top1'][l]:.1f} %</td>"
                     f"<td>{summary['mean_prob'][l]:.3f}</td></tr>" for l, name in enumerate(layers)]
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def lens_table_html(texts: Sequence[dict], path: str | os.PathLike, *, title: str, notes: Sequence[str] = (),
                    summary: dict | None = None) -> Path:
    """Write the lens as an offline page of tables (no script; inline style; ASCII bytes), atomically.

    Args:
        texts: per text a dict: ``text``, ``tokens`` (T), ``targets`` (T), ``layers`` (L), ``top_tokens`` (L, T, k)
            nested lists, ``top_probs`` (L, T, k), ``rank`` (L, T), ``target_prob`` (L, T).
        title: the page's title; ``notes``: lines under it (settings, checks).
        summary: per layer over every position with an actual next token: ``mean_rank``, ``median_rank``,
            ``top1`` (share), ``mean_prob`` (lists of L), shown as a table first.
    """
    if not texts:
        raise NnfeatError("logit lens page: no texts to show")
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    parts.append(f"<p class='note'>{html.escape(LENS_NOTE)}. Hover a cell for its top tokens.</p>")
    if summary is not None:
        parts += ["<h2>every text, by layer (positions with an actual next token)</h2>",
                  _summary(summary, texts[0]["layers"])]
    for i, text in enumerate(texts):  # one table per text
        parts += [f"<h2>text {i}</h2>", f"<p><code>{html.escape(text['text'])}</code></p>", _table(text)]
    body = "\n".join(parts) + "\n"
    page = fill_template("page.html", title=html.escape(title), csp=_CSP, css=_CSS, body=body)
    return write_text(path, page.encode("ascii", "xmlcharrefreplace").decode("ascii"))
