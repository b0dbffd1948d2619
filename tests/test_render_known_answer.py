"""The whole engine (param, transforms, hooks, objective, optimizer) on hand-built filters whose optimal
stimulus is known: a colour, an orientation, a frequency."""

import math

import pytest
import torch
from torch import nn

from nnfeat import objectives as O
from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model
from nnfeat.ops.render import render


def colour_model(weights) -> Model:
    conv = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weights, dtype=torch.float32).view(1, 3, 1, 1))
    return Model(nn.Sequential(conv), name="colour", input_size=32)


# Both precisions on every machine: the default (bf16 autocast where the CPU has native bf16) may be either.
PRECISIONS = pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])


@PRECISIONS
@pytest.mark.parametrize("weights,target", [((1.0, -1.0, -1.0), (1, 0, 0)), ((-1.0, 1.0, 1.0), (0, 1, 1)),
                                            ((-1.0, -1.0, 1.0), (0, 0, 1))])
def test_colour_filter_recovers_its_colour(weights, target, autocast):
    model = colour_model(weights)
    result = render(model, O.channel("0", 0), size=32, steps=128, lr=0.1, progress=False, autocast=autocast)
    assert result.settings["precision"] == ("bf16" if autocast else "fp32")
    mean = result.images[0].mean(dim=(1, 2))
    high = [mean[i] for i in range(3) if target[i] == 1]
    low = [mean[i] for i in range(3) if target[i] == 0]
    assert min(high) - max(low) > 0.3, f"mean colour {mean.tolist()} should lean to {target}"
    assert result.values[-1, 0] > result.values[0, 0] + 0.5


def test_dead_start_still_recovers_colour_thanks_to_redirected_relu():
    """The filter's bias puts the unit far below zero on a grey start; plain ReLU gives zero gradient."""
    conv = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))
        conv.bias.fill_(-0.3)  # grey (0.5, 0.5, 0.5) -> -0.8 before ReLU
    model = Model(nn.Sequential(conv, nn.ReLU()), input_size=32)
    stuck = render(model, O.channel("1", 0), size=32, steps=60, lr=0.1, redirected_relu_steps=0, progress=False)
    freed = render(model, O.channel("1", 0), size=32, steps=60, lr=0.1, redirected_relu_steps=60, progress=False)
    assert stuck.final_values.item() == 0.0
    assert freed.final_values.item() > 0.02


def oriented_model(angle_degrees: float, period: float = 6.0, size: int = 17) -> Model:
    """One Gabor filter (cosine carrier with wave vector at ``angle_degrees``) on luminance."""
    r = torch.arange(size, dtype=torch.float32) - size // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    theta = math.radians(angle_degrees)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    gabor = torch.cos(2 * math.pi * u / period) * torch.exp(-(xx**2 + yy**2) / (2 * (size / 3) ** 2))
    gabor = gabor - gabor.mean()
    gabor = gabor / gabor.norm()
    conv = nn.Conv2d(1, 1, size, bias=False)
    with torch.no_grad():
        conv.weight.copy_(gabor.view(1, 1, size, size))
    return Model(nn.Sequential(conv, nn.ReLU()), name="gabor", input_size=48, in_channels=1)


def response(image: torch.Tensor, angle: float, period: float) -> float:
    """Mean rectified response of a Gabor at (angle, period) to the luminance of image (3,H,W)."""
    net = oriented_model(angle, period).net
    grey = (image * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    with torch.no_grad():
        return float(net(grey.unsqueeze(0) - 0.5).mean())


def best_angle(image: torch.Tensor, period: float = 6.0) -> float:
    angles = [float(a) for a in range(0, 180, 15)]
    return max(angles, key=lambda a: response(image, a, period))


def dominant_period(image: torch.Tensor, longest: float = 16.0) -> float:
    """Period (px) of the strongest frequency of the luminance, ignoring periods longer than ``longest``."""
    grey = image.mean(0)
    h, w = grey.shape
    spectrum = torch.fft.fftshift(torch.fft.fft2(grey - grey.mean())).abs()
    fy = (torch.arange(h) - h // 2).view(-1, 1).float()
    fx = (torch.arange(w) - w // 2).view(1, -1).float()
    radius = torch.sqrt(fy**2 + fx**2)
    spectrum[radius < w / longest] = 0
    return w / float(radius.flatten()[spectrum.argmax()])


@PRECISIONS
@pytest.mark.parametrize("angle", [0.0, 90.0, 45.0])
def test_oriented_filter_recovers_orientation_and_frequency(angle, autocast):
    model = oriented_model(angle)
    result = render(model, O.channel("1", 0), size=48, steps=128, lr=0.08, transforms="none", progress=False,
                    autocast=autocast)
    got = best_angle(result.images[0])
    assert got == angle, f"rendered stripes respond best at {got:.0f} degrees, filter prefers {angle}"
    assert 4.5 <= dominant_period(result.images[0]) <= 8.0


def test_orientation_survives_the_default_transforms():
    model = oriented_model(90.0)
    result = render(model, O.channel("1", 0), size=48, steps=128, lr=0.08, progress=False)
    assert best_angle(result.images[0]) in (75.0, 90.0, 105.0)


def test_one_unit_per_batch_item():
    """Two colour channels rendered as one batch: item i follows channel i only."""
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]]).view(2, 3, 1, 1))
    model = Model(nn.Sequential(conv), input_size=32)
    result = render(model, O.channel("0", [0, 1]), size=32, steps=128, lr=0.1, progress=False)
    red, blue = result.images.mean(dim=(2, 3))
    assert red[0] - max(red[1], red[2]) > 0.3
    assert blue[2] - max(blue[0], blue[1]) > 0.3


def test_batch_item_objectives_set_the_batch_and_leave_other_items_alone():
    """``channel(..., batch=i)`` terms: the batch defaults to the highest item + 1, each item follows its own
    term, and an item no term names gets no gradient (it stays the initial image)."""
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]]).view(2, 3, 1, 1))
    model = Model(nn.Sequential(conv), input_size=32)
    objective = O.channel("0", 0, batch=0) + O.channel("0", 1, batch=2)
    result = render(model, objective, size=32, steps=96, lr=0.1, progress=False)
    assert result.images.shape[0] == 3
    red, _, blue = result.images.mean(dim=(2, 3)).T  # (3,) per colour over the items
    assert red[0] - blue[0] > 0.3 and blue[2] - red[2] > 0.3
    assert (result.values[:, 1] == 0).all()
    initial = render(model, objective, size=32, steps=1, lr=0.0, progress=False).images
    assert torch.allclose(result.images[1], initial[1])


def test_cppn_gets_its_own_learning_rate_and_finds_the_colour():
    """CPPN weights need a 10x smaller step than Fourier coefficients; render picks it when lr is not given."""
    model = colour_model((1.0, -1.0, -1.0))
    result = render(model, O.channel("0", 0), size=32, steps=128, param="cppn", progress=False)
    assert result.settings["lr"] == 0.005
    mean = result.images[0].mean(dim=(1, 2))
    assert mean[0] - max(mean[1], mean[2]) > 0.3, mean.tolist()
    assert render(model, O.channel("0", 0), size=32, steps=1, progress=False).settings["lr"] == 0.05


def test_per_item_renders_different_objectives_in_one_batch():
    """``per_item([f, -f])``: item 0 maximizes the red filter, item 1 minimizes it (cyan)."""
    model = colour_model((1.0, -1.0, -1.0))
    objective = O.per_item([O.channel("0", 0), -O.channel("0", 0)])
    assert objective.batch_size == 2
    result = render(model, objective, size=32, steps=96, lr=0.1, progress=False)
    red, green, blue = result.images.mean(dim=(2, 3)).T
    assert red[0] - max(green[0], blue[0]) > 0.3
    assert min(green[1], blue[1]) - red[1] > 0.3
    with pytest.raises(NnfeatError, match="at least one"):
        O.per_item([])


def test_cpu_bf16_default_only_for_dense_convolution_networks():
    """bf16 autocast is the CPU default only where it was measured faster: dense-convolution networks. Depthwise
    convolutions (mobilenet) and nn.MultiheadAttention (ViT) measured 1.5x and 3.2x slower in bf16, so they stay
    fp32; and nothing is bf16 by default on a CPU without native bf16."""
    from torchvision.models import mobilenet_v3_small, resnet18
    from torchvision.models.vision_transformer import VisionTransformer

    from nnfeat.device import cpu_bf16_pays, cpu_has_native_bf16, default_autocast, precision_used

    torch.manual_seed(0)
    dense = Model(resnet18(), input_size=64)
    depthwise = Model(mobilenet_v3_small(), input_size=64)
    vit = Model(VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32),
                input_size=32)
    assert cpu_bf16_pays(dense) and cpu_bf16_pays(colour_model((1.0, 0.0, 0.0)))
    assert not cpu_bf16_pays(depthwise) and not cpu_bf16_pays(vit)
    assert not cpu_bf16_pays(Model(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)), input_size=8))
    native = cpu_has_native_bf16()
    assert default_autocast("cpu", dense) is native
    assert default_autocast("cpu", depthwise) is False and default_autocast("cpu", vit) is False
    assert precision_used("cpu", None, vit) == "fp32" and precision_used("cpu", True, vit) == "bf16"
    result = render(vit, O.channel("encoder", [0, 1]), size=32, steps=2, progress=False)
    assert result.settings["precision"] == "fp32"
