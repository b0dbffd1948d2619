"""Regularizers and batch terms: image priors (``l1``, ``total_variation``, ``blur``: positive *penalties*,
subtract them) and terms that couple the batch items (``diversity``, ``alignment``: rewards, add them).

Sign conventions follow Lucid. The pseudo-layer ``"image"`` is the parameterized image (B, 3, H, W) in [0,1]
before the transforms, the default layer of the image priors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nnfeat.engine.objective import Acts, Objective, UnitRef, _fmt, _q
from nnfeat.errors import NnfeatError
from nnfeat.imageops import gaussian_blur
from nnfeat.layouts import IMAGE, channels_first


def diversity(layer: str, group: int | None = None) -> Objective:
    """Reward for batch items that differ in style: ``-(mean cosine similarity of item i's Gram matrix with the others)``
    (Olah et al. 2017, "Feature Visualization"; Lucid weighs it about 1e2 against a channel objective).

    ``group``: compare each item only with the others of its block of ``group`` consecutive items (B must be a
    multiple of ``group``), so several units' diversity renders share one batch: items 0..g-1 are one unit's, g..2g-1
    the next one's. Needs at least 2 items per block. Gram matrices (B, C, C) from activations (B, C, S).
    """

    def fn(acts: Acts) -> torch.Tensor:
        view = channels_first(acts[layer])  # (B, C, S)
        b = view.shape[0]
        g = b if group is None else group
        if g < 2 or b < 2:
            raise NnfeatError("diversity needs a batch of at least 2 images: use --batch 2 or more")
        if b % g:
            raise NnfeatError(f"diversity(group={g}) needs a batch that is a multiple of {g}; got {b}")
        gram = torch.bmm(view, view.transpose(1, 2)).flatten(1) / view.shape[-1]
        gram = F.normalize(gram, dim=1).view(b // g, g, -1)
        sim = torch.bmm(gram, gram.transpose(1, 2))  # (B/g, g, g)
        off_diagonal = sim.sum(2) - sim.diagonal(dim1=1, dim2=2)
        return (-off_diagonal / (g - 1)).flatten()

    desc = f"diversity({_q(layer)})" if group is None else f"diversity({_q(layer)}, group={group})"
    return Objective(fn, [layer], desc, [UnitRef(layer)])


def alignment(layer: str, decay_ratio: float = 2.0, max_distance: int = 4) -> Objective:
    """Reward for neighbouring batch items having similar activations (for interpolations).

    ``-sum_d sum_i mean((a_i - a_{i+d})**2) / decay_ratio**d`` for d = 1..max_distance, shared equally by the items.
    """

    def fn(acts: Acts) -> torch.Tensor:
        act = acts[layer].flatten(1)
        b = act.shape[0]
        total = act.new_zeros(())
        for d in range(1, min(max_distance, b - 1) + 1):  # a loop over distances, not over batch items
            total = total + (act[d:] - act[:-d]).pow(2).mean(1).sum() / decay_ratio**d
        return (-total / b).expand(b)

    extra = "" if (decay_ratio, max_distance) == (2.0, 4) else f", {_fmt(decay_ratio)}, {int(max_distance)}"
    return Objective(fn, [layer], f"alignment({_q(layer)}{extra})", [UnitRef(layer)])


def l1(constant: float = 0.5, layer: str = IMAGE) -> Objective:
    """Penalty ``mean |x - constant|`` per item (default: the image, toward grey 0.5). Subtract it."""

    def fn(acts: Acts) -> torch.Tensor:
        return (acts[layer] - constant).abs().flatten(1).mean(1)

    return Objective(fn, [layer], f"l1({_fmt(constant)}, {_q(layer)})" if layer != IMAGE else (
        "l1()" if constant == 0.5 else f"l1({_fmt(constant)})"), [UnitRef(layer)])


def total_variation(layer: str = IMAGE) -> Objective:
    """Penalty: mean absolute difference of neighbouring pixels per item. Subtract it."""

    def fn(acts: Acts) -> torch.Tensor:
        img = acts[layer]
        dy = (img[..., 1:, :] - img[..., :-1, :]).abs().flatten(1).mean(1)
        dx = (img[..., :, 1:] - img[..., :, :-1]).abs().flatten(1).mean(1)
        return dx + dy

    return Objective(fn, [layer], "total_variation()" if layer == IMAGE else f"total_variation({_q(layer)})",
                     [UnitRef(layer)])


def blur(layer: str = IMAGE, sigma: float = 1.0) -> Objective:
    """Penalty ``0.5 * mean((x - stop_grad(blur(x)))**2)``: its gradient pulls the image toward its own blur."""
    def fn(acts: Acts) -> torch.Tensor:
        img = acts[layer]
        blurred = gaussian_blur(img.detach(), sigma)
        return 0.5 * (img - blurred).pow(2).flatten(1).mean(1)

    return Objective(fn, [layer], "blur()" if (layer, sigma) == (IMAGE, 1.0) else f"blur({_q(layer)}, {_fmt(sigma)})",
                     [UnitRef(layer)])
