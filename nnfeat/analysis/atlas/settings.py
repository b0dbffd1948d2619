"""The settings of an activation atlas (:class:`AtlasSettings`): everything that shapes one, with the defaults of
a full atlas and of a class atlas (Carter et al., "Activation Atlas", Distill 2019)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from nnfeat.analysis.atlas.layout import LAYOUT_SAMPLE, LAYOUTS
from nnfeat.device import autocast_for
from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model

#: Defaults of a class atlas where the user gave none (the paper's class atlases: 8x8 to 10x10 cells, min count ~4).
CLASS_GRID = 10
CLASS_MIN_COUNT = 4


@dataclass
class AtlasSettings:
    """Everything that shapes an atlas. ``None`` for ``grid``/``min_count``/``icon_size`` means the default
    for the atlas kind: 20 / 5 (full atlas) or 10 / 4 (class atlas), icon size min(80, model input size).
    ``layout_sample``: above this many samples the layout is fitted on that many and the rest transformed
    (default :data:`~nnfeat.analysis.atlas.layout.LAYOUT_SAMPLE`: one UMAP fit of 100 000 rows kept a whole 1 M-sample
    atlas under 1.9 GB peak and took 16 min on a loaded 2-core machine, single-threaded as a seeded UMAP is;
    the kNN graph and the fit grow faster than linearly in the rows, so a full 1 M fit would take hours)."""

    samples: int = 100_000
    per_image: int = 1
    layout: str = "umap"
    grid: int | None = None
    min_count: int | None = None
    whiten: bool = True
    icon_size: int | None = None
    steps: int = 512
    batch: int = 32
    seed: int = 0
    class_: int | str | None = None
    cossim_pow: float = 3.0
    transforms: str = "auto"
    spatial_weight: float = 0.5
    precision: str = "auto"
    n_neighbors: int = 20
    min_dist: float = 0.01
    class_top: int = 2500
    members: int = 6
    collect_batch: int = 128
    layout_sample: int = LAYOUT_SAMPLE

    def resolved(self, model: Model) -> "AtlasSettings":
        """A copy with the ``None`` defaults filled in for ``model``."""
        values = asdict(self)
        is_class = self.class_ is not None
        values["grid"] = self.grid or (CLASS_GRID if is_class else 20)
        values["min_count"] = self.min_count if self.min_count is not None else (CLASS_MIN_COUNT if is_class else 5)
        values["icon_size"] = self.icon_size or min(80, max(model.input_size))
        return AtlasSettings(**values)

    def check(self) -> None:
        """One-line errors for impossible values."""
        if self.layout not in LAYOUTS:
            raise NnfeatError(f"unknown layout '{self.layout}': use one of {', '.join(LAYOUTS)}")
        for name in ("samples", "per_image", "grid", "icon_size", "steps", "batch", "class_top", "collect_batch",
                     "layout_sample"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise NnfeatError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.min_count is not None and self.min_count < 1:
            raise NnfeatError(f"--min-count must be at least 1, got {self.min_count}")
        autocast_for(self.precision)  # a one-line error for an unknown value


__all__ = ["AtlasSettings", "CLASS_GRID", "CLASS_MIN_COUNT"]
