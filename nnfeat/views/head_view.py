"""The head view of attention over tokens, drawn from plain data: the query tokens in a left column, the key tokens
in a right one, and a line from query i to key j for each head whose weight ``A[i, j]`` reaches a threshold, with
opacity = weight and colour = head (after Vig 2019's head view, written from scratch, with no CDN).

* :func:`head_view_html`: an offline page (inline CSS and JavaScript, a Content-Security-Policy that allows
  nothing from anywhere but its own script): a layer selector, a toggle per head (double-click: that head alone)
  with its scores, and hover a token to see only its lines.
* :func:`head_view_svg`: the static lines of one layer's heads as an SVG file.

Data is kept compact so 512 tokens x 12 heads x 6 layers stays a few megabytes: only weights >= ``threshold``
(default :data:`DEFAULT_THRESHOLD`) are kept, each rounded to 2 decimals, stored as base64 little-endian arrays.
Lines are drawn as one SVG ``<path>`` per (head, rounded weight), each ``M x1 y1 L x2 y2`` segment of it one
(query, key) line. Same input -> same bytes (no random ids: every id is built from an index).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from nnfeat.errors import NnfeatError
from nnfeat.io import write_text
from nnfeat.views.templating import fill_page, template_text
from nnfeat.views.token_attention_page import score_table

__all__ = ["DEFAULT_THRESHOLD", "ROW_PX", "head_colours", "head_view_csp", "head_view_html", "head_view_svg",
           "line_table"]

#: lines are drawn for weights at or above this (a row of a softmax has at most 1/threshold such keys)
DEFAULT_THRESHOLD = 0.05
#: px per token row, in the page and the SVG
ROW_PX = 16
_TOP = 28          # px above the first token row (the column titles)
_GAP = 240         # px between the two token columns, where the lines are
_CHAR_PX = 7       # a rough width of one character at 12 px, to size the token columns
_MAX_CHARS = 20    # tokens longer than this are cut (the full token is its tooltip)
_MAX_TOKENS = 65535
_PALETTE = ["#2f6fce", "#e8730c", "#23a04a", "#d3343f", "#8553c4", "#8d5a3b", "#d64ea1", "#6a7080", "#aaa512",
            "#18a6bb", "#1b3f8f", "#b5651d"]


def head_colours(n: int) -> list[str]:
    """``n`` distinct CSS colours, one per head: a fixed palette of 12, then golden-angle hues."""
    return [_PALETTE[h] if h < len(_PALETTE) else f"hsl({(h * 137.508 + 20) % 360:.1f},65%,42%)" for h in range(n)]


def _as_layers(weights, layer_names: Sequence[str] | None) -> tuple[torch.Tensor, list[str]]:
    """(L, H, Tq, Tk) float tensor and L names, from an (L, H, Tq, Tk) array/tensor or a ``{name: (H, Tq, Tk)}``
    dict (a leading batch axis of 1 is dropped); weights must be finite and in [0, 1]."""
    if isinstance(weights, Mapping):
        names = [str(k) for k in weights]
        parts = [torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v).detach().float().cpu()
                 for v in weights.values()]
        parts = [p[0] if p.dim() == 4 and p.shape[0] == 1 else p for p in parts]
        if not parts or any(p.dim() != 3 for p in parts) or len({tuple(p.shape) for p in parts}) != 1:
            raise NnfeatError(f"weights must map layer names to (heads, Tq, Tk) tensors of one shape; got "
                              f"{[tuple(p.shape) for p in parts]}")
        w = torch.stack(parts)
        names = [str(n) for n in layer_names] if layer_names is not None else names
    else:
        w = torch.as_tensor(np.asarray(weights) if not torch.is_tensor(weights) else weights).detach().float().cpu()
        if w.dim() == 3:
            w = w[None]
        if layer_names is None:
            raise NnfeatError("layer_names is missing: give one name per layer of the (layers, heads, Tq, Tk) weights")
        names = [str(n) for n in layer_names]
    if w.dim() != 4 or 0 in w.shape:
        raise NnfeatError(f"weights must be (layers, heads, Tq, Tk) with no empty side; got shape {tuple(w.shape)}")
    if len(names) != w.shape[0]:
        raise NnfeatError(f"layer_names has {len(names)} names for {w.shape[0]} layers: give one per layer")
    if max(w.shape[2:]) > _MAX_TOKENS:
        raise NnfeatError(f"{max(w.shape[2:])} tokens is over the head view's {_MAX_TOKENS}: cut the text")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or bool((w > 1 + 1e-3).any()):
        raise NnfeatError(f"weights must be attention weights in [0, 1]; got {float(w.min()):.3g}..{float(w.max()):.3g}")
    return w, names


def _check_tokens(tokens: Sequence[str], n: int, what: str) -> list[str]:
    tokens = [str(t) for t in tokens]
    if len(tokens) != n:
        raise NnfeatError(f"{what} has {len(tokens)} tokens but the weights have {n} on that side: pass one per row")
    return tokens


def line_table(w: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lines of (H, Tq, Tk) weights: (counts (H, Tq) uint16 lines per query row, keys (N,) uint16, percent
    (N,) uint8 the weight x 100 rounded, >= 1), entries in (head, query, key) order, only ``w >= threshold``."""
    if not 0 < threshold <= 1:
        raise NnfeatError(f"threshold {threshold} is not in (0, 1]: use e.g. {DEFAULT_THRESHOLD}")
    keep = w >= threshold
    counts = keep.sum(-1).numpy().astype("<u2")
    _, _, k = keep.nonzero(as_tuple=True)
    pct = (w[keep] * 100).round().clamp(1, 100).numpy().astype(np.uint8)
    return counts, k.numpy().astype("<u2"), pct


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _cut(token: str) -> str:
    text = str(token).replace("\n", "\u23ce").replace("\t", "\u21e5")
    return text if len(text) <= _MAX_CHARS else text[:_MAX_CHARS - 1] + "\u2026"


def _column_px(tokens: Sequence[str]) -> int:
    return 16 + _CHAR_PX * max(7, *(len(_cut(t)) for t in tokens))


def _geometry(tokens_q: Sequence[str], tokens_k: Sequence[str]) -> dict[str, int]:
    """Where things are, in px: ``qx`` the right end of query labels, ``x1``/``x2`` the lines' ends, ``kx`` the
    left end of key labels, ``width``/``height`` of the drawing; token i's row centre is ``top + row*i + row/2``."""
    left, right = _column_px(tokens_q), _column_px(tokens_k)
    rows = max(len(tokens_q), len(tokens_k))
    return {"row": ROW_PX, "top": _TOP, "qx": left, "x1": left + 6, "x2": left + 6 + _GAP, "kx": left + 12 + _GAP,
            "width": left + 12 + _GAP + right, "height": _TOP + ROW_PX * rows + 8}


def _scores_payload(scores, layer_names: Sequence[str], heads: int) -> dict[str, list[list[float | None]]]:
    """``{score: L lists of H numbers}`` (None where a layer has no such score), rounded to 3 decimals."""
    return {name: [[None if np.isnan(v) else round(float(v), 3) for v in row] for row in arr]
            for name, arr in score_table(scores, layer_names, heads).items()}


def head_view_csp(script: str) -> str:
    """The page's policy: nothing from anywhere, inline style, and only the inline script whose text is ``script``."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"


def _inline_json(payload) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``<``, no raw line separators)."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def head_view_html(weights, tokens_q: Sequence[str], tokens_k: Sequence[str], path: str | os.PathLike, *,
                   layer_names: Sequence[str] | None = None, title: str = "attention head view",
                   scores: Mapping[str, object] | None = None, threshold: float = DEFAULT_THRESHOLD,
                   layer: int = 0, heads: Sequence[int] | None = None) -> Path:
    """Write the interactive head view page (atomically).

    Args:
        weights: (L, H, Tq, Tk) array / tensor (or (H, Tq, Tk): one layer), or ``{layer name: (H, Tq, Tk)}``;
            attention weights in [0, 1].
        tokens_q, tokens_k: the Tq query and Tk key tokens as the tokenizer spells them.
        layer_names: L names (default: the dict's keys).
        scores: per-head scores shown beside each head's toggle (``{score: (L, H)}`` or ``{layer: {score: H
            values}}``, see :func:`nnfeat.views.token_attention_page.score_table`), or None.
        threshold: weights below it get no line (the page says so).
        layer, heads: what the page shows first (layer index; head indices, default all): one layer, or one head.
    Returns the path of the page.
    """
    w, names = _as_layers(weights, layer_names)
    n_layers, n_heads, tq, tk = w.shape
    tokens_q, tokens_k = _check_tokens(tokens_q, tq, "tokens_q"), _check_tokens(tokens_k, tk, "tokens_k")
    start = list(range(n_heads)) if heads is None else [int(h) for h in heads]
    if not 0 <= int(layer) < n_layers or not start or any(not 0 <= h < n_heads for h in start):
        raise NnfeatError(f"layer {layer} / heads {start} are not in 0..{n_layers - 1} / 0..{n_heads - 1}: pick "
                          "a layer and heads that exist")
    lines, kept = [], 0
    for l in range(n_layers):  # one layer at a time keeps the boolean masks small
        counts, keys, pct = line_table(w[l], threshold)
        kept += len(keys)
        lines.append({"counts": _b64(counts), "keys": _b64(keys), "pct": _b64(pct)})
    payload = {"tq": [_cut(t) for t in tokens_q], "tk": [_cut(t) for t in tokens_k],
               "fq": tokens_q, "fk": tokens_k, "layers": names, "heads": n_heads,
               "colours": head_colours(n_heads), "threshold": threshold, "geometry": _geometry(tokens_q, tokens_k),
               "scores": _scores_payload(scores, names, n_heads), "lines": lines,
               "start": {"layer": int(layer), "heads": start}}
    total = n_layers * n_heads * tq * tk
    note = (f"{tq} query x {tk} key tokens, {n_layers} layer(s) x {n_heads} head(s). A line for each weight "
            f">= {threshold:g} ({kept} of {total} weights), its opacity the weight rounded to 2 decimals; colour = head.")
    script = "\n" + template_text("head_view.js")
    document = fill_page("head_view.html", title=str(title), css="head_view.css", csp=head_view_csp(script),
                         note=html.escape(note), data=_inline_json(payload), js=script)
    return write_text(path, document)


def _svg_text(x: int, y: int, anchor: str, text: str, cls: str, i: int) -> str:
    return (f'<text id="{cls}{i}" class="{cls}" x="{x}" y="{y}" text-anchor="{anchor}" dominant-baseline="middle">'
            f"{html.escape(_cut(text))}</text>")


def head_view_svg(weights, tokens_q: Sequence[str], tokens_k: Sequence[str], path: str | os.PathLike, *,
                  heads: Sequence[int] | None = None, threshold: float = DEFAULT_THRESHOLD,
                  title: str | None = None) -> Path:
    """Write one layer's lines as a static SVG: ``weights`` (H, Tq, Tk) or (Tq, Tk) (one head); ``heads`` the
    heads drawn (default all). One ``<path data-head="h">`` per (head, weight rounded to 2 decimals), each
    ``M x1 y_q L x2 y_k`` segment a (query, key) line with weight >= ``threshold``. Returns the path."""
    w = torch.as_tensor(np.asarray(weights) if not torch.is_tensor(weights) else weights).detach().float().cpu()
    w, _ = _as_layers(w[None] if w.dim() == 2 else w, ["layer"])
    w = w[0]
    n_heads, tq, tk = w.shape
    tokens_q, tokens_k = _check_tokens(tokens_q, tq, "tokens_q"), _check_tokens(tokens_k, tk, "tokens_k")
    chosen = list(range(n_heads)) if heads is None else [int(h) for h in heads]
    if not chosen or any(not 0 <= h < n_heads for h in chosen):
        raise NnfeatError(f"heads {chosen} are not all in 0..{n_heads - 1}: pick heads of this layer")
    g = _geometry(tokens_q, tokens_k)
    extra = 20 if title else 0
    y = lambda i: extra + g["top"] + g["row"] * i + g["row"] // 2  # noqa: E731
    colours = head_colours(n_heads)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{g["width"]}" height="{g["height"] + extra}" '
             f'viewBox="0 0 {g["width"]} {g["height"] + extra}" font-family="sans-serif" font-size="12">',
             f"<desc>Attention lines: one per (query, key, head) with weight &gt;= {threshold:g}, opacity = weight "
             f"rounded to 2 decimals; heads {', '.join(map(str, chosen))}.</desc>",
             '<rect width="100%" height="100%" fill="#ffffff"/>']
    if title:
        parts.append(f'<text x="4" y="14">{html.escape(str(title))}</text>')
    parts.append(f'<text x="{g["qx"]}" y="{extra + 14}" text-anchor="end" font-weight="bold">queries</text>'
                 f'<text x="{g["kx"]}" y="{extra + 14}" font-weight="bold">keys</text>')
    parts += [_svg_text(g["qx"], y(i), "end", t, "q", i) for i, t in enumerate(tokens_q)]
    parts += [_svg_text(g["kx"], y(j), "start", t, "k", j) for j, t in enumerate(tokens_k)]
    parts.append('<g fill="none" stroke-width="1.5">')
    for h in chosen:  # one head at a time: its lines grouped by rounded weight into a few paths
        counts, keys, pct = line_table(w[h:h + 1], threshold)
        queries = np.repeat(np.arange(tq), counts[0].astype(np.int64))
        for p in np.unique(pct)[::-1]:
            sel = pct == p
            d = "".join(f"M{g['x1']} {y(int(q))}L{g['x2']} {y(int(k))}" for q, k in zip(queries[sel], keys[sel]))
            parts.append(f'<path data-head="{h}" stroke="{colours[h]}" stroke-opacity="{p / 100:.2f}" d="{d}"/>')
    parts.append("</g></svg>\n")
    return write_text(path, "\n".join(parts))
