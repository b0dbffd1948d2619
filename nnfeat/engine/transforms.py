"""Robustness transforms, applied to the batch every render step.

Geometric steps (pad, jitter, scale, rotate, final resize) are each an ``nn.Module`` that contributes a
random per-item affine map; :class:`RandomAffine` composes them and resamples the batch ONCE with one
``grid_sample`` (functional form: :func:`affine_resample`). Padding uses a constant grey (0.5) everywhere
outside the image, as Lucid's constant pad does. Photometric steps (``GaussianBlur``, ``ColorJitter``)
are separate modules built on kornia's functional ops.

All randomness comes from the ``torch.Generator`` passed to ``forward``.

Presets:

* :func:`standard_transforms` — Lucid's ``standard_transforms`` with its exact pixel numbers (pad 12,
  jitter 8, scale 0.90–1.10 step 0.02, rotate ±10°, jitter 4), meant for 128–224 px images.
* :func:`auto_transforms` — the size-aware default: the same recipe with pads and jitters scaled by
  ``size / 128`` and the scale and rotation ranges narrowed below 128 px, so a 32 px render is not
  wrecked by transforms made for 224 px.
* :func:`atlas_transforms` — the Activation Atlas paper's icon transforms, pixel numbers scaled by ``size / 80``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnfeat.errors import NnfeatError
from nnfeat.imageops import gaussian_blur

# ---------------------------------------------------------------------------------------------------
# Functional core


def affine_resample(images: torch.Tensor, matrices: torch.Tensor, out_size: tuple[int, int],
                    fill: float = 0.5) -> torch.Tensor:
    """Resample (B, C, H, W) images through per-item affine maps in one batched op.

    Args:
        images: (B, C, H, W).
        matrices: (B, 3, 3) maps from input pixel coordinates (x, y; pixel i spans [i, i+1]) to output
            pixel coordinates.
        out_size: (H_out, W_out).
        fill: value outside the image.
    Returns:
        (B, C, H_out, W_out).
    """
    b, _, h, w = images.shape
    ho, wo = out_size
    dtype, device = images.dtype, images.device
    # normalized <- pixel for input and output grids (align_corners=False convention)
    to_norm_in = torch.tensor([[2.0 / w, 0, -1], [0, 2.0 / h, -1], [0, 0, 1]], dtype=dtype, device=device)
    from_norm_out = torch.tensor([[wo / 2.0, 0, wo / 2.0], [0, ho / 2.0, ho / 2.0], [0, 0, 1]], dtype=dtype,
                                 device=device)
    theta = to_norm_in @ torch.linalg.inv(matrices.to(dtype)) @ from_norm_out  # output-norm -> input-norm
    grid = F.affine_grid(theta[:, :2], [b, images.shape[1], ho, wo], align_corners=False)
    return F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def _translate(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3, dtype=tx.dtype, device=tx.device).repeat(tx.shape[0], 1, 1)
    m[:, 0, 2] = tx
    m[:, 1, 2] = ty
    return m


def _scale(s: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3, dtype=s.dtype, device=s.device).repeat(s.shape[0], 1, 1)
    m[:, 0, 0] = s
    m[:, 1, 1] = s
    return m


def _rotate(radians: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3, dtype=radians.dtype, device=radians.device).repeat(radians.shape[0], 1, 1)
    c, s = torch.cos(radians), torch.sin(radians)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


class Canvas:
    """The running state of a geometric pipeline: per-item map from source pixels and current size.

    ``matrix`` (B, 3, 3) maps source pixel coordinates to current canvas coordinates; ``width`` and
    ``height`` (B,) are the current canvas sizes (they differ per item after a random scale).
    """

    def __init__(self, batch: int, height: int, width: int, device, dtype=torch.float32) -> None:
        self.matrix = torch.eye(3, device=device, dtype=dtype).repeat(batch, 1, 1)
        self.height = torch.full((batch,), float(height), device=device, dtype=dtype)
        self.width = torch.full((batch,), float(width), device=device, dtype=dtype)

    def then(self, m: torch.Tensor) -> None:
        self.matrix = m @ self.matrix


# ---------------------------------------------------------------------------------------------------
# Geometric steps


class GeometricStep(nn.Module):
    """A step of a :class:`RandomAffine` pipeline: updates a :class:`Canvas` in place."""

    def update(self, canvas: Canvas, generator: torch.Generator | None) -> None:
        raise NotImplementedError


def _uniform(n: int, low: float, high: float, like: torch.Tensor, generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)


class Pad(GeometricStep):
    """Pad by ``pad`` px on every side (with the pipeline's fill value)."""

    def __init__(self, pad: float) -> None:
        super().__init__()
        self.pad = float(pad)

    def update(self, canvas: Canvas, generator) -> None:
        p = torch.full_like(canvas.width, self.pad)
        canvas.then(_translate(p, p))
        canvas.width = canvas.width + 2 * self.pad
        canvas.height = canvas.height + 2 * self.pad


class Jitter(GeometricStep):
    """Random crop that is ``d`` px smaller, at a uniformly random offset in [0, d] (Lucid's jitter)."""

    def __init__(self, d: float) -> None:
        super().__init__()
        self.d = float(d)

    def update(self, canvas: Canvas, generator) -> None:
        if self.d <= 0:
            return
        n = canvas.width.shape[0]
        ox = _uniform(n, 0.0, self.d, canvas.width, generator)
        oy = _uniform(n, 0.0, self.d, canvas.width, generator)
        canvas.then(_translate(-ox, -oy))
        canvas.width = canvas.width - self.d
        canvas.height = canvas.height - self.d


class RandomScale(GeometricStep):
    """Rescale the canvas by a factor drawn uniformly from ``scales``."""

    def __init__(self, scales: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("scales", torch.tensor(list(scales), dtype=torch.float32), persistent=False)

    def update(self, canvas: Canvas, generator) -> None:
        n = canvas.width.shape[0]
        idx = torch.randint(len(self.scales), (n,), generator=generator, device=canvas.width.device)
        s = self.scales.to(canvas.width.device)[idx]
        canvas.then(_scale(s))
        canvas.width = canvas.width * s
        canvas.height = canvas.height * s


class RandomRotate(GeometricStep):
    """Rotate about the canvas centre by an angle (degrees) drawn uniformly from ``angles``."""

    def __init__(self, angles: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("radians", torch.tensor([math.radians(a) for a in angles], dtype=torch.float32),
                             persistent=False)

    def update(self, canvas: Canvas, generator) -> None:
        n = canvas.width.shape[0]
        idx = torch.randint(len(self.radians), (n,), generator=generator, device=canvas.width.device)
        cx, cy = canvas.width / 2, canvas.height / 2
        m = _translate(cx, cy) @ _rotate(self.radians.to(canvas.width.device)[idx]) @ _translate(-cx, -cy)
        canvas.then(m)


class CropOrPadTo(GeometricStep):
    """Crop or pad the canvas, about its centre, back to ``size`` px (Lucid's ``crop_or_pad_to``): unlike the
    final resize of :class:`RandomAffine`, this keeps the content's scale."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def update(self, canvas: Canvas, generator) -> None:
        h, w = (float(v) for v in self.size)
        canvas.then(_translate((w - canvas.width) / 2, (h - canvas.height) / 2))
        canvas.width = torch.full_like(canvas.width, w)
        canvas.height = torch.full_like(canvas.height, h)


class RandomAffine(nn.Module):
    """Compose geometric steps and resample once to ``out_size`` (the whole canvas is resized to it).

    ``forward(images (B,C,H,W), generator) -> (B, C, *out_size)``.
    """

    def __init__(self, steps: Sequence[GeometricStep], out_size: int | tuple[int, int] | None = None,
                 fill: float = 0.5) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.out_size = (out_size, out_size) if isinstance(out_size, int) else out_size
        self.fill = fill

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, _, h, w = images.shape
        out_size = self.out_size or (h, w)
        canvas = Canvas(b, h, w, images.device)
        for step in self.steps:
            step.update(canvas, generator)
        ho, wo = out_size
        canvas.then(_scale_xy(wo / canvas.width, ho / canvas.height))
        return affine_resample(images, canvas.matrix, out_size, self.fill)


def _scale_xy(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3, dtype=sx.dtype, device=sx.device).repeat(sx.shape[0], 1, 1)
    m[:, 0, 0] = sx
    m[:, 1, 1] = sy
    return m


# ---------------------------------------------------------------------------------------------------
# Photometric steps (kornia functional ops, wrapped as modules)


class GaussianBlur(nn.Module):
    """Module form of :func:`nnfeat.imageops.gaussian_blur`: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, sigma: float = 0.5) -> None:
        super().__init__()
        self.sigma = float(sigma)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return gaussian_blur(images, self.sigma)


class ColorJitter(nn.Module):
    """Per-item random brightness offset and contrast factor, ``amount`` in [0, 1)."""

    def __init__(self, amount: float = 0.05) -> None:
        super().__init__()
        self.amount = float(amount)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b = images.shape[0]
        shift = _uniform(b, -self.amount, self.amount, images, generator).view(b, 1, 1, 1)
        factor = _uniform(b, 1 - self.amount, 1 + self.amount, images, generator).view(b, 1, 1, 1)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        return (images - mean) * factor + mean + shift


class Compose(nn.Module):
    """Apply transforms in order: ``forward(images, generator)``."""

    def __init__(self, *transforms: nn.Module) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for t in self.transforms:
            images = t(images, generator)
        return images


class Identity(nn.Module):
    """No transform (optionally resize to ``out_size``)."""

    def __init__(self, out_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.out_size = out_size

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.out_size and tuple(images.shape[-2:]) != tuple(self.out_size):
            return F.interpolate(images, size=self.out_size, mode="bilinear", align_corners=False)
        return images


# ---------------------------------------------------------------------------------------------------
# Presets

LUCID_SCALES = tuple(1 + (i - 5) / 50.0 for i in range(11))  # 0.90 .. 1.10 step 0.02
LUCID_ANGLES = tuple(range(-10, 11))


def standard_transforms(out_size: int | tuple[int, int] | None = None) -> RandomAffine:
    """Lucid's ``standard_transforms`` with its pixel numbers, then a resize to ``out_size``."""
    return RandomAffine([Pad(12), Jitter(8), RandomScale(LUCID_SCALES), RandomRotate(LUCID_ANGLES), Jitter(4)],
                        out_size)


def auto_transforms(size: int, out_size: int | tuple[int, int] | None = None) -> RandomAffine:
    """Size-aware robustness: Lucid's recipe with pads/jitters scaled by ``size/128`` and, below 128 px,
    narrower scale (down to ±5 %) and rotation (down to ±5°) ranges. At 128 px it equals Lucid's numbers."""
    f = size / 128.0
    narrow = min(1.0, max(0.5, math.sqrt(f)))
    spread = 0.10 * narrow
    scales = tuple(1 + spread * (i - 5) / 5.0 for i in range(11))
    max_angle = 10.0 * narrow
    angles = tuple(max_angle * (i - 10) / 10.0 for i in range(21))
    return RandomAffine([Pad(12 * f), Jitter(8 * f), RandomScale(scales), RandomRotate(angles), Jitter(4 * f)],
                        out_size)


#: The Activation Atlas icon transforms (Carter et al., Distill 2019; Lucid's activation_atlas ``render_icons``):
#: scales 0.995^n (n = -5..79) and 0.998^n (n = 20..39, twice); rotations -20..19, -10..9, -5..4 and five 0s (degrees).
ATLAS_SCALES = tuple([0.995 ** n for n in range(-5, 80)] + [0.998 ** n for n in 2 * list(range(20, 40))])
ATLAS_ANGLES = tuple(list(range(-20, 20)) + list(range(-10, 10)) + list(range(-5, 5)) + 5 * [0])


def atlas_transforms(size: int, out_size: int | tuple[int, int] | None = None) -> RandomAffine:
    """The paper's icon transforms for ``size`` px icons: pad 2, jitters 4, 4, 8, 8, 8, random scale, random rotate,
    jitter 2, crop/pad back to ``size`` (pixel numbers of its 80 px icons, scaled by ``size / 80``), then a resize
    to ``out_size``."""
    f = size / 80.0
    jitters = [Jitter(d * f) for d in (4, 4, 8, 8, 8)]
    return RandomAffine([Pad(2 * f), *jitters, RandomScale(ATLAS_SCALES), RandomRotate(ATLAS_ANGLES), Jitter(2 * f),
                         CropOrPadTo(size)], out_size)


TRANSFORM_PRESETS = ("auto", "standard", "none", "atlas")


def make_transforms(spec: str | nn.Module | None, size: int, out_size: tuple[int, int] | None = None) -> nn.Module:
    """A preset name (``auto``, ``standard``, ``none``) or a module -> a module ``(images, generator) -> images``."""
    if isinstance(spec, nn.Module):
        return spec
    if spec in (None, "none"):
        return Identity(out_size)
    if spec == "auto":
        return auto_transforms(size, out_size)
    if spec == "standard":
        return standard_transforms(out_size)
    if spec == "atlas":
        return atlas_transforms(size, out_size)
    raise NnfeatError(f"unknown transforms '{spec}': use one of {', '.join(TRANSFORM_PRESETS)}")
