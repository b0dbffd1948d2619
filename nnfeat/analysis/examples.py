"""Dataset examples as data: the images of a source that excite (and inhibit) a channel most (tensors in and out;
the operation and its result are :mod:`nnfeat.ops.examples`).

``top_examples(model, layer, channels, source, k)`` reads every image's score for every channel from the
shared collection stage (:func:`nnfeat.analysis.collect.pooled`: one pass over the source, memory-mapped on disk,
cached and resumable when a ``cache`` folder is given), and returns, per channel, the k highest-scoring images
(``top``) and the k lowest (``bottom``), each with the position of its strongest (weakest) activation, found by
a second pass over just those images, and the box of the input patch that position sees.

The score of an image is the channel's spatial mean (like the ``channel`` objective) or its spatial max
(``score="max"``); for token layers, over the patch tokens (class and register tokens left out). The patch box is
the layer's receptive field, measured once per layer from the gradient of the centre unit (the region of the
input with non-zero gradient), moved to each position by the layer's stride and kept inside the image.

:func:`example_images`, :func:`example_patches`, :func:`example_crops` and :func:`top_example_pictures` cut
the pictures the examples, filters and microscope results show.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nnfeat.analysis.collect import pool_positions, pooled
from nnfeat.analysis.fast_path import fast_network
from nnfeat.data import ImageSet, load_images
from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.layouts import channel_count, positions_view
from nnfeat.models.base import Model

SCORES = ("mean", "max")


@dataclass(frozen=True)
class Example:
    """One dataset example of a channel.

    Attributes:
        index: the image's index in the source.
        score: the channel's score on it (spatial mean or max).
        position: (y, x) of the strongest (top) or weakest (bottom) activation in the layer's map.
        box: (top, left, height, width) of the input patch that position sees, in model-input pixels.
        label: the image's dataset label, or None.
    """

    index: int
    score: float
    position: tuple[int, int]
    box: tuple[int, int, int, int]
    label: int | None = None


@dataclass(frozen=True)
class ChannelExamples:
    """Top and bottom examples of one channel, best first (top: highest score; bottom: lowest)."""

    layer: str
    channel: int
    top: list[Example]
    bottom: list[Example]

    def to_dict(self) -> dict:
        return {"layer": self.layer, "channel": self.channel,
                "top": [asdict(e) for e in self.top], "bottom": [asdict(e) for e in self.bottom]}


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a layer's units in input pixels: the centre unit's box and the stride between units."""

    centre: tuple[int, int]          # (y, x) of the centre unit in the layer map
    box: tuple[int, int, int, int]   # (top, left, height, width) of the centre unit's field
    stride: tuple[float, float]      # input pixels per layer position (y, x)
    input_size: tuple[int, int]

    def box_at(self, y: int, x: int) -> tuple[int, int, int, int]:
        """The field of the unit at (y, x), shifted to stay inside the input (the size never shrinks below it)."""
        top, left, height, width = self.box
        top = int(round(top + (y - self.centre[0]) * self.stride[0]))
        left = int(round(left + (x - self.centre[1]) * self.stride[1]))
        height, width = min(height, self.input_size[0]), min(width, self.input_size[1])
        top = min(max(top, 0), self.input_size[0] - height)
        left = min(max(left, 0), self.input_size[1] - width)
        return top, left, height, width


def receptive_field(model: Model, layer: str, size: tuple[int, int] | None = None, probes: int = 4) -> ReceptiveField:
    """Measure the receptive field of ``layer`` at input ``size`` from the gradient of its centre unit.

    The box is where ``|d act[centre] / d input|``, summed over a few random inputs and all channels, is
    non-zero. Layers without a spatial map (tokens, vectors) see the whole input.
    """
    size = tuple(size or model.input_size)
    shape = model.layer_shapes([layer], size)[layer]
    if len(shape) != 4:
        return ReceptiveField((0, 0), (0, 0, *size), (float(size[0]), float(size[1])), size)
    height, width = shape[2], shape[3]
    cy, cx = height // 2, width // 2
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(probes, 3, *size, generator=generator).to(model.device).requires_grad_(True)
    with torch.enable_grad(), ActivationCapture(model, [layer]) as capture:
        act = capture(images)[layer]
        (act[:, :, cy, cx].square().sum() + act[:, :, cy, cx].sum()).backward()
    seen = images.grad.abs().sum((0, 1)).cpu() > 0
    rows, cols = torch.nonzero(seen.any(1)).flatten(), torch.nonzero(seen.any(0)).flatten()
    stride = (size[0] / height, size[1] / width)
    if len(rows) == 0 or len(cols) == 0:  # no gradient (dead unit everywhere): fall back to the stride
        top, left = int(cy * stride[0]), int(cx * stride[1])
        box = (top, left, max(1, int(round(stride[0]))), max(1, int(round(stride[1]))))
    else:
        box = (int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))
    return ReceptiveField((cy, cx), box, stride, size)


def check_channels(model: Model, layer: str, channels: Sequence[int] | int) -> list[int]:
    """``channels`` (one or a list) as a list, each in range for ``layer``; one-line errors otherwise."""
    shape = model.layer_shapes([layer])[layer]
    count = channel_count(tuple(shape[1:]))
    channels = [channels] if isinstance(channels, int) else [int(c) for c in channels]
    if not channels:
        raise NnfeatError("no channel given: use LAYER:CH, e.g. layer3:5 or layer3:0,4,7")
    bad = [c for c in channels if not 0 <= c < count]
    if bad:
        raise NnfeatError(f"channel {bad[0]} out of range for layer '{layer}': it has channels 0..{count - 1}")
    return channels


@torch.no_grad()
def top_examples(model: Model, layer: str, channels: Sequence[int] | int, source: ImageSet | str, k: int = 9, *,
                 score: str = "mean", batch_size: int = 128, progress: bool = False,
                 field: ReceptiveField | None = None, cache: str | Path | None = None) -> dict[int, ChannelExamples]:
    """The ``k`` highest- and lowest-scoring images of ``source`` for each channel of ``layer``.

    Args:
        model: the model; images are fed at its input size, on its device.
        layer: a layer name.
        channels: one channel or a list.
        source: an :class:`ImageSet` or anything :func:`nnfeat.data.load_images` accepts.
        k: examples per channel and direction (fewer if the source is smaller).
        score: ``mean`` (spatial mean, like the channel objective) or ``max`` (spatial max).
        batch_size: images per forward pass.
        progress: show a tqdm bar.
        field: the layer's receptive field when the caller has measured it already (else measured here).
        cache: a folder for the collection stage (reused by a later call, and by projections with the same
            pooling); None: a temporary folder.
    Returns:
        ``{channel: ChannelExamples}`` in the order of ``channels``; ties go to the lower image index.
    """
    if score not in SCORES:
        raise NnfeatError(f"unknown score '{score}': use {' or '.join(SCORES)}")
    if k < 1:
        raise NnfeatError(f"--k must be at least 1, got {k}")
    model.check_layer(layer)
    images = source if isinstance(source, ImageSet) else load_images(source, size=model.input_size)
    channels = check_channels(model, layer, channels)
    k = min(k, len(images))
    field = field or receptive_field(model, layer)
    layer_shape = tuple(model.layer_shapes([layer])[layer][1:])
    map_width = layer_shape[2] if len(layer_shape) == 3 else None
    first, _ = pool_positions(model, layer_shape, tuple(model.input_size))

    temp = tempfile.TemporaryDirectory(prefix="nnfeat-examples-") if cache is None else None
    try:
        data, _ = pooled(model, layer, images, Path(temp.name if temp else cache), pool=score,
                         batch_size=batch_size, progress=progress)
        scores = torch.from_numpy(np.array(data.acts[:, channels], dtype=np.float32))  # (N, Cs)
    finally:
        if temp is not None:
            temp.cleanup()
    top = scores.argsort(dim=0, descending=True, stable=True)[:k]  # (k, Cs) image indices; ties: lower index first
    bottom = scores.argsort(dim=0, stable=True)[:k]

    # the strongest (weakest) position in each chosen image, from one more pass over just those images
    chosen = torch.unique(torch.cat([top.flatten(), bottom.flatten()]))
    wanted = torch.tensor(channels, device=model.device)
    strongest, weakest = [], []
    with ActivationCapture(fast_network(model, keep=[layer]).network, [layer]) as capture:
        for part in chosen.split(batch_size):
            view = positions_view(capture(images.tensors(part.numpy(), model.input_size, model.device))[layer])
            view = view.float()[:, first:, :][:, :, wanted]  # (B, P, Cs)
            strongest.append(view.argmax(1).cpu() + first)
            weakest.append(view.argmin(1).cpu() + first)
    row = torch.full((len(scores),), -1, dtype=torch.long)
    row[chosen] = torch.arange(len(chosen))
    strongest, weakest = torch.cat(strongest), torch.cat(weakest)  # (len(chosen), Cs) flat positions

    def examples(order: torch.Tensor, positions: torch.Tensor, column: int) -> list[Example]:
        out = []
        for image in order[:, column].tolist():
            flat = int(positions[row[image], column])
            y, x = divmod(flat, map_width) if map_width else (0, flat)
            label = int(images.labels[image]) if images.labels is not None else None
            out.append(Example(int(image), float(scores[image, column]), (int(y), int(x)), field.box_at(y, x), label))
        return out

    return {c: ChannelExamples(layer, c, examples(top, strongest, i), examples(bottom, weakest, i))
            for i, c in enumerate(channels)}


def example_images(source: ImageSet, examples: Sequence[Example], size: tuple[int, int] | int) -> torch.Tensor:
    """The images of ``examples`` as (k, 3, H, W) in [0, 1] at ``size`` (the model's input size)."""
    return source.tensors([e.index for e in examples], size)


def example_patches(source: ImageSet, examples: Sequence[Example], size: tuple[int, int] | int) -> torch.Tensor:
    """The receptive-field patches of ``examples`` (k, 3, h, w), cut from the images resized to ``size``.

    All boxes of one layer have the same size, so the patches stack.
    """
    images = example_images(source, examples, size)
    patches = [img[:, t:t + h, l:l + w] for img, (t, l, h, w) in zip(images, (e.box for e in examples))]
    return torch.stack(patches)


def example_crops(images: ImageSet, found: dict[int, ChannelExamples], size: tuple[int, int], min_side: int
                  ) -> tuple[torch.Tensor, list[list[dict]]]:
    """Per channel of ``found`` (:func:`top_examples`), its top examples' patches around the receptive field of
    the strongest position, grown to at least ``min_side`` px (kept inside the image): (F, k, 3, s, s) and the
    JSON records."""
    crops, records = [], []
    for result in found.values():
        pictures = example_images(images, result.top, size)
        row, rec = [], []
        for picture, example in zip(pictures, result.top):
            top, left, h, w = example.box
            side = min(max(h, w, min_side), size[0], size[1])
            cy, cx = top + h // 2, left + w // 2
            y0 = min(max(cy - side // 2, 0), size[0] - side)
            x0 = min(max(cx - side // 2, 0), size[1] - side)
            row.append(picture[:, y0:y0 + side, x0:x0 + side])
            rec.append({"index": example.index, "score": example.score, "position": list(example.position),
                        "box": [y0, x0, side, side], "label": example.label,
                        "label_name": images.label_name(example.label) if example.label is not None else None})
        crops.append(torch.stack(row))
        records.append(rec)
    return torch.stack(crops), records


def top_example_pictures(model: Model, layer: str, channels: list[int], image_set: ImageSet, k: int, size,
                         cache: Path | None = None) -> torch.Tensor:
    """(N, k, 3, H, W): each channel's top-``k`` dataset images at the render size (white where the set is smaller)."""
    found = top_examples(model, layer, channels, image_set, k=k, cache=cache)
    rows = []
    for c in channels:
        pictures = F.interpolate(example_images(image_set, found[c].top, model.input_size), size=tuple(size),
                                 mode="bilinear", align_corners=False)
        rows.append(torch.cat([pictures, torch.ones(k - len(pictures), 3, *size)]))
    return torch.stack(rows)


__all__ = ["SCORES", "Example", "ChannelExamples", "ReceptiveField", "receptive_field", "check_channels",
           "top_examples", "example_images", "example_patches", "example_crops", "top_example_pictures"]
