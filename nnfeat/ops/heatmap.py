"""The heatmap operation and its result: :func:`heatmap` -> :class:`HeatmapResult` (kind ``heatmap``).

The sheet shows, per image, the image and its heatmap overlays, with one colour bar for the figure (its
numbers: min and max; symmetric around 0 for signed maps) or, with ``scale="per-map"``, each map's range in
its caption. Dead (constant) maps are captioned ``dead (constant X)`` and drawn flat. The drawing is
:mod:`nnfeat.views.heatmap_page`; the maps are :mod:`nnfeat.analysis.heatmap`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from nnfeat.analysis.heatmap import (ColorScale, check_spatial, color_scale, layer_maps, overlay, reduce_maps,
                                     strongest_channels, upsample)
from nnfeat.analysis.fast_path import fast_network
from nnfeat.data import ImageSet
from nnfeat.distributed import shard_map
from nnfeat.errors import NnfeatError
from nnfeat.finite import check_finite
from nnfeat.models.base import Model, as_model
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.units import Units, format_channels
from nnfeat.views import heatmap_page as page


@dataclass(repr=False)
class HeatmapResult(Result):
    """What :func:`heatmap` returns. ``maps`` (B, K, h, w) raw maps; ``overlays`` (B, K, 3, H, W); ``inputs``
    (B, 3, H, W); ``labels`` the map names (channel numbers as text, or ``sum``/``norm``)."""

    model: str
    layer: str
    units: str
    channels: list[int]
    labels: list[str]
    reduce: str
    maps: torch.Tensor
    inputs: torch.Tensor
    overlays: torch.Tensor
    scale: ColorScale
    indices: list[int]
    image_labels: list[str | None]
    source: str
    device: str = "cpu"
    elapsed: float = 0.0
    command: str | None = None
    #: each image's name (a folder source's relative file paths), shown instead of its index; None: indices
    image_names: list[str] | None = None
    #: what the dataset pass ran (:meth:`nnfeat.analysis.fast_path.FastPath.record`)
    fast_path: dict | None = None
    kind: ClassVar[str] = "heatmap"

    @property
    def images(self) -> torch.Tensor:
        return self.overlays.flatten(0, 1)

    @property
    def sheet_columns(self) -> int:  # type: ignore[override]
        return self.maps.shape[1] + 1

    def sheet_images(self) -> torch.Tensor:
        return page.heatmap_tiles(self.inputs, self.overlays)

    def map_caption(self, i: int, j: int) -> str:
        return page.map_caption(self.maps, self.scale, self.labels, i, j)

    def image_caption(self, i: int) -> str:
        return page.image_caption(self.shown_indices[i], self.image_labels[i])

    def captions(self) -> list[str]:
        return page.heatmap_captions(self.maps, self.scale, self.labels, self.shown_indices, self.image_labels)

    @property
    def shown_indices(self) -> list[int | str]:
        """What captions name each image by: its name when known, else its index."""
        return self.image_names or self.indices

    def title(self) -> str:
        return page.heatmap_title(self.model, self.units, self.reduce, self.source)

    def colorbar(self, width: int) -> np.ndarray:
        """A strip: the colour table with its numbers (figure scale) or a note (per-map)."""
        return page.heatmap_colour_bar(self.scale, width)

    def sheet(self) -> np.ndarray:
        return page.heatmap_sheet(self.sheet_images(), self.captions(), self.sheet_columns, self.title(), self.scale)

    def record(self) -> dict:
        per_image = []
        b, k, h, w = self.maps.shape
        big = upsample(self.maps, self.inputs.shape[-2:])
        for i in range(b):
            entries = []
            for j in range(k):
                m = self.maps[i, j]
                peak = int(big[i, j].argmax())
                entries.append({"map": self.labels[j], "min": float(m.min()), "max": float(m.max()),
                                "mean": float(m.mean()), "vmin": float(self.scale.vmin[i, j]),
                                "vmax": float(self.scale.vmax[i, j]), "dead": bool(self.scale.dead[i, j]),
                                "peak_yx": list(divmod(peak, big.shape[-1]))})
            named = {"name": self.image_names[i]} if self.image_names else {}
            per_image.append({"index": self.indices[i], **named, "label": self.image_labels[i], "maps": entries,
                              "files": [f"image-{i}.png", f"image-{i}-channels.png"]})
        scale = {"mode": self.scale.mode, "signed": self.scale.signed, "colormap": self.scale.colormap}
        if self.scale.mode == "figure":
            scale.update(vmin=float(self.scale.vmin.flatten()[0]), vmax=float(self.scale.vmax.flatten()[0]))
        return {"model": self.model, "layer": self.layer, "units": self.units, "channels": self.channels,
                "reduce": self.reduce, "maps": self.labels, "map_size": [h, w],
                "input_size": list(self.inputs.shape[-2:]), "scale": scale, "source": self.source,
                "device": self.device, **({"fast_path": self.fast_path} if self.fast_path else {}),
                "images": per_image}

    def write_files(self, out: Path) -> list[str]:
        return page.write_heatmap_pictures(out, self.inputs, self.overlays, self.maps, self.scale, self.captions(),
                                           self.labels)


def check_top(top: int | None, units: Units, reduce: str = "channels") -> None:
    """A one-line error when ``top`` (the K strongest channels of a whole layer) is given with ``units`` that
    name their own channels (``layer2:0..3 --top 2`` would draw all 4 maps, silently), or with a ``reduce``
    that draws one map of every channel (``--reduce sum --top 2`` would ignore the 2, silently)."""
    if top is not None and reduce != "channels":
        raise NnfeatError(f"--top {top} picks channels to draw one map each, but --reduce {reduce} draws one map of "
                          f"every channel: drop --top (one {reduce} map of the whole layer), or drop --reduce "
                          f"(the {top} strongest channels)")
    if top is not None and units.channels is not None:
        raise NnfeatError(f"--top {top} picks the strongest channels of a whole layer, but '{units}' names "
                          f"{len(units.channels)} channels itself: drop --top (to draw those), or give the plain "
                          f"layer '{units.layer}' with --top {top}")


def heatmap(model: Model, units: str | Units, images: ImageSet | torch.Tensor, *, reduce: str = "channels", top: int | None = None,
            scale: str = "figure", batch_size: int = 64, alpha: float = 0.6) -> HeatmapResult:
    """Activation heatmaps of ``units`` (``"layer2"``: the ``top`` strongest channels, default 8 or every channel of
    a smaller layer; ``"layer2:0..3"``: those) on ``images`` (an :class:`ImageSet` or (B, 3, H, W) in [0, 1] at the model's input size)."""
    started = time.perf_counter()
    model = as_model(model)
    parsed, channels = model.units(units)
    channels_all = list(channels)
    check_spatial(model, parsed.layer)
    check_top(top, parsed, reduce)
    if top is None:
        top = min(8, len(channels))
    elif parsed.channels is None and reduce == "channels" and not 1 <= top <= len(channels):
        raise NnfeatError(f"--top {top} is out of range: layer '{parsed.layer}' has {len(channels)} channels, "
                          f"use --top 1..{len(channels)}")
    if isinstance(images, ImageSet):
        batches = list(images.iter_batches(batch_size, model.input_size, device=model.device))
        source, indices, options = images.name, images.source_indices.tolist(), images.command_options()
        image_names = images.names
        labels = [images.label_name(int(l)) for l in images.labels] if images.labels is not None else [None] * len(images)
    else:
        images = images.to(model.device)
        batches = list(images.split(batch_size))
        source, indices, labels, image_names = "tensor", list(range(len(images))), [None] * len(images), None
        options = {"images": source, "n": len(images)}
    inputs = torch.cat(batches)
    fast = fast_network(model, keep=[parsed.layer])  # BatchNorm folded, channels-last: built once, not per batch

    def batch_maps(i: int) -> torch.Tensor:  # each batch checked as it comes: the first with NaN/Inf stops the pass
        maps_i = layer_maps(fast.network, parsed.layer, batches[i])
        start = sum(len(b) for b in batches[:i])
        check_finite(maps_i[:, channels], model.name, f"the maps of layer '{parsed.layer}'",
                     indices[start:start + len(maps_i)])
        return maps_i

    # the dataset pass: batch i on rank i % world under torchrun (every rank gets every batch's maps)
    maps = torch.cat(shard_map(batch_maps, len(batches))).to(inputs.device)
    if parsed.channels is None and reduce == "channels":
        channels = strongest_channels(maps, top)
    maps = reduce_maps(maps, channels, reduce)
    names = [str(c) for c in channels] if reduce == "channels" else [f"{reduce} {format_channels(channels)}"]
    cs = color_scale(maps, scale)
    overlays = overlay(inputs, maps, cs.vmin, cs.vmax, cs.colormap, alpha)
    units_text = str(parsed)
    command = cli_command("heatmap", model.name, units_text, **options,
                          reduce=None if reduce == "channels" else reduce,
                          top=None if top == min(8, len(channels_all)) else top,
                          scale=None if scale == "figure" else scale,
                          weights=weights_flag(model))
    return HeatmapResult(model=model.name, layer=parsed.layer, units=units_text, channels=list(channels),
                         labels=names, reduce=reduce, maps=maps.cpu(), inputs=inputs.cpu(), overlays=overlays.cpu(),
                         scale=ColorScale(cs.vmin.cpu(), cs.vmax.cpu(), cs.signed, cs.mode, cs.dead.cpu()),
                         indices=indices, image_labels=labels, source=source, device=str(model.device),
                         elapsed=time.perf_counter() - started, command=command, image_names=image_names,
                         fast_path=fast.record())


__all__ = ["HeatmapResult", "heatmap", "check_top"]
