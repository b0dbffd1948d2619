"""Interactive activation-atlas viewer: one self-contained HTML file (no network, no CDN).

The file embeds the mosaic PNG and member thumbnails as base64 data URLs, the cells as inline JSON,
and its own CSS and JavaScript. It offers pan (drag), zoom (wheel, buttons, +/- keys), a details panel
for the hovered (or clicked = pinned) cell, shading of the cells by attribution to a chosen class, and
a "scale by density" view that draws each icon at sqrt(count / max count) of its cell (at least 1/4).

Stable element ids (used by the browser test and handy for scripting): ``#viewport``, ``#stage``,
``#mosaic`` (the mosaic <img>), ``#shade`` (overlay canvas, one canvas pixel per grid cell),
``#class-frames`` (overlay canvas, 16 px per cell: class-coloured cell frames in "top class" mode),
``#hover-box``, ``#details``, ``#detail-count``, ``#detail-class``, ``#detail-cosine``,
``#detail-labels``, ``#detail-members``, ``#class-select``, ``#zoom-in``, ``#zoom-out``, ``#zoom-fit``,
``#density`` (the checkbox) and ``#density-canvas`` (the density-scaled mosaic, drawn over ``#mosaic``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from nnfeat.errors import NnfeatError
from nnfeat.io import to_uint8, write_text

__all__ = ["write_atlas_html"]


def write_atlas_html(
    path: str | os.PathLike,
    mosaic: str | os.PathLike | np.ndarray | torch.Tensor,
    cells: Sequence[Mapping[str, Any]],
    *,
    classes: Sequence[str] | None,
    grid: int,
    title: str,
    member_thumbnails: Mapping[int, np.ndarray | torch.Tensor] | None = None,
    max_members: int = 64,
) -> Path:
    """Write the interactive atlas viewer to ``path`` (atomically) and return ``path``.

    mosaic: a PNG/JPEG file path, or the image itself: (H,W,3) uint8 / float in [0,1], or (3,H,W) float.
        It is a ``grid`` x ``grid`` layout of icons, row 0 at the top, each cell ``W/grid`` x ``H/grid`` px.
    cells: one dict per non-empty cell with ``row``, ``col`` (required, in [0, grid)) and optionally
        ``count``, ``icon`` (relative path), ``position`` [x, y], ``top_class`` {"index", "name"} or None,
        ``labels`` {label_name: count} or None, ``cosine``, ``members`` (dataset indices) and
        ``attribution`` (one float per class; used for class shading when present, else ``top_class``).
    classes: class names (index = class index), or None to take them from the cells' ``top_class``.
    member_thumbnails: {dataset index: (H,W,3) uint8 or (3,H,W) float image}; only the first
        ``max_members`` members of each cell are embedded (the panel says how many more there are).
    """
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
        raise NnfeatError(f"grid must be a positive integer (cells per side), got {grid!r}")
    grid = int(grid)
    if isinstance(max_members, bool) or not isinstance(max_members, int) or max_members < 0:
        raise NnfeatError(f"max_members must be an integer >= 0, got {max_members!r}")
    png, width, height = _mosaic_png(mosaic)
    if width < grid or height < grid:
        raise NnfeatError(f"mosaic is {width}x{height} px, too small for a {grid}x{grid} grid; pass the stitched mosaic")
    records = [_cell_record(i, cell, grid) for i, cell in enumerate(cells)]
    _check_unique(records)
    class_names = _class_names(classes, records)
    thumbs = _thumbnail_urls(records, member_thumbnails or {}, max_members)
    payload = {
        "title": str(title),
        "grid": grid,
        "width": width,
        "height": height,
        "classes": class_names,
        "has_attribution": any(r["attribution"] is not None for r in records),
        "max_members": max_members,
        "cells": records,
        "thumbs": thumbs,
    }
    values = {
        "TITLE": html.escape(str(title)),
        "MOSAIC": _data_url(png),
        "DATA": _inline_json(payload),
        "CSS": _CSS,
        "JS": _JS,
    }
    document = re.sub(r"@@(TITLE|MOSAIC|DATA|CSS|JS)@@", lambda m: values[m.group(1)], _HTML)
    return write_text(path, document)


# ----------------------------------------------------------------------------------------------------------------
# input checking and encoding


def _mosaic_png(mosaic: Any) -> tuple[bytes, int, int]:
    """Mosaic (path or image) -> (PNG bytes, width, height)."""
    if isinstance(mosaic, (str, os.PathLike)):
        file = Path(mosaic)
        if not file.is_file():
            raise NnfeatError(f"mosaic file not found: {file} (pass the mosaic PNG written by the atlas step, or an array)")
        raw = file.read_bytes()
        try:
            with Image.open(io.BytesIO(raw)) as image:
                image.load()
                if image.format == "PNG":
                    return raw, image.width, image.height
                return _encode_png(np.asarray(image.convert("RGB"))), image.width, image.height
        except (UnidentifiedImageError, OSError) as err:
            raise NnfeatError(f"mosaic file {file} is not a readable image ({err}); pass a PNG or JPEG") from None
    if isinstance(mosaic, (np.ndarray, torch.Tensor)):
        array = _image_array(mosaic, "mosaic")
        return _encode_png(array), array.shape[1], array.shape[0]
    raise NnfeatError(f"mosaic must be a file path or an image array, got {type(mosaic).__name__}")


def _image_array(image: Any, what: str) -> np.ndarray:
    """(H,W,3)/(H,W) uint8|float or (3,H,W)/(1,H,W) float array/tensor -> (H,W,3) or (H,W) uint8."""
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[2] not in (1, 3, 4):
        image = np.transpose(image, (1, 2, 0))
    try:
        array = to_uint8(image)
    except (TypeError, ValueError) as err:
        raise NnfeatError(f"{what} is not an image array ({err}); expected (H,W,3) uint8 or (3,H,W) float") from None
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or min(array.shape[:2]) < 1:
        raise NnfeatError(f"{what} has shape {tuple(np.shape(image))}; expected (H,W,3) uint8 or (3,H,W) float in [0,1]")
    return array


def _encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise NnfeatError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _as_float(value: Any, what: str) -> float | None:
    """A finite float, or None for missing / NaN (JSON has no NaN)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise NnfeatError(f"{what} must be a number, got {value!r}") from None
    return number if math.isfinite(number) else None


def _numbers(values: Any, dtype: Any, what: str) -> np.ndarray:
    """A flat numeric array from a list/array/tensor, or a one-line NnfeatError."""
    if torch.is_tensor(values):
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values, dtype=dtype).ravel()
    except (TypeError, ValueError):
        raise NnfeatError(f"{what} must be a list of numbers, got {values!r}") from None


def _cell_record(i: int, cell: Mapping[str, Any], grid: int) -> dict[str, Any]:
    """Validate one cell dict and reduce it to the JSON the viewer reads."""
    if not isinstance(cell, Mapping):
        raise NnfeatError(f"cells[{i}] must be a dict with 'row' and 'col', got {type(cell).__name__}")
    for key in ("row", "col"):
        if key not in cell:
            raise NnfeatError(f"cells[{i}] has no '{key}' key; every cell needs 'row' and 'col' in 0..{grid - 1}")
    row, col = _as_int(cell["row"], f"cells[{i}]['row']"), _as_int(cell["col"], f"cells[{i}]['col']")
    for key, value in (("row", row), ("col", col)):
        if not 0 <= value < grid:
            raise NnfeatError(f"cells[{i}]['{key}'] = {value} is outside the {grid}x{grid} grid (expected 0..{grid - 1})")
    count = _as_int(cell.get("count", 0) or 0, f"cells[{i}]['count']")

    top = cell.get("top_class")
    if top is not None:
        if not isinstance(top, Mapping) or "index" not in top:
            raise NnfeatError(f"cells[{i}]['top_class'] must be {{'index': i, 'name': s}} or None, got {top!r}")
        index = _as_int(top["index"], f"cells[{i}]['top_class']['index']")
        top = {"index": index, "name": str(top.get("name", f"class {index}"))}

    labels = cell.get("labels")
    if labels is not None:
        if not isinstance(labels, Mapping):
            raise NnfeatError(f"cells[{i}]['labels'] must be {{label_name: count}} or None, got {type(labels).__name__}")
        labels = {str(k): _as_int(v, f"cells[{i}]['labels'][{k!r}]") for k, v in labels.items()}

    position = cell.get("position")
    if position is not None:
        position = [_as_float(v, f"cells[{i}]['position']") for v in _numbers(position, float, f"cells[{i}]['position']")[:2]]

    members = [int(m) for m in _numbers(cell.get("members") or [], np.int64, f"cells[{i}]['members']")]

    attribution = cell.get("attribution")
    if attribution is not None:
        values = _numbers(attribution, float, f"cells[{i}]['attribution']")
        attribution = [_as_float(v, f"cells[{i}]['attribution']") or 0.0 for v in values]

    icon = cell.get("icon")
    return {
        "row": row,
        "col": col,
        "count": count,
        "icon": None if icon is None else str(icon),
        "position": position,
        "top_class": top,
        "labels": labels,
        "cosine": _as_float(cell.get("cosine"), f"cells[{i}]['cosine']"),
        "members": members,
        "attribution": attribution,
    }


def _check_unique(records: list[dict[str, Any]]) -> None:
    seen: dict[tuple[int, int], int] = {}
    for i, record in enumerate(records):
        key = (record["row"], record["col"])
        if key in seen:
            raise NnfeatError(f"cells[{seen[key]}] and cells[{i}] are both at row {key[0]}, col {key[1]}; one entry per cell")
        seen[key] = i


def _class_names(classes: Sequence[str] | None, records: list[dict[str, Any]]) -> list[str]:
    """Class names indexed by class index; checks top_class indices and attribution lengths against them."""
    lengths = {len(r["attribution"]) for r in records if r["attribution"] is not None}
    if len(lengths) > 1:
        raise NnfeatError(f"cells have attribution vectors of different lengths {sorted(lengths)}; one float per class")
    if classes is not None:
        names = [str(c) for c in classes]
    else:
        known = {r["top_class"]["index"]: r["top_class"]["name"] for r in records if r["top_class"] is not None}
        n = max([len(known) and max(known) + 1, *lengths, 0])
        names = [known.get(i, f"class {i}") for i in range(n)]
    for length in lengths:
        if length != len(names):
            raise NnfeatError(f"cells' attribution has {length} values but there are {len(names)} classes; one per class")
    for i, record in enumerate(records):
        top = record["top_class"]
        if top is not None and not 0 <= top["index"] < len(names):
            raise NnfeatError(f"cells[{i}]['top_class']['index'] = {top['index']} but there are {len(names)} classes")
    return names


def _thumbnail_urls(
    records: list[dict[str, Any]], thumbnails: Mapping[int, Any], max_members: int
) -> dict[str, str]:
    """{str(dataset index): PNG data URL} for the first ``max_members`` members of each cell."""
    wanted = {m for r in records for m in r["members"][:max_members]}
    urls: dict[str, str] = {}
    for index, image in thumbnails.items():
        index = int(index)
        if index in wanted and str(index) not in urls:
            urls[str(index)] = _data_url(_encode_png(_image_array(image, f"member_thumbnails[{index}]")))
    return urls


def _inline_json(payload: Any) -> str:
    """JSON safe to place inside <script type="application/json">: no '<' so no '</script>' can occur."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


# ----------------------------------------------------------------------------------------------------------------
# the page: markup, style, script. Placeholders are @@NAME@@, substituted in one pass.

_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>@@TITLE@@</title>
<style>@@CSS@@</style>
</head>
<body>
<header id="toolbar">
  <h1 id="title">@@TITLE@@</h1>
  <div class="group" role="group" aria-label="zoom">
    <button id="zoom-out" type="button" title="Zoom out (-)">&minus;</button>
    <span id="zoom-level" title="Zoom level">100%</span>
    <button id="zoom-in" type="button" title="Zoom in (+)">+</button>
    <button id="zoom-fit" type="button" title="Fit to window (0)">Fit</button>
  </div>
  <div class="group">
    <label title="Draw each icon at a size that grows with the square root of its cell's sample count">
      <input id="density" type="checkbox"> Scale by density</label>
  </div>
  <div class="group">
    <label for="class-select">Shade by class</label>
    <select id="class-select"><option value="">none</option><option value="*">top class (colours)</option></select>
  </div>
  <span id="hint">drag to pan &middot; wheel to zoom &middot; click a cell to pin it</span>
</header>
<main>
  <section id="viewport" tabindex="0" aria-label="Atlas mosaic: drag to pan, wheel to zoom, click a cell to pin it">
    <div id="stage">
      <img id="mosaic" alt="activation atlas mosaic" draggable="false" src="@@MOSAIC@@">
      <canvas id="density-canvas" hidden></canvas>
      <canvas id="shade"></canvas>
      <canvas id="class-frames"></canvas>
      <div id="pin-box" class="cell-box" hidden></div>
      <div id="hover-box" class="cell-box" hidden></div>
    </div>
    <div id="legend" hidden></div>
    <div id="status"></div>
  </section>
  <aside id="details" aria-live="polite">
    <p id="details-empty">Hover a cell of the atlas to see its samples. Click a cell to pin it; Esc unpins.</p>
    <div id="details-body" hidden>
      <h2 id="detail-title"></h2>
      <canvas id="detail-icon" width="176" height="176"></canvas>
      <dl>
        <dt>count</dt><dd id="detail-count"></dd>
        <dt>class</dt><dd id="detail-class"></dd>
        <dt>cosine</dt><dd id="detail-cosine"></dd>
        <dt>position</dt><dd id="detail-position"></dd>
        <dt>icon</dt><dd id="detail-icon-path"></dd>
      </dl>
      <h3>labels</h3>
      <div id="detail-labels" class="bars"></div>
      <div id="attribution-section" hidden>
        <h3>attribution (top classes)</h3>
        <div id="detail-attribution" class="bars"></div>
      </div>
      <h3>members <span id="detail-member-count"></span></h3>
      <div id="detail-members"></div>
    </div>
  </aside>
</main>
<script id="atlas-data" type="application/json">@@DATA@@</script>
<script>@@JS@@</script>
</body>
</html>
"""

_CSS = """
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; }
body { display: flex; flex-direction: column; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
  color: #1d2330; background: #fff; }
#toolbar { display: flex; align-items: center; gap: 18px; padding: 8px 14px; border-bottom: 1px solid #d9dde5;
  background: #f7f8fa; flex-wrap: wrap; }
#toolbar h1 { font-size: 15px; margin: 0; font-weight: 600; white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
  max-width: 40vw; }
#toolbar .group { display: flex; align-items: center; gap: 6px; }
#toolbar button { min-width: 30px; height: 28px; border: 1px solid #b9c0cc; border-radius: 5px; background: #fff;
  font-size: 14px; cursor: pointer; }
#toolbar button:hover { background: #eef3fb; }
#toolbar select { height: 28px; border: 1px solid #b9c0cc; border-radius: 5px; background: #fff; padding: 0 6px; }
#zoom-level { min-width: 48px; text-align: center; font-variant-numeric: tabular-nums; }
#hint { color: #6b7383; margin-left: auto; }
main { flex: 1; display: flex; min-height: 0; }
#viewport { flex: 1; position: relative; overflow: hidden; cursor: crosshair; touch-action: none; outline: none;
  background: #e9ecf1; background-image: radial-gradient(#d5dae2 1px, transparent 1px); background-size: 16px 16px; }
#viewport.dragging { cursor: grabbing; }
#stage { position: absolute; left: 0; top: 0; transform-origin: 0 0; box-shadow: 0 1px 6px rgba(0, 0, 0, .25); }
#mosaic { display: block; width: 100%; height: 100%; user-select: none; -webkit-user-drag: none; background: #fff; }
#density-canvas { position: absolute; left: 0; top: 0; width: 100%; height: 100%; background: #fff; pointer-events: none; }
#shade, #class-frames { position: absolute; left: 0; top: 0; width: 100%; height: 100%; image-rendering: pixelated;
  pointer-events: none; }
.cell-box { position: absolute; pointer-events: none; border-style: solid; }
#hover-box { border-color: #1769e0; box-shadow: 0 0 0 1px rgba(255, 255, 255, .8); }
#hover-box.empty { border-color: #9aa3b2; border-style: dashed; }
#pin-box { border-color: #f08c00; }
#status { position: absolute; left: 8px; bottom: 8px; padding: 3px 8px; border-radius: 4px; background: rgba(255, 255, 255, .9);
  color: #333; font-variant-numeric: tabular-nums; pointer-events: none; }
#status:empty { display: none; }
#legend { position: absolute; right: 8px; bottom: 8px; max-width: 240px; max-height: 45%; overflow: auto; padding: 6px 8px;
  border-radius: 5px; background: rgba(255, 255, 255, .92); box-shadow: 0 1px 4px rgba(0, 0, 0, .2); font-size: 12px; }
#legend .item { display: flex; align-items: center; gap: 6px; cursor: pointer; white-space: nowrap; }
#legend .ramp { height: 10px; border-radius: 2px; margin: 4px 0 1px; border: 1px solid #ccd;
  background: linear-gradient(to right, #ececec, #5a5a5a); }
#legend .ends { display: flex; justify-content: space-between; color: #6b7383; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; flex: none; border: 1px solid rgba(0,0,0,.25); }
#details { width: 340px; flex: none; overflow-y: auto; border-left: 1px solid #d9dde5; padding: 12px 14px; background: #fff; }
#details-empty { color: #6b7383; }
#details h2 { font-size: 14px; margin: 0 0 8px; }
#details h2 .pinned { color: #f08c00; font-weight: 500; font-size: 12px; margin-left: 6px; }
#details h3 { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #5a6272; margin: 14px 0 6px; }
#detail-icon { display: block; width: 176px; height: 176px; border: 1px solid #d9dde5; background: #fff; }
#details dl { display: grid; grid-template-columns: 70px 1fr; gap: 2px 8px; margin: 10px 0 0; }
#details dt { color: #6b7383; }
#details dd { margin: 0; font-variant-numeric: tabular-nums; word-break: break-all; }
.bars .bar { display: grid; grid-template-columns: 96px 1fr 48px; align-items: center; gap: 6px; margin: 2px 0; }
.bars .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.bars .name.top { font-weight: 600; }
.bars .track { height: 10px; background: #eef0f4; border-radius: 2px; position: relative; overflow: hidden; }
.bars .fill { position: absolute; top: 0; bottom: 0; left: 0; background: #4a7fd4; }
.bars .fill.neg { background: #d4574a; }
.bars .num { text-align: right; font-variant-numeric: tabular-nums; color: #333; }
.muted { color: #8a92a1; }
#detail-members { display: flex; flex-wrap: wrap; gap: 4px; }
#detail-members img { width: 56px; height: 56px; image-rendering: pixelated; border: 1px solid #d9dde5; }
#detail-members .chip { padding: 1px 5px; border-radius: 3px; background: #eef0f4; font-size: 11px; }
"""

_JS = r"""
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("atlas-data").textContent);
  const $ = (id) => document.getElementById(id);
  const grid = data.grid, W = data.width, H = data.height, cellW = W / grid, cellH = H / grid;
  const cells = new Map();
  for (const c of data.cells) cells.set(c.row * grid + c.col, c);

  const viewport = $("viewport"), stage = $("stage"), mosaic = $("mosaic"), shade = $("shade"), frames = $("class-frames");
  const FRAME = 16;  // class-frames canvas pixels per cell
  const hoverBox = $("hover-box"), pinBox = $("pin-box"), statusLine = $("status"), legend = $("legend");
  const select = $("class-select"), zoomLevel = $("zoom-level");
  const view = { scale: 1, tx: 0, ty: 0, fit: 1, touched: false };
  let pinned = null, shown = null, drag = null, lastPointer = null;

  stage.style.width = W + "px";
  stage.style.height = H + "px";
  shade.width = grid;
  shade.height = grid;
  frames.width = grid * FRAME;
  frames.height = grid * FRAME;

  function classColour(index, alpha) {
    const hue = (index * 137.508 + 12) % 360;
    return "hsla(" + hue.toFixed(1) + ", 72%, 48%, " + alpha + ")";
  }
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function fmt(x, digits) { return (x === null || x === undefined) ? "\u2014" : Number(x).toFixed(digits); }

  // ---- view transform: screen = translate(tx, ty) + scale * mosaic -------------------------------------------
  function apply() {
    stage.style.transform = "translate(" + view.tx + "px, " + view.ty + "px) scale(" + view.scale + ")";
    zoomLevel.textContent = Math.round(view.scale * 100) + "%";
    const border = Math.max(2 / view.scale, 0.5) + "px";
    hoverBox.style.borderWidth = border;
    pinBox.style.borderWidth = border;
  }
  function fit() {
    const r = viewport.getBoundingClientRect();
    const s = Math.max(Math.min(r.width / W, r.height / H) * 0.96, 1e-3);
    view.fit = s; view.scale = s;
    view.tx = (r.width - W * s) / 2; view.ty = (r.height - H * s) / 2;
    apply();
  }
  function zoomAt(factor, cx, cy) {
    const s = Math.min(Math.max(view.scale * factor, view.fit * 0.25), Math.max(view.fit * 64, 8));
    const k = s / view.scale;
    view.tx = cx - (cx - view.tx) * k; view.ty = cy - (cy - view.ty) * k; view.scale = s;
    view.touched = true;
    apply();
  }
  function zoomCentre(factor) {
    const r = viewport.getBoundingClientRect();
    zoomAt(factor, r.width / 2, r.height / 2);
  }
  function cellAt(clientX, clientY) {
    const r = viewport.getBoundingClientRect();
    const x = (clientX - r.left - view.tx) / view.scale, y = (clientY - r.top - view.ty) / view.scale;
    if (x < 0 || y < 0 || x >= W || y >= H) return null;
    const row = Math.min(Math.floor(y / cellH), grid - 1), col = Math.min(Math.floor(x / cellW), grid - 1);
    return { row: row, col: col, cell: cells.get(row * grid + col) || null };
  }
  function placeBox(box, row, col) {
    box.style.left = col * cellW + "px"; box.style.top = row * cellH + "px";
    box.style.width = cellW + "px"; box.style.height = cellH + "px";
    box.hidden = false;
  }

  // ---- hover, pin, details -----------------------------------------------------------------------------------
  function setStatus(hit) {
    if (!hit) { statusLine.textContent = ""; return; }
    let text = "row " + hit.row + ", col " + hit.col;
    if (hit.cell) {
      text += " \u00b7 " + hit.cell.count + " samples";
      if (hit.cell.top_class) text += " \u00b7 " + hit.cell.top_class.name;
    } else {
      text += " \u00b7 empty";
    }
    statusLine.textContent = text + " \u00b7 zoom " + Math.round(view.scale * 100) + "%";
  }
  function updateHover(clientX, clientY) {
    const hit = cellAt(clientX, clientY);
    setStatus(hit);
    if (!hit) { hoverBox.hidden = true; return; }
    placeBox(hoverBox, hit.row, hit.col);
    hoverBox.classList.toggle("empty", !hit.cell);
    if (hit.cell && !pinned) showDetails(hit.cell);
  }
  function togglePin(clientX, clientY) {
    const hit = cellAt(clientX, clientY);
    if (!hit || !hit.cell || hit.cell === pinned) { unpin(); if (hit && hit.cell) showDetails(hit.cell); return; }
    pinned = hit.cell;
    placeBox(pinBox, hit.row, hit.col);
    showDetails(hit.cell);
  }
  function unpin() {
    pinned = null; pinBox.hidden = true;
    if (shown) showDetails(shown);
  }

  function bars(container, entries, options) {
    container.replaceChildren();
    if (!entries.length) { container.appendChild(el("div", "muted", options.empty)); return; }
    const scale = Math.max.apply(null, entries.map((e) => Math.abs(e[1]))) || 1;
    for (const [name, value] of entries) {
      const row = el("div", "bar");
      const label = el("span", "name" + (name === options.highlight ? " top" : ""), name);
      label.title = name;
      const track = el("span", "track"), fill = el("span", "fill" + (value < 0 ? " neg" : ""));
      fill.style.width = (100 * Math.abs(value) / scale).toFixed(1) + "%";
      track.appendChild(fill);
      row.append(label, track, el("span", "num", options.format(value)));
      container.appendChild(row);
    }
  }
  function drawIcon(cell) {
    const canvas = $("detail-icon"), ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!mosaic.complete || !mosaic.naturalWidth) return;
    const sx = mosaic.naturalWidth / W, sy = mosaic.naturalHeight / H;
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(mosaic, cell.col * cellW * sx, cell.row * cellH * sy, cellW * sx, cellH * sy, 0, 0, canvas.width, canvas.height);
  }
  function showDetails(cell) {
    shown = cell;
    $("details-empty").hidden = true;
    $("details-body").hidden = false;
    const details = $("details");
    details.dataset.row = cell.row; details.dataset.col = cell.col;
    const title = $("detail-title");
    title.replaceChildren(document.createTextNode("Cell row " + cell.row + ", col " + cell.col));
    if (pinned === cell) title.appendChild(el("span", "pinned", "pinned"));
    drawIcon(cell);
    $("detail-count").textContent = String(cell.count);
    const cls = $("detail-class");
    cls.replaceChildren();
    if (cell.top_class) {
      const swatch = el("span", "swatch");
      swatch.style.background = classColour(cell.top_class.index, 1);
      cls.append(swatch, document.createTextNode(" " + cell.top_class.name));
    } else {
      cls.textContent = "\u2014";
    }
    $("detail-cosine").textContent = fmt(cell.cosine, 3);
    $("detail-position").textContent = cell.position ? "[" + fmt(cell.position[0], 3) + ", " + fmt(cell.position[1], 3) + "]" : "\u2014";
    $("detail-icon-path").textContent = cell.icon || "\u2014";

    const labels = Object.entries(cell.labels || {}).sort((a, b) => b[1] - a[1]);
    bars($("detail-labels"), labels, { empty: "no labels", highlight: cell.top_class && cell.top_class.name, format: String });

    const attrSection = $("attribution-section");
    attrSection.hidden = !cell.attribution;
    if (cell.attribution) {
      const top = cell.attribution.map((v, i) => [data.classes[i] || "class " + i, v])
        .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1])).slice(0, 6);
      bars($("detail-attribution"), top, { empty: "", highlight: cell.top_class && cell.top_class.name, format: (v) => v.toPrecision(3) });
    }

    const members = $("detail-members");
    members.replaceChildren();
    const listed = cell.members.slice(0, data.max_members);
    $("detail-member-count").textContent = "(" + cell.members.length + ")";
    for (const index of listed) {
      const url = data.thumbs[String(index)];
      if (url) {
        const image = el("img");
        image.src = url; image.alt = "sample " + index; image.title = "dataset index " + index;
        members.appendChild(image);
      } else {
        members.appendChild(el("span", "chip", "#" + index));
      }
    }
    if (cell.members.length > listed.length) members.appendChild(el("span", "muted", "+" + (cell.members.length - listed.length) + " more"));
    if (!cell.members.length) members.appendChild(el("span", "muted", "no members recorded"));
  }

  // ---- class shading: overlay canvas with one pixel per cell -------------------------------------------------
  function classScores(index) {
    // score in [0, 1] per cell: attribution to the class relative to the strongest cell, else top-class match
    const scores = new Map();
    let best = 0;
    if (data.has_attribution) {
      for (const c of data.cells) if (c.attribution) best = Math.max(best, c.attribution[index]);
      for (const c of data.cells) {
        const a = c.attribution ? c.attribution[index] : 0;
        scores.set(c, best > 0 ? Math.max(a, 0) / best : 0);
      }
    } else {
      for (const c of data.cells) scores.set(c, c.top_class && c.top_class.index === index ? 1 : 0);
    }
    return { scores: scores, best: best };
  }
  function drawShade() {
    const ctx = shade.getContext("2d"), frameCtx = frames.getContext("2d");
    ctx.clearRect(0, 0, grid, grid);
    frameCtx.clearRect(0, 0, frames.width, frames.height);
    const mode = select.value;
    shade.dataset.mode = mode;
    legend.replaceChildren();
    legend.hidden = mode === "";
    if (mode === "") return;
    if (mode === "*") {
      const present = new Map();
      for (const c of data.cells) {
        if (!c.top_class) continue;
        frameCtx.fillStyle = classColour(c.top_class.index, 1);
        frameCtx.fillRect(c.col * FRAME, c.row * FRAME, FRAME, FRAME);
        frameCtx.clearRect(c.col * FRAME + 1, c.row * FRAME + 1, FRAME - 2, FRAME - 2);
        present.set(c.top_class.index, (present.get(c.top_class.index) || 0) + 1);
      }
      legend.appendChild(el("div", "muted", "top class of each cell (click to focus)"));
      for (const [index, n] of [...present.entries()].sort((a, b) => b[1] - a[1])) {
        const item = el("div", "item");
        const swatch = el("span", "swatch");
        swatch.style.background = classColour(index, 1);
        item.append(swatch, document.createTextNode(data.classes[index] + " (" + n + ")"));
        item.addEventListener("click", () => { select.value = String(index); drawShade(); });
        legend.appendChild(item);
      }
      return;
    }
    const index = Number(mode);
    const shading = classScores(index);
    let strong = 0;
    for (const [c, score] of shading.scores) {
      if (score >= 0.5) strong += 1;
      ctx.fillStyle = "rgba(255, 255, 255, " + (0.85 * (1 - score)).toFixed(3) + ")";
      ctx.fillRect(c.col, c.row, 1, 1);
    }
    const name = data.classes[index];
    const head = el("div");
    const swatch = el("span", "swatch");
    swatch.style.background = classColour(index, 1);
    head.append(swatch, document.createTextNode(" " + (data.has_attribution ? "attribution to " : "top class: ") + name));
    legend.appendChild(head);
    if (data.has_attribution) {
      legend.appendChild(el("div", "ramp"));
      const ends = el("div", "ends");
      ends.append(el("span", null, "\u2264 0 (faded)"), el("span", null, fmt(shading.best, 3) + " (clear)"));
      legend.appendChild(ends);
      legend.appendChild(el("div", "muted", strong + " of " + data.cells.length + " cells \u2265 50% of the strongest"));
    } else {
      legend.appendChild(el("div", "muted", strong + " of " + data.cells.length + " cells; the others are faded"));
    }
  }
  data.classes.forEach((name, index) => {
    const option = el("option", null, name);
    option.value = String(index);
    select.appendChild(option);
  });
  select.addEventListener("change", drawShade);

  // ---- input ---------------------------------------------------------------------------------------------------
  viewport.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    viewport.focus({ preventScroll: true });
    drag = { x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty, moved: false };
    viewport.setPointerCapture(e.pointerId);
  });
  viewport.addEventListener("pointermove", (e) => {
    lastPointer = { x: e.clientX, y: e.clientY };
    if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (!drag.moved && Math.hypot(dx, dy) > 3) { drag.moved = true; viewport.classList.add("dragging"); }
      if (drag.moved) {
        view.tx = drag.tx + dx; view.ty = drag.ty + dy; view.touched = true;
        apply();
        return;
      }
    }
    updateHover(e.clientX, e.clientY);
  });
  function endDrag(e, cancelled) {
    if (!drag) return;
    const moved = drag.moved;
    drag = null;
    viewport.classList.remove("dragging");
    if (!moved && !cancelled) togglePin(e.clientX, e.clientY);
  }
  viewport.addEventListener("pointerup", (e) => endDrag(e, false));
  viewport.addEventListener("pointercancel", (e) => endDrag(e, true));
  viewport.addEventListener("pointerleave", () => { if (!drag) { hoverBox.hidden = true; setStatus(null); } });
  viewport.addEventListener("wheel", (e) => {
    e.preventDefault();
    const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
    const r = viewport.getBoundingClientRect();
    zoomAt(Math.exp(-e.deltaY * unit * 0.0015), e.clientX - r.left, e.clientY - r.top);
    updateHover(e.clientX, e.clientY);
  }, { passive: false });
  $("zoom-in").addEventListener("click", () => zoomCentre(1.5));
  $("zoom-out").addEventListener("click", () => zoomCentre(1 / 1.5));
  $("zoom-fit").addEventListener("click", () => { view.touched = false; fit(); });
  document.addEventListener("keydown", (e) => {
    if (e.target === select || e.ctrlKey || e.metaKey || e.altKey) return;
    const step = 60;
    if (e.key === "+" || e.key === "=") zoomCentre(1.25);
    else if (e.key === "-" || e.key === "_") zoomCentre(0.8);
    else if (e.key === "0") { view.touched = false; fit(); }
    else if (e.key === "Escape") unpin();
    else if (e.key.startsWith("Arrow")) {
      view.tx += e.key === "ArrowLeft" ? step : e.key === "ArrowRight" ? -step : 0;
      view.ty += e.key === "ArrowUp" ? step : e.key === "ArrowDown" ? -step : 0;
      view.touched = true;
      apply();
    } else return;
    e.preventDefault();
    if (lastPointer) updateHover(lastPointer.x, lastPointer.y);
  });
  new ResizeObserver(() => { if (!view.touched) fit(); }).observe(viewport);
  // ---- density: each icon scaled by sqrt(count / max count), at least MIN_DENSITY of its cell (REFERENCE §4.8) ----
  const densityBox = $("density"), densityCanvas = $("density-canvas"), MIN_DENSITY = 0.25;
  const maxCount = Math.max(1, ...data.cells.map((c) => c.count || 0));
  function densityScale(cell) { return Math.max(MIN_DENSITY, Math.sqrt((cell.count || 0) / maxCount)); }
  function drawDensity() {
    densityCanvas.hidden = !densityBox.checked;
    if (!densityBox.checked || !mosaic.complete || !mosaic.naturalWidth) return;
    densityCanvas.width = mosaic.naturalWidth; densityCanvas.height = mosaic.naturalHeight;
    const ctx = densityCanvas.getContext("2d");
    const sx = mosaic.naturalWidth / W, sy = mosaic.naturalHeight / H, w = cellW * sx, h = cellH * sy;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, densityCanvas.width, densityCanvas.height);
    ctx.imageSmoothingEnabled = true;
    for (const cell of data.cells) {
      const k = densityScale(cell), x = cell.col * w, y = cell.row * h;
      ctx.drawImage(mosaic, x, y, w, h, x + w * (1 - k) / 2, y + h * (1 - k) / 2, w * k, h * k);
    }
  }
  densityBox.addEventListener("change", drawDensity);
  mosaic.addEventListener("load", () => { if (shown) drawIcon(shown); drawDensity(); });

  fit();
  drawShade();
  drawDensity();
  // for scripting and tests: the view state and the current cell (read-only use intended)
  window.atlasViewer = { data: data, view: view, fit: fit, zoomAt: zoomAt, shown: () => shown, pinned: () => pinned,
                         densityScale: densityScale };
})();
"""
