"""The heatmap operation and its result: :func:`heatmap` -> :class:`HeatmapResult` (kind ``heatmap``).

The sheet shows, per image, the image and its heatmap overlays, with one colour bar for the figure (its
numbers: min and max; symmetric around 0 for signed maps) or, with ``scale="per-map"``, each map's range in
its caption. Dead (constant) maps are captioned ``dead (constant X)`` and drawn flat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from nnfeat.analysis.heatmap import (COLORMAPS, ColorScale, check_spatial, color_scale, colorize, layer_maps,
                                     overlay, reduce_maps, strongest_channels, upsample)
from nnfeat.data import ImageSet
from nnfeat.distributed import shard_map
from nnfeat.errors import NnfeatError
from nnfeat.finite import check_finite
from nnfeat.ops.results import Result, cli_command
from nnfeat.views.sheets import colour_bar, labelled_sheet, stack_rows
from nnfeat.units import Units, format_channels


def _fmt(x: float) -> str:
    return f"{x:.3g}"


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
    kind: ClassVar[str] = "heatmap"

    @property
    def images(self) -> torch.Tensor:
        return self.overlays.flatten(0, 1)

    @property
    def sheet_columns(self) -> int:  # type: ignore[override]
        return self.maps.shape[1] + 1

    def sheet_images(self) -> torch.Tensor:
        return torch.cat([self.inputs.unsqueeze(1).cpu(), self.overlays.cpu()], 1).flatten(0, 1)

    def map_caption(self, i: int, j: int) -> str:
        m = self.maps[i, j]
        if bool(self.scale.dead[i, j]):
            return f"{self.labels[j]}\ndead (constant {_fmt(float(m.flatten()[0]))})"
        if self.scale.mode == "per-map":
            return f"{self.labels[j]}\n{_fmt(float(self.scale.vmin[i, j]))}..{_fmt(float(self.scale.vmax[i, j]))}"
        return f"{self.labels[j]}\nmax {_fmt(float(m.max()))}"

    def image_caption(self, i: int) -> str:
        label = self.image_labels[i]
        return f"image {self.indices[i]}" + (f"\n{label}" if label is not None else "")

    def captions(self) -> list[str]:
        out = []
        for i in range(self.maps.shape[0]):
            out.append(self.image_caption(i))
            out.extend(self.map_caption(i, j) for j in range(self.maps.shape[1]))
        return out

    def title(self) -> str:
        what = self.units if self.reduce == "channels" else f"{self.reduce} of {self.units}"
        return f"{self.model}  {what}  heatmaps ({self.source})"

    def colorbar(self, width: int) -> np.ndarray:
        """A strip: the colour table with its numbers (figure scale) or a note (per-map)."""
        symmetric = " (symmetric around 0)" if self.scale.signed else ""
        if self.scale.mode == "figure":
            lo, hi = _fmt(float(self.scale.vmin.flatten()[0])), _fmt(float(self.scale.vmax.flatten()[0]))
            note = "one colour scale for every map" + symmetric
        else:
            lo, hi = "min", "max"
            note = "per-map scale: each caption gives its map's range" + symmetric
        return colour_bar(COLORMAPS[self.scale.colormap], lo, hi, note, width, min_width=240)

    def sheet(self) -> np.ndarray:
        grid = labelled_sheet(self.sheet_images(), self.captions(), ncol=self.sheet_columns, title=self.title())
        return stack_rows([grid, self.colorbar(grid.shape[1])])

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
            per_image.append({"index": self.indices[i], "label": self.image_labels[i], "maps": entries,
                              "files": [f"image-{i}.png", f"image-{i}-channels.png"]})
        scale = {"mode": self.scale.mode, "signed": self.scale.signed, "colormap": self.scale.colormap}
        if self.scale.mode == "figure":
            scale.update(vmin=float(self.scale.vmin.flatten()[0]), vmax=float(self.scale.vmax.flatten()[0]))
        return {"model": self.model, "layer": self.layer, "units": self.units, "channels": self.channels,
                "reduce": self.reduce, "maps": self.labels, "map_size": [h, w],
                "input_size": list(self.inputs.shape[-2:]), "scale": scale, "source": self.source,
                "device": self.device, "images": per_image}

    def write_files(self, out: Path) -> list[str]:
        from nnfeat.io import save_image

        files = []
        caps = self.captions()
        k = self.maps.shape[1]
        flat = colorize(self.maps, self.scale.vmin, self.scale.vmax, self.scale.colormap).cpu()
        for i in range(self.maps.shape[0]):
            row = torch.cat([self.inputs[i:i + 1].cpu(), self.overlays[i].cpu()])
            files.append(save_image(out / f"image-{i}.png",
                                    labelled_sheet(row, caps[i * (k + 1):(i + 1) * (k + 1)], ncol=k + 1)).name)
            files.append(save_image(out / f"image-{i}-channels.png",
                                    labelled_sheet(flat[i], [self.map_caption(i, j) for j in range(k)])).name)
        return files


def heatmap(model, units: str | Units, images: ImageSet | torch.Tensor, *, reduce: str = "channels", top: int | None = None,
            scale: str = "figure", batch_size: int = 64, alpha: float = 0.6) -> HeatmapResult:
    """Activation heatmaps of ``units`` (``"layer2"``: the ``top`` strongest channels, default 8 or every channel of
    a smaller layer; ``"layer2:0..3"``: those) on ``images`` (an :class:`ImageSet` or (B, 3, H, W) in [0, 1] at the model's input size)."""
    started = time.perf_counter()
    parsed, channels = model.units(units)
    channels_all = list(channels)
    check_spatial(model, parsed.layer)
    if top is None:
        top = min(8, len(channels))
    elif parsed.channels is None and reduce == "channels" and not 1 <= top <= len(channels):
        raise NnfeatError(f"--top {top} is out of range: layer '{parsed.layer}' has {len(channels)} channels, "
                          f"use --top 1..{len(channels)}")
    if isinstance(images, ImageSet):
        batches = list(images.iter_batches(batch_size, model.input_size, device=model.device))
        source, indices, options = images.name, images.source_indices.tolist(), images.command_options()
        labels = [images.label_name(int(l)) for l in images.labels] if images.labels is not None else [None] * len(images)
    else:
        images = images.to(model.device)
        batches = list(images.split(batch_size))
        source, indices, labels = "tensor", list(range(len(images))), [None] * len(images)
        options = {"images": source, "n": len(images)}
    inputs = torch.cat(batches)
    # the dataset pass: batch i on rank i % world under torchrun (every rank gets every batch's maps)
    maps = torch.cat(shard_map(lambda i: layer_maps(model, parsed.layer, batches[i]), len(batches))).to(inputs.device)
    check_finite(maps[:, channels], model.name, f"the maps of layer '{parsed.layer}'", indices)
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
                          weights="random" if getattr(model, "weights", None) == "random" else None)
    return HeatmapResult(model=model.name, layer=parsed.layer, units=units_text, channels=list(channels),
                         labels=names, reduce=reduce, maps=maps.cpu(), inputs=inputs.cpu(), overlays=overlays.cpu(),
                         scale=ColorScale(cs.vmin.cpu(), cs.vmax.cpu(), cs.signed, cs.mode, cs.dead.cpu()),
                         indices=indices, image_labels=labels, source=source, device=str(model.device),
                         elapsed=time.perf_counter() - started, command=command)


__all__ = ["HeatmapResult", "heatmap"]
