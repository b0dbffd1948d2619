"""Atlas stage 8: place the icons on a white canvas at their grid cells (Carter et al. 2019)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from nnfeat.io import save_image


def stitch(icon_paths: Sequence[Path], rows: np.ndarray, cols: np.ndarray, grid: int, icon_size: int) -> np.ndarray:
    """Icons (PNG files, one per cell) -> (grid*icon_size, grid*icon_size, 3) uint8 mosaic, white elsewhere.

    Row 0 is the top of the mosaic (smallest layout y); icons of another size are resized to ``icon_size``.
    """
    canvas = np.full((grid * icon_size, grid * icon_size, 3), 255, dtype=np.uint8)
    for path, row, col in zip(icon_paths, rows, cols):
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (icon_size, icon_size):
                image = image.resize((icon_size, icon_size), Image.BILINEAR)
            icon = np.asarray(image)
        y, x = int(row) * icon_size, int(col) * icon_size
        canvas[y:y + icon_size, x:x + icon_size] = icon
    return canvas


def save_mosaic(path: Path, icon_paths: Sequence[Path], rows: np.ndarray, cols: np.ndarray, grid: int,
                icon_size: int) -> Path:
    """:func:`stitch` and write the mosaic as PNG (atomically)."""
    return save_image(path, stitch(icon_paths, rows, cols, grid, icon_size))


__all__ = ["stitch", "save_mosaic"]
