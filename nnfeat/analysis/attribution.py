"""What every attribution method stands on (tensors in, tensors out): the class logits of a batch, its resolved
targets, the input gradient of the target score, the reference images of a perturbation, and chunked passes.

The score explained is :func:`nnfeat.targets.target_scores` of the network's output: by default the
logit (:data:`nnfeat.layouts.OUTPUT`) of the target class; a :class:`~nnfeat.targets.Target` can name a
part of a dict / tuple output, a region of a segmentation map or a regression value. ``targets`` everywhere is
(B,) class indices or a resolved ``Target`` (both slice and repeat alike).
Captures use :class:`nnfeat.hooks.ActivationCapture`, so hooks are gone after every call, also on error.
Every pass runs over chunks of ``batch_size`` images; chunk i runs on rank i % world under torchrun
(:func:`nnfeat.distributed.shard_map`).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch import nn

from nnfeat.distributed import shard_map
from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.imageops import gaussian_blur
from nnfeat.layouts import OUTPUT
from nnfeat.targets import (Target, as_target, cat_targets, check_classes, describe_output, parse_target,
                            resolve_target, select_output, target_scores)

BASELINES = ("black", "blur", "noise")
#: default images per forward/backward pass
BATCH_SIZE = 256


def class_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, K) logits (the model's output, element 0 if it returns a tuple)."""
    with ActivationCapture(model, [OUTPUT]) as capture:
        out = capture(images)[OUTPUT]
    if isinstance(out, dict):
        select_output(out, Target())  # a one-line error naming the keys, e.g. --target out:3@mask
    if not torch.is_tensor(out) or out.dim() != 2:
        hint = ("" if torch.is_tensor(out) and out.dim() < 4 else
                " (for a (B, K, H, W) map give a target such as 3@mask, see --target)")
        raise NnfeatError(f"saliency needs a model whose output is (B, classes) logits; got "
                          f"{describe_output(out)}{hint}")
    return out


def output_and_acts(model: nn.Module, images: torch.Tensor, layers: Sequence[str] = ()) -> tuple[Any, dict]:
    """One forward pass of (N, 3, H, W) ``images`` -> (the model's output as it returns it: a tensor, a dict or a
    tuple; {layer: activation} of ``layers``)."""
    if not layers:
        return model(images), {}
    returned: list = []
    handle = model.register_forward_hook(lambda _m, _i, out: returned.append(out))
    try:
        with ActivationCapture(model, [*layers, OUTPUT]) as capture:
            acts = capture(images)
    finally:
        handle.remove()
    return returned[-1], acts


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


def resolve_targets(model: nn.Module, images: torch.Tensor, targets, batch_size: int = BATCH_SIZE
                    ) -> torch.Tensor | Target:
    """``targets`` (None = predicted, an int for every image, or (B,) indices) -> (B,) long on the images' device;
    a :class:`Target` or target text (``"out:3@mask"``) -> the Target resolved for these images (classes and
    regions from one no-grad pass over the unperturbed images, in chunks of ``batch_size``).

    Raises:
        NnfeatError: one line for a target the output does not fit (see
            :func:`nnfeat.targets.resolve_target`) or a count of targets that is not 1 or B.
    """
    if isinstance(targets, str):
        targets = parse_target(targets)
    if isinstance(targets, Target):
        if targets.resolved:
            if len(targets) != len(images):
                raise NnfeatError(f"targets must be one per image ({len(images)}); got {len(targets)}")
            return targets.to(images.device)
        parts = list(chunks(len(images), batch_size))
        with torch.no_grad():
            done = shard_map(lambda i: resolve_target(model(images[parts[i]]), targets).to("cpu"), len(parts))
        return cat_targets(done).to(images.device)
    if targets is None:
        return predicted_classes(model, images, batch_size)
    t = torch.as_tensor(targets, device=images.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(len(images))
    if t.numel() != len(images):
        raise NnfeatError(f"targets must be one class or one per image ({len(images)}); got {t.numel()}")
    return t.contiguous()


def input_gradients(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | Target,
                    batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """(N, 3, H, W) images, (N,) classes or a resolved :class:`Target` of N images -> (N, 3, H, W)
    d score / d image (score: :func:`~nnfeat.targets.target_scores`, by default the target logit), one
    forward and one backward pass per chunk of ``batch_size`` images (chunk i on rank i % world under torchrun)."""
    parts = list(chunks(len(images), batch_size))
    targets = as_target(targets)

    def chunk_gradient(i: int) -> torch.Tensor:
        s = parts[i]
        x = images[s].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(target_scores(model(x), targets[s]).sum(), x)
        return grad.contiguous()  # a channels-last network (nnfeat.analysis.fast_path) hands it back strided

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


__all__ = ["BASELINES", "BATCH_SIZE", "class_logits", "output_and_acts", "chunks", "predicted_classes",
           "resolve_targets",
           "check_classes", "input_gradients", "baseline_images"]
