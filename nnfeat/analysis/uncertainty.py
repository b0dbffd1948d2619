"""Predictive uncertainty: how unsure a classifier is, and whether its confidence can be trusted (tensors in,
tensors out).

Sampling (each gives member probabilities ``(M, B, K)``: M members / samples, B images, K classes):

* :func:`ensemble_probs` -- one softmax per model of a deep ensemble (Lakshminarayanan et al. 2017, "Simple and
  scalable predictive uncertainty estimation using deep ensembles");
* :func:`mc_dropout_probs` -- T stochastic passes with the dropout modules in train mode and everything else
  (BatchNorm!) in eval mode (Gal & Ghahramani 2016, "Dropout as a Bayesian approximation"); seeded;
* :func:`tta_probs` -- T test-time augmentations through nnfeat's affine resampler (:mod:`nnfeat.engine.transforms`):
  sample 0 is the image itself, the others a random horizontal flip (not for glyph classes such as digits:
  :func:`flip_safe`), shift (±size/16 px) and zoom (0.9-1.1), filled outside with the image's border colour,
  drawn from the seed (Ayhan & Berens 2018, "Test-time data augmentation for estimation of heteroscedastic
  aleatoric uncertainty").

The methods, by name, are registered in :data:`nnfeat.analysis.uncertainty_methods.UNCERTAINTY`.

Per image (:func:`summarize`): the mean probabilities p̄ (B, K) with their spread (std over members), the
predictive entropy H[p̄], the expected entropy mean_m H[p_m] and the mutual information H[p̄] - mean_m H[p_m]
(the epistemic part; Depeweg et al. 2018), all in nats.

Over a labelled set (:mod:`nnfeat.analysis.calibration`): accuracy, the expected calibration error over 15
equal-width confidence bins (:func:`calibration`; Guo et al. 2017, "On calibration of modern neural networks") and
the AUROC of a score for telling misclassified from correct images (:func:`auroc`, rank-based with tied ranks
averaged; Hendrycks & Gimpel 2017).

No Python loop runs over images.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnfeat.analysis.calibration import (ECE_BINS, Calibration, auroc, calibration, entropy, rankdata,
                                         set_metrics)
from nnfeat.distributed import shard_map
from nnfeat.engine.transforms import affine_resample
from nnfeat.errors import NnfeatError
from nnfeat.finite import check_finite
from nnfeat.seeds import generator, stage_seed
from nnfeat.targets import Target, describe_output, output_kind, select_output

TTA_ZOOM = (0.9, 1.1)
TTA_SHIFT = 1 / 16  # of the image size, each way


# -- per-image quantities -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """Per-image uncertainty of member probabilities (M, B, K).

    ``mean``/``std`` (B, K): p̄ and its std over the members (0 for one member); ``entropy``, ``expected_entropy``,
    ``mutual_information`` (B,) in nats; ``prediction`` (B,) argmax of p̄; ``confidence`` (B,) max of p̄;
    ``members`` the number M."""

    mean: torch.Tensor
    std: torch.Tensor
    entropy: torch.Tensor
    expected_entropy: torch.Tensor
    mutual_information: torch.Tensor
    prediction: torch.Tensor
    confidence: torch.Tensor
    members: int


def summarize(member_probs: torch.Tensor) -> Summary:
    """(M, B, K) member probabilities -> :class:`Summary` (mutual information clamped at 0 against rounding)."""
    if member_probs.dim() != 3:
        raise NnfeatError(f"member probabilities must be (M, B, K); got shape {tuple(member_probs.shape)}")
    p = member_probs.double()
    mean = p.mean(0)
    std = p.std(0, unbiased=False)
    h = entropy(mean)
    expected = entropy(p).mean(0)
    mi = (h - expected).clamp_min(0.0)
    mi = torch.where(mi < 1e-12, torch.zeros_like(mi), mi)  # identical members: exactly 0, not rounding noise
    confidence, prediction = mean.max(1)
    f = member_probs.dtype if member_probs.is_floating_point() else torch.float32
    return Summary(mean.to(f), std.to(f), h.to(f), expected.to(f), mi.to(f), prediction, confidence.to(f),
                   int(member_probs.shape[0]))


# -- models -------------------------------------------------------------------------------------------
def _name(model: nn.Module) -> str:
    return getattr(model, "name", type(model).__name__)


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    out = model(images)
    if isinstance(out, dict):
        key = next(iter(out), "KEY")
        raise NnfeatError(f"model '{_name(model)}' outputs a {describe_output(out)}: say which part holds the "
                          f"class scores, e.g. --target {key}:pred (a map: {key}:pred@Y0:Y1,X0:X1 for a box)")
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.dim() != 2:
        raise NnfeatError(f"model '{_name(model)}' outputs shape {tuple(out.shape)}, not (B, classes) logits: "
                          "uncertainty needs a classifier")
    return out.float()


def check_distribution_target(target: Target) -> Target:
    """``target`` if it names a class distribution (for uncertainty): ``pred``, ``PART:pred``, or
    ``PART:pred@Y0:Y1,X0:X1`` on a map; else one line saying what to write."""
    if target.cls is not None or target.value or target.region == "mask":
        raise NnfeatError(f"target '{target}' names one class, a value or a mask; uncertainty measures the whole class "
                          "distribution: write pred, PART:pred, or PART:pred@Y0:Y1,X0:X1 for a map's box")
    return target


def class_log_distribution(output: Any, target: Target) -> torch.Tensor:
    """The class distribution ``target`` (:func:`check_distribution_target`) names in ``output``, as (N, K) scores
    whose softmax is it: the logits of a (N, K) output; for a (N, K, h, w) map, the log of its per-pixel softmax
    probabilities averaged over the box (or every pixel).

    Raises:
        NnfeatError: one line for a part the output lacks, an output of another shape, or a box outside the map.
    """
    scores = select_output(output, check_distribution_target(target))
    if output_kind(scores, target) == "vector":
        return scores.float()
    h, w = scores.shape[-2:]
    probs = torch.softmax(scores.float(), 1)
    if target.region is not None:
        y0, y1, x0, x1 = target.region
        if y1 > h or x1 > w:
            raise NnfeatError(f"box {y0}:{y1},{x0}:{x1} of target '{target}' leaves the {h}x{w} output map: rows "
                              f"must lie in 0..{h}, columns in 0..{w}")
        probs = probs[..., y0:y1, x0:x1]
    return probs.mean((2, 3)).clamp_min(1e-30).log()


class _Distribution(nn.Module):
    """A network whose output is the class distribution a :class:`Target` names (see
    :func:`~nnfeat.targets.class_log_distribution`): (B, C, H, W) -> (B, K) scores."""

    def __init__(self, net: nn.Module, target: Target) -> None:
        super().__init__()
        self.net, self.target = net, target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return class_log_distribution(self.net(x), self.target)


def distribution_model(model: nn.Module, target: Target | None) -> nn.Module:
    """``model`` (an :class:`~nnfeat.models.base.Model`) as a classifier of the distribution ``target`` names (a
    dict or tuple output's part, a segmentation map averaged over a box or every pixel); ``model`` itself for no
    target. The copy shares the network, its spec, name and weights; its output is (B, K) scores."""
    if target is None or isinstance(getattr(model, "net", None), _Distribution):
        return model
    made = copy.copy(model)
    made._modules = {**model._modules, "net": _Distribution(model.net, target)}
    made._shape_cache = {}
    made.__dict__.pop("_accepts_size", None)
    return made


def fit_images(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) resized (bilinear) to ``model.input_size`` when it differs."""
    size = tuple(getattr(model, "input_size", images.shape[-2:]))
    if tuple(images.shape[-2:]) != size:
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return images


def class_count(model: nn.Module) -> int:
    """K: the number of outputs of ``model`` (its class list, else one probe pass)."""
    if getattr(model, "classes", None) is not None:
        return len(model.classes)
    size = tuple(getattr(model, "input_size", (32, 32)))
    device = next((b.device for b in model.buffers()), torch.device("cpu"))
    with torch.no_grad():
        return int(_logits(model, torch.full((1, 3, *size), 0.5, device=device)).shape[1])


def check_same_classes(models: Sequence[nn.Module]) -> list[str] | None:
    """A one-line error unless every model has the same classes (names when known, else count); returns the
    class names (or None)."""
    first = models[0]
    names, k = getattr(first, "classes", None), class_count(first)
    for other in models[1:]:
        other_names, other_k = getattr(other, "classes", None), class_count(other)
        if other_k != k or (names is not None and other_names is not None and list(names) != list(other_names)):
            what = (f"{k} classes" if names is None or other_names is None else f"classes {_short(names)}")
            theirs = (f"{other_k}" if names is None or other_names is None else _short(other_names))
            raise NnfeatError(f"models '{_name(first)}' and '{_name(other)}' have different classes ({what} vs "
                              f"{theirs}): an ensemble needs models of the same classes")
    return list(names) if names is not None else None


def _short(names: Sequence[str], shown: int = 3) -> str:
    return ",".join(map(str, names[:shown])) + (",…" if len(names) > shown else "") + f" ({len(names)})"


def _checked(probs: torch.Tensor, model: nn.Module, start: int, items: Sequence | None) -> torch.Tensor:
    """(T, b, K) probabilities of the chunk of images from position ``start``, unchanged; a one-line error naming
    the first image with a NaN or Inf (``items``: what the B images are called, e.g. source indices; default
    their positions), so the first bad chunk of a dataset pass stops it."""
    names = None if items is None else list(items)[start:start + probs.shape[1]]
    if names is None:
        names = list(range(start, start + probs.shape[1]))
    check_finite(probs.transpose(0, 1), _name(model), "its predicted probabilities", names)
    return probs


@torch.no_grad()
def ensemble_probs(models: Sequence[nn.Module], images: torch.Tensor, batch_size: int = 256,
                   items: Sequence | None = None) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] -> (M, B, K) softmax probabilities, one row per model (each model gets the
    images resized to its input size). Chunk i of every model on rank i % world under torchrun; a chunk with a
    NaN or Inf is a one-line error naming its first bad image (``items``: the B images' names, e.g. source
    indices)."""
    chunks = images.split(batch_size)
    out = []
    for model in models:
        device = next((b.device for b in model.buffers()), images.device)

        def chunk_probs(i: int, model=model, device=device) -> torch.Tensor:
            probs = _logits(model, fit_images(model, chunks[i].to(device))).softmax(1).cpu()
            return _checked(probs[None], model, i * batch_size, items)[0]

        out.append(torch.cat(shard_map(chunk_probs, len(chunks))))
    return torch.stack(out)


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """The dropout modules of ``model`` that drop anything (``p > 0``)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and float(m.p) > 0]


def check_dropout(model: nn.Module) -> list[nn.Module]:
    """The dropout modules of ``model``; a one-line error naming the model when it has none."""
    found = dropout_modules(model)
    if not found:
        raise NnfeatError(f"model '{_name(model)}' has no dropout modules (nn.Dropout with p > 0), so MC dropout "
                          "cannot sample it: use --method tta, or an ensemble of two or more models")
    return found


@contextmanager
def dropout_active(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Inside: the dropout modules of ``model`` in train mode, every other module (BatchNorm!) as it was (eval);
    restored on exit, also on error. ``model.train()`` is not used (nnfeat's Model keeps itself in eval)."""
    found = check_dropout(model)
    before = [m.training for m in found]
    try:
        for m in found:
            m.training = True
        yield found
    finally:
        for m, mode in zip(found, before):
            m.training = mode


@torch.no_grad()
def mc_dropout_probs(model: nn.Module, images: torch.Tensor, samples: int = 20, seed: int = 0,
                     batch_size: int = 256, items: Sequence | None = None) -> torch.Tensor:
    """(B, 3, H, W) -> (T, B, K) softmax probabilities of T = ``samples`` dropout masks. Each chunk of images is
    repeated T times and run as one batch (BatchNorm stays in eval, so items do not interact); the masks come from
    ``(seed, chunk)`` through a forked RNG, so the global RNG is untouched. A chunk with a NaN or Inf is a one-line
    error (``items``: as for :func:`ensemble_probs`)."""
    _check_samples(samples)
    device = next((b.device for b in model.buffers()), images.device)
    step = max(1, batch_size // samples)
    parts = images.split(step)

    def chunk_probs(i: int) -> torch.Tensor:  # chunk i on rank i % world under torchrun
        part = fit_images(model, parts[i].to(device))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(stage_seed(seed, "mc-dropout", i))
            logits = _logits(model, part.repeat(samples, 1, 1, 1))
        return _checked(logits.softmax(1).view(samples, len(part), -1).cpu(), model, i * step, items)

    with dropout_active(model):
        return torch.cat(shard_map(chunk_probs, len(parts)), 1)


def _check_samples(samples: int) -> None:
    if samples < 2:
        raise NnfeatError(f"--samples must be at least 2 (one sample has no spread); got {samples}")


def flip_safe(classes: Sequence[str] | None) -> bool:
    """Whether mirrored images keep their class: False when every class name is one letter or digit (digits,
    MNIST, EMNIST: a mirrored glyph is no longer the glyph), True otherwise (objects, animals, scenes)."""
    return not (classes and all(len(str(c)) == 1 and str(c).isalnum() for c in classes))


def tta_matrices(n: int, size: Sequence[int], samples: int, seed: int = 0, flip: bool = True) -> torch.Tensor:
    """(T, n, 3, 3) pixel-coordinate affine maps (source -> augmented) for T = ``samples`` augmentations of n
    images of ``size`` (H, W): sample 0 the identity; the others a horizontal flip (probability 1/2, unless
    ``flip`` is False: for classes that are not mirror-symmetric, such as digits), a zoom about the centre from
    :data:`TTA_ZOOM` and a shift of up to ``TTA_SHIFT`` of the size each way, drawn from ``(seed, "tta", t)``
    (the same for every batch split)."""
    _check_samples(samples)
    h, w = (float(s) for s in size)
    mats = torch.eye(3).repeat(samples, n, 1, 1)
    for t in range(1, samples):  # a loop over augmentations, each drawn for all images at once
        g = generator(seed, "tta", t)
        flipped = (torch.rand(n, generator=g) < 0.5) & flip
        zoom = TTA_ZOOM[0] + (TTA_ZOOM[1] - TTA_ZOOM[0]) * torch.rand(n, generator=g)
        shift = (torch.rand(n, 2, generator=g) * 2 - 1) * TTA_SHIFT * torch.tensor([w, h])
        m = torch.eye(3).repeat(n, 1, 1)
        m[:, 0, 0] = torch.where(flipped, -zoom, zoom)
        m[:, 1, 1] = zoom
        # about the centre: x' = c + s (x - c) + shift
        m[:, 0, 2] = w / 2 - m[:, 0, 0] * (w / 2) + shift[:, 0]
        m[:, 1, 2] = h / 2 - zoom * (h / 2) + shift[:, 1]
        mats[t] = m
    return mats


def border_mean(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 1, 1): the mean of each image's outermost ring of pixels (the fill outside a
    shifted or zoomed-out image, so a black-background digit stays on black and a photo gets its own edge colour)."""
    ring = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0], images[..., 1:-1, -1]], -1)
    return ring.mean(-1)[..., None, None]


def augment(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images through (B, 3, 3) maps (:func:`tta_matrices`) with nnfeat's one-``grid_sample``
    resampler, filled outside with each image's :func:`border_mean`: (B, C, H, W). Differentiable in ``images``."""
    fill = border_mean(images.detach())
    return affine_resample(images, matrices.to(images.device), tuple(images.shape[-2:]), fill)


@torch.no_grad()
def tta_probs(model: nn.Module, images: torch.Tensor, samples: int = 8, seed: int = 0,
              batch_size: int = 256, flip: bool = True, items: Sequence | None = None) -> torch.Tensor:
    """(B, 3, H, W) -> (T, B, K) softmax probabilities of T = ``samples`` augmentations (:func:`tta_matrices`;
    row 0 is the plain image). Chunks of images are augmented T ways and run as one batch; a chunk with a NaN or
    Inf is a one-line error (``items``: as for :func:`ensemble_probs`)."""
    device = next((b.device for b in model.buffers()), images.device)
    images = fit_images(model, images)
    mats = tta_matrices(len(images), images.shape[-2:], samples, seed, flip)
    chunk = max(1, batch_size // samples)

    def chunk_probs(i: int) -> torch.Tensor:  # chunk i on rank i % world under torchrun
        start = i * chunk
        part = images[start:start + chunk].to(device)
        m = mats[:, start:start + len(part)].flatten(0, 1)
        batch = augment(part.repeat(samples, 1, 1, 1), m)
        return _checked(_logits(model, batch).softmax(1).view(samples, len(part), -1).cpu(), model, start, items)

    return torch.cat(shard_map(chunk_probs, math.ceil(len(images) / chunk)), 1)


class Augmented(nn.Module):
    """``model`` behind a fixed augmentation: forward(x (B,3,H,W)) = model(augment(x, matrices (B,3,3))), so a
    saliency map taken through it lies in the frame of the original image."""

    def __init__(self, model: nn.Module, matrices: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("matrices", matrices, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(augment(images, self.matrices))


# -- how much saliency maps vary ----------------------------------------------------------------------
def map_agreement(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, B, H, W) saliency maps of S members / samples -> (mean pairwise Spearman rank correlation of their
    absolute values (B,), the std over S of the maps each scaled to max |value| 1 (B, H, W)). Spearman is NaN for
    S < 2."""
    s, b = maps.shape[:2]
    flat = maps.abs().flatten(2).double()  # (S, B, P)
    ranks = rankdata(flat)
    ranks = ranks - ranks.mean(-1, keepdim=True)
    ranks = ranks / ranks.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    corr = torch.einsum("sbp,tbp->bst", ranks, ranks)  # (B, S, S)
    if s < 2:
        spearman = torch.full((b,), float("nan"), dtype=torch.float64)
    else:
        spearman = (corr.sum((1, 2)) - corr.diagonal(dim1=1, dim2=2).sum(1)) / (s * (s - 1))
    scaled = maps / maps.abs().flatten(2).amax(-1).clamp_min(1e-12)[..., None, None]
    return spearman.float(), scaled.std(0, unbiased=False).float()


__all__ = ["ECE_BINS", "entropy", "Summary", "summarize", "rankdata", "auroc",
           "Calibration", "calibration", "set_metrics", "class_count", "check_same_classes", "fit_images",
           "ensemble_probs",
           "dropout_modules", "check_dropout", "dropout_active", "mc_dropout_probs", "flip_safe", "tta_matrices",
           "border_mean", "augment",
           "tta_probs", "Augmented", "map_agreement"]
