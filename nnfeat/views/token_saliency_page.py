"""Token saliency drawn from plain data: coloured tokens (PNG), an offline page of every text (HTML), and the
source x target matrix of a decoder (PNG).

One scale per figure, stated under it: each method's values on a text are divided by their largest absolute
value on that text (so methods of different units share the figure), from -1 to 1 on the blue-white-red ramp
(0 white) when any shown method is signed, else from 0 to 1 on the viridis-like ramp. The raw values are in the
page (on hover) and in ``saliency.json``. Same input, same bytes: no random ids, no scripts, no network.
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
from nnfeat.io import atomic_path, save_image
from nnfeat.views.sheets import colour_bar, stack_rows
from nnfeat.views.token_strip import StripScale, scale_note, strip_colours, token_strip, token_strips_sheet
from nnfeat.views.sheets import font as _font
from nnfeat.views.token_text import drawn_token

__all__ = ["normalised", "saliency_html", "saliency_matrix_figure", "saliency_matrix_png", "saliency_scale",
           "saliency_tokens_figure", "saliency_tokens_png", "SCALE_NOTE"]

SCALE_NOTE = "each method's values divided by their largest |value| on this text"




_TEXT = _font(12)


def saliency_scale(signed: bool) -> StripScale:
    return StripScale(-1.0, 1.0, True) if signed else StripScale(0.0, 1.0, False)


def normalised(values) -> torch.Tensor:
    """(K, T) -> each row divided by its largest |value| (rows of zeros stay 0)."""
    v = torch.as_tensor(np.asarray(values) if not torch.is_tensor(values) else values).detach().float().cpu()
    top = v.abs().amax(-1, keepdim=True)
    return torch.where(top > 0, v / top.clamp_min(1e-30), torch.zeros_like(v))


def saliency_tokens_figure(tokens: Sequence[str], values, labels: Sequence[str], *, signed: bool,
                           title: str = "", what: str = "attribution") -> np.ndarray:
    """One text: its tokens with one row of cells per method (``values`` (K, T), ``labels`` K names), the scale
    stated under it. (H, W, 3) uint8."""
    v = normalised(values)
    if v.dim() != 2 or v.shape != (len(labels), len(tokens)):
        raise NnfeatError(f"token saliency: values must be (methods, tokens) = ({len(labels)}, {len(tokens)}); got "
                          f"{tuple(v.shape)}")
    scale = saliency_scale(signed)
    strip = token_strip(tokens, v, labels, scale)
    return token_strips_sheet([strip], scale, scale_note(scale, f"{what}: {SCALE_NOTE}"), title=title)


def saliency_tokens_png(tokens: Sequence[str], values, labels: Sequence[str], path: str | os.PathLike, *,
                        signed: bool, title: str = "", what: str = "attribution") -> Path:
    """:func:`saliency_tokens_figure` written as a PNG."""
    return save_image(path, saliency_tokens_figure(tokens, values, labels, signed=signed, title=title, what=what))


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(c) for c in rgb)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def saliency_html(texts: Sequence[dict], path: str | os.PathLike, *, title: str, signed: bool, notes: Sequence[str] = ()
                  ) -> Path:
    """An offline page: per text (``{"title", "tokens", "rows": {method: (T,) values}}``) its tokens coloured
    once per method on the stated scale, each token's raw value on hover (its ``title``)."""
    scale = saliency_scale(signed)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    parts.append(f"<p class='note'>Colour: {html.escape(scale_note(scale, SCALE_NOTE))}. Hover a token for its "
                 "value.</p>")
    for text in texts:
        parts.append(f"<section><h2>{html.escape(text['title'])}</h2>")
        for method, raw in text["rows"].items():
            raw_t = torch.as_tensor(np.asarray(raw, dtype=np.float64)).float()
            colours = strip_colours(normalised(raw_t[None])[0][None], scale)[0]
            spans = []
            for tok, value, colour in zip(text["tokens"], raw_t.tolist(), colours):  # writing the page
                ink = "#fff" if float(np.mean(colour)) < 110 else "#222"
                spans.append(f"<span class='t' style='background:{_hex(colour)};color:{ink}' "
                             f"title='{html.escape(_fmt(value), quote=True)}'>{html.escape(_shown(tok))}</span>")
            parts.append(f"<div class='row'><span class='m'>{html.escape(method)}</span>{''.join(spans)}</div>")
        parts.append("</section>")
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:16px;color:#222}}"
            ".note{font-size:13px;color:#555}.row{margin:4px 0;line-height:1.9}.m{display:inline-block;width:170px;"
            "font-size:12px;color:#555}.t{padding:2px 3px;margin:0 1px;border-radius:3px;font-family:monospace;"
            "white-space:pre}h2{font-size:15px}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return path


def _shown(token: str) -> str:
    return str(token).replace("\n", "\u23ce").replace("\t", "\u21e5")


def _cut(token: str, n: int = 10) -> str:
    return drawn_token(token, n)


def saliency_matrix_figure(values, source_tokens: Sequence[str], target_tokens: Sequence[str], *, signed: bool,
                           title: str = "", what: str = "attribution") -> np.ndarray:
    """The (K, S) matrix of a decoder's K explained output tokens (rows) over S input tokens (columns), each row
    divided by its largest |value|; (H, W, 3) uint8."""
    v = normalised(values)
    if v.dim() != 2 or v.shape != (len(target_tokens), len(source_tokens)):
        raise NnfeatError(f"saliency matrix: values must be (targets, sources) = ({len(target_tokens)}, "
                          f"{len(source_tokens)}); got {tuple(v.shape)}")
    scale = saliency_scale(signed)
    cell = max(6, min(18, 720 // max(v.shape)))
    colours = strip_colours(v, scale).repeat(cell, 0).repeat(cell, 1)
    rows = [_cut(t) for t in target_tokens]
    cols = [_cut(t) for t in source_tokens]
    left = 8 + max(math.ceil(_TEXT.getlength(r)) for r in rows)
    top = 8 + max(math.ceil(_TEXT.getlength(c)) for c in cols)
    head = 20 if title else 0
    pic = Image.new("RGB", (left + colours.shape[1] + 8, head + top + colours.shape[0] + 8), (255, 255, 255))
    draw = ImageDraw.Draw(pic)
    if title:
        draw.text((6, 4), title, fill=(40, 40, 40), font=_TEXT)
    label = Image.new("RGB", (top, colours.shape[1]), (255, 255, 255))  # column labels drawn sideways
    ldraw = ImageDraw.Draw(label)
    for j, c in enumerate(cols):
        ldraw.text((top - 4 - math.ceil(_TEXT.getlength(c)), j * cell + (cell - 12) // 2), c, fill=(40, 40, 40),
                   font=_TEXT)
    pic.paste(label.rotate(90, expand=True), (left, head))
    for i, r in enumerate(rows):
        draw.text((left - 4 - math.ceil(_TEXT.getlength(r)), head + top + i * cell + (cell - 12) // 2), r,
                  fill=(40, 40, 40), font=_TEXT)
    pic.paste(Image.fromarray(np.ascontiguousarray(colours)), (left, head + top))
    note = (f"Rows: explained output tokens; columns: input tokens; {what}, {SCALE_NOTE.replace('text', 'row')}")
    bar = colour_bar(scale.table, f"{scale.low:.3g}", f"{scale.high:.3g}", note, pic.width,
                     middle="0" if signed else None)
    return stack_rows([np.asarray(pic), bar])


def saliency_matrix_png(values, source_tokens: Sequence[str], target_tokens: Sequence[str],
                        path: str | os.PathLike, *, signed: bool, title: str = "", what: str = "attribution") -> Path:
    """:func:`saliency_matrix_figure` written as a PNG."""
    return save_image(path, saliency_matrix_figure(values, source_tokens, target_tokens, signed=signed, title=title,
                                                   what=what))
