"""Attention over tokens as PNG figures, drawn from plain data (arrays or tensors, lists of token strings).

* :func:`model_view_png`: the layers x heads grid of query x key attention matrices (Vig 2019's "model view"),
  one stated colour scale (0..max of the figure, or 0..max of each head), token labels on each cell's axes when
  both sides have at most :data:`LABEL_TOKENS` tokens, per-head scores under each cell.
* :func:`cross_attention_png`: one source x target matrix, rows the decoding steps (generated tokens), columns the
  source tokens (the alignment figure of Bahdanau et al. 2015 / the TensorFlow NMT tutorial).
* :func:`steps_png`: the evolution over decoding steps: per step one strip, a row per head over the source tokens,
  the step's token on the left and the peak source token of the heads' mean on the right (with one head it is the
  cross-attention matrix with its steps spaced out and each step's peak written).

Large matrices are never drawn bigger than a cell budget: above it, each pixel shows the *max* over its block of
(query, key) weights (so thin diagonals and sinks stay visible), and the colour bar says so.
Every figure's bytes depend only on its input (PIL text, nearest upscaling, PNG written atomically).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from nnfeat.analysis.heatmap import COLORMAPS
from nnfeat.errors import NnfeatError
from nnfeat.io import save_image
from nnfeat.views.sheets import colour_bar, stack_rows
from nnfeat.views.sheets import font as _font
from nnfeat.views.token_text import drawn_token

__all__ = ["HEAD_SCALE_NOTE", "LABEL_TOKENS", "MODEL_SCALES", "ModelViewFigure", "as_attention", "cross_attention_figure", "cross_attention_png",
           "model_view_figure", "model_view_png", "score_table", "steps_figure", "steps_png"]

#: token labels are written on each model-view cell when both its sides have at most this many tokens
LABEL_TOKENS = 24
MODEL_SCALES = ("figure", "per-map")
#: what the colour bar says under a figure whose heads each have their own scale
HEAD_SCALE_NOTE = "Each head has its own scale (limits under each tile)"
_LABEL_PX = 12          # px per token when labels are written (a 10 px font row)
_LABEL_CHARS = 10       # token labels are cut to this many characters (an ellipsis says so)
_PAD = 6
_M = 6  # label strips reach this far past the matrix's ends
_BG = (255, 255, 255)
_INK = (40, 40, 40)

_SMALL, _TEXT = _font(10), _font(12)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _shown(token: str) -> str:
    """A token as it is drawn (:func:`~nnfeat.views.token_text.drawn_token`), cut to :data:`_LABEL_CHARS`."""
    return drawn_token(token, _LABEL_CHARS)


def as_attention(weights, what: str = "weights") -> torch.Tensor:
    """(L, H, Tq, Tk) float32 CPU tensor from an array/tensor of that shape or a list of (H, Tq, Tk) ones; finite
    and non-negative, else an :class:`NnfeatError`."""
    if isinstance(weights, (list, tuple)):
        parts = [torch.as_tensor(np.asarray(w) if not torch.is_tensor(w) else w) for w in weights]
        if not parts or any(p.dim() != 3 for p in parts) or len({tuple(p.shape) for p in parts}) != 1:
            raise NnfeatError(f"{what} must be a non-empty list of (heads, Tq, Tk) arrays of one shape; got "
                              f"{[tuple(p.shape) for p in parts]}")
        weights = torch.stack(parts)
    t = (weights if torch.is_tensor(weights) else torch.as_tensor(np.asarray(weights))).detach().float().cpu()
    if t.dim() != 4 or 0 in t.shape:
        raise NnfeatError(f"{what} must be (layers, heads, Tq, Tk) with no empty side; got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise NnfeatError(f"{what} must be finite and >= 0 (attention weights); got min {float(t.min())}")
    return t


def _check_tokens(tokens: Sequence[str], n: int, what: str) -> list[str]:
    tokens = [str(t) for t in tokens]
    if len(tokens) != n:
        raise NnfeatError(f"{what} has {len(tokens)} tokens but the weights have {n} on that side: pass one per row")
    return tokens


def _pool(maps: torch.Tensor, budget: int) -> tuple[torch.Tensor, int, int]:
    """(..., Tq, Tk) -> (maps drawn, px per token, block size): upscaled by an integer ``px`` up to ``budget``
    px a side, or max-pooled in ``block`` x ``block`` blocks when larger than ``budget``."""
    longest = max(maps.shape[-2:])
    if longest <= budget:
        return maps, max(1, budget // longest), 1
    block = math.ceil(longest / budget)
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    pooled = F.max_pool2d(flat, block, block, ceil_mode=True)
    return pooled.reshape(*maps.shape[:-2], *pooled.shape[-2:]), 1, block


def _colours(maps: torch.Tensor, vmax: torch.Tensor | float) -> np.ndarray:
    """(..., h, w) weights -> (..., h, w, 3) uint8 colours of the viridis-like table over 0..``vmax``."""
    table = (COLORMAPS["viridis"] * 255).round().to(torch.uint8)
    vmax = torch.as_tensor(vmax, dtype=torch.float32).clamp_min(1e-12)
    index = (maps / vmax).clamp(0, 1).mul(len(table) - 1).round().long()
    return table[index].numpy()


_text_width = lambda text, font: int(math.ceil(font.getlength(text)))  # noqa: E731


def _row_labels(tokens: Sequence[str], px: int, stride: int, width: int, font=_SMALL) -> Image.Image:
    """A (len*px + 2*_M, width) strip of labels, right-aligned, centred on each ``stride``-th token's rows (the
    first row's centre at ``_M + px/2``: paste it ``_M`` px above the matrix, so end labels are not cut)."""
    strip = Image.new("RGB", (width, len(tokens) * px + 2 * _M), _BG)
    draw = ImageDraw.Draw(strip)
    for i in range(0, len(tokens), stride):  # drawing labels once per figure, not a hot path
        text = _shown(tokens[i])
        draw.text((width - 2 - _text_width(text, font), _M + i * px + px / 2), text, fill=_INK, font=font, anchor="lm")
    return strip


def _col_labels(tokens: Sequence[str], px: int, stride: int, height: int, font=_SMALL) -> Image.Image:
    """The labels of columns: :func:`_row_labels` turned a quarter (read bottom to top), their end at the matrix."""
    return _row_labels(tokens, px, stride, height, font).transpose(Image.Transpose.ROTATE_90)


def _label_room(tokens: Sequence[str], stride: int, font=_SMALL) -> int:
    return 4 + max((_text_width(_shown(t), font) for t in tokens[::stride]), default=0)


def _axis(tokens: Sequence[str], px: int, block: int) -> tuple[list[str], int, int]:
    """The labels of one axis drawn ``px`` px per token (or one pixel per ``block`` tokens): (the tokens at each
    drawn position, px per position, label every ``stride``-th position so labels are >= 12 px apart)."""
    if block > 1:
        return list(tokens[::block]), 1, 12
    return list(tokens), px, max(1, math.ceil(12 / px))


def _block_note(block: int, px: int) -> str:
    if block > 1:
        return f" Matrices over the cell size are shown reduced: each pixel is the max of a {block}x{block} block."
    return f" Each (query, key) weight is a {px}x{px} px square." if px > 1 else ""


@dataclass
class ModelViewFigure:
    """A drawn attention figure: ``image`` (H, W, 3) uint8; ``boxes[(l, h)]`` the (x, y, width, height) px of cell
    (layer l, head h)'s matrix; ``px`` px per token and ``block`` tokens per pixel (one of them is 1);
    ``vmax`` the top of the scale (a float, or an (L, H) array for ``scale="per-map"``)."""

    image: np.ndarray
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] = field(default_factory=dict)
    px: int = 1
    block: int = 1
    vmax: float | np.ndarray = 1.0


def score_table(scores: Mapping[str, object] | None, layer_names: Sequence[str], heads: int) -> dict[str, np.ndarray]:
    """``{score name: (L, H) floats}`` (NaN: the layer has no such score) from ``{score name: (L, H) values}`` or,
    as ``head_score_table`` writes them, ``{layer name: {score name: H values}}`` (layers matched by name)."""
    layers = len(layer_names)
    scores = dict(scores or {})
    if scores and all(isinstance(v, Mapping) for v in scores.values()):
        unknown = [name for name in scores if name not in layer_names]
        if unknown:
            raise NnfeatError(f"scores name layer '{unknown[0]}', which is not one of the figure's layers: use "
                              f"{', '.join(layer_names[:4])}...")
        names = list(dict.fromkeys(k for row in scores.values() for k in row))
        out = {n: np.full((layers, heads), np.nan) for n in names}
        for l, layer in enumerate(layer_names):  # loops over layers and score names
            for n, values in scores.get(layer, {}).items():
                row = np.asarray(values, dtype=np.float64).reshape(-1)
                if row.shape != (heads,):
                    raise NnfeatError(f"score '{n}' of layer '{layer}' has {row.size} values: give one per head ({heads})")
                out[n][l] = row
        return out
    out = {}
    for name, values in scores.items():
        arr = np.asarray(values.detach().cpu() if torch.is_tensor(values) else values, dtype=np.float64)
        if arr.shape != (layers, heads):
            raise NnfeatError(f"score '{name}' has shape {arr.shape}: give one value per head, shape ({layers}, "
                              f"{heads})")
        out[str(name)] = arr
    return out


def model_view_figure(weights, tokens_q: Sequence[str], tokens_k: Sequence[str], *, layer_names: Sequence[str],
                      scores: Mapping[str, object] | None = None, scale: str = "figure",
                      title: str | None = None) -> ModelViewFigure:
    """The layers x heads grid of attention matrices as a picture (see :func:`model_view_png`)."""
    w = as_attention(weights)
    n_layers, n_heads, tq, tk = w.shape
    if scale not in MODEL_SCALES:
        raise NnfeatError(f"unknown scale '{scale}': use figure (one 0..max for every cell) or per-map (0..max per head)")
    tokens_q, tokens_k = _check_tokens(tokens_q, tq, "tokens_q"), _check_tokens(tokens_k, tk, "tokens_k")
    layer_names = [str(n) for n in layer_names]
    if len(layer_names) != n_layers:
        raise NnfeatError(f"layer_names has {len(layer_names)} names for {n_layers} layers: give one per layer")
    table = score_table(scores, layer_names, n_heads)
    labelled = max(tq, tk) <= LABEL_TOKENS
    budget = LABEL_TOKENS * _LABEL_PX if labelled else (192 if n_heads <= 6 else 144)
    maps, px, block = _pool(w, budget)
    if labelled:
        px = _LABEL_PX
    heads_max = w.amax((-2, -1))  # (L, H)
    if scale == "figure":
        top = float(heads_max.max()) or 1.0
        vmax: torch.Tensor | float = top
    else:
        vmax = torch.where(heads_max > 0, heads_max, torch.ones_like(heads_max))[..., None, None]
    colours = _colours(maps, vmax)  # (L, H, h, w, 3)
    colours = colours.repeat(px, 2).repeat(px, 3) if px > 1 else colours
    mh, mw = colours.shape[2:4]
    left = _label_room(tokens_q, 1) if labelled else 0
    top_room = _label_room(tokens_k, 1) if labelled else 0
    caption = 1 + (scale == "per-map") + len(table)
    cell_w, cell_h = max(left + mw, 72), top_room + mh + 15 * caption + 4
    band, title_h = 16, (20 if title else 0)
    width = _PAD + n_heads * (cell_w + _PAD)
    height = title_h + n_layers * (band + cell_h + _PAD) + _PAD
    sheet = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((_PAD, 4), title, fill=_INK, font=_TEXT)
    rows = _row_labels(tokens_q, px, 1, left) if labelled else None
    cols = _col_labels(tokens_k, px, 1, top_room) if labelled else None
    boxes = {}
    for l in range(n_layers):  # assembling a picture once: loops over layers and heads
        y0 = title_h + _PAD + l * (band + cell_h + _PAD)
        draw.text((_PAD, y0), f"L{l}: {layer_names[l]}", fill=_INK, font=_TEXT)
        for h in range(n_heads):
            x0, y1 = _PAD + h * (cell_w + _PAD), y0 + band
            mx, my = x0 + left, y1 + top_room
            if labelled:
                sheet.paste(cols, (mx - _M, y1))
                sheet.paste(rows, (x0, my - _M))
            sheet.paste(Image.fromarray(np.ascontiguousarray(colours[l, h])), (mx, my))
            boxes[(l, h)] = (mx, my, mw, mh)
            lines = [f"L{l} H{h}"] + ([f"0..{_fmt(float(heads_max[l, h]))}"] if scale == "per-map" else [])
            lines += [f"{name} {_fmt(float(v[l, h]))}".replace("nan", "-") for name, v in table.items()]
            for i, line in enumerate(lines):
                draw.text((x0, my + mh + 2 + 15 * i), line, fill=_INK, font=_TEXT)
    if scale == "figure":
        low, high = "0", _fmt(float(vmax))
        note = "One colour scale for every cell: attention weight from 0 to the figure's max."
    else:
        low, high = "0", "max"
        note = f"{HEAD_SCALE_NOTE}: attention weight from 0 to that head's max."
    note += " Rows are queries, columns keys." + _block_note(block, px)
    bar = colour_bar(COLORMAPS["viridis"], low, high, note, width)
    image = stack_rows([np.asarray(sheet), bar])
    return ModelViewFigure(image, boxes, px, block, float(vmax) if scale == "figure" else heads_max.numpy())


def model_view_png(weights, tokens_q: Sequence[str], tokens_k: Sequence[str], path: str | os.PathLike, *,
                   layer_names: Sequence[str], scores: Mapping[str, object] | None = None, scale: str = "figure",
                   title: str | None = None) -> Path:
    """Write the model view: a row per layer, a cell per head, each cell the (Tq, Tk) matrix of that head
    (rows queries, columns keys), labelled ``L<l> H<h>``, its scores under it.

    Args:
        weights: (L, H, Tq, Tk) array / tensor, or a list of L (H, Tq, Tk) ones; finite, >= 0.
        tokens_q, tokens_k: the Tq query and Tk key tokens as the tokenizer spells them (drawn on each cell's
            axes when both are at most :data:`LABEL_TOKENS` long).
        layer_names: L names (written at the start of each row).
        scores: per-head scores printed under each cell (:func:`score_table`: ``{score: (L, H)}`` or
            ``{layer: {score: H values}}``), or None.
        scale: ``figure`` (one 0..max for all cells) or ``per-map`` (0..max of each head, the max written).
    Returns the path of the PNG (written atomically; the same input gives the same bytes).
    """
    fig = model_view_figure(weights, tokens_q, tokens_k, layer_names=layer_names, scores=scores, scale=scale,
                            title=title)
    return save_image(path, fig.image)


def cross_attention_figure(weights, source_tokens: Sequence[str], target_tokens: Sequence[str], *,
                           title: str | None = "cross attention") -> ModelViewFigure:
    """The source x target matrix as a picture (see :func:`cross_attention_png`); ``boxes[(0, 0)]`` its matrix,
    at most 720 px a side (labels every n-th token when rows are under 12 px)."""
    w = torch.as_tensor(np.asarray(weights) if not torch.is_tensor(weights) else weights)
    if w.dim() != 2:
        raise NnfeatError(f"weights must be one (Tq, Tk) matrix; got shape {tuple(w.shape)}: pick a layer and head")
    w = as_attention(w[None, None], "weights (Tq, Tk)")[0, 0]
    rows = _check_tokens(target_tokens, w.shape[0], "target_tokens")
    cols = _check_tokens(source_tokens, w.shape[1], "source_tokens")
    maps, px, block = _pool(w, min(720, 20 * max(w.shape)))
    vmax = float(w.max()) or 1.0
    colours = _colours(maps, vmax)
    colours = colours.repeat(px, 0).repeat(px, 1) if px > 1 else colours
    (rtok, rpx, stride), (ctok, cpx, _) = _axis(rows, px, block), _axis(cols, px, block)
    rlab = _row_labels(rtok, rpx, stride, _label_room(rtok, stride, _TEXT), _TEXT)
    clab = _col_labels(ctok, cpx, stride, _label_room(ctok, stride, _TEXT), _TEXT)
    title_h, (mh, mw) = (20 if title else 0), colours.shape[:2]
    pic = Image.new("RGB", (_PAD + rlab.width + mw + _PAD + _M, title_h + _M + clab.height + mh + _PAD + _M), _BG)
    if title:
        ImageDraw.Draw(pic).text((_PAD, 4), title, fill=_INK, font=_TEXT)
    pic.paste(clab, (_PAD + rlab.width - _M, title_h + _M))
    pic.paste(rlab, (_PAD, title_h + _M + clab.height - _M))
    box = (_PAD + rlab.width, title_h + _M + clab.height, mw, mh)
    pic.paste(Image.fromarray(np.ascontiguousarray(colours)), box[:2])
    every = stride * block
    note = ("Rows: target tokens (decoding steps); columns: source tokens; attention weight, one scale."
            + _block_note(block, px) + (f" One token in {every} is labelled." if every > 1 else ""))
    bar = colour_bar(COLORMAPS["viridis"], "0", _fmt(vmax), note, pic.width)
    return ModelViewFigure(stack_rows([np.asarray(pic), bar]), {(0, 0): box}, px, block, vmax)


def cross_attention_png(weights, source_tokens: Sequence[str], target_tokens: Sequence[str],
                        path: str | os.PathLike, *, title: str | None = "cross attention") -> Path:
    """Write the source x target attention matrix: ``weights`` (Tq, Tk) (one head, or a mean of heads), row i the
    decoding step that produced ``target_tokens[i]``, column j ``source_tokens[j]``; labels on both axes (every
    n-th on long sides); one colour scale 0..max. Returns the path (PNG written atomically, same input -> same
    bytes)."""
    return save_image(path, cross_attention_figure(weights, source_tokens, target_tokens, title=title).image)


def steps_figure(weights, source_tokens: Sequence[str], target_tokens: Sequence[str], *,
                 head_names: Sequence[str] | None = None, title: str | None = None, scale: str = "figure"
                 ) -> np.ndarray:
    """The evolution over decoding steps (see :func:`steps_png`) as an (H, W, 3) uint8 picture."""
    if scale not in MODEL_SCALES:
        raise NnfeatError(f"unknown scale '{scale}': use figure (one 0..max for every head) or per-map (0..max per head)")
    w = torch.as_tensor(np.asarray(weights) if not torch.is_tensor(weights) else weights).detach().float().cpu()
    if w.dim() == 2:
        w = w[None]
    w = as_attention(w[None], "weights (heads, steps, Tk)")[0].transpose(0, 1)  # (S, H, Tk)
    steps, heads, tk = w.shape
    targets = _check_tokens(target_tokens, steps, "target_tokens")
    sources = _check_tokens(source_tokens, tk, "source_tokens")
    names = [str(n) for n in head_names] if head_names is not None else [f"H{h}" for h in range(heads)]
    if len(names) != heads:
        raise NnfeatError(f"head_names has {len(names)} names for {heads} heads: give one per head")
    maps, px, block = _pool(w.reshape(steps * heads, 1, tk), 720)
    maps = maps.reshape(steps, heads, -1)
    px = min(px, 20)
    vmax = float(w.max()) or 1.0
    if scale == "per-map":  # each head's 0..max over every step: (H,) limits, written beside the head's name
        top = w.amax((0, 2))
        top = torch.where(top > 0, top, torch.ones_like(top))
        names = [f"{n} 0..{_fmt(v)}" for n, v in zip(names, top.tolist())]
        colours = _colours(maps, top[None, :, None])  # (S, H, k, 3)
    else:
        colours = _colours(maps, vmax)  # (S, H, k, 3)
    row_h = 10 if heads > 1 else 14
    strips = np.repeat(np.repeat(colours, row_h, 1), px, 2)  # (S, H*row_h... per head rows)
    left = 8 + max(_text_width(f"{s}: {_shown(t)}", _TEXT) for s, t in enumerate(targets))
    hname = max(_text_width(n, _SMALL) for n in names) + 4 if heads > 1 or scale == "per-map" else 0
    src, spx, stride = _axis(sources, px, block)
    clab = _col_labels(src, spx, stride, _label_room(src, stride, _TEXT), _TEXT)
    mean = w.mean(1)  # (S, Tk)
    peak = mean.argmax(-1)
    right = 8 + max(_text_width(f"peak {_shown(sources[int(p)])} {_fmt(float(mean[s, p]))}", _TEXT)
                    for s, p in enumerate(peak))
    strip_h, gap, title_h = heads * row_h, 4, (20 if title else 0)
    mw = strips.shape[2]
    pic = Image.new("RGB", (_PAD + left + hname + mw + _M + right, title_h + clab.height + steps * (strip_h + gap) + _PAD),
                    _BG)
    draw = ImageDraw.Draw(pic)
    if title:
        draw.text((_PAD, 4), title, fill=_INK, font=_TEXT)
    x = _PAD + left + hname
    pic.paste(clab, (x - _M, title_h))
    for s in range(steps):  # one strip per decoding step
        y = title_h + clab.height + s * (strip_h + gap)
        draw.text((_PAD, y + strip_h / 2), f"{s}: {_shown(targets[s])}", fill=_INK, font=_TEXT, anchor="lm")
        for h in range(heads if heads > 1 or scale == "per-map" else 0):
            draw.text((x - 2, y + h * row_h + row_h / 2), names[h], fill=_INK, font=_SMALL, anchor="rm")
        pic.paste(Image.fromarray(np.ascontiguousarray(strips[s].reshape(strip_h, mw, 3))), (x, y))
        p = int(peak[s])
        draw.text((x + mw + 6, y + strip_h / 2), f"peak {_shown(sources[p])} {_fmt(float(mean[s, p]))}", fill=_INK,
                  font=_TEXT, anchor="lm")
    note = ("Each decoding step (its token on the left) is a strip, a row per head, over the source tokens; right: "
            "the source token where the heads' mean attention peaks. "
            + ("One colour scale, attention weight." if scale == "figure" else
               f"{HEAD_SCALE_NOTE.replace('under each tile', 'beside each head')}: attention weight from 0 to "
               "that head's max.")
            + (f" Each pixel is the max over {block} source tokens." if block > 1 else ""))
    bar = colour_bar(COLORMAPS["viridis"], "0", _fmt(vmax) if scale == "figure" else "max", note, pic.width)
    return stack_rows([np.asarray(pic), bar])


def steps_png(weights, source_tokens: Sequence[str], target_tokens: Sequence[str], path: str | os.PathLike, *,
              head_names: Sequence[str] | None = None, title: str | None = None, scale: str = "figure") -> Path:
    """Write the evolution of cross attention over decoding steps.

    Args:
        weights: (H, S, Tk) (per head of one layer, step s's attention over the Tk source tokens: the layout of
            ``cross_attention_steps(...)[b]``, or of a cross-attention layer's (H, Tq, Tk) weights) or (S, Tk)
            (one head).
        source_tokens: Tk tokens; target_tokens: S tokens, the one produced at each step.
        head_names: H names (default ``H0``...).
        scale: ``figure`` (one 0..max for every head) or ``per-map`` (0..max of each head over the steps, written
            beside its name).
    Returns the path (PNG written atomically, same bytes for the same input).
    """
    return save_image(path, steps_figure(weights, source_tokens, target_tokens, head_names=head_names, title=title,
                                         scale=scale))
