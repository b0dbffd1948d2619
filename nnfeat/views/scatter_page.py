"""The interactive projection scatter: one offline HTML page (``scatter.html``) and a thumbnail sprite beside it.

``nnfeat project`` writes it for one or more layers (one :class:`ScatterPanel` each, side by side, all showing
the same images in the same order). The page draws every point on a 2-D canvas, coloured by label, and offers:
mouse-wheel zoom about the cursor, drag to pan, a reset button per panel, a legend with a checkbox per label
(with its count, plus "all" / "none") that filters every panel at once, and a hover card for the point nearest
the cursor (its thumbnail from the sprite, label, image index and strongest channels); the hovered image is
ringed in every panel. Each panel's header states its layout scores, e.g. the trustworthiness of the 2-D
layout (Venna & Kaski 2001, as computed by :func:`sklearn.manifold.trustworthiness`) and the k-NN label
accuracy in 2-D, with the chance level when given.

Nothing is fetched from the network: the page's script and style are inline (its body is
``templates/scatter.html``, with ``scatter.css`` and ``scatter.js``; :mod:`nnfeat.views.templating`), the
points are inline JSON, and the only other file is the sprite PNG, linked relatively. The page's
Content-Security-Policy allows exactly that: images from the page's own folder, inline style, and the inline
script by its SHA-256 hash.

Stable hooks (for tests and scripting): ``section.panel`` (``data-panel`` = its index) with ``canvas.points``,
``.scores`` and ``button.reset``; ``#legend`` with ``input.label-toggle`` (``data-label`` = label name),
``#show-all``, ``#show-none``; the hover card ``#card`` with ``#card-thumb``, ``#card-label``, ``#card-index``,
``#card-panel`` and ``#card-channels``; and ``window.nnfeatScatter`` (``ready``, ``hasSprite``, ``spriteLoaded``,
``visibleCount()``, ``setVisible(label, on)``, ``panels[p]`` with ``visibleCount()``, ``drawnPoints()``,
``toScreen(i)`` -> [x, y] in client pixels, ``hovered()`` -> point or -1, ``view()``, ``zoomAt()``, ``reset()``).
The hover search uses a grid-bucket index over the map (only the cells near the cursor are scanned).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nnfeat.errors import NnfeatError
from nnfeat.io import save_image, write_text
from nnfeat.views.templating import fill_page, template_text

__all__ = ["ScatterPanel", "write_scatter_page", "scatter_csp", "PAGE_NAME", "SPRITE_NAME", "MAX_SPRITE_SIDE"]

PAGE_NAME = "scatter.html"
SPRITE_NAME = "scatter-sprite.png"
#: The sprite's largest side in pixels; thumbnails shrink (area-averaged) so that all of them fit.
MAX_SPRITE_SIDE = 8192

# What each known score means, shown beside the panel (a tooltip and the page's "about the scores" note).
_SCORE_NAMES = {
    "trustworthiness": ("trustworthiness", "whether each point's nearest neighbours in the 2-D map are also among its "
                        "nearest in the layer's activation space (1 = all of them, about 0.5 = no better than random)"),
    "knn_accuracy": ("k-NN accuracy", "share of points whose k nearest neighbours in the 2-D map vote for the "
                     "point's own label (leave-one-out)"),
    "chance": ("chance", "the k-NN accuracy of guessing the most common label"),
}


@dataclass
class ScatterPanel:
    """One 2-D layout of N images (one layer, one method, one pooling), drawn as one panel of the page.

    name: the panel's heading, e.g. ``"layer3 · umap · mean pool"``.
    xy: (N, 2) float positions, any range (the page rescales them to fit, keeping the aspect ratio; y points up).
    labels: N label names (one per point), or None for unlabelled points.
    indices: N image indices in the source (shown on hover).
    top_channels: per point, its strongest channels as (channel, value) pairs, strongest first (any length).
    scores: numbers shown in the panel's header, e.g. ``{"trustworthiness": 0.93, "knn_accuracy": 0.81,
        "chance": 0.1, "k": 10}``; ``k`` names the neighbourhood size of the other two.
    """

    name: str
    xy: np.ndarray
    labels: Sequence[str] | None
    indices: Sequence[int]
    top_channels: Sequence[Sequence[tuple[int, float]]]
    scores: dict[str, float] = field(default_factory=dict)


def scatter_csp(script: str) -> str:
    """The page's Content-Security-Policy: nothing from anywhere but images beside the page, inline style, and
    the one inline script whose exact text is ``script``."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return f"default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"


def write_scatter_page(
    out: str | os.PathLike,
    panels: Sequence[ScatterPanel],
    *,
    title: str,
    thumbnails: torch.Tensor | None = None,
    notes: Sequence[str] = (),
    shared_sprite: str | None = None,
) -> list[str]:
    """Write the interactive scatter page (and its thumbnail sprite) atomically; return the names written.

    out: a folder (the page is ``out/scatter.html``, the sprite ``out/scatter-sprite.png``) or a path ending
        in ``.html`` (the sprite is then ``<stem>-sprite.png`` beside it).
    panels: one or more panels over the same N points in the same order (same ``indices`` and ``labels``).
    thumbnails: (N, 3, h, w) or (N, 1, h, w) float images in [0, 1], point j's image at j, or None (no images
        on hover). They are tiled row-major into one sprite of at most :data:`MAX_SPRITE_SIDE` px a side.
    notes: lines of text shown under the title (e.g. the command, timings).
    shared_sprite: the URL, relative to the page, of the sprite an earlier page wrote from the same thumbnails
        (a report's projections of one sample): the page uses it and writes no sprite of its own.
    Returns the written files' names relative to the page's folder, page first.
    """
    page, sprite_path = _paths(out)
    if isinstance(panels, ScatterPanel) or not isinstance(panels, Sequence) or not panels:
        raise NnfeatError("panels must be a non-empty list of ScatterPanel (one per layer)")
    n, indices, labels = _shared_points(panels)
    label_names = _label_order(labels) if labels is not None else []
    codes = None
    if labels is not None:
        lookup = {name: k for k, name in enumerate(label_names)}
        codes = [lookup[name] for name in labels]
    sprite_meta = None
    sprite = None
    if thumbnails is not None:
        sprite, sprite_meta = _sprite(thumbnails, n)
        sprite_meta["file"] = sprite_path.name if shared_sprite is None else str(shared_sprite)
        if shared_sprite is not None:
            sprite = None
    payload = {
        "title": str(title),
        "n": n,
        "indices": indices,
        "labels": label_names,
        "label": codes,
        "sprite": sprite_meta,
        "panels": [_panel_payload(p, i, n) for i, p in enumerate(panels)],
    }
    script = "\n" + template_text("scatter.js")
    document = fill_page(
        "scatter.html",
        title=str(title),
        css="scatter.css",
        csp=scatter_csp(script),
        notes="".join(f'<p class="note">{html.escape(str(line))}</p>\n' for line in notes),
        summary=html.escape(_summary(n, len(panels), label_names)),
        panels="".join(_panel_html(i, p) for i, p in enumerate(panels)),
        about=_about_scores(panels),
        data=_inline_json(payload),
        js=script,
    )
    written = []
    if sprite is not None:
        save_image(sprite_path, sprite)
        written.append(sprite_path.name)
    write_text(page, document)
    return [page.name, *written]


# ----------------------------------------------------------------------------------------------------------------
# checking the input


def _paths(out: Any) -> tuple[Path, Path]:
    try:
        out = Path(out)
    except TypeError:
        raise NnfeatError(f"out must be a folder or an .html path, got {out!r}") from None
    if out.suffix.lower() in (".html", ".htm"):
        return out, out.with_name(out.stem + "-sprite.png")
    if out.exists() and not out.is_dir():
        raise NnfeatError(f"out {out} is a file, not a folder; pass a folder or a path ending in .html")
    return out / PAGE_NAME, out / SPRITE_NAME


def _shared_points(panels: Sequence[Any]) -> tuple[int, list[int], list[str] | None]:
    """N, the image indices and the labels, checked to be the same in every panel."""
    for i, panel in enumerate(panels):
        if not isinstance(panel, ScatterPanel):
            raise NnfeatError(f"panels[{i}] must be a ScatterPanel, got {type(panel).__name__}")
    first = panels[0]
    n = _xy(first.xy, 0).shape[0]
    indices = _indices(first.indices, n, 0)
    labels = None if first.labels is None else _labels(first.labels, n, 0)
    for i, panel in enumerate(panels[1:], start=1):
        if _xy(panel.xy, i).shape[0] != n:
            raise NnfeatError(f"panels[{i}].xy has {len(panel.xy)} points but panels[0] has {n}; "
                              "all panels show the same images")
        if _indices(panel.indices, n, i) != indices:
            raise NnfeatError(f"panels[{i}].indices differ from panels[0].indices; all panels show the same images "
                              "in the same order")
        other = None if panel.labels is None else _labels(panel.labels, n, i)
        if other != labels:
            raise NnfeatError(f"panels[{i}].labels differ from panels[0].labels; all panels show the same images "
                              "with the same labels (or None everywhere)")
    return n, indices, labels


def _xy(xy: Any, i: int) -> np.ndarray:
    if torch.is_tensor(xy):
        xy = xy.detach().cpu().numpy()
    try:
        array = np.asarray(xy, dtype=np.float64)
    except (TypeError, ValueError):
        raise NnfeatError(f"panels[{i}].xy must be an (N, 2) array of numbers") from None
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] < 1:
        raise NnfeatError(f"panels[{i}].xy has shape {tuple(array.shape)}; expected (N, 2) with N >= 1")
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise NnfeatError(f"panels[{i}].xy[{bad}] is not finite ({array[bad].tolist()}); every position must be a number")
    return array


def _indices(indices: Any, n: int, i: int) -> list[int]:
    if torch.is_tensor(indices):
        indices = indices.tolist()
    values = np.asarray(indices)
    if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
        raise NnfeatError(f"panels[{i}].indices must be {n} integers (one image index per point), "
                          f"got shape {values.shape} of {values.dtype}")
    return [int(v) for v in values.tolist()]


def _labels(labels: Any, n: int, i: int) -> list[str]:
    if torch.is_tensor(labels) or isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if isinstance(labels, (str, bytes)) or len(labels) != n:
        raise NnfeatError(f"panels[{i}].labels must be {n} label names (one per point) or None")
    return [str(label) for label in labels]


def _label_order(labels: list[str]) -> list[str]:
    """Distinct labels in natural order ("class 2" before "class 10")."""
    def key(name: str) -> list[Any]:
        return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]
    return sorted(set(labels), key=key)


def _panel_payload(panel: ScatterPanel, i: int, n: int) -> dict[str, Any]:
    xy = _normalized(_xy(panel.xy, i))
    top = panel.top_channels
    if isinstance(top, (str, bytes)) or len(top) != n:
        raise NnfeatError(f"panels[{i}].top_channels must hold one list of (channel, value) pairs per point ({n}), "
                          f"got {len(top) if hasattr(top, '__len__') else type(top).__name__}")
    channels = []
    for j, pairs in enumerate(top):
        try:
            channels.append([[int(c), _round(float(v))] for c, v in pairs])
        except (TypeError, ValueError):
            raise NnfeatError(f"panels[{i}].top_channels[{j}] must be (channel, value) pairs, got {pairs!r}") from None
    return {
        "name": str(panel.name),
        "x": np.round(xy[:, 0], 5).tolist(),
        "y": np.round(xy[:, 1], 5).tolist(),
        "top": channels,
        "scores": {str(k): _score(v, i, k) for k, v in _scores(panel.scores, i).items()},
    }


def _scores(scores: Any, i: int) -> Mapping[str, Any]:
    if scores is None:
        return {}
    if not isinstance(scores, Mapping):
        raise NnfeatError(f"panels[{i}].scores must be a dict of name -> number, got {type(scores).__name__}")
    return scores


def _score(value: Any, i: int, key: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise NnfeatError(f"panels[{i}].scores[{key!r}] must be a number, got {value!r}") from None
    return number if math.isfinite(number) else None


def _round(value: float) -> float | None:
    return float(f"{value:.4g}") if math.isfinite(value) else None


def _normalized(xy: np.ndarray) -> np.ndarray:
    """(N, 2) -> (N, 2) in [0, 1], one scale for both axes (keeps the aspect ratio), centred."""
    low, high = xy.min(axis=0), xy.max(axis=0)
    span = float((high - low).max())
    if span <= 0:
        return np.full_like(xy, 0.5)
    return (xy - (low + high) / 2) / span + 0.5


def _sprite(thumbnails: Any, n: int) -> tuple[torch.Tensor, dict[str, int]]:
    """(N, C, h, w) thumbnails -> a (3, rows*h', cols*w') sprite (row-major) and its geometry."""
    if not torch.is_tensor(thumbnails):
        raise NnfeatError(f"thumbnails must be a (N, 3, h, w) float tensor in [0, 1], got {type(thumbnails).__name__}")
    images = thumbnails.detach().float().cpu()
    if images.dim() != 4 or images.shape[0] != n or images.shape[1] not in (1, 3) or min(images.shape[2:]) < 1:
        raise NnfeatError(f"thumbnails have shape {tuple(images.shape)}; expected ({n}, 3, h, w), one per point")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = images.shape[2:]
    shrink = min(1.0, MAX_SPRITE_SIDE / (cols * w), MAX_SPRITE_SIDE / (rows * h))
    if shrink < 1.0:
        size = (max(1, int(h * shrink)), max(1, int(w * shrink)))
        images = F.interpolate(images, size=size, mode="area")
        h, w = size
    images = images.clamp(0, 1)
    tiles = torch.ones(rows * cols, 3, h, w)
    tiles[:n] = images
    sprite = tiles.view(rows, cols, 3, h, w).permute(2, 0, 3, 1, 4).reshape(3, rows * h, cols * w)
    return sprite, {"cols": cols, "rows": rows, "w": int(w), "h": int(h)}


# ----------------------------------------------------------------------------------------------------------------
# the page's static parts


def _summary(n: int, panels: int, labels: list[str]) -> str:
    text = f"{n} image{'' if n == 1 else 's'} \u00b7 {panels} panel{'' if panels == 1 else 's'}"
    if labels:
        text += f" \u00b7 {len(labels)} label{'' if len(labels) == 1 else 's'}"
    return text


def _score_text(key: str, value: float | None, scores: Mapping[str, Any]) -> tuple[str, str, str]:
    """(name shown, value shown, tooltip) of one score."""
    k = scores.get("k")
    at_k = f" at k = {int(k)}" if isinstance(k, (int, float)) and math.isfinite(k) else ""
    shown, meaning = _SCORE_NAMES.get(key, (key, ""))
    if value is None:
        number = "\u2014"
    elif key in ("knn_accuracy", "chance"):
        number = f"{100 * value:.1f}%"
    elif key == "k" and float(value).is_integer():
        number = str(int(value))
    else:
        number = f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    tip = (meaning + at_k) if meaning else key
    return shown, number, tip


def _panel_html(i: int, panel: ScatterPanel) -> str:
    scores = _scores(panel.scores, i)
    items = []
    for key, value in scores.items():
        shown, number, tip = _score_text(str(key), _score(value, i, key), scores)
        items.append(f'<span class="score" data-score="{html.escape(str(key))}" title="{html.escape(tip)}">'
                     f'<span class="score-name">{html.escape(shown)}</span> '
                     f'<span class="score-value">{html.escape(number)}</span></span>')
    name = html.escape(str(panel.name))
    return (
        f'<section class="panel" data-panel="{i}">\n'
        f'  <header><h2>{name}</h2><button class="reset" type="button" title="Back to the whole map">reset</button>'
        f'</header>\n'
        f'  <div class="scores">{"".join(items)}</div>\n'
        f'  <div class="plot"><canvas class="points" aria-label="scatter of {name}"></canvas>'
        f'<canvas class="overlay" aria-hidden="true"></canvas></div>\n'
        f'</section>\n'
    )


def _about_scores(panels: Sequence[ScatterPanel]) -> str:
    keys = {str(k) for p in panels for k in (p.scores or {})}
    lines = [f"<dt>{html.escape(shown)}</dt><dd>{html.escape(meaning)}</dd>"
             for key, (shown, meaning) in _SCORE_NAMES.items() if key in keys]
    if not lines:
        return ""
    return '<dl id="about-scores">' + "".join(lines) + "</dl>"


def _inline_json(payload: Any) -> str:
    """JSON safe inside <script type="application/json">: no '<' (so no '</script>'), no raw line separators."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
