"""The examples operation and its result: :func:`examples` -> :class:`ExamplesResult` (kind ``examples``): the
images of a source that excite (and inhibit) a channel most. The search is :mod:`nnfeat.analysis.examples`
(its names are re-exported here for one release: import them from there).

``examples(model, "layer3:0..3", images)`` finds, per channel, the top and bottom examples and their
receptive-field patches; :class:`ExamplesResult` ``.save(out)`` writes ``examples.png`` (the captioned sheet),
per channel ``ch<c>-top.png`` / ``ch<c>-bottom.png`` and their patches, and ``examples.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from nnfeat.analysis.fast_path import fast_network
from nnfeat.analysis.examples import (SCORES, ChannelExamples, Example, ReceptiveField, example_images,
                                      example_patches, receptive_field, top_examples)
from nnfeat.data import ImageSet, load_images
from nnfeat.io import save_image
from nnfeat.models.base import Model, as_model
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.units import Units, format_units
from nnfeat.views.sheets import labelled_sheet


@dataclass(repr=False)
class ExamplesResult(Result):
    """What :func:`examples` returns.

    Attributes:
        model: the model's name; layer, units: the layer and the units text.
        found: ``{channel: ChannelExamples}`` (top and bottom examples with scores, positions, patch boxes).
        top, bottom: ``{channel: Tensor (k, 3, H, W)}`` the example images at the model's input size.
        field: the layer's receptive field; ``field_covers_input`` is True when every unit sees the whole
            input (then the patches are the images themselves, and none are written).
        k_requested: the ``k`` asked for (``k`` used is ``min(k_requested, len(source))``).
    """

    model: str
    layer: str
    units: str
    found: dict[int, ChannelExamples]
    top: dict[int, torch.Tensor]
    bottom: dict[int, torch.Tensor]
    patches: dict[str, torch.Tensor]
    field: ReceptiveField
    source: str
    classes: list[str] | None
    score: str
    k_requested: int
    device: str = "cpu"
    elapsed: float = 0.0
    command: str | None = None
    #: what the dataset pass ran (:meth:`nnfeat.analysis.fast_path.FastPath.record`)
    fast_path: dict | None = None
    kind: ClassVar[str] = "examples"

    @property
    def k(self) -> int:
        return next(iter(self.top.values())).shape[0] if self.top else 0

    @property
    def field_covers_input(self) -> bool:
        top, left, height, width = self.field.box
        return (height, width) == tuple(self.field.input_size)

    @property
    def images(self) -> torch.Tensor:
        """(channels * k, 3, H, W): each channel's top examples, channel by channel."""
        return torch.cat(list(self.top.values()))

    @property
    def sheet_columns(self) -> int | None:  # type: ignore[override]
        return self.k

    def sheet_images(self) -> torch.Tensor:
        return torch.cat([t for c in self.top for t in (self.top[c], self.bottom[c])])

    def captions(self) -> list[str]:
        out = []
        for c, found in self.found.items():
            for which in ("top", "bottom"):
                for i, example in enumerate(getattr(found, which)):
                    label = f" {self._label(example.label)}" if example.label is not None else ""
                    out.append(f"{format_units(self.layer, [c])} {which} {i + 1}\n{example.score:.3g}{label}")
        return out

    def title(self) -> str:
        return f"{self.model}  {self.units}  dataset examples ({self.source})"

    def _label(self, label: int) -> str:
        return self.classes[label] if self.classes is not None and 0 <= label < len(self.classes) else str(label)

    @property
    def field_note(self) -> str:
        top, left, height, width = self.field.box
        if self.field_covers_input:
            return (f"the receptive field of '{self.layer}' covers the whole {height}x{width} input: "
                    "its patches are the images themselves")
        return f"the receptive field of '{self.layer}' is {height}x{width} px of the {self.field.input_size[0]}x" \
               f"{self.field.input_size[1]} input"

    def record(self) -> dict:
        return {"model": self.model, "layer": self.layer, "units": self.units, "source": self.source,
                "device": self.device,
                "k": self.k, "k_requested": self.k_requested, "score": self.score, "classes": self.classes,
                "receptive_field": {"box": list(self.field.box), "input_size": list(self.field.input_size),
                                    "covers_input": self.field_covers_input, "note": self.field_note},
                **({"fast_path": self.fast_path} if self.fast_path else {}),
                "channels": [r.to_dict() for r in self.found.values()]}

    def write_files(self, out: Path, patch_sides: tuple[str, ...] = ("top", "bottom")) -> list[str]:
        """Per channel ``ch<c>-top.png``, ``ch<c>-bottom.png`` and, for the sides in ``patch_sides``, their
        receptive-field patches ``ch<c>-<side>-patches.png``; returns the names."""
        files = []
        captions = iter(self.captions())
        for c in self.found:
            for which in ("top", "bottom"):
                pictures = getattr(self, which)[c]
                names = [next(captions) for _ in range(len(pictures))]
                path = save_image(out / f"ch{c:04d}-{which}.png", labelled_sheet(pictures, names, ncol=len(pictures)))
                files.append(path.name)
                if not self.field_covers_input and which in patch_sides:
                    patches = self.patches[f"{c}-{which}"]
                    path = save_image(out / f"ch{c:04d}-{which}-patches.png",
                                      labelled_sheet(patches, names, ncol=len(patches)))
                    files.append(path.name)
        return files


def examples(model: Model, units: str | Units, images: ImageSet | str, *, k: int = 9, score: str = "mean",
             batch_size: int = 128, progress: bool = True, cache: str | Path | None = None) -> ExamplesResult:
    """Top and bottom dataset examples of ``units`` (``"layer3:5"``, ``"layer3:0..3"``; see :mod:`nnfeat.units`).

    Args:
        model: the model; images are fed at its input size, on its device.
        units: units text (a position, if given, is ignored: examples rank whole maps).
        images: an :class:`~nnfeat.data.ImageSet` or anything :func:`nnfeat.data.load_images` accepts.
        k: examples per channel and direction (fewer when the source is smaller; the record says so).
        score: ``mean`` (spatial mean) or ``max``.
        cache: a folder for the collection stage (see :func:`top_examples`); None: a temporary one.
    Returns:
        :class:`ExamplesResult`.
    """
    started = time.perf_counter()
    model = as_model(model)
    parsed, channels = model.units(units)
    image_set = images if isinstance(images, ImageSet) else load_images(images, size=model.input_size)
    field = receptive_field(model, parsed.layer)
    found = top_examples(model, parsed.layer, channels, image_set, k, score=score, batch_size=batch_size,
                         progress=progress, field=field, cache=cache)
    top = {c: example_images(image_set, r.top, model.input_size) for c, r in found.items()}
    bottom = {c: example_images(image_set, r.bottom, model.input_size) for c, r in found.items()}
    patches = {f"{c}-{which}": example_patches(image_set, getattr(r, which), model.input_size)
               for c, r in found.items() for which in ("top", "bottom")}
    command = cli_command("examples", model.name, str(parsed), **image_set.command_options(), k=k,
                          score=None if score == "mean" else score,
                          weights=weights_flag(model))
    return ExamplesResult(model=model.name, layer=parsed.layer, units=str(parsed), found=found, top=top,
                          bottom=bottom, patches=patches, field=field,
                          source=image_set.name, classes=image_set.classes, score=score, k_requested=k,
                          device=str(model.device),
                          elapsed=time.perf_counter() - started, command=command,
                          fast_path=fast_network(model, keep=[parsed.layer]).record())  # cached: the pass's own


#: the dataset-example search, moved to :mod:`nnfeat.analysis.examples` (re-exported for one release)
__all__ = ["Example", "ChannelExamples", "ReceptiveField", "ExamplesResult", "examples", "receptive_field",
           "top_examples", "example_images", "example_patches", "SCORES"]
