"""How far to trust a saliency map: deletion / insertion AUC and the model-randomization test.

* :func:`deletion_insertion` -- the causal metrics of RISE (Petsiuk et al. 2018). Pixels are ranked by the
  map, most salient first. *Deletion* replaces them, ``steps`` equal fractions at a time, by a baseline
  and tracks the softmax probability of the target class (of another target, what
  :func:`nnfeat.targets.target_probabilities` gives: a map's class averaged over its region, a value as
  it is); *insertion* starts from a blurred copy of the
  image (Gaussian, sigma = min(H, W) / 8 px by default) and puts the original pixels back in the same order.
  The deletion baseline defaults to that same blurred copy (``blur``); ``black`` (0, as in RISE) is offered.
  Pixels are perturbed in ``patch`` x ``patch`` regions (region perturbation, Samek et al. 2017; default
  min(H, W) / 16 px, about 256 regions) ranked by their mean map value; ``patch=1`` is RISE's single pixels.
  On small images, scattered single perturbed pixels (what a random map deletes) break the prediction faster
  than any coherent region does -- on CIFAR-10 a random pixel order then "beats" Grad-CAM at deletion -- which
  measures the artefact more than the map; regions keep both orders equally coherent. Each AUC is the
  trapezoid area under probability vs fraction of pixels (0..1): a good map has a low deletion and a high
  insertion AUC. All steps of all images run as batched passes. :func:`random_maps` gives the seeded
  uniform-noise map to compare with.
* :func:`randomization_test` -- the cascading model-parameter randomization test of Adebayo et al. 2018
  ("Sanity checks for saliency maps"): on a deep copy of the model, re-initialize the layers that have
  parameters one more at a time from the logits down (k = 1 .. all; each layer's own ``reset_parameters``,
  seeded) and compute the Spearman rank correlation between |original map| and |map of the randomized
  model|, per image. A method whose median correlation after full randomization is >= ``threshold`` (0.3)
  *fails*: its maps do not depend on what the model learned.

Pixels with equal map values (a ReLU'd CAM's zeros) are ordered at random (seeded) for deletion / insertion
and get their average rank for Spearman.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnfeat.analysis.attribution import baseline_images, chunks, resolve_targets
from nnfeat.analysis.fast_path import fast_network
from nnfeat.analysis.saliency import saliency_maps
from nnfeat.distributed import shard_map
from nnfeat.errors import NnfeatError
from nnfeat.hooks import layer_root
from nnfeat.models.base import Model
from nnfeat.targets import Target, as_target, target_probabilities

#: median Spearman after full randomization at or above which a method fails the randomization test
THRESHOLD = 0.3
DELETION_BASELINES = ("black", "blur")


# -- deletion / insertion ---------------------------------------------------------------------------------
def pixel_order(maps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(B, H, W) maps -> (B, H*W) rank of each pixel (0 = most salient); ties broken at random (seeded)."""
    b = maps.shape[0]
    flat = maps.reshape(b, -1).float()
    g = torch.Generator().manual_seed(int(seed))
    shuffle = torch.argsort(torch.rand(flat.shape, generator=g), 1).to(flat.device)
    order = shuffle.gather(1, torch.sort(flat.gather(1, shuffle), dim=1, descending=True, stable=True).indices)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order).contiguous())
    return ranks


def random_maps(shape: Sequence[int], seed: int = 0, device=None) -> torch.Tensor:
    """A seeded uniform-noise saliency map of ``shape`` (B, H, W): the chance level of deletion / insertion."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand(tuple(shape), generator=g).to(device or "cpu")


@dataclass
class CausalScores:
    """Deletion / insertion for B maps: ``deletion``, ``insertion`` (B,) AUCs; ``*_curve`` (B, steps + 1)
    probabilities at pixel fractions ``fractions`` (steps + 1,); the settings they were made with."""

    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_curve: torch.Tensor
    insertion_curve: torch.Tensor
    fractions: torch.Tensor
    baseline: str
    insertion_sigma: float
    rank_by: str
    patch: int = 1

    def summary(self) -> dict:
        return {"deletion_auc": float(self.deletion.mean()), "insertion_auc": float(self.insertion.mean()),
                "deletion_baseline": self.baseline, "insertion_start": f"blur sigma {self.insertion_sigma:g} px",
                "rank_by": self.rank_by, "steps": len(self.fractions) - 1,
                "regions": "pixels" if self.patch <= 1 else f"{self.patch}x{self.patch} px patches"}


def region_ranks(maps: torch.Tensor, patch: int = 1, seed: int = 0) -> tuple[torch.Tensor, int]:
    """(B, H, W) maps -> ((B, H*W) rank of each pixel's region, number of regions). Regions are ``patch`` x
    ``patch`` squares (1: single pixels) scored by their mean map value; rank 0 = most salient region."""
    b, h, w = maps.shape
    if patch <= 1:
        return pixel_order(maps, seed), h * w
    scores = F.avg_pool2d(maps.float()[:, None], patch, ceil_mode=True)[:, 0]  # (B, h', w')
    gw = scores.shape[-1]
    block_rank = pixel_order(scores, seed)  # (B, h' * w')
    ys = torch.arange(h, device=maps.device) // patch
    xs = torch.arange(w, device=maps.device) // patch
    region = (ys[:, None] * gw + xs[None, :]).flatten()  # (H*W,) region of each pixel
    return block_rank[:, region], scores.shape[-2] * gw


@torch.no_grad()
def _curves(model, pairs: list[tuple[torch.Tensor, torch.Tensor]], ranks: torch.Tensor, n_regions: int,
            targets: Target, steps: int, batch_size: int, check: Callable | None = None) -> torch.Tensor:
    """Probability of ``targets`` (:func:`~nnfeat.targets.target_probabilities`) as the pixels whose
    region rank < k_s switch from ``start`` to ``end`` (k_s = s/steps of the regions, s = 0..steps), for each
    (start, end) pair of (B, 3, H, W) images and each map's (M, B, H*W) ``ranks`` -> (P, M, B, steps + 1).
    The end points do not depend on the map (s = 0 is ``start``, s = steps is ``end``): each distinct end image
    is scored once; the (pair, map, image, inner step) items of every map run as one stream of batched passes.
    ``check(probs, kinds, maps, images)``: called on each chunk's (N,) probabilities (e.g. to stop at NaN) with
    what each row is: ``kinds`` its pair's index or ``"end <e>"`` for distinct end image ``e`` (``maps`` None
    there), ``maps`` its map, ``images`` its image."""
    b, _, h, w = pairs[0][0].shape
    device = pairs[0][0].device
    m_maps, inner = ranks.shape[0], steps - 1
    ends = list({id(t): t for pair in pairs for t in pair}.values())  # distinct images, in order
    which = torch.tensor([[next(j for j, t in enumerate(ends) if t is x) for x in pair] for pair in pairs])
    stack = torch.stack(ends)  # (E, B, 3, H, W)
    counts = torch.round(torch.linspace(0, n_regions, steps + 1, device=device)).long()  # (S + 1,)
    n_end, n_inner = len(ends) * b, len(pairs) * m_maps * b * inner
    parts = list(chunks(n_end, batch_size)) + list(chunks(n_inner, batch_size))
    n_end_parts = len(list(chunks(n_end, batch_size)))

    def chunk_probs(c: int) -> torch.Tensor:  # chunk c on rank c % world under torchrun
        if c < n_end_parts:
            idx = torch.arange(parts[c].start, parts[c].stop, device=device)
            probs = target_probabilities(model(stack[idx // b, idx % b]), targets[idx % b])
            if check is not None:
                check(probs, [f"end {e}" for e in (idx // b).tolist()], None, (idx % b).tolist())
            return probs
        idx = torch.arange(parts[c].start, parts[c].stop, device=device)
        k, rest = idx % inner + 1, idx // inner
        i, rest = rest % b, rest // b
        j, p = rest % m_maps, rest // m_maps
        mask = (ranks[j, i] < counts[k, None]).view(-1, 1, h, w).to(stack.dtype)
        batch = stack[which[p, 0].to(device), i] * (1 - mask) + stack[which[p, 1].to(device), i] * mask
        probs = target_probabilities(model(batch), targets[i])
        if check is not None:
            check(probs, p.tolist(), j.tolist(), i.tolist())
        return probs

    done = [t.to(device) for t in shard_map(chunk_probs, len(parts))]
    at_ends = torch.cat(done[:n_end_parts]).view(len(ends), b)
    out = torch.empty(len(pairs), m_maps, b, steps + 1, device=device)
    out[..., 0] = at_ends[which[:, 0].to(device)][:, None]
    out[..., -1] = at_ends[which[:, 1].to(device)][:, None]
    if inner:
        out[..., 1:-1] = torch.cat(done[n_end_parts:]).view(len(pairs), m_maps, b, inner)
    return out


def causal_scores(model, images: torch.Tensor, maps: Sequence[torch.Tensor], targets: torch.Tensor | Target, *,
                  steps: int = 16, baseline: str = "blur", insertion_sigma: float | None = None,
                  rank_by: str | Sequence[str] = "value", patch: int | None = None, seed: int = 0,
                  batch_size: int = 256, check: Callable | None = None) -> list[CausalScores]:
    """RISE deletion and insertion (see the module docstring) of each of the (B, H, W) ``maps`` for (B, 3, H, W)
    ``images`` and (B,) ``targets`` (or a resolved :class:`~nnfeat.targets.Target`: the same score the
    maps explain, tracked as :func:`~nnfeat.targets.target_probabilities`), every map's steps in one
    stream of batched passes. ``rank_by`` (one, or one per map): ``value`` (most positive first) or ``abs``
    (largest |map| first).
    ``patch``: perturb ``patch`` x ``patch`` regions ranked by their mean map value (region perturbation,
    Samek et al. 2017; default min(H, W) // 16, i.e. about 256 regions) or single pixels (1, RISE's own
    granularity); the random map is then a random region order. ``check``: see :func:`_curves`."""
    if steps < 1:
        raise NnfeatError(f"deletion/insertion needs steps >= 1; got {steps}")
    patch = max(1, min(images.shape[-2:]) // 16) if patch is None else int(patch)
    if patch < 1 or patch > min(images.shape[-2:]):
        raise NnfeatError(f"deletion/insertion patch must be 1..{min(images.shape[-2:])} px; got {patch}")
    if baseline not in DELETION_BASELINES:
        raise NnfeatError(f"unknown deletion baseline '{baseline}': use {', '.join(DELETION_BASELINES)}")
    orders = [rank_by] * len(maps) if isinstance(rank_by, str) else list(rank_by)
    if len(orders) != len(maps) or any(r not in ("value", "abs") for r in orders):
        raise NnfeatError(f"rank_by must be 'value' or 'abs' (one, or one per map); got {rank_by}")
    for m in maps:
        if tuple(m.shape) != (images.shape[0], *images.shape[-2:]):
            raise NnfeatError(f"maps must be (B, H, W) = {(images.shape[0], *images.shape[-2:])}; got "
                              f"{tuple(m.shape)}")
    images = images.detach().float()
    ranked = [region_ranks(m.to(images.device).float().abs() if r == "abs" else m.to(images.device).float(),
                           patch, seed) for m, r in zip(maps, orders)]
    n_regions = ranked[0][1]
    sigma = float(insertion_sigma or min(images.shape[-2:]) / 8)
    blurred = baseline_images(images, "blur", sigma=sigma)
    removed = blurred if baseline == "blur" else baseline_images(images, baseline, sigma=sigma)
    targets = as_target(targets).to(images.device)
    curves = _curves(model, [(images, removed), (blurred, images)], torch.stack([r for r, _ in ranked]), n_regions,
                     targets, steps, batch_size, check).cpu()  # (2, M, B, S + 1)
    auc = torch.trapezoid(curves, dx=1.0 / steps, dim=-1)  # (2, M, B)
    fractions = torch.linspace(0, 1, steps + 1)
    return [CausalScores(auc[0, j], auc[1, j], curves[0, j], curves[1, j], fractions, baseline, sigma, orders[j],
                         patch) for j in range(len(maps))]


def deletion_insertion(model, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor | Target, *,
                       steps: int = 16, baseline: str = "blur", insertion_sigma: float | None = None,
                       rank_by: str = "value", patch: int | None = None, seed: int = 0,
                       batch_size: int = 256) -> CausalScores:
    """:func:`causal_scores` of one (B, H, W) map."""
    return causal_scores(model, images, [maps], targets, steps=steps, baseline=baseline,
                         insertion_sigma=insertion_sigma, rank_by=rank_by, patch=patch, seed=seed,
                         batch_size=batch_size)[0]


# -- Spearman ---------------------------------------------------------------------------------------------
def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, N) float64 ranks 1..N per row, ties given their average rank."""
    x = x.double()
    s = torch.sort(x, 1).values
    lo = torch.searchsorted(s, x, right=False)
    hi = torch.searchsorted(s, x, right=True)
    return (lo + hi + 1).double() / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Spearman rank correlation of (B, ...) tensors -> (B,) (NaN where a row is constant)."""
    ra = average_ranks(a.reshape(a.shape[0], -1))
    rb = average_ranks(b.reshape(b.shape[0], -1).to(a.device))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    denom = ra.square().sum(1).sqrt() * rb.square().sum(1).sqrt()
    return torch.where(denom > 0, (ra * rb).sum(1) / denom.clamp_min(1e-300), torch.full_like(denom, float("nan")))


# -- model randomization ----------------------------------------------------------------------------------
def parameter_layers(model: nn.Module, size: Sequence[int]) -> list[str]:
    """Names of the modules that hold parameters themselves, from the logits down (reverse forward order,
    found from one forward pass of a grey image of ``size``; modules never called come last, reversed)."""
    root = layer_root(model)
    owners = [n for n, m in root.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    if not owners:
        raise NnfeatError("the model has no layer with parameters: nothing to randomize")
    order: list[str] = []
    handles = []
    modules = dict(root.named_modules())
    try:
        for name in owners:
            handles.append(modules[name].register_forward_hook(
                lambda _m, _i, _o, name=name: order.append(name) if name not in order else None))
        device = next((t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
        with torch.no_grad():
            model(torch.full((1, 3, *size), 0.5, device=device))
    finally:
        for handle in handles:
            handle.remove()
    order += [n for n in owners if n not in order]
    return order[::-1]


def _without_caches(model: nn.Module) -> dict:
    """A deepcopy memo that leaves out the folded / fast networks cached on ``model`` (the copy starts bare)."""
    names = ("_folded_cache", "_channels_last_copies", "_fast_paths")
    return {id(v): {} for k, v in model.__dict__.items() if k in names}


def cascade_depths(model: nn.Module, size: Sequence[int], cascade: int) -> list[int]:
    """``cascade`` depths spread evenly over 1..all parameter layers of ``model`` (at images of ``size``)."""
    n_layers = len(parameter_layers(model, tuple(size)))
    return sorted({max(1, round(n_layers * (i + 1) / cascade)) for i in range(min(cascade, n_layers))})


@torch.no_grad()
def reinitialize(module: nn.Module, seed: int) -> None:
    """Re-initialize ``module``'s own parameters (and running stats) with its ``reset_parameters`` under a seeded
    RNG; modules without one get N(0, 0.02) weights (seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            for p in module.parameters(recurse=False):
                p.normal_(0.0, 0.02, generator=torch.Generator(p.device.type).manual_seed(int(seed)))


@dataclass
class RandomizationResult:
    """The cascading randomization test of one method. ``layers``: re-initialized layers, top first;
    ``correlations`` (K, repeats * B) Spearman of |map| after re-initializing the top ``depths[i]`` layers;
    ``medians`` (K,) (NaN-ignoring); ``final_median``; ``passes`` (final median < threshold); ``constant`` (K,) how many
    randomized maps were constant (their correlation is undefined and left out)."""

    method: str
    layers: list[str]
    depths: list[int]
    correlations: torch.Tensor
    medians: torch.Tensor
    final_median: float
    threshold: float
    passes: bool
    constant: list[int] = field(default_factory=list)
    repeats: int = 1

    def summary(self) -> dict:
        return {"method": self.method, "layers_top_down": self.layers, "depths": self.depths,
                "median_spearman": [None if m != m else round(float(m), 4) for m in self.medians.tolist()],
                "final_median_spearman": (None if self.final_median != self.final_median
                                          else round(self.final_median, 4)),
                "threshold": self.threshold, "passes": self.passes, "repeats": self.repeats,
                "verdict": "passes" if self.passes else "FAILS", "constant_maps": self.constant}


def randomization_test(model, images: torch.Tensor, method: str, targets: torch.Tensor | Target | None = None, *,
                       layer: str | None = None, ks: Sequence[int] | None = None, seed: int = 0, repeats: int = 1,
                       threshold: float = THRESHOLD, maps: torch.Tensor | None = None,
                       saliency: Callable | None = None, options: dict | None = None) -> RandomizationResult:
    """Adebayo et al. 2018's cascading randomization for ``method`` on (B, 3, H, W) ``images`` (see the module
    docstring). ``targets`` default the original model's predictions and stay fixed. ``ks``: which cascade
    depths to evaluate (1-based, default every one; the last is always all layers). ``repeats``: independent
    cascades (seeds ``seed``, ``seed + 1``, ...) whose correlations are pooled, so the verdict does not hang on
    one random network (a fully random CNN's maps share a structure of their own across images). ``maps``: the
    original (B, H, W) maps, if already computed; ``options``: the method's own options (see
    :func:`nnfeat.analysis.saliency.saliency_maps`). The model itself is never changed (deep copies are randomized)."""
    if repeats < 1:
        raise NnfeatError(f"randomization repeats must be at least 1; got {repeats}")
    saliency = saliency or saliency_maps
    options = dict(options or {})
    size = tuple(images.shape[-2:])
    targets = resolve_targets(model, images, targets)
    if maps is None:
        maps = saliency(model, images, targets, method, layer=layer, **options)
    layers = parameter_layers(model, size)
    n = len(layers)
    wanted = sorted({int(k) for k in (ks or range(1, n + 1))} | {n})
    if wanted[0] < 1:
        raise NnfeatError(f"cascade depths must be 1..{n}; got {wanted[0]}")
    wanted = [k for k in wanted if k <= n]
    per_repeat = []
    for r in range(repeats):
        randomized = copy.deepcopy(model, _without_caches(model))
        modules = dict(layer_root(randomized).named_modules())
        # channels-last input, no fold: the copy's weights change between depths, a folded copy would go stale
        run = fast_network(randomized, fold=False).network if isinstance(randomized, Model) else randomized
        rows, done = [], 0
        for k in wanted:
            for j in range(done, k):
                reinitialize(modules[layers[j]], (seed + r) * 1000 + j)
            done = k
            new = saliency(run, images, targets, method, layer=layer, **options)
            rows.append(spearman(maps.abs(), new.abs()).float().cpu())
        per_repeat.append(torch.stack(rows))  # (K, B)
        del randomized
    corr = torch.cat(per_repeat, 1)  # (K, repeats * B)
    medians = corr.nanmedian(1).values
    final = float(medians[-1])
    constant = [int(c) for c in corr.isnan().sum(1)]
    return RandomizationResult(method, layers, wanted, corr, medians, final, threshold,
                               bool(final == final and final < threshold), constant, repeats)


__all__ = ["THRESHOLD", "DELETION_BASELINES", "pixel_order", "random_maps", "CausalScores", "deletion_insertion",
           "region_ranks", "average_ranks", "spearman", "parameter_layers", "reinitialize", "RandomizationResult",
           "randomization_test", "cascade_depths", "causal_scores"]
