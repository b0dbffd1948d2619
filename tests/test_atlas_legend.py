"""The class legend of ``atlas.png``: under the mosaic (left pixel for pixel as it was) a strip with a map of the
grid, each cell in its top class's colour, and a swatch per class; ``cells.json`` names the classes and their
colours, the viewer's own. No classes: the mosaic alone, as before."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from nnfeat.analysis.atlas.stitch import stitch
from nnfeat.data import load_images
from nnfeat.ops.atlas import AtlasSettings, build_atlas
from nnfeat.views.atlas_viewer import class_colour, class_legend, legend_cell_px, with_class_legend

FAST = dict(samples=400, per_image=2, layout="pca", grid=4, min_count=3, steps=4, batch=4, icon_size=32)


def _cells(classes: list[int | None], grid: int) -> list[dict]:
    return [{"row": i // grid, "col": i % grid,
             "top_class": None if c is None else {"index": c, "name": f"class-{c}"}} for i, c in enumerate(classes)]


def _swatch_pixels(strip: np.ndarray, colour) -> int:
    return int((strip == np.array(colour, dtype=np.uint8)).all(-1).sum())


def test_legend_strip_known_cells():
    grid = 3
    mosaic = np.random.default_rng(0).integers(0, 256, (grid * 20, grid * 20, 3), dtype=np.uint8)
    cells = _cells([2, 2, 7, None, 2, 7, 11], grid)
    picture, legend = with_class_legend(mosaic, cells, grid)
    # the classes, most cells first, in the viewer's colours (atlas.js: hsl(index * 137.508 + 12, 72 %, 48 %))
    assert [(e["index"], e["name"], e["cells"]) for e in legend] == [(2, "class-2", 3), (7, "class-7", 2),
                                                                     (11, "class-11", 1)]
    assert legend[0]["colour"] == list(class_colour(2)) and class_colour(0) == (211, 70, 34)  # hsl(12, 72%, 48%)
    assert len({tuple(e["colour"]) for e in legend}) == 3
    # the mosaic is untouched; the strip is under it
    assert picture.shape[0] > mosaic.shape[0] and np.array_equal(picture[:60, :60], mosaic)
    strip = picture[mosaic.shape[0]:]
    px = legend_cell_px(grid)
    for cell in cells:  # the map: each cell in its class's colour, an empty one (no class) white
        y, x = 22 + cell["row"] * px + px // 2, 5 + cell["col"] * px + px // 2
        want = class_colour(cell["top_class"]["index"]) if cell["top_class"] else (255, 255, 255)
        assert tuple(strip[y, x]) == want, cell
    below = strip[22 + grid * px + 6:]
    for entry in legend:  # a 12 x 12 swatch per class under the map
        assert _swatch_pixels(below, entry["colour"]) >= 144, entry["name"]
    # deterministic; without classes the mosaic alone, the very array
    again, _ = with_class_legend(mosaic, cells, grid)
    assert np.array_equal(again, picture)
    plain, none = with_class_legend(mosaic, _cells([None, None], grid), grid)
    assert plain is mosaic and none == [] and class_legend([]) == []


def test_many_classes_are_counted_not_listed():
    cells = _cells(list(range(60)), 8)
    picture, legend = with_class_legend(np.zeros((256, 256, 3), np.uint8), cells, 8)
    assert len(legend) == 60
    strip = picture[256:]
    assert _swatch_pixels(strip[22 + 8 * legend_cell_px(8) + 6:], legend[39]["colour"]) >= 144
    assert _swatch_pixels(strip[22 + 8 * legend_cell_px(8) + 6:], legend[40]["colour"]) == 0  # "+20 more classes"


def test_digits_atlas_png_has_a_legend_matching_its_cells(digits_model, tmp_path):
    result = build_atlas(digits_model, "relu3", load_images("digits"), tmp_path, AtlasSettings(**FAST), progress=False)
    record = json.loads((tmp_path / "cells.json").read_text())
    cells = record["cells"]
    legend = record["legend"]
    assert legend["by"] == "top_class" and legend["mosaic_height"] == 4 * 32
    # every class that is some cell's top class is named, with its cell count and colour
    named = {e["name"]: e for e in legend["classes"]}
    tops = [c["top_class"]["name"] for c in cells]
    assert set(named) == set(tops) and all(named[n]["cells"] == tops.count(n) for n in named)
    assert all(e["colour"] == list(class_colour(e["index"])) for e in legend["classes"])
    picture = np.asarray(Image.open(tmp_path / "atlas.png").convert("RGB"))
    assert picture.shape[0] > 4 * 32                                  # taller by the strip
    icons = [tmp_path / c["icon"] for c in cells]
    mosaic = stitch(icons, np.array([c["row"] for c in cells]), np.array([c["col"] for c in cells]), 4, 32)
    assert np.array_equal(picture[:4 * 32, :4 * 32], mosaic)          # the mosaic as it was
    strip, px = picture[4 * 32:], legend_cell_px(4)
    for cell in cells:  # the map's colour of each cell is its class's legend colour
        y, x = 22 + cell["row"] * px + px // 2, 5 + cell["col"] * px + px // 2
        assert list(strip[y, x]) == named[cell["top_class"]["name"]]["colour"], cell
    for entry in legend["classes"]:
        assert _swatch_pixels(strip[22 + 4 * px + 6:], entry["colour"]) >= 144
    # the viewer's page still embeds the square mosaic (its cells are laid over it)
    assert result.html is not None and result.html.is_file()
    assert result.sheet().shape[0] > 4 * 32
