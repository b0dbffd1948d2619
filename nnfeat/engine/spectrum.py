"""Dataset spectra for the MACO parameterization, and the ``nnfeat spectrum`` command.

MACO (Fel et al. 2023) fixes the Fourier *magnitude* of the rendered image to the mean magnitude of
natural images and optimizes only the phase. :func:`dataset_spectrum` computes that mean magnitude:

1. every image (3, H, W) in [0, 1] is resized to ``size``;
2. each channel's own mean is subtracted, so the DC term is 0 (brightness and colour cast are left to
   the squash: a MACO render is centred on grey);
3. in the default ``space="param"`` the centred image is mapped into the space in which
   :class:`nnfeat.engine.param.ImageParam` optimizes, ``raw = 4 * D^-1 (x - mean)``, where ``D`` is the colour
   decorrelation matrix and 4 is the inverse slope of the sigmoid at 0. Then
   ``image_param("maco", magnitude=spectrum)`` (decorrelation on, sigmoid squash, the defaults) gives
   renders whose pixel spectrum and contrast match the dataset to first order. ``space="pixel"`` keeps
   the plain centred pixels (for ``image_param("maco", ..., decorrelate=False, squash="clamp")``);
4. the magnitude of the orthonormal ``rfft2`` of each channel, averaged over the images, is returned as
   (3, H, W//2+1).

Results are cached in ``$NNFEAT_HOME/spectra/<hash>.pt``; the hash covers the images' content (array
bytes, or each file's path, size and modification time), ``size`` and ``space``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from nnfeat.data import ImageSet, load_images
from nnfeat.engine.param import decorrelation_matrix, fourier_scale
from nnfeat.errors import NnfeatError
from nnfeat.io import nnfeat_home, save_torch
from nnfeat.layouts import size2
from nnfeat.progress import progress_bar

SPACES = ("param", "pixel")
#: Bump when the computation changes, so old cache entries are not reused.
CACHE_VERSION = 1
#: 1 / (slope of the sigmoid at 0): maps pixel deviations to the pre-sigmoid space to first order.
SIGMOID_GAIN = 4.0


def _decorrelation_inverse() -> torch.Tensor:
    """(3, 3) inverse of the colour decorrelation matrix that :class:`nnfeat.engine.param.ColorDecorrelation` applies."""
    return torch.linalg.inv(decorrelation_matrix().double()).float()


def image_magnitudes(images: torch.Tensor, space: str = "param") -> torch.Tensor:
    """Per-image Fourier magnitudes: (B, 3, H, W) in [0, 1] -> (B, 3, H, W//2+1), see the module docstring."""
    if space not in SPACES:
        raise NnfeatError(f"unknown spectrum space '{space}': use {' or '.join(SPACES)}")
    centred = images.float() - images.float().mean(dim=(-2, -1), keepdim=True)
    if space == "param":
        inverse = _decorrelation_inverse().to(centred.device)
        centred = SIGMOID_GAIN * torch.einsum("oc,bchw->bohw", inverse, centred)
    magnitude = torch.fft.rfft2(centred, norm="ortho").abs()
    magnitude[..., 0, 0] = 0.0  # the DC term is 0 by construction; drop float rounding
    return magnitude


def power_law_spectrum(size, contrast: float = 0.2, decay: float = 1.0, space: str = "param") -> torch.Tensor:
    """A synthetic natural-image spectrum ``1/|f|**decay`` (no dataset needed) -> (3, H, W//2+1).

    Scaled so that an image with this magnitude (and any phase) has a pixel standard deviation of about
    ``contrast`` per channel; the DC term is 0, as in :func:`dataset_spectrum`.
    """
    if space not in SPACES:
        raise NnfeatError(f"unknown spectrum space '{space}': use {' or '.join(SPACES)}")
    h, w = size2(size)
    shape = fourier_scale(h, w, decay)
    shape[0, 0] = 0.0
    # Parseval (orthonormal FFT): sum over the full spectrum of |F|^2 = sum of pixels^2 = H*W*std^2.
    # The rfft grid counts every column except the first (and the Nyquist one for even W) twice.
    weight = torch.full_like(shape, 2.0)
    weight[:, 0] = 1.0
    if w % 2 == 0:
        weight[:, -1] = 1.0
    energy = (weight * shape.pow(2)).sum()
    magnitude = shape * (contrast * (h * w) ** 0.5 / energy.sqrt())
    magnitude = magnitude.expand(3, -1, -1).clone()
    if space == "param":
        # Natural colours are correlated as the decorrelation matrix D encodes: x = D z with z white, so in
        # param space (4 z) every channel has the same magnitude, 4 / (mean row norm of D) times the pixel one.
        magnitude = magnitude * (SIGMOID_GAIN / decorrelation_matrix().norm(dim=1).mean())
    return magnitude


def _fingerprint(images) -> str:
    """A hash of the images' content: array bytes, or (path, size, mtime) of every file."""
    digest = hashlib.sha256()
    if images.array is not None:
        array = np.ascontiguousarray(images.array)
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    else:
        for path in images.files:
            stat = os.stat(path)
            digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def spectrum_cache_path(images, size, space: str = "param") -> Path:
    """Where :func:`dataset_spectrum` caches the spectrum of ``images`` (an :class:`nnfeat.data.ImageSet`)."""
    key = json.dumps({"v": CACHE_VERSION, "images": _fingerprint(images), "n": len(images), "size": list(size2(size)),
                      "space": space}, sort_keys=True)
    return nnfeat_home() / "spectra" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"


def dataset_spectrum(source, size, *, space: str = "param", limit: int | None = None, batch_size: int = 256,
                     cache: bool = True, progress: bool = False) -> torch.Tensor:
    """The mean Fourier magnitude of the images of ``source`` at ``size`` -> (3, H, W//2+1) float32.

    Args:
        source: an :class:`nnfeat.data.ImageSet` or anything :func:`nnfeat.data.load_images` accepts
            (a folder, an ``.npz`` file, ``digits``, a torchvision dataset name).
        size: int or (H, W): the images are resized to it (the render size the spectrum is meant for).
        space: ``"param"`` (default; for ``image_param("maco", magnitude=...)`` with its defaults) or
            ``"pixel"``; see the module docstring.
        limit: use only the first ``limit`` images.
        batch_size: images per FFT batch.
        cache: read and write ``$NNFEAT_HOME/spectra/<hash>.pt``.
        progress: show a tqdm bar.
    """
    if space not in SPACES:
        raise NnfeatError(f"unknown spectrum space '{space}': use {' or '.join(SPACES)}")
    h, w = size2(size)
    if h < 2 or w < 2:
        raise NnfeatError(f"spectrum size must be at least 2x2, got {h}x{w}")
    images = source if isinstance(source, ImageSet) else load_images(source, size=(h, w))
    if limit is not None:
        if limit < 1:
            raise NnfeatError(f"--limit must be at least 1, got {limit}")
        images = images.subset(np.arange(min(limit, len(images))))
    path = spectrum_cache_path(images, (h, w), space) if cache else None
    if path is not None and path.is_file():
        try:
            return load_spectrum(path)
        except NnfeatError:
            pass  # a damaged cache entry is recomputed below
    total = torch.zeros(3, h, w // 2 + 1, dtype=torch.float64)
    bar = progress_bar(len(images), "spectrum", enabled=progress, unit="img")
    for batch in images.iter_batches(batch_size, (h, w)):
        total += image_magnitudes(batch, space).double().sum(0)
        bar.update(len(batch))
    bar.close()
    magnitude = (total / len(images)).float()
    if path is not None:
        save_spectrum(path, magnitude, {"source": images.name, "count": len(images), "size": [h, w], "space": space})
    return magnitude


def save_spectrum(path: str | os.PathLike, magnitude: torch.Tensor, info: dict | None = None) -> Path:
    """Write ``{"magnitude": (3, H, W//2+1), **info}`` with ``torch.save``, atomically (same bytes for the same
    spectrum)."""
    return save_torch(path, {"magnitude": magnitude.detach().cpu().float(), **(info or {})})


def load_spectrum(path: str | os.PathLike) -> torch.Tensor:
    """Read a spectrum written by :func:`save_spectrum` (or ``nnfeat spectrum``) -> (3, H, W//2+1)."""
    path = Path(path)
    if not path.is_file():
        raise NnfeatError(f"spectrum file '{path}' not found: create it with `nnfeat spectrum --images SRC --out {path}`")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        magnitude = data["magnitude"] if isinstance(data, dict) else data
    except Exception as err:  # noqa: BLE001 - unreadable user file
        raise NnfeatError(f"cannot read spectrum file '{path}': {type(err).__name__}; recreate it with `nnfeat spectrum`"
                          ) from None
    if not torch.is_tensor(magnitude) or magnitude.dim() != 3 or magnitude.shape[0] != 3:
        raise NnfeatError(f"spectrum file '{path}' does not hold a (3, H, W//2+1) magnitude; recreate it with `nnfeat spectrum`")
    return magnitude.float()


def spectrum_picture(magnitude: torch.Tensor) -> torch.Tensor:
    """A viewable (3, H, W//2+1) picture in [0, 1]: log magnitude, zero frequency at the left middle, per-channel scaled."""
    logm = torch.log1p(magnitude.float())
    logm = torch.fft.fftshift(logm, dim=-2)
    low = logm.flatten(1).amin(1).view(3, 1, 1)
    high = logm.flatten(1).amax(1).view(3, 1, 1)
    return (logm - low) / (high - low).clamp_min(1e-8)


__all__ = ["SPACES", "dataset_spectrum", "image_magnitudes", "power_law_spectrum", "spectrum_cache_path",
           "save_spectrum", "load_spectrum", "spectrum_picture"]
