"""Differentiable image parameterizations.

Each parameterization is an ``nn.Module`` with no inputs: ``forward()`` returns the current images.
Raw parameterizations (``PixelImage``, ``FourierImage``, ``CPPNImage``, ``SharedComponents``) return
unbounded (B, C, H, W) tensors; :class:`ImageParam` adds colour decorrelation and a squash to make
(B, 3, H, W) RGB in [0, 1]. :func:`image_param` builds the usual combinations by name.

Every random draw takes a ``torch.Generator`` so the same seed gives the same image.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnfeat.errors import NnfeatError
from nnfeat.layouts import size2

#: Square root of ImageNet's colour correlation matrix (Lucid), rows = RGB output channels.
COLOR_CORRELATION_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32
)
#: ImageNet colour mean, used with the ``clamp`` squash.
COLOR_MEAN = (0.48, 0.46, 0.41)


def decorrelation_matrix() -> torch.Tensor:
    """(3, 3) the colour mixing that decorrelated images go through: :data:`COLOR_CORRELATION_SQRT` scaled so
    its largest column norm is 1 (Olah et al., "Feature Visualization", Distill 2017; Lucid's numbers)."""
    return COLOR_CORRELATION_SQRT / COLOR_CORRELATION_SQRT.norm(dim=0).max()


def _randn(shape: Sequence[int], sd: float, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.randn(*shape, generator=generator, device=device) * sd


class PixelImage(nn.Module):
    """Raw pixels: a (B, C, H, W) parameter initialised with N(0, sd)."""

    def __init__(self, size, batch: int = 1, channels: int = 3, sd: float = 0.01,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        h, w = size2(size)
        self.pixels = nn.Parameter(_randn((batch, channels, h, w), sd, generator))

    def forward(self) -> torch.Tensor:
        """-> (B, C, H, W) unbounded."""
        return self.pixels


def fourier_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """Per-frequency scale 1 / max(|f|, 1/max(h, w)) ** decay_power for an rfft2 grid -> (H, W//2+1)."""
    fy = torch.fft.fftfreq(h).view(-1, 1)
    fx = torch.fft.rfftfreq(w).view(1, -1)
    freqs = torch.sqrt(fy * fy + fx * fx)
    return 1.0 / freqs.clamp_min(1.0 / max(h, w)).pow(decay_power)


class FourierImage(nn.Module):
    """Images parameterized by their 2-D real spectrum, scaled so low frequencies dominate (Lucid's "fft").

    The spectrum (B, C, H, W//2+1) complex, stored as real pairs, starts as N(0, sd); the image is the
    orthonormal inverse real FFT of the spectrum times :func:`fourier_scale`, divided by 4.
    """

    def __init__(self, size, batch: int = 1, channels: int = 3, sd: float = 0.01, decay_power: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.h, self.w = size2(size)
        self.channels = channels
        self.spectrum = nn.Parameter(_randn((batch, channels, self.h, self.w // 2 + 1, 2), sd, generator))
        self.register_buffer("scale", fourier_scale(self.h, self.w, decay_power).to(self.spectrum.device),
                             persistent=False)

    def forward(self) -> torch.Tensor:
        """-> (B, C, H, W) unbounded."""
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        return torch.fft.irfft2(spectrum, s=(self.h, self.w), norm="ortho") / 4.0


class MagnitudeConstrainedImage(nn.Module):
    """MACO: the Fourier magnitude is fixed (e.g. a dataset's mean spectrum); only the phase is optimized.

    Args:
        magnitude: (C, H, W//2+1) or (H, W//2+1) non-negative spectrum magnitude.
    """

    def __init__(self, magnitude: torch.Tensor, batch: int = 1, channels: int = 3,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        magnitude = torch.as_tensor(magnitude, dtype=torch.float32)
        if magnitude.dim() == 2:
            magnitude = magnitude.expand(channels, -1, -1)
        c, h, wf = magnitude.shape
        self.h, self.w = h, (wf - 1) * 2
        device = generator.device if generator is not None else "cpu"
        self.register_buffer("magnitude", magnitude.to(device), persistent=False)
        phase = (torch.rand(batch, c, h, wf, generator=generator, device=device) * 2 - 1) * math.pi
        self.phase = nn.Parameter(phase)

    def forward(self) -> torch.Tensor:
        """-> (B, C, H, W) unbounded (roughly zero-mean, dataset-like contrast)."""
        spectrum = torch.polar(self.magnitude.expand_as(self.phase), self.phase)
        return torch.fft.irfft2(spectrum, s=(self.h, self.w), norm="ortho")


class CPPNImage(nn.Module):
    """A compositional pattern-producing network per batch item: (x, y, r) -> colour, with atan activations.

    Items have independent weights, run together as grouped 1x1 convolutions (no loop over items).
    Its weights are far more sensitive than Fourier coefficients: at Adam lr 0.05 renders saturate to flat
    colours, so :func:`nnfeat.render` uses ``default_lr`` (0.005) unless given ``lr``.
    """

    default_lr = 0.005

    def __init__(self, size, batch: int = 1, channels: int = 3, hidden: int = 24, layers: int = 8,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        h, w = size2(size)
        self.batch = batch
        device = generator.device if generator is not None else "cpu"
        ys = torch.linspace(-math.sqrt(3), math.sqrt(3), h, device=device).view(h, 1).expand(h, w)
        xs = torch.linspace(-math.sqrt(3), math.sqrt(3), w, device=device).view(1, w).expand(h, w)
        coords = torch.stack([xs, ys, torch.sqrt(xs**2 + ys**2)]).unsqueeze(0)  # (1, 3, H, W)
        self.register_buffer("coords", coords.repeat(1, batch, 1, 1), persistent=False)
        weights, biases = [], []
        fan_in = 3
        for i in range(layers + 1):
            fan_out = channels if i == layers else hidden
            # composite activation doubles the width of every hidden layer
            weights.append(nn.Parameter(_randn((batch * fan_out, fan_in, 1, 1), math.sqrt(1.0 / fan_in), generator)))
            biases.append(nn.Parameter(torch.zeros(batch * fan_out, device=device)))
            fan_in = 2 * fan_out
        self.weights = nn.ParameterList(weights)
        self.biases = nn.ParameterList(biases)

    def forward(self) -> torch.Tensor:
        """-> (B, C, H, W) unbounded."""
        x = self.coords
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = F.conv2d(x, weight, bias, groups=self.batch)
            if i < last:
                b_c = x.shape[1] // self.batch
                x = x.view(1, self.batch, b_c, *x.shape[-2:])
                a = torch.atan(x)
                x = torch.cat([a / 0.67, a * a / 0.6], dim=2).view(1, self.batch * 2 * b_c, *x.shape[-2:])
        return x.view(self.batch, -1, *x.shape[-2:]) * 2.0


class SharedComponents(nn.Module):
    """Low-resolution components shared by the whole batch, upsampled and summed (for interpolations).

    Adds ``sum_k upsample(P_k)`` with P_k of shape (1, C, H/f_k, W/f_k) for factors ``factors``.
    """

    def __init__(self, size, batch: int = 1, channels: int = 3, factors: Sequence[int] = (2, 4, 8, 16),
                 sd: float = 0.01, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.h, self.w = size2(size)
        self.batch = batch
        self.parts = nn.ParameterList(
            nn.Parameter(_randn((1, channels, max(1, self.h // f), max(1, self.w // f)), sd, generator))
            for f in factors
        )

    def forward(self) -> torch.Tensor:
        """-> (B, C, H, W): the shared image, identical for every item."""
        total = sum(F.interpolate(p, size=(self.h, self.w), mode="bilinear", align_corners=False) for p in self.parts)
        return total.expand(self.batch, -1, -1, -1)


class Sum(nn.Module):
    """Sum of several raw parameterizations of the same shape."""

    def __init__(self, *parts: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self) -> torch.Tensor:
        return sum(p() for p in self.parts)


def decorrelate_colors(raw: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) decorrelated-space image -> RGB-correlated, channel mixing by ``matrix`` (3, 3)."""
    return torch.einsum("oc,bchw->bohw", matrix, raw)


class ColorDecorrelation(nn.Module):
    """Module form of :func:`decorrelate_colors` with Lucid's normalized ImageNet matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("matrix", decorrelation_matrix(), persistent=False)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return decorrelate_colors(raw, self.matrix)


DEFAULT_LR = 0.05  # Lucid's Adam learning rate for Fourier and pixel images


class ImageParam(nn.Module):
    """A raw parameterization plus colour handling: ``forward()`` -> (B, 3, H, W) RGB in [0, 1].

    Args:
        raw: module giving (B, 3, H, W) unbounded values (or (B, 4, H, W) with alpha, see ``alpha``).
        decorrelate: mix colours with the ImageNet colour correlation (Lucid's default).
        squash: ``"sigmoid"`` or ``"clamp"`` (clip after adding the ImageNet colour mean).
    """

    def __init__(self, raw: nn.Module, decorrelate: bool = True, squash: str = "sigmoid") -> None:
        super().__init__()
        if squash not in ("sigmoid", "clamp"):
            raise NnfeatError(f"unknown squash '{squash}': use 'sigmoid' or 'clamp'")
        self.raw = raw
        self.decorrelation = ColorDecorrelation() if decorrelate else None
        self.squash = squash
        self.register_buffer("color_mean", torch.tensor(COLOR_MEAN).view(1, 3, 1, 1), persistent=False)

    def rgba(self) -> torch.Tensor:
        """-> (B, 3 or 4, H, W) in [0, 1]; the 4th channel, when present, is alpha."""
        x = self.raw()
        rgb, alpha = x[:, :3], x[:, 3:]
        if self.decorrelation is not None:
            rgb = self.decorrelation(rgb)
        if self.squash == "sigmoid":
            rgb = torch.sigmoid(rgb)
        else:
            rgb = (rgb + self.color_mean).clamp(0, 1)
        if alpha.shape[1]:
            return torch.cat([rgb, torch.sigmoid(alpha)], dim=1)
        return rgb

    @property
    def default_lr(self) -> float:
        """The Adam learning rate ``render`` uses when none is given: the raw parameterization's, else 0.05."""
        return float(getattr(self.raw, "default_lr", DEFAULT_LR))

    @property
    def has_alpha(self) -> bool:
        return getattr(self.raw, "channels", 3) == 4

    def forward(self, background: torch.Tensor | None = None) -> torch.Tensor:
        """-> (B, 3, H, W) RGB in [0, 1]. With alpha, composited over ``background`` (B or 1, 3, H, W), default grey."""
        x = self.rgba()
        if x.shape[1] == 4:
            back = 0.5 if background is None else background
            return x[:, :3] * x[:, 3:] + back * (1 - x[:, 3:])
        return x


def random_backgrounds(batch: int, size: tuple[int, int], generator: torch.Generator | None) -> torch.Tensor:
    """Random smooth colour backgrounds (B, 3, H, W) in [0, 1]: a random colour per item plus a coarse noise field."""
    device = generator.device if generator is not None else "cpu"
    base = torch.rand(batch, 3, 1, 1, generator=generator, device=device)
    coarse = torch.rand(batch, 3, 4, 4, generator=generator, device=device)
    noise = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (0.6 * base + 0.4 * noise).clamp(0, 1)


PARAM_KINDS = ("fft", "pixel", "cppn", "fft+shared", "maco", "rgba")


def image_param(kind: str = "fft", size=128, batch: int = 1, *, decorrelate: bool = True, squash: str = "sigmoid",
                sd: float = 0.01, decay_power: float = 1.0, magnitude: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> ImageParam:
    """Build a parameterization by name.

    Args:
        kind: ``fft`` (Fourier, Lucid's default), ``pixel``, ``cppn``, ``fft+shared`` (Fourier plus
            low-resolution components shared by the batch, for interpolations), ``maco`` (fixed magnitude
            ``magnitude``, phase optimized), ``rgba`` (Fourier with an alpha channel).
        size: int or (H, W).
    Returns:
        an :class:`ImageParam`; ``param()`` is (B, 3, H, W) in [0, 1].
    """
    if kind == "fft":
        raw = FourierImage(size, batch, 3, sd, decay_power, generator)
    elif kind == "pixel":
        raw = PixelImage(size, batch, 3, sd, generator)
    elif kind == "cppn":
        return ImageParam(CPPNImage(size, batch, 3, generator=generator), decorrelate=False, squash="sigmoid")
    elif kind == "fft+shared":
        raw = Sum(FourierImage(size, batch, 3, sd, decay_power, generator),
                  SharedComponents(size, batch, 3, sd=sd, generator=generator))
    elif kind == "maco":
        if magnitude is None:
            raise NnfeatError("the 'maco' parameterization needs a magnitude spectrum: run `nnfeat spectrum --images SRC`")
        h, w = size2(size)
        mag_shape = tuple(torch.as_tensor(magnitude).shape[-2:])
        if mag_shape != (h, w // 2 + 1):
            got = f"{mag_shape[0]}x{(mag_shape[1] - 1) * 2}" if len(mag_shape) == 2 else str(mag_shape)
            raise NnfeatError(f"the maco spectrum is for {got} px images but the render size is {h}x{w}: "
                              f"make one with `nnfeat spectrum --images SRC --size {h}` or render at its size")
        raw = MagnitudeConstrainedImage(magnitude, batch, 3, generator)
    elif kind == "rgba":
        raw = FourierImage(size, batch, 4, sd, decay_power, generator)
    else:
        raise NnfeatError(f"unknown parameterization '{kind}': use one of {', '.join(PARAM_KINDS)}")
    return ImageParam(raw, decorrelate=decorrelate, squash=squash)
