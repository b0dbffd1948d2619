"""CIFAR-10 ResNets (He et al. 2016, section 4.2): ResNet-20/32/44/56.

Layout (module names are what users type as layer names)::

    conv1 -> bn1 -> relu                           stem, 3 -> 16 channels, 32 x 32
    layer1, layer2, layer3                         nn.Sequential of n BasicBlocks, widths 16/32/64,
                                                   spatial 32/16/8 at 32 px input
    avgpool -> flatten -> linear                   global average pool, 64 -> 10 logits

Each :class:`BasicBlock` is ``conv1 -> bn1 -> relu1 -> conv2 -> bn2 -> (+ shortcut) -> relu2``.
Every ReLU is its own ``nn.ReLU`` module (not ``F.relu``, not one shared module), so every
activation point has exactly one name: ``layer2.0.relu1`` is the mid-block activation,
``layer2.0.relu2`` (and ``layer2.0`` itself) the block output. The ReLUs are not in-place.

The first block of ``layer2`` and ``layer3`` halves the resolution and doubles the width; its
``shortcut`` is "option A" (no parameters): take every second pixel, then zero-pad the channel
axis equally on both sides. The state-dict keys therefore match the published checkpoints
(after stripping DataParallel's ``module.`` prefix) with ``strict=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nnfeat.errors import NnfeatError

#: Blocks per stage for each depth (depth = 6n + 2).
BLOCKS_PER_STAGE = {20: 3, 32: 5, 44: 7, 56: 9}

#: CIFAR-10 class names, index-aligned with the logits.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

#: Input normalization the published checkpoints were trained with.
CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)

#: Published weights (akamaster/pytorch_resnet_cifar10); the 8 hex digits start the file's SHA-256.
WEIGHT_FILES = {
    20: "resnet20-12fca82f.th",
    32: "resnet32-d509ac18.th",
    44: "resnet44-014dd654.th",
    56: "resnet56-4bfd9763.th",
}
WEIGHTS_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/{file}"


class PadShortcut(nn.Module):
    """Option-A shortcut: (B, C, H, W) -> (B, C + 2*pad, ceil(H/2), ceil(W/2)), no parameters."""

    def __init__(self, pad_channels: int) -> None:
        super().__init__()
        self.pad_channels = pad_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad_channels, self.pad_channels))

    def extra_repr(self) -> str:
        return f"pad_channels={self.pad_channels}"


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with a residual connection: (B, C_in, H, W) -> (B, C_out, H/s, W/s)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            if (out_channels - in_channels) % 2:
                raise ValueError("option-A shortcut needs an even channel increase")
            self.shortcut: nn.Module = PadShortcut((out_channels - in_channels) // 2)
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 CIFAR images: (B, 3, 32, 32) normalized -> (B, num_classes) logits."""

    def __init__(self, depth: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise NnfeatError(f"unsupported CIFAR ResNet depth {depth}; choose one of {sorted(BLOCKS_PER_STAGE)}")
        blocks = BLOCKS_PER_STAGE[depth]
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        """Kaiming-normal conv/linear weights (as in the original training recipe); BN at identity."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


def load_checkpoint(net: CifarResNet, path: str | Path) -> CifarResNet:
    """Load a published checkpoint (``{'state_dict': {'module.…': …}}``) into ``net`` with strict key matching."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user-facing problem
        reason = type(err).__name__
        raise NnfeatError(f"cannot read weights file {path} ({reason}); delete it so it is fetched again") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise NnfeatError(f"weights file {path} holds no state dict; expected a CIFAR ResNet checkpoint")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError:
        raise NnfeatError(
            f"weights file {path} does not fit a CIFAR ResNet-{net.depth}; expected {WEIGHT_FILES.get(net.depth)}"
        ) from None
    return net
