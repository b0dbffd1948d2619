"""Pixel operations shared by several stages (the base model, objectives, transforms, the render loop).

* :func:`luma` / :func:`to_grey`: Rec. 601 luma, how RGB becomes grey for one-channel models and grey renders.
* :func:`gaussian_blur`: the one Gaussian blur (kornia's ``gaussian_blur2d`` with one kernel-size rule),
  used by the ``blur`` objective and the ``GaussianBlur`` transform alike.
"""

from __future__ import annotations

import math

import torch

#: Rec. 601 luma weights (R, G, B).
LUMA = (0.299, 0.587, 0.114)


def luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) Rec. 601 luma."""
    weights = images.new_tensor(LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def to_grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 3, H, W) with every channel the luma (a grey picture in RGB)."""
    return luma(images).expand(-1, 3, -1, -1).contiguous()


def gaussian_kernel_size(sigma: float) -> int:
    """The odd kernel side used for a Gaussian of ``sigma`` px: ``2 * ceil(2 sigma) + 1`` (at least 3),
    which keeps the weights beyond the truncation under 5 %."""
    return 2 * max(1, int(math.ceil(2 * float(sigma)))) + 1


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W) blurred with a Gaussian of ``sigma`` px (reflect padding)."""
    import kornia  # lazy: kornia takes about a second to import and only blurs need it

    k = gaussian_kernel_size(sigma)
    return kornia.filters.gaussian_blur2d(images, (k, k), (float(sigma), float(sigma)))


__all__ = ["LUMA", "luma", "to_grey", "gaussian_kernel_size", "gaussian_blur"]
