"""``digits-cnn``: a small CNN that nnfeat trains itself, offline and deterministically.

Data: scikit-learn's bundled handwritten digits (1,797 grey 8x8 images, values 0..16), scaled to
[0, 1] and upscaled to 32x32 (bilinear). The first 1,500 images train the net; the last 297 are
held out. Training takes 15-30 s on one CPU core (about twice the cost of plain training, for the
adversarial step) and reaches 96.6 % held-out accuracy with the default seed 0.

Network (module names are the layer names)::

    conv1 (1->16, 5x5) bn1 relu1            (B, 16, 32, 32)
    pool1 (4x4 max)                         (B, 16, 8, 8)    back at the data's native 8x8 grid
    conv2 (16->32, 3x3) bn2 relu2 pool2     (B, 32, 4, 4)
    conv3 (32->64, 3x3) bn3 relu3           (B, 64, 4, 4)
    avgpool, flatten, fc (64->10)           (B, 10) logits for "0".."9"

Training: Adam with a one-cycle schedule, 12 epochs of batch 50, each image randomly rotated,
scaled and shifted, then pushed toward a higher loss inside an L2 ball of radius ``ADV_EPS`` (pixel units, at
32 px) by one random-start gradient step (:func:`l2_adversarial`; "fast" adversarial training,
Wong et al. 2020, "Fast is better than free", in its L2 form). Adversarial training makes the net's input
gradients perceptually aligned (Santurkar et al. 2019, "Image synthesis with a single robust classifier"):
its class renders then look like digits (a scikit-learn classifier trained on the 8x8 digits reads them,
see ``experiments/demo_transfer.py``) instead of stroke textures. Weights, order, augmentation and
perturbations all come from one seeded ``torch.Generator``.

The trained state dict is cached in ``$NNFEAT_HOME/weights/digits-cnn-v2.pt`` and reused (v1 was the
same net trained without the adversarial step).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nnfeat.device import one_thread
from nnfeat.errors import NnfeatError
from nnfeat.io import atomic_path
from nnfeat.models.base import Model
from nnfeat.models.weights import weights_dir

CACHE_FILE = "digits-cnn-v2.pt"
CLASSES = tuple(str(d) for d in range(10))
IMAGE_SIZE = 32
#: Mean and standard deviation of the training images (``digits_dataset("train")``, as float32 ``.item()``):
#: the net's input normalization, for trained and random weights alike.
DATA_MEAN = 0.3051074147224426
DATA_STD = 0.32222411036491394
HELD_OUT = 297
SEED = 0
EPOCHS = 12
BATCH_SIZE = 50
LEARNING_RATE = 1e-2
MAX_SHIFT = 3  # pixels at 32 px
MAX_ROTATION_DEG = 12.0
MAX_SCALE_CHANGE = 0.1
ADV_EPS = 1.5  # L2 radius of the training perturbation, [0, 1] pixel units at 32 px (a digit's norm is about 12)
ADV_STEP = 1.25 * ADV_EPS  # the step from the random start (Wong et al.'s 1.25 eps)


class DigitsCNN(nn.Module):
    """(B, 1, 32, 32) normalized grey digits -> (B, 10) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(4)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(64)
        self.relu3 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def digits_dataset(split: str = "all", *, rgb: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as nnfeat images.

    Args:
        split: ``"all"`` (1,797 images), ``"train"`` (the first 1,500) or ``"test"`` (the last 297, held out).
        rgb: replicate grey to 3 channels (nnfeat's image contract) instead of returning one channel.

    Returns:
        images (N, 3, 32, 32) (or (N, 1, 32, 32)) float32 in [0, 1], white digits on black;
        labels (N,) int64 in 0..9.
    """
    from sklearn.datasets import load_digits  # lazy: scikit-learn's datasets load in ~1 s; only training needs them

    if split not in ("all", "train", "test"):
        raise NnfeatError(f"unknown digits split '{split}'; expected all, train or test")
    digits = load_digits()
    small = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)  # (N, 1, 8, 8)
    images = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = images.clamp_(0.0, 1.0)
    labels = torch.from_numpy(digits.target).long()
    cut = len(labels) - HELD_OUT
    if split == "train":
        images, labels = images[:cut], labels[:cut]
    elif split == "test":
        images, labels = images[cut:], labels[cut:]
    if rgb:
        images = images.expand(-1, 3, -1, -1).contiguous()
    return images, labels


def random_affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Randomly rotate (±12°), scale (±10 %) and shift (±3 px) each image of (B, C, H, W); zero fill."""
    batch, _, height, width = images.shape
    angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(MAX_ROTATION_DEG)
    scale = 1 + (torch.rand(batch, generator=generator) * 2 - 1) * MAX_SCALE_CHANGE
    shift = (torch.rand(batch, 2, generator=generator) * 2 - 1) * MAX_SHIFT
    shift = shift * torch.tensor([2.0 / width, 2.0 / height])  # pixels -> affine_grid's [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def l2_adversarial(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float,
                   generator: torch.Generator, eps: float = ADV_EPS, step: float = ADV_STEP) -> torch.Tensor:
    """One random-start L2 gradient step that raises the loss: (B, 1, H, W) in [0, 1] -> (B, 1, H, W) in [0, 1].

    The start is uniform in radius and direction inside the ``eps`` ball; the step of length ``step`` follows
    the normalized loss gradient; the result is projected back into the ball and into [0, 1]. ``net`` is run
    in eval mode (BatchNorm running statistics are neither used for the batch nor updated) and restored.
    """
    batch = images.shape[0]
    noise = torch.randn(images.shape, generator=generator)
    radius = eps * torch.rand(batch, generator=generator).view(-1, 1, 1, 1)
    delta = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1) * radius
    delta = ((images + delta).clamp(0.0, 1.0) - images).requires_grad_(True)
    was_training = net.training
    net.eval()
    try:
        loss = F.cross_entropy(net((images + delta - mean) / std), labels)
        (grad,) = torch.autograd.grad(loss, delta)
    finally:
        net.train(was_training)
    with torch.no_grad():
        delta = delta + step * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(eps)).view(-1, 1, 1, 1)
        return (images + delta).clamp(0.0, 1.0)


@torch.no_grad()
def init_weights(net: DigitsCNN, generator: torch.Generator) -> DigitsCNN:
    """He-normal conv/linear weights and zero biases drawn from ``generator`` (not the global RNG)."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
            module.bias.zero_()
    return net


def train_digits_cnn(seed: int = SEED, epochs: int = EPOCHS) -> dict:
    """Train :class:`DigitsCNN` from scratch, deterministically for a given seed.

    Runs on one CPU thread (the previous thread count is restored afterwards): the result then does
    not depend on the machine's core count, and small convolutions run faster than with several
    threads competing for busy cores.

    Returns a checkpoint dict: ``state_dict``, ``mean``, ``std`` (floats, of the training images),
    ``heldout_accuracy`` (float), ``seed``, ``epochs``, ``seconds``.
    """
    with one_thread():
        return _train(seed, epochs)


def _train(seed: int, epochs: int) -> dict:
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    net = init_weights(DigitsCNN(), generator)
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    return fit_digits(net, optimizer, generator, seed=seed, epochs=epochs, max_lr=LEARNING_RATE, adversarial=True,
                      start=start)


def fit_digits(net: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator, *, seed: int,
               epochs: int, max_lr: float, adversarial: bool, start: float) -> dict:
    """The training loop both digits models share: ``epochs`` of batch ``BATCH_SIZE`` over the training digits
    ((B, 1, 32, 32), normalized by their own mean and std), each batch randomly warped (:func:`random_affine`) and,
    with ``adversarial``, pushed by :func:`l2_adversarial`; a one-cycle schedule up to ``max_lr``; all randomness
    from ``generator``. Returns the checkpoint dict: ``state_dict``, ``mean``, ``std``, ``heldout_accuracy``,
    ``seed``, ``epochs``, ``seconds`` (since ``start``)."""
    train_x, train_y = digits_dataset("train", rgb=False)
    test_x, test_y = digits_dataset("test", rgb=False)
    mean, std = train_x.mean().item(), train_x.std().item()
    steps = epochs * math.ceil(len(train_y) / BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=steps)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_y), generator=generator)
        for begin in range(0, len(order), BATCH_SIZE):
            idx = order[begin : begin + BATCH_SIZE]
            batch = random_affine(train_x[idx], generator)
            if adversarial:
                batch = l2_adversarial(net, batch, train_y[idx], mean, std, generator)
            loss = F.cross_entropy(net((batch - mean) / std), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net((test_x - mean) / std).argmax(1) == test_y).float().mean().item()
    return {
        "state_dict": net.state_dict(),
        "mean": mean,
        "std": std,
        "heldout_accuracy": accuracy,
        "seed": seed,
        "epochs": epochs,
        "seconds": time.perf_counter() - start,
    }


def cache_path() -> Path:
    """Where the trained checkpoint lives: ``$NNFEAT_HOME/weights/digits-cnn-v2.pt``."""
    return weights_dir() / CACHE_FILE


def _save_atomic(checkpoint: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def cached_checkpoint(path: Path, name: str, make_net, train, *, train_if_missing: bool = True) -> dict:
    """The checkpoint of model ``name`` cached at ``path`` (its state dict must load into ``make_net()``), or,
    when there is none or it is unreadable, ``train()``'s, cached there (atomically) for next time."""
    path = Path(path)
    if path.is_file():
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            make_net().load_state_dict(checkpoint["state_dict"])
            return checkpoint
        except Exception:  # noqa: BLE001 - a broken cache file is simply rebuilt
            pass
    if not train_if_missing:
        raise NnfeatError(f"no trained {name} at {path}; load it once with weights='pretrained' to train it")
    checkpoint = train()
    try:
        _save_atomic(checkpoint, path)
    except OSError:  # read-only home: still usable, just retrained next time
        pass
    return checkpoint


def load_checkpoint(path: Path | None = None, *, train_if_missing: bool = True) -> dict:
    """The checkpoint cached at ``path`` (default :func:`cache_path`), training (and caching) it first if there
    is none or it is unreadable."""
    return cached_checkpoint(cache_path() if path is None else path, "digits-cnn", DigitsCNN, train_digits_cnn,
                             train_if_missing=train_if_missing)


def build_random() -> DigitsCNN:
    """An untrained :class:`DigitsCNN`, He-normal from ``SEED`` (the registry's builder for ``digits-cnn``)."""
    return init_weights(DigitsCNN(), torch.Generator().manual_seed(SEED))


def load_trained(net: DigitsCNN, path: Path) -> DigitsCNN:
    """Put the trained weights cached at ``path`` into ``net``, training them first on first use."""
    net.load_state_dict(load_checkpoint(path)["state_dict"])
    return net
