"""The projection figures and page, drawn from plain data: (N, 2) layouts, (N,) integer labels and their names,
(N, C) pooled activations, (N, 3, t, t) thumbnails.

* :func:`plot` -- one layout as a PNG scatter coloured by label (:data:`PALETTE`), a legend below, optionally
  image thumbnails on a coarse grid;
* :func:`write_page` -- the interactive scatter (:mod:`nnfeat.views.scatter_page`) of every layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from nnfeat.analysis.atlas.layout import normalize_layout
from nnfeat.analysis.projection import top_channels
from nnfeat.views.scatter_page import ScatterPanel, write_scatter_page
from nnfeat.views.sheets import _font

#: A categorical palette (RGB); labels beyond its length cycle through it.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
           (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
           (219, 219, 141), (158, 218, 229)]
PLOT_SIZE = 480
THUMB_GRID = 14


def plot(xy: np.ndarray, labels: np.ndarray | None, label_names: Sequence[str], seed: int = 0,
         thumbs: torch.Tensor | None = None) -> np.ndarray:
    """(H, W, 3) uint8: the (N, 2) layout ``xy`` as a scatter, points coloured by their (N,) ``labels``, a legend
    of ``label_names`` below; points drawn in a ``seed``-ed random order (no label always on top). With
    ``thumbs`` (N, 3, t, t), image thumbnails on a grid (:func:`paste_thumbnails`)."""
    xy = normalize_layout(xy)
    size, margin = PLOT_SIZE, 8
    legend_rows = 0 if labels is None else -(-len(label_names) // 4)
    canvas = Image.new("RGB", (size, size + 16 * legend_rows + (4 if legend_rows else 0)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    px = np.round(margin + xy * (size - 2 * margin)).astype(int)
    px[:, 1] = size - 1 - px[:, 1]  # y up
    order = np.random.default_rng(seed).permutation(len(px))  # no label always on top
    radius = 3 if len(px) <= 2000 else 2 if len(px) <= 20000 else 1
    colours = [PALETTE[int(l) % len(PALETTE)] for l in labels] if labels is not None else None
    for i in order:
        x, y = px[i]
        draw.ellipse((x - radius, y - radius, x + radius, y + radius),
                     fill=colours[i] if colours else (60, 60, 60))
    if thumbs is not None:
        paste_thumbnails(canvas, xy, thumbs, labels, size, margin)
    font = _font()
    for j, name in enumerate(label_names if labels is not None else []):
        x0, y0 = 8 + (j % 4) * (size // 4), size + 2 + (j // 4) * 16
        draw.rectangle((x0, y0 + 2, x0 + 10, y0 + 12), fill=PALETTE[j % len(PALETTE)])
        draw.text((x0 + 14, y0), str(name)[:14], fill=(40, 40, 40), font=font)
    return np.asarray(canvas)


def paste_thumbnails(canvas: Image.Image, xy: np.ndarray, thumbs: torch.Tensor, labels: np.ndarray | None,
                     size: int, margin: int) -> None:
    """On a THUMB_GRID x THUMB_GRID grid over the normalized (N, 2) ``xy``, each cell's point nearest its centre
    shows its image there, framed in its label's colour."""
    cell = (size - 2 * margin) / THUMB_GRID
    thumb = max(8, int(cell) - 2)
    grid = np.minimum((xy * THUMB_GRID).astype(int), THUMB_GRID - 1)
    centre = (grid + 0.5) / THUMB_GRID
    dist = np.square(xy - centre).sum(1)
    best: dict[tuple[int, int], int] = {}
    for i in np.argsort(dist, kind="stable"):
        best.setdefault((int(grid[i, 0]), int(grid[i, 1])), int(i))
    draw = ImageDraw.Draw(canvas)
    for (gx, gy), i in sorted(best.items()):
        image = (thumbs[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        tile = Image.fromarray(image).resize((thumb - 4, thumb - 4), Image.NEAREST)
        x0 = int(margin + gx * cell + 1)
        y0 = int(size - margin - (gy + 1) * cell + 1)
        frame = PALETTE[int(labels[i]) % len(PALETTE)] if labels is not None else (60, 60, 60)
        draw.rectangle((x0, y0, x0 + thumb - 1, y0 + thumb - 1), fill=frame)  # the image's label colour
        canvas.paste(tile, (x0 + 2, y0 + 2))


def write_page(path: Path, *, title: str, layers: Sequence[str], xy: dict[str, np.ndarray],
               vectors: dict[str, np.ndarray], scores: dict[str, dict], indices: np.ndarray,
               labels: np.ndarray | None, label_names: Sequence[str], method: str, pool: str, k: int,
               thumbs: torch.Tensor | None, shared_sprite: str | None) -> list[str]:
    """The interactive scatter page of every layer (one panel each: positions ``xy[layer]``, hover text of the
    top channels of ``vectors[layer]``, ``scores[layer]``); returns the names of the files written."""
    names = [label_names[int(l)] for l in labels] if labels is not None else None
    panels = []
    for layer in layers:
        index, values = top_channels(vectors[layer], 3)
        tops = [list(zip(map(int, r), map(float, v))) for r, v in zip(index, values)]
        s = scores[layer]
        shown = {"trustworthiness": s["trustworthiness"], "k": k}
        if s.get("knn_accuracy_2d") is not None:
            shown.update(knn_accuracy=s["knn_accuracy_2d"], chance=s["chance"])
        panels.append(ScatterPanel(name=f"{layer} · {method} · {pool} pool", xy=xy[layer], labels=names,
                                   indices=[int(i) for i in indices], top_channels=tops, scores=shown))
    notes = [f"trustworthiness at k={k} (1 = every 2-D neighbour is a neighbour in the layer); "
             f"kNN: leave-one-out {k}-NN label accuracy in the 2-D map"]
    return write_scatter_page(path, panels, title=title, thumbnails=thumbs, notes=notes, shared_sprite=shared_sprite)


__all__ = ["PALETTE", "PLOT_SIZE", "THUMB_GRID", "plot", "paste_thumbnails", "write_page"]
