"""The spectrum operation and its result: :func:`spectrum` -> :class:`SpectrumResult` (kind ``spectrum``).

A dataset's mean Fourier magnitude (:func:`nnfeat.engine.spectrum.dataset_spectrum`: per-channel centred images,
orthonormal ``rfft2``, averaged; cached in ``$NNFEAT_HOME/spectra/``), the magnitude that
``render(..., param="maco", spectrum=...)`` fixes (Fel et al. 2023, MACO). The picture is its log magnitude,
zero frequency at the left middle, each channel scaled to [0, 1]; the sheet shows the three channels apart.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from nnfeat.data import ImageSet, load_images
from nnfeat.engine.spectrum import dataset_spectrum, save_spectrum, spectrum_cache_path, spectrum_picture
from nnfeat.io import save_image
from nnfeat.layouts import size2
from nnfeat.ops.results import Result, cli_command
from nnfeat.views.sheets import labelled_sheet

#: the long side of a tile of the sheet, at least (a spectrum is often 16 or 32 px)
SHEET_TILE = 160


@dataclass(repr=False)
class SpectrumResult(Result):
    """What :func:`spectrum` returns. ``magnitude``: (3, H, W//2+1) float32, the mean magnitude; ``source`` and
    ``count``: the images it was taken over; ``size``: (H, W) they were resized to; ``space``: ``param`` or
    ``pixel``; ``cache_path``: the cache entry it was read from or written to (None without the cache)."""

    magnitude: torch.Tensor
    source: str
    count: int
    size: tuple[int, int]
    space: str
    cache_path: Path | None = None
    elapsed: float = 0.0
    command: str | None = None
    kind: ClassVar[str] = "spectrum"
    run_fields: ClassVar[tuple[str, ...]] = ("cache",)

    @property
    def picture(self) -> torch.Tensor:
        """(3, H, W//2+1) in [0, 1]: the log magnitude (:func:`nnfeat.engine.spectrum.spectrum_picture`)."""
        return spectrum_picture(self.magnitude)

    @property
    def images(self) -> torch.Tensor:
        """(1, 3, H, W//2+1): the picture."""
        return self.picture.unsqueeze(0)

    def sheet_images(self) -> torch.Tensor:
        """(3, 1, H, W//2+1): each channel's log magnitude on its own tile."""
        return self.picture.unsqueeze(1)

    def captions(self) -> list[str]:
        return [f"channel {c}\n{self.space} space" for c in range(3)]

    def sheet(self) -> np.ndarray:
        """The three channels side by side, upscaled to at least :data:`SHEET_TILE` px."""
        return labelled_sheet(self.sheet_images(), self.captions(), ncol=3, title=self.title(), min_tile=SHEET_TILE)

    def title(self) -> str:
        return f"spectrum of {self.count} {self.source} images, {self.size[0]}x{self.size[1]}"

    def info(self) -> dict:
        """What the spectrum file holds beside the magnitude: source, count, size and space."""
        return {"source": self.source, "count": self.count, "size": list(self.size), "space": self.space}

    def record(self) -> dict:
        return {**self.info(), "shape": list(self.magnitude.shape),
                "cache": str(self.cache_path) if self.cache_path is not None else None}

    def write_files(self, out: Path) -> list[str]:
        """``spectrum.pt``: the magnitude file ``render --spectrum`` reads."""
        self.save_magnitude(out / "spectrum.pt")
        return ["spectrum.pt"]

    def save_magnitude(self, path: str | os.PathLike) -> Path:
        """Write the magnitude and :meth:`info` to the file ``path`` (``torch.save``, atomically; any suffix)."""
        return save_spectrum(path, self.magnitude, self.info())

    def save_picture(self, path: str | os.PathLike) -> Path:
        """Write :attr:`picture` as one PNG, unscaled and uncaptioned."""
        return save_image(path, self.picture)


def spectrum(images: ImageSet | str, size: int | tuple[int, int] | None = None, *, space: str = "param",
             cache: bool = True, progress: bool = False) -> SpectrumResult:
    """The mean Fourier magnitude of ``images`` at ``size``.

    Args:
        images: an :class:`ImageSet` (e.g. ``load_images(src).sample(n, seed)``) or a source
            :func:`nnfeat.load_images` accepts (a folder, an ``.npz``, ``digits``, a torchvision dataset name).
        size: int or (H, W), the render size the spectrum is meant for (default: the images' own size).
        space: ``"param"`` (for ``param="maco"`` with its defaults) or ``"pixel"``; see
            :mod:`nnfeat.engine.spectrum`.
        cache: read and write ``$NNFEAT_HOME/spectra/<hash>.pt``.
        progress: show a progress bar.
    Returns:
        :class:`SpectrumResult`; ``.magnitude`` is (3, H, W//2+1).
    """
    started = time.perf_counter()
    images = images if isinstance(images, ImageSet) else load_images(images)
    native = size2(images.native_size)
    size = size2(size) if size is not None else native
    magnitude = dataset_spectrum(images, size, space=space, cache=cache, progress=progress)
    cached = spectrum_cache_path(images, size, space) if cache else None
    h, w = size
    if size == native or h == w:
        command = cli_command("spectrum", **images.command_options(), size=None if size == native else h,
                              space=None if space == "param" else space)
    else:  # a size other than the images' own that is not square: no option says it
        command = None
    return SpectrumResult(magnitude=magnitude, source=images.name, count=len(images), size=size, space=space,
                          cache_path=cached, elapsed=time.perf_counter() - started, command=command)


__all__ = ["SpectrumResult", "spectrum"]
