"""The uncertainty figures, drawn from plain data: the per-image :class:`~nnfeat.analysis.uncertainty.Summary`,
the set metrics dicts (:func:`nnfeat.analysis.calibration.set_metrics`), the most uncertain images with their
members' saliency maps.

* :func:`tiles` / :func:`captions` -- per top image: the image, the mean |gradient| map over the members, the
  first :data:`SHOWN_MAPS` maps and the std map, on one stated colour scale (:func:`map_limit`);
* :func:`reliability_diagram` -- one reliability panel (:func:`panel`) per single model and one for the combined
  prediction;
* :func:`sheet` -- the title, the grid, the colour note and the diagram, one above the other.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from nnfeat.analysis.heatmap import COLORMAPS, colorize, overlay
from nnfeat.analysis.uncertainty import Summary
from nnfeat.views.sheets import _font, labelled_sheet, stack_rows

#: how many of the members' saliency maps the sheet shows per top image
SHOWN_MAPS = 4
PANEL = 250


def fmt(x: float | None, spec: str = ".3f") -> str:
    """A number for a caption ("n/a" for None / NaN)."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def class_name(classes: Sequence[str] | None, k: int) -> str:
    """The name of class ``k`` (its index when the names are unknown)."""
    return str(classes[k]) if classes is not None and 0 <= k < len(classes) else str(k)


def title(models: Sequence[str], method: str, source: str, n: int, combined: dict | None) -> str:
    """The figure's title: models, method, source, image count and the combined prediction's numbers."""
    numbers = (f": acc {combined['accuracy']:.3f}, ECE {combined['ece']:.3f}, AUROC {fmt(combined['error_auroc'])}"
               if combined else "")
    source = Path(source).name if source not in ("tensor", "digits") else source
    return f"{','.join(models)}  {method} ({source}, {n} images){numbers}"


def map_limit(maps: torch.Tensor, shown: int) -> float:
    """The top of the figure's one |gradient| colour scale for (S, k, H, W) ``maps``: the 99th percentile of every
    |map| value shown (mean maps and the first ``shown`` maps), so one hot pixel does not darken the rest; larger
    values saturate."""
    if not maps.numel():
        return 1.0
    absmaps = maps.abs()
    values = torch.cat([absmaps.mean(0).flatten(), absmaps[:shown].flatten()]).float()
    return max(float(torch.quantile(values[:2 ** 24], 0.99)), 1e-12)


def tiles(inputs: torch.Tensor, maps: torch.Tensor, std_maps: torch.Tensor, shown: int) -> torch.Tensor:
    """(k, shown + 3, 3, H, W): per (k, 3, H, W) input the image, the mean-map overlay, the first maps' overlays
    (of (S, k, H, W) ``maps``) and the (k, H, W) std map."""
    absmaps = maps.abs()
    hi = map_limit(maps, shown)
    over_mean = overlay(inputs, absmaps.mean(0), 0.0, hi)
    over_each = overlay(inputs, absmaps[:shown].transpose(0, 1), 0.0, hi)
    std_hi = float(std_maps.max()) if std_maps.numel() else 1.0
    std = colorize(std_maps[:, None], 0.0, max(std_hi, 1e-12))[:, 0]
    return torch.cat([inputs[:, None], over_mean[:, None], over_each, std[:, None]], 1)


def captions(s: Summary, top: Sequence[int], labels: torch.Tensor | None, indices: Sequence[int | str],
             classes: Sequence[str] | None, n_maps: int, map_names: Sequence[str], shown: int,
             spearman: torch.Tensor) -> list[str]:
    """The captions of :func:`tiles`, row by row: each top image's numbers, the mean map's prediction, the maps'
    names, the std map's Spearman agreement."""
    out = []
    for j, i in enumerate(top):
        pred = int(s.prediction[i])
        label = "no label" if labels is None else f"label {class_name(classes, int(labels[i]))}"
        name = indices[i] if isinstance(indices[i], str) else f"image {indices[i]}"  # a file's name, as it is
        out.append(f"{name}\n{label}\nH {s.entropy[i]:.2f} MI {s.mutual_information[i]:.2f}")
        out.append(f"mean |grad| of {n_maps}\npred {class_name(classes, pred)}\np {s.mean[i, pred]:.2f} ± "
                   f"{s.std[i, pred]:.2f}")
        out.extend(f"{name}" for name in map_names[:shown])
        out.append(f"std of maps\nSpearman {fmt(float(spearman[j]), '.2f')}")
    return out


def colour_note(width: int, limit: float, std_hi: float) -> np.ndarray:
    """(36, max(width, 240), 3) uint8: the |gradient| colour ramp and what its two scales span."""
    font = _font()
    bar = Image.new("RGB", (max(width, 240), 36), (255, 255, 255))
    draw = ImageDraw.Draw(bar)
    table = (COLORMAPS["viridis"].numpy() * 255).astype(np.uint8)
    ramp = np.repeat(table[np.linspace(0, 255, 120).astype(int)][None], 10, 0)
    bar.paste(Image.fromarray(ramp), (4, 6))
    draw.text((130, 2), f"one scale for every |gradient| map: 0 .. {limit:.3g} (99th percentile; "
                        "above it saturates)", fill=(40, 40, 40), font=font)
    draw.text((130, 18), f"std maps (maps scaled to max 1): 0 .. {std_hi:.3g}", fill=(40, 40, 40), font=font)
    return np.asarray(bar)


def reliability_diagram(names: Sequence[str], metrics: dict, note: str | None) -> np.ndarray:
    """One panel per name (its ``metrics[name]``, or the ``note`` on why there are none): (H, W, 3) uint8."""
    return np.concatenate([panel(name, metrics.get(name), note) for name in names], 1)


def sheet(heading: str, grid: np.ndarray | None, note: np.ndarray | None, diagram: np.ndarray) -> np.ndarray:
    """The whole figure: the ``heading`` over the full width, then the grid and its colour note (when there are
    top images) and the reliability diagram."""
    parts = [diagram] if grid is None else [grid, note, diagram]
    width = max(p.shape[1] for p in parts)
    strip = Image.new("RGB", (width, 22), (255, 255, 255))  # the title over the whole width
    ImageDraw.Draw(strip).text((4, 4), heading, fill=(40, 40, 40), font=_font())
    parts.insert(0, np.asarray(strip))
    return stack_rows(parts)


def grid(images: torch.Tensor, caption_list: Sequence[str], ncol: int) -> np.ndarray:
    """The captioned grid of the top images' tiles."""
    return labelled_sheet(images, caption_list, ncol=ncol)


def _no_labels(draw: ImageDraw.ImageDraw, note: str | None, size: int, font) -> None:
    draw.text((4, 20), "no labels: no calibration", fill=(120, 40, 40), font=font)
    words, line, y = (note or "").split(), "", 38
    for word in words:  # the note, wrapped to the panel
        if draw.textlength(f"{line} {word}", font=font) > size - 8 and line:
            draw.text((4, y), line, fill=(120, 40, 40), font=font)
            line, y = word, y + 16
        else:
            line = f"{line} {word}".strip()
    if line:
        draw.text((4, y), line, fill=(120, 40, 40), font=font)


def panel(name: str, m: dict | None, note: str | None = None, size: int = PANEL) -> np.ndarray:
    """A reliability panel: accuracy per confidence bin (bars) against the diagonal, the gap shaded, the
    numbers written on it."""
    font = _font()
    image = Image.new("RGB", (size, size + 58), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    x0, y0, side = 34, 40, size - 48  # plot box: (x0, y0) top-left, side px
    draw.text((4, 2), name, fill=(20, 20, 20), font=font)
    if m is None:
        _no_labels(draw, note, size, font)
        return np.asarray(image)
    draw.text((4, 18), f"acc {m['accuracy']:.3f}  ECE {m['ece']:.3f}  AUROC {fmt(m['error_auroc'])}",
              fill=(20, 20, 20), font=font)
    bins = m["bins"]
    edges = bins["edges"]

    def px(cx: float, cy: float) -> tuple[float, float]:
        return x0 + cx * side, y0 + (1 - cy) * side

    for b, (acc, conf) in enumerate(zip(bins["accuracy"], bins["confidence"])):
        if acc is None:
            continue
        left, right = px(edges[b], 0)[0], px(edges[b + 1], 0)[0]
        draw.rectangle([left, px(0, acc)[1], right - 1, y0 + side], fill=(70, 110, 200), outline=(40, 60, 120))
        top, bottom = sorted([px(0, acc)[1], px(0, conf)[1]])
        draw.rectangle([left, top, right - 1, bottom], fill=None, outline=(210, 60, 60))
    draw.line([px(0, 0), px(1, 1)], fill=(120, 120, 120), width=1)
    draw.rectangle([x0, y0, x0 + side, y0 + side], outline=(40, 40, 40))
    for v in (0.0, 0.5, 1.0):
        draw.text((px(v, 0)[0] - 8, y0 + side + 2), f"{v:g}", fill=(40, 40, 40), font=font)
        draw.text((4, px(0, v)[1] - 7), f"{v:g}", fill=(40, 40, 40), font=font)
    draw.text((x0, y0 + side + 16), f"confidence, {len(edges) - 1} bins; y: accuracy", fill=(40, 40, 40), font=font)
    draw.text((x0, y0 + side + 30), f"red: gap; n {m['n']}, {m['errors']} errors", fill=(40, 40, 40), font=font)
    return np.asarray(image)


__all__ = ["SHOWN_MAPS", "PANEL", "fmt", "class_name", "title", "map_limit", "tiles", "captions", "colour_note",
           "reliability_diagram", "sheet", "grid", "panel"]
