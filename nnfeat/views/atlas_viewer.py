"""Interactive activation-atlas viewer: one self-contained HTML file (no network, no CDN).

The viewer of an activation atlas (Carter et al., "Activation Atlas", Distill 2019). The file embeds the
mosaic PNG and member thumbnails as base64 data URLs, the cells as inline JSON (checked and completed by
:func:`nnfeat.analysis.atlas.cells.normalize_cells`, the schema of ``cells.json``), and its own CSS and JavaScript:
the package-data files ``templates/atlas.html`` (the body), ``atlas.css`` and ``atlas.js``
(:mod:`nnfeat.views.templating`). It offers pan (drag), zoom (wheel, buttons, +/- keys), a details panel
for the hovered (or clicked = pinned) cell, shading of the cells by attribution to a chosen class, and
a "scale by density" view that draws each icon at sqrt(count / max count) of its cell (at least 1/4).

Stable element ids (used by the browser test and handy for scripting): ``#viewport``, ``#stage``,
``#mosaic`` (the mosaic <img>), ``#shade`` (overlay canvas, one canvas pixel per grid cell),
``#class-frames`` (overlay canvas, 16 px per cell: class-coloured cell frames in "top class" mode),
``#hover-box``, ``#details``, ``#detail-count``, ``#detail-class``, ``#detail-cosine``,
``#detail-labels``, ``#detail-members``, ``#class-select``, ``#zoom-in``, ``#zoom-out``, ``#zoom-fit``,
``#density`` (the checkbox) and ``#density-canvas`` (the density-scaled mosaic, drawn over ``#mosaic``).

The class legend of ``atlas.png`` (:func:`with_class_legend`): when the cells know their top class, a strip under
the mosaic -- a small map of the grid, each cell in its top class's colour (the viewer's own colours), and each
class's swatch, name and cell count. The mosaic above it is left as it was, pixel for pixel.
"""

from __future__ import annotations

import base64
import colorsys
import io
from collections import Counter
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from nnfeat.analysis.atlas.cells import normalize_cells
from nnfeat.errors import NnfeatError
from nnfeat.io import to_uint8, write_text
from nnfeat.views.sheets import font, stack_rows
from nnfeat.views.templating import CSP_EMBEDDED, fill_page, template_text

__all__ = ["LEGEND_CLASSES", "class_colour", "class_legend", "legend_cell_px", "legend_strip", "with_class_legend", "write_atlas_html"]

#: the legend names at most this many classes (the most cells first); the rest are counted in one line
LEGEND_CLASSES = 40


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
    cells: one dict per non-empty cell, as in ``cells.json`` (:data:`nnfeat.analysis.atlas.cells.CELL_FIELDS`):
        ``row``, ``col`` (required, in [0, grid)) and optionally ``count``, ``icon`` (relative path),
        ``position`` [x, y], ``top_class`` {"index", "name"} or None, ``labels`` {label_name: count} or None,
        ``cosine``, ``members`` (dataset indices) and ``attribution`` (one float per class; used for class
        shading when present, else ``top_class``).
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
    records = normalize_cells(cells, grid)
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
    document = fill_page(
        "atlas.html",
        title=str(title),
        css="atlas.css",
        csp=CSP_EMBEDDED,
        mosaic=_data_url(png),
        data=_inline_json(payload),
        js=template_text("atlas.js"),
    )
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
# the class legend under atlas.png


def class_colour(index: int) -> tuple[int, int, int]:
    """The RGB colour of class ``index``: the viewer's (``atlas.js`` ``classColour``: hue ``index * 137.508 + 12``
    degrees, saturation 72 %, lightness 48 %), so the PNG and the page agree."""
    red, green, blue = colorsys.hls_to_rgb(((index * 137.508 + 12) % 360) / 360, 0.48, 0.72)
    return int(round(red * 255)), int(round(green * 255)), int(round(blue * 255))


def class_legend(cells: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The classes of the cells' ``top_class``, the most cells first (ties: the lower class index):
    ``[{"index", "name", "cells", "colour": [r, g, b]}]``; ``[]`` when no cell has a top class."""
    counts = Counter((int(c["top_class"]["index"]), str(c["top_class"]["name"])) for c in cells if c.get("top_class"))
    order = sorted(counts.items(), key=lambda item: (-item[1], item[0][0]))
    return [{"index": i, "name": name, "cells": n, "colour": list(class_colour(i))} for (i, name), n in order]


def legend_cell_px(grid: int) -> int:
    """Px per cell of the legend's grid map (at most 96 px a side, cells 3..12 px); its cell (row, col) is at
    (5 + col * px, 22 + row * px) in the strip."""
    return max(3, min(12, 96 // grid))


def legend_strip(cells: Sequence[Mapping[str, Any]], legend: Sequence[Mapping[str, Any]], grid: int,
                 width: int) -> np.ndarray:
    """(H, max(width, 240), 3) uint8: a line saying what the colours are, a map of the ``grid`` x ``grid`` cells
    each in its top class's colour (row 0 at the top, as in the mosaic), then a swatch, name and cell count per
    class of ``legend`` (:func:`class_legend`; the first :data:`LEGEND_CLASSES`)."""
    width = max(int(width), 240)
    text = font()
    px = legend_cell_px(grid)
    shown, rest = list(legend[:LEGEND_CLASSES]), len(legend) - LEGEND_CLASSES
    items = [f"{entry['name']} ({entry['cells']} cell{'s' if entry['cells'] != 1 else ''})" for entry in shown]
    items += [f"+{rest} more classes"] if rest > 0 else []
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    place, x, y = [], 4, 0
    for label in items:  # flow the entries into lines (a picture drawn once)
        w = 16 + int(np.ceil(draw.textlength(label, font=text))) + 12
        if x > 4 and x + w > width:
            x, y = 4, y + 16
        place.append((x, y))
        x += w
    top = 22 + grid * px + 6
    strip = Image.new("RGB", (width, top + y + 20), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    draw.text((4, 4), "each cell's top class:", fill=(40, 40, 40), font=text)
    draw.rectangle((4, 21, 5 + grid * px, 22 + grid * px), outline=(200, 200, 200))
    colours = {entry["index"]: tuple(entry["colour"]) for entry in legend}
    for cell in cells:
        if cell.get("top_class"):
            cx, cy = 5 + int(cell["col"]) * px, 22 + int(cell["row"]) * px
            draw.rectangle((cx, cy, cx + px - 1, cy + px - 1), fill=colours[int(cell["top_class"]["index"])])
    for (ex, ey), label, entry in zip(place, items, shown + [None]):
        if entry is not None:
            draw.rectangle((ex, top + ey + 2, ex + 11, top + ey + 13), fill=tuple(entry["colour"]))
        draw.text((ex + 16, top + ey + 1), label, fill=(40, 40, 40), font=text)
    return np.asarray(strip)


def with_class_legend(mosaic: np.ndarray, cells: Sequence[Mapping[str, Any]], grid: int
                      ) -> tuple[np.ndarray, list[dict]]:
    """``atlas.png``'s picture: the (H, W, 3) uint8 ``mosaic`` as it is, and under it the :func:`legend_strip` when
    the cells know their top class. Returns (picture, :func:`class_legend`); the mosaic alone and ``[]`` when none
    does."""
    legend = class_legend(cells)
    if not legend:
        return mosaic, []
    return stack_rows([mosaic, legend_strip(cells, legend, grid, mosaic.shape[1])]), legend
