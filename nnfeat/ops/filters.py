"""The filters operation and its result: :func:`filters` -> :class:`FiltersResult` (kind ``filters``).

The sheet shows one tile per filter of a conv layer, zero at exactly mid-grey on a symmetric scale (see
:mod:`nnfeat.analysis.filters`): RGB tiles for a first convolution that reads the RGB image, and for deeper
layers each filter's grey per-input-channel tiles as one mosaic. A strip under the sheet states the scale's
numbers (max |w|). With renders or dataset examples, each filter is one row of the sheet: filter tile |
its unit's render | its top dataset examples (the patch around the strongest activation). The drawing is
:mod:`nnfeat.views.filters_page`, the tiles :mod:`nnfeat.analysis.filters`.

Files: ``filters.png`` (the sheet), ``filter-NNNN.png`` (each shown filter's input channels as captioned grey
tiles; one mosaic picture for filters with more than 64 input channels), ``render-NNNN.png`` with renders, and
``filters.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch

from nnfeat.analysis.examples import example_crops, top_examples
from nnfeat.analysis.filters import (channel_mosaic, channel_tiles, conv_layers, conv_weight, filter_bounds,
                                     filter_stats, filter_tiles, find_conv, input_channel_offsets, SCALES)
from nnfeat.data import ImageSet, load_images
from nnfeat.engine.objectives import channel
from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model, as_model
from nnfeat.ops.render import render
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.units import Units, format_units, parse_units
from nnfeat.views import filters_page as page
from nnfeat.views.filters_page import CAPTIONED_CHANNELS, ROW_TILE  # noqa: F401 - their old home

#: filters shown by default for a plain LAYER (all of them up to this many)
MAX_FILTERS = 64
#: render steps by default with ``with_renders``
STEPS = 128


@dataclass(repr=False)
class FiltersResult(Result):
    """What :func:`filters` returns.

    Attributes:
        weight: (F, I, kh, kw) the shown filters' raw weights (float32, CPU); I = in_channels / groups.
        tiles: (F, 3, h, w) in [0, 1]: RGB tiles (``rgb``) or per-input-channel mosaics.
        channel_tiles: (F, I, kh, kw) grey in [0, 1], every input channel of every shown filter.
        bounds: (F,) the scale's max |w| for each shown filter (all equal with ``scale="layer"``).
        indices: the shown filters' output channels; ``total``: the layer's filter count.
        renders: (F, 3, H, W) the units' renders or None; ``render_values`` (F,) their objective values.
        examples: (F, k, 3, S, S) the top dataset examples' patches or None; ``example_records`` per filter.
    """

    model: str
    layer: str
    module: str
    shape: tuple[int, int, int, int]
    conv: dict
    rgb: bool
    scale: str
    weight: torch.Tensor
    tiles: torch.Tensor
    channel_tiles: torch.Tensor
    bounds: torch.Tensor
    indices: list[int]
    offsets: list[int]
    total: int
    capped: bool
    bias: torch.Tensor | None = None
    renders: torch.Tensor | None = None
    render_values: torch.Tensor | None = None
    render_settings: dict | None = None
    examples: torch.Tensor | None = None
    example_records: list[list[dict]] | None = None
    source: str | None = None
    device: str = "cpu"
    elapsed: float = 0.0
    command: str | None = None
    kind: ClassVar[str] = "filters"

    # -- pictures ----------------------------------------------------------------------------------
    @property
    def images(self) -> torch.Tensor:
        return self.tiles

    @property
    def has_rows(self) -> bool:
        return self.renders is not None or self.examples is not None

    @property
    def sheet_columns(self) -> int | None:  # type: ignore[override]
        if not self.has_rows:
            return None
        return 1 + (self.renders is not None) + (self.examples.shape[1] if self.examples is not None else 0)

    def row_size(self) -> int:
        """The side of every tile of a row sheet (see :func:`nnfeat.views.filters_page.row_size`)."""
        return page.row_size(self.tiles, self.renders, self.examples)

    def sheet_images(self) -> torch.Tensor:
        return page.row_tiles(self.tiles, self.renders, self.examples)

    def filter_caption(self, i: int) -> str:
        return page.filter_caption(self.indices[i], self.weight[i], self.offsets[i], self.conv["groups"] > 1)

    def captions(self) -> list[str]:
        return page.filters_captions(self.indices, self.weight, self.offsets, self.conv["groups"] > 1,
                                     self.render_values if self.renders is not None else None,
                                     self.example_records if self.examples is not None else None)

    def title(self) -> str:
        return page.filters_title(self.model, self.layer, self.shape, len(self.indices), self.total)

    def scale_note(self) -> str:
        return page.scale_note(self.scale, self.bounds, self.rgb, self.capped, len(self.indices), self.total)

    def scale_strip(self, width: int) -> np.ndarray:
        """A strip: the grey ramp from -m (black) through 0 (mid-grey) to +m (white), with its numbers, and the
        scale's note wrapped to the width."""
        return page.scale_strip(self.scale, self.bounds, self.scale_note(), width)

    def sheet(self) -> np.ndarray:
        return page.filters_sheet(self.sheet_images(), self.captions(), self.sheet_columns, self.title(), self.scale,
                                  self.bounds, self.scale_note())

    # -- record and files ------------------------------------------------------------------------
    def record(self) -> dict:
        stats = filter_stats(self.weight)
        per_filter = []
        for i, o in enumerate(self.indices):
            entry = {"filter": o, "max_abs": float(stats["max_abs"][i]), "norm": float(stats["norm"][i]),
                     "scale_max_abs": float(self.bounds[i]),
                     "input_channels": [self.offsets[i], self.offsets[i] + self.shape[1] - 1],
                     "bias": None if self.bias is None else float(self.bias[i]),
                     "files": [f"filter-{o:04d}.png"]}
            if self.renders is not None:
                entry["render_value"] = float(self.render_values[i])
                entry["files"].append(f"render-{o:04d}.png")
            if self.examples is not None:
                entry["examples"] = self.example_records[i]
            per_filter.append(entry)
        layer_max = float(self.bounds.max()) if self.scale == "layer" and len(self.bounds) else None
        return {"model": self.model, "layer": self.layer, "module": self.module, "shape": list(self.shape),
                "conv": self.conv, "display": "rgb" if self.rgb else "per-input-channel grey",
                "scale": {"mode": self.scale, "rule": "value = w / (2 * max|w|) + 0.5 (0 -> 0.5 mid-grey)",
                          "max_abs": layer_max},
                "total_filters": self.total, "shown": self.indices, "capped": self.capped,
                "note": self.scale_note(), "renders": self.render_settings, "source": self.source,
                "device": self.device, "filters": per_filter}

    def write_files(self, out: Path) -> list[str]:
        return page.write_filter_pictures(out, self.layer, self.indices, self.weight, self.bounds, self.channel_tiles,
                                          self.offsets, self.rgb, self.renders)


def _select(model, layer: str | Units | None, units: Sequence[int] | None, max_filters: int):
    """(conv name, module, shown filter indices, capped, plain) for ``layer`` (units text; None: the first
    conv); ``plain``: no filters were picked (every filter, capped at ``max_filters``)."""
    if max_filters < 1:
        raise NnfeatError(f"--max-filters must be at least 1; got {max_filters}")
    parsed = None
    if layer is not None:
        parsed = parse_units(layer, what="layer") if isinstance(layer, str) else layer
        if parsed.position is not None:
            raise NnfeatError(f"filters take no position: drop '@{','.join(map(str, parsed.position))}' "
                              f"(use {parsed.layer}:0..7 to pick filters)")
    name, conv = find_conv(model, parsed.layer if parsed is not None else None)
    chosen = units if units is not None else (parsed.channels if parsed is not None else None)
    if chosen is not None:
        indices = Units(name, tuple(int(c) for c in chosen)).channel_list((conv.out_channels,))
        if not indices:
            raise NnfeatError(f"no filter selected: use {name}:0..7 or {name}:3")
        return name, conv, indices, False, False
    indices = list(range(conv.out_channels))
    return name, conv, indices[:max_filters], len(indices) > max_filters, True


def check_filters(model, layer: str | Units | None = None, *, units: Sequence[int] | None = None,
                  scale: str = "layer", max_filters: int = MAX_FILTERS) -> tuple[str, list[int]]:
    """The conv layer and filters :func:`filters` would show (one-line errors for anything wrong; no work)."""
    if scale not in SCALES:
        raise NnfeatError(f"unknown scale '{scale}': use {' or '.join(SCALES)}")
    name, _, indices, _, _ = _select(model, layer, units, max_filters)
    return name, indices


def filters(model: Model, layer: str | Units | None = None, *, units: Sequence[int] | None = None, scale: str = "layer",
            max_filters: int = MAX_FILTERS, with_renders: bool = False, images: ImageSet | str | None = None,
            steps: int = STEPS, k: int = 4, seed: int = 0, progress: bool = False,
            batch_size: int = 128) -> FiltersResult:
    """The filters of a conv layer as signed tiles (zero exactly mid-grey), optionally beside each unit's
    render and top dataset examples.

    Args:
        model: an nnfeat ``Model``.
        layer: the conv layer, as units text: ``"conv1"`` (every filter, at most ``max_filters``),
            ``"conv1:0..7"`` (those filters); None: the model's first ``nn.Conv2d``.
        units: filter indices (overrides the selector of ``layer``).
        scale: ``layer`` (one max |w| for the layer) or ``filter`` (each filter its own).
        max_filters: the cap for a plain layer (the first ones are shown; the sheet says so).
        with_renders: render each shown filter's unit (channel objective; one batch, one unit per item).
        images: a source for top dataset examples (:class:`ImageSet` or anything ``load_images`` takes).
        steps, seed: the renders' settings; ``k``: examples per filter; ``batch_size``: images per pass.
    Returns:
        :class:`FiltersResult`.
    """
    started = time.perf_counter()
    model = as_model(model)
    if scale not in SCALES:
        raise NnfeatError(f"unknown scale '{scale}': use {' or '.join(SCALES)}")
    name, conv, indices, capped, plain = _select(model, layer, units, max_filters)
    if with_renders and steps < 1:
        raise NnfeatError(f"--steps must be at least 1; got {steps}")
    if images is not None and k < 1:
        raise NnfeatError(f"--k must be at least 1; got {k}")
    full = conv_weight(conv)  # (O, I, kh, kw)
    bounds_all = filter_bounds(full, scale)
    pick = torch.as_tensor(indices, dtype=torch.long)
    weight, bounds = full[pick], bounds_all[pick]
    rgb = weight.shape[1] == 3 and name == conv_layers(model)[0] and getattr(model, "in_channels", 3) == 3
    grey = channel_tiles(full, scale)[pick]
    tiles = filter_tiles(full, scale)[pick] if rgb else channel_mosaic(grey)
    offsets = input_channel_offsets(conv)[pick].tolist()
    bias = conv.bias.detach().float().cpu()[pick] if conv.bias is not None else None
    objective = format_units(name, indices)

    renders = values = settings = None
    if with_renders:
        # the objective object, not its text: a layer named like "0" (an nn.Sequential) is no expression
        rendered = render(model, channel(name, indices), steps=steps, seed=seed, progress=progress)
        renders, values = rendered.images, rendered.final_values
        settings = {"objective": objective, "steps": steps, "seed": seed, "size": rendered.settings["size"],
                    "precision": rendered.settings["precision"]}

    crops = records = None
    source = None
    if images is not None:
        image_set = images if isinstance(images, ImageSet) else load_images(images, size=model.input_size)
        found = top_examples(model, name, indices, image_set, k, score="max", batch_size=batch_size,
                             progress=progress)
        size = tuple(model.input_size)
        crops, records = example_crops(image_set, found, size, max(1, min(size) // 4))
        source = image_set.name

    conv_info = {"in_channels": conv.in_channels, "out_channels": conv.out_channels, "groups": conv.groups,
                 "kernel_size": list(conv.kernel_size), "stride": list(conv.stride),
                 "padding": conv.padding if isinstance(conv.padding, str) else list(conv.padding),
                 "dilation": list(conv.dilation), "bias": conv.bias is not None}
    command = cli_command("filters", model.name, name if plain else objective,
                          scale=None if scale == "layer" else scale, with_renders=with_renders,
                          steps=steps if with_renders and steps != STEPS else None,
                          images=source, k=k if source and k != 4 else None,
                          max_filters=max_filters if capped and max_filters != MAX_FILTERS else None,
                          weights=weights_flag(model))
    return FiltersResult(model=getattr(model, "name", type(model).__name__), layer=name,
                         module=type(conv).__name__, shape=tuple(full.shape), conv=conv_info, rgb=rgb, scale=scale,
                         weight=weight, tiles=tiles, channel_tiles=grey, bounds=bounds, indices=indices,
                         offsets=offsets, total=conv.out_channels, capped=capped, bias=bias, renders=renders,
                         render_values=values, render_settings=settings, examples=crops, example_records=records,
                         source=source, device=str(getattr(model, "device", "cpu")),
                         elapsed=time.perf_counter() - started, command=command)


__all__ = ["FiltersResult", "filters", "check_filters", "MAX_FILTERS", "STEPS"]
