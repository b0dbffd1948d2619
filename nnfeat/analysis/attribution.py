"""What every attribution method stands on (tensors in, tensors out): the class logits of a batch, its target
classes, the input gradient of the target logit, the reference images of a perturbation, and chunked passes.

The class score is the network's output (:data:`nnfeat.layouts.OUTPUT`, the logits) at the target class.
Captures use :class:`nnfeat.hooks.ActivationCapture`, so hooks are gone after every call, also on error.
Every pass runs over chunks of ``batch_size`` images; chunk i runs on rank i % world under torchrun
(:func:`nnfeat.distributed.shard_map`).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from nnfeat.distributed import shard_map
from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.imageops import gaussian_blur
from nnfeat.layouts import OUTPUT

BASELINES = ("black", "blur", "noise")
#: default images per forward/backward pass
BATCH_SIZE = 256


def class_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, K) logits (the model's output, element 0 if it returns a tuple)."""
    with ActivationCapture(model, [OUTPUT]) as capture:
        out = capture(images)[OUTPUT]
    if out.dim() != 2:
        raise NnfeatError(f"saliency needs a model whose output is (B, classes) logits; got {tuple(out.shape)}")
    return out


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices of ``size`` (at least 1) covering 0..n."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def predicted_classes(model: nn.Module, images: torch.Tensor, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """(B, 3, H, W) -> (B,) the arg-max class of each image."""
    parts = list(chunks(len(images), batch_size))
    return torch.cat(shard_map(lambda i: class_logits(model, images[parts[i]]).argmax(1), len(parts))).to(images.device)


def resolve_targets(model: nn.Module, images: torch.Tensor, targets, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """``targets`` (None = predicted, an int for every image, or (B,) indices) -> (B,) long on the images' device."""
    if targets is None:
        return predicted_classes(model, images, batch_size)
    t = torch.as_tensor(targets, device=images.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(len(images))
    if t.numel() != len(images):
        raise NnfeatError(f"targets must be one class or one per image ({len(images)}); got {t.numel()}")
    return t.contiguous()


def check_classes(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """A one-line error when a target class is not one of the (N, K) ``logits``' K classes."""
    k = logits.shape[1]
    if bool((targets < 0).any()) or bool((targets >= k).any()):
        bad = int(targets[(targets < 0) | (targets >= k)][0])
        raise NnfeatError(f"target class {bad} out of range: the model has {k} classes (0..{k - 1})")


def input_gradients(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                    batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """(N, 3, H, W) images, (N,) classes -> (N, 3, H, W) d logit[target] / d image, one forward and one
    backward pass per chunk of ``batch_size`` images (chunk i on rank i % world under torchrun)."""
    parts = list(chunks(len(images), batch_size))

    def chunk_gradient(i: int) -> torch.Tensor:
        s = parts[i]
        x = images[s].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = class_logits(model, x)
            check_classes(logits, targets[s])
            (grad,) = torch.autograd.grad(logits.gather(1, targets[s, None]).sum(), x)
        return grad

    return torch.cat(shard_map(chunk_gradient, len(parts))).to(images.device)


def baseline_images(images: torch.Tensor, baseline: str = "black", *, sigma: float | None = None,
                    seed: int = 0) -> torch.Tensor:
    """The reference images of a perturbation: ``black`` (zeros), ``blur`` (a Gaussian blur of sigma px, default
    min(H, W) / 8) or ``noise`` (uniform [0, 1], seeded). (B, 3, H, W) -> (B, 3, H, W)."""
    if baseline == "black":
        return torch.zeros_like(images)
    if baseline == "blur":
        return gaussian_blur(images, float(sigma or min(images.shape[-2:]) / 8)).clamp(0, 1)
    if baseline == "noise":
        g = torch.Generator().manual_seed(int(seed))
        return torch.rand(images.shape, generator=g).to(images.device, images.dtype)
    raise NnfeatError(f"unknown baseline '{baseline}': use {', '.join(BASELINES)}")


__all__ = ["BASELINES", "BATCH_SIZE", "class_logits", "chunks", "predicted_classes", "resolve_targets",
           "check_classes", "input_gradients", "baseline_images"]
