"""Fitting an image to a model's input size: the ``--fit`` policies and what a source of files needs.

An image of the input's aspect ratio is simply resized; one of another aspect ratio is fitted by a policy:

* ``pad`` (the default: nothing of the image is lost and nothing is distorted): scaled to fit inside and
  centred on a canvas of the image's own mean colour, so the border adds no strong edge of its own (black
  would, and after normalization it is an extreme input value);
* ``crop``: scaled to cover the input and centre-cropped (the centre kept, the overhang lost);
* ``stretch``: resized to the input's shape (distorts the aspect ratio).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

#: The ``--fit`` policies (see the module docstring); the first is the default.
FIT_POLICIES = ("pad", "crop", "stretch")
#: PIL modes of grey images.
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")

Size = tuple[int, int]


def same_shape(size: Size, target: Size) -> bool:
    """Whether (H, W) ``size`` has the aspect ratio of (H, W) ``target`` (so a plain resize fits it)."""
    return size[0] * target[1] == size[1] * target[0]


def fit_image(image: Image.Image, size: Size, fit: str) -> Image.Image:
    """An RGB PIL image at exactly ``size`` (H, W), by the policy ``fit`` (see the module docstring); an image of
    that size comes back as it is, one of its aspect ratio resized (bilinear)."""
    target = (size[1], size[0])
    if image.size == target:
        return image
    if fit == "stretch" or same_shape((image.height, image.width), size):
        return image.resize(target, Image.BILINEAR)
    scale = (min if fit == "pad" else max)(target[0] / image.width, target[1] / image.height)
    inner = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    scaled = image.resize(inner, Image.BILINEAR)
    left, top = (inner[0] - target[0]) // 2, (inner[1] - target[1]) // 2
    if fit == "crop":
        return scaled.crop((left, top, left + target[0], top + target[1]))
    mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0)
    canvas = Image.new("RGB", target, tuple(int(round(v)) for v in mean))
    canvas.paste(scaled, (-left, -top))
    return canvas


def survey_files(files: Sequence[Path], size: Size, fail: Callable[[Path, None], object]) -> dict:
    """From the file headers only (no pixels decoded): ``{"fitted": files of another aspect ratio than ``size``,
    "grey": grey files, "colour": colour files}``; an unreadable file is handed to ``fail(path, None)`` (which
    raises the loader's one-line error)."""
    fitted = grey = 0
    for path in files:
        try:
            with Image.open(path) as image:
                fitted += not same_shape((image.height, image.width), size)
                grey += image.mode in GREY_MODES
        except (OSError, UnidentifiedImageError, ValueError):
            fail(path, None)
    return {"fitted": fitted, "grey": grey, "colour": len(files) - grey}


__all__ = ["FIT_POLICIES", "GREY_MODES", "Size", "same_shape", "fit_image", "survey_files"]
