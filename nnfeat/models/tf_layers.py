"""TensorFlow-compatible building blocks for ports of TensorFlow networks (InceptionV1): "SAME" padding for
convolutions and max pools, TensorFlow's local response normalization, and a channel concatenation module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int, int, int]:
    """TensorFlow "SAME" padding for an (H, W) input, as ``F.pad``'s (left, right, top, bottom).

    Output size is ``ceil(n / stride)``; the total padding is split with the extra pixel after.
    """
    pads = []
    for n, k, s in zip(size, kernel, stride):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return (left, right, top, bottom)


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding: (B, C_in, H, W) -> (B, C_out, ceil(H/s), ceil(W/s)).

    Odd kernels at stride 1 pad symmetrically (done by the convolution itself); otherwise the input is
    zero-padded first, with the extra pixel on the bottom/right as TensorFlow does.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        symmetric = stride == 1 and kernel_size % 2 == 1
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=kernel_size // 2 if symmetric else 0, bias=True)
        self.dynamic_padding = not symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_padding:
            x = F.pad(x, same_padding(tuple(x.shape[-2:]), self.kernel_size, self.stride))
        return super().forward(x)


class SameMaxPool2d(nn.Module):
    """3x3 max pool with TensorFlow "SAME" padding (padding never wins): (B, C, H, W) -> (B, C, ceil(H/s), ceil(W/s))."""

    def __init__(self, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        if s == 1 and k % 2 == 1:  # symmetric: max_pool2d's own padding is -inf
            return F.max_pool2d(x, k, 1, padding=k // 2)
        x = F.pad(x, same_padding(tuple(x.shape[-2:]), (k, k), (s, s)), value=float("-inf"))
        return F.max_pool2d(x, k, s)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=SAME"


class TFLocalResponseNorm(nn.Module):
    """TensorFlow's LRN across channels: (B, C, H, W) -> same shape.

    ``y = x / (bias + alpha * sum_{c' = c - r}^{c + r} x[c']^2) ** beta`` (channels outside 0..C-1 count 0).
    """

    def __init__(self, depth_radius: int, bias: float, alpha: float, beta: float) -> None:
        super().__init__()
        self.depth_radius, self.bias, self.alpha, self.beta = depth_radius, bias, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = 2 * self.depth_radius + 1
        # torch divides alpha by size (it averages the squares); TensorFlow sums them.
        return F.local_response_norm(x, size, alpha=self.alpha * size, beta=self.beta, k=self.bias)

    def extra_repr(self) -> str:
        return f"depth_radius={self.depth_radius}, bias={self.bias}, alpha={self.alpha:.6g}, beta={self.beta}"


class Concat(nn.Module):
    """Concatenate along channels: k tensors (B, C_i, H, W) -> (B, sum C_i, H, W)."""

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.cat(tensors, dim=1)


__all__ = ["same_padding", "SameConv2d", "SameMaxPool2d", "TFLocalResponseNorm", "Concat"]
