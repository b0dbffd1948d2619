"""What every stage and page of :func:`nnfeat.ops.report.report` works from: :class:`ReportContext` (the model,
the images, the folder, the settings and the units of each layer) and where its files go.

This module imports no other module of the report package: the stages, the pages and the run read it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nnfeat.data import ImageSet
from nnfeat.models.base import Model

#: the recipe of the class renders: ``class_render(steps=, seed=) -> (objective, render kwargs)``
ClassRender = Callable[..., tuple]


def slug(name: str) -> str:
    """A layer name as a folder name (``layer1.0`` stays; anything but letters, digits, ``._-`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def diversity_chunks(channels: list[int], batch: int, per_unit: int) -> list[list[int]]:
    """The units whose diversity renders share one render batch: ``max(1, batch // per_unit)`` at a time (a
    ``batch``-image render of ``per_unit`` images per unit)."""
    size = max(1, batch // per_unit)
    return [channels[i:i + size] for i in range(0, len(channels), size)]


@dataclass
class ReportContext:
    """One report's inputs, fixed before the first stage.

    ``settings``: the report's settings (what its records are keyed by: ``layers``, ``steps``, ``seed``,
    ``batch``, ``diversity``, ...); ``channels``: {layer: the unit channels shown}; ``steps_kept``: the render
    steps each unit's render is kept at; ``class_render``: the class renders' recipe, or None (plain renders);
    ``started``: the ``time.time()`` of the run (a hidden temporary older than it is a killed run's: removed).
    """

    model: Model
    images: ImageSet
    out: Path
    settings: dict
    channels: dict[str, list[int]]
    steps_kept: list[int]
    class_render: ClassRender | None = None
    started: float = field(default_factory=time.time)

    def layer_dir(self, layer: str) -> Path:
        """``out/layers/<layer>``: the layer's page and its views."""
        return self.out / "layers" / slug(layer)

    def unit_dir(self, layer: str, c: int) -> Path:
        """``out/layers/<layer>/units/<c>``: unit ``c``'s page and its views."""
        return self.layer_dir(layer) / "units" / str(c)

    @property
    def cache(self) -> Path:
        """``out/cache``: the pooled collections (and the projection layouts) the stages share."""
        return self.out / "cache"


__all__ = ["ClassRender", "ReportContext", "slug", "diversity_chunks"]
