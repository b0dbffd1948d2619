"""Saliency / attribution maps: which input pixels a class score depends on (tensors in, tensors out).

:func:`saliency_maps` turns (B, 3, H, W) images in [0, 1] into (B, H, W) float maps at input resolution for
one class per image (given, or the predicted one). Every method is registered in :data:`SALIENCY` (name, family,
sign, options); :data:`METHODS` lists them in page order:

* ``gradient`` -- d logit / d pixel, summed over the colour channels (signed; Simonyan et al. 2014);
* ``gradient-x-input`` -- gradient times input, summed over the channels (signed; Shrikumar et al. 2016);
* ``smoothgrad`` / ``smoothgrad-sq`` / ``vargrad`` -- the mean, the mean square and the variance of the
  gradient over ``samples`` noisy copies (Smilkov et al. 2017; Adebayo et al. 2018 for VarGrad), all copies in
  batched passes;
* ``integrated-gradients`` -- (x - x') * the path-averaged gradient from a baseline x' (``black``, ``blur`` or
  ``noise``) to x, midpoint rule over ``alphas`` points (Sundararajan et al. 2017). The B * alphas path images
  run as chunks of ``batch_size`` images, each chunk one forward and one backward pass (no loop over alphas);
* ``occlusion`` -- the drop of the class logit when a ``window`` x ``window`` patch is set to a baseline,
  averaged over the windows covering each pixel (signed; Zeiler & Fergus 2014); all windows batched;
* the CAM family (:mod:`nnfeat.analysis.cam`: ``gradcam``, ``gradcam++``, ``layercam``, ``xgradcam``) -- class
  activation maps of a spatial layer (``layer``; token layers are folded onto their patch grid; default
  :func:`default_cam_layer`), ReLU'd and upsampled bilinearly;
* ``edge`` -- a model-independent control: the Sobel gradient magnitude of the input's luma. Any sanity check
  worth its name must flag it (it ignores the model).

The score explained is the target's (:mod:`nnfeat.targets`): by default the network's output (the
logits) at the target class; a target text such as ``out:3@mask`` explains class 3 of a segmentation map summed
over its predicted mask, ``value`` a regression output. Every method, gradient, path, perturbation or CAM, takes
the gradient or the drop of that one score. No Python loop runs over images, samples or alphas; only over chunks of
``batch_size`` images. A new method is one function and one :func:`register` call in this module (a new CAM, one
subclass in :mod:`nnfeat.analysis.cam`).

A method's maps travel as a :class:`MethodMaps` (maps, display scale, and the numbers of
:mod:`nnfeat.analysis.sanity` once computed); its ``verdict`` names each check (:func:`method_checks`: deletion and
insertion against the random map, randomization) as passed, failed (with the numbers) or not run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from nnfeat.analysis.attribution import (BASELINES, BATCH_SIZE, baseline_images, chunks, input_gradients,
                                         predicted_classes, resolve_targets)
from nnfeat.analysis.cam import CAMS, cam_maps, default_cam_layer
from nnfeat.analysis.registry import Registry
from nnfeat.distributed import shard_map
from nnfeat.errors import NnfeatError
from nnfeat.imageops import luma
from nnfeat.targets import Target, as_target, target_scores


@dataclass(frozen=True)
class SaliencyMethod:
    """One registered method. ``compute(model, images, targets, *, layer, batch_size, **options)`` -> (B, H, W)
    (for a ``control``, ``compute(images)``); ``family``: gradient | cam | control; ``signed``: its maps carry a
    sign (positive: evidence for the class); ``rank_by_abs``: its sign is a direction, not evidence, so pixels are
    ranked by |map| for deletion / insertion; ``options``: the keyword options it takes besides ``batch_size``;
    ``settings``: which settings of the saliency operation (:func:`nnfeat.ops.saliency.saliency`) it is given."""

    name: str
    compute: Callable
    family: str
    signed: bool = False
    rank_by_abs: bool = False
    options: frozenset = frozenset()
    settings: tuple[str, ...] = ()


#: the percentile of |map| each method's maps are divided by for display
DISPLAY_PERCENTILE = 99.0
#: every method :func:`saliency_maps` knows, in page order
SALIENCY = Registry("saliency method")


def register(name: str, compute: Callable, family: str = "gradient", *, signed: bool = False,
             rank_by_abs: bool = False, options: Sequence[str] = (), settings: Sequence[str] = ()) -> SaliencyMethod:
    """Register a saliency method (see :class:`SaliencyMethod`)."""
    return SALIENCY.register(name, SaliencyMethod(name, compute, family, signed, rank_by_abs, frozenset(options),
                                                  tuple(settings)))


# -- gradient methods -------------------------------------------------------------------------------------
def _gradient(model, images, targets, *, batch_size: int = BATCH_SIZE, layer=None) -> torch.Tensor:
    return input_gradients(model, images, targets, batch_size).sum(1)


def _gradient_x_input(model, images, targets, *, batch_size: int = BATCH_SIZE, layer=None) -> torch.Tensor:
    return (input_gradients(model, images, targets, batch_size) * images).sum(1)


def _smoothgrad(model, images, targets, method, *, samples: int = 16, noise: float = 0.15, seed: int = 0,
                batch_size: int = BATCH_SIZE) -> torch.Tensor:
    if samples < 1 or (method == "vargrad" and samples < 2):
        raise NnfeatError(f"{method} needs samples >= {2 if method == 'vargrad' else 1}; got {samples}")
    b = len(images)
    g = torch.Generator().manual_seed(int(seed))
    eps = torch.randn((samples, *images.shape), generator=g).to(images.device, images.dtype) * float(noise)
    noisy = (images.unsqueeze(0) + eps).flatten(0, 1)  # (S*B, 3, H, W), sample-major
    grads = input_gradients(model, noisy, targets.repeat(samples), batch_size).view(samples, b, *images.shape[1:])
    if method == "smoothgrad":
        return grads.mean(0).sum(1)
    if method == "smoothgrad-sq":
        return grads.square().mean(0).sum(1)
    return grads.var(0, unbiased=False).sum(1)  # vargrad


def _smoothgrad_family(method: str) -> Callable:
    def compute(model, images, targets, *, layer=None, **options) -> torch.Tensor:
        return _smoothgrad(model, images, targets, method, **options)
    return compute


def integrated_gradients(model, images: torch.Tensor, targets: torch.Tensor, *, alphas: int = 32,
                         baseline: str | torch.Tensor = "black", sigma: float | None = None, seed: int = 0,
                         batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Integrated Gradients (Sundararajan et al. 2017) per colour channel: (B, 3, H, W) -> (B, 3, H, W).

    (x - x') * mean over alpha_k = (k + 1/2) / m of d logit / d x at x' + alpha_k (x - x'): the midpoint rule,
    whose sum over pixels approaches logit(x) - logit(x') as m grows (completeness). The B * m path images
    are built as one tensor and run in chunks of ``batch_size``.
    """
    if alphas < 1:
        raise NnfeatError(f"integrated-gradients needs alphas >= 1; got {alphas}")
    base = baseline if torch.is_tensor(baseline) else baseline_images(images, baseline, sigma=sigma, seed=seed)
    base = base.to(images.device, images.dtype).expand_as(images)
    delta = images - base
    a = (torch.arange(alphas, device=images.device, dtype=images.dtype) + 0.5) / alphas
    path = (base.unsqueeze(0) + a.view(-1, 1, 1, 1, 1) * delta.unsqueeze(0)).flatten(0, 1)  # (m*B, 3, H, W)
    grads = input_gradients(model, path, targets.repeat(alphas), batch_size)
    return delta * grads.view(alphas, *images.shape).mean(0)


def _integrated_gradients(model, images, targets, *, layer=None, **options) -> torch.Tensor:
    return integrated_gradients(model, images, targets, **options).sum(1)


def _window_masks(h: int, w: int, window: int, stride: int, device) -> torch.Tensor:
    """(P, H, W) float masks of every window position (rows then columns; the last window touches the edge)."""
    def starts(n: int) -> torch.Tensor:
        s = list(range(0, max(1, n - window + 1), stride))
        if s[-1] != max(0, n - window):
            s.append(max(0, n - window))
        return torch.tensor(s, device=device)

    ys, xs = starts(h), starts(w)
    rows = (torch.arange(h, device=device) >= ys[:, None]) & (torch.arange(h, device=device) < ys[:, None] + window)
    cols = (torch.arange(w, device=device) >= xs[:, None]) & (torch.arange(w, device=device) < xs[:, None] + window)
    return (rows[:, None, :, None] & cols[None, :, None, :]).flatten(0, 1).float()


@torch.no_grad()
def occlusion(model, images: torch.Tensor, targets: torch.Tensor, *, window: int | None = None,
              stride: int | None = None, baseline: str = "black", sigma: float | None = None, seed: int = 0,
              batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Occlusion maps (B, H, W): score(x) - score(x with a window set to the baseline), averaged over the
    windows covering each pixel (score: the target's, by default the class logit). ``window`` default
    min(H, W) // 8, ``stride`` default window // 2. Every (image, window) pair is one image of a batched pass."""
    b, _, h, w = images.shape
    window = int(window or max(1, min(h, w) // 8))
    stride = int(stride or max(1, window // 2))
    if window < 1 or stride < 1 or window > min(h, w):
        raise NnfeatError(f"occlusion window must be 1..{min(h, w)} px and stride >= 1; got {window}, {stride}")
    masks = _window_masks(h, w, window, stride, images.device)  # (P, H, W)
    p = len(masks)
    base = baseline_images(images, baseline, sigma=sigma, seed=seed)
    targets = as_target(targets)
    clean = target_scores(model(images), targets)
    parts = list(chunks(b * p, batch_size))

    def chunk_drops(c: int) -> torch.Tensor:
        idx = torch.arange(parts[c].start, parts[c].stop, device=images.device)
        i, j = idx // p, idx % p
        m = masks[j].unsqueeze(1)
        batch = images[i] * (1 - m) + base[i] * m
        return clean[i] - target_scores(model(batch), targets[i])

    drops = torch.cat(shard_map(chunk_drops, len(parts))).to(images.device).view(b, p)
    return torch.einsum("bp,phw->bhw", drops, masks) / masks.sum(0).clamp_min(1)


def _occlusion(model, images, targets, *, layer=None, **options) -> torch.Tensor:
    return occlusion(model, images, targets, **options)


def edge_map(images: torch.Tensor) -> torch.Tensor:
    """The model-independent control: Sobel gradient magnitude of the luma, (B, 3, H, W) -> (B, H, W)."""
    import kornia  # reason: a heavy import, only for this control

    return kornia.filters.sobel(luma(images.float()))[:, 0]


def _cam(method: str) -> Callable:
    def compute(model, images, targets, *, layer=None, batch_size: int = BATCH_SIZE) -> torch.Tensor:
        return cam_maps(model, images, targets, method, layer=layer, batch_size=batch_size)
    return compute


# -- the registry, in page order ----------------------------------------------------------------------------
_NOISE = ("samples", "noise", "seed")
register("gradient", _gradient, signed=True, rank_by_abs=True)
register("gradient-x-input", _gradient_x_input, signed=True)
register("smoothgrad", _smoothgrad_family("smoothgrad"), signed=True, rank_by_abs=True, options=_NOISE,
         settings=("samples", "seed"))
register("smoothgrad-sq", _smoothgrad_family("smoothgrad-sq"), options=_NOISE, settings=("samples", "seed"))
register("vargrad", _smoothgrad_family("vargrad"), options=_NOISE, settings=("samples", "seed"))
register("integrated-gradients", _integrated_gradients, signed=True, options=("alphas", "baseline", "sigma", "seed"),
         settings=("alphas", "baseline", "seed"))
register("occlusion", _occlusion, signed=True, options=("window", "stride", "baseline", "sigma", "seed"),
         settings=("window", "seed"))
for _name in CAMS:
    register(_name, _cam(_name), "cam")
register("edge", edge_map, "control")

GRADIENT_METHODS = tuple(SALIENCY.names(where=lambda m: m.family == "gradient"))
CAM_METHODS = tuple(SALIENCY.names(where=lambda m: m.family == "cam"))
CONTROL_METHODS = tuple(SALIENCY.names(where=lambda m: m.family == "control"))
METHODS = tuple(SALIENCY.names())
#: methods whose maps carry a sign (positive: evidence for the class)
SIGNED_METHODS = tuple(SALIENCY.names(where=lambda m: m.signed))
#: methods whose sign is a direction, not evidence: pixels are ranked by |map| for deletion / insertion
RANK_BY_ABS = tuple(SALIENCY.names(where=lambda m: m.rank_by_abs))


def check_method(method: str) -> str:
    """``method`` if :func:`saliency_maps` knows it, else a one-line error listing the methods."""
    return SALIENCY.check(method)


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"gradient,gradcam"`` (or a list) -> checked, de-duplicated method names in the given order."""
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text)]
    names = [m for m in names if m]
    if not names:
        raise NnfeatError(f"no saliency method given; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(check_method(m) for m in names))


# -- the one entry point ----------------------------------------------------------------------------------
def saliency_maps(model, images: torch.Tensor, targets: torch.Tensor | Target | str | None = None,
                  method: str = "gradient", *, layer: str | None = None, **options) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] -> (B, H, W) float maps at input resolution (signed where the method is);
    targets (B,) class indices, None = the predicted class, or a target text / :class:`Target` (``"out:3@mask"``,
    ``"value"``; see :mod:`nnfeat.targets`).

    ``layer``: the CAM methods' layer (default :func:`default_cam_layer`; an error for other methods).
    ``options`` (each method takes only its own, plus ``batch_size``, images per pass, default 256):
    smoothgrad/-sq/vargrad: ``samples`` (16), ``noise`` (0.15, the std of the Gaussian noise on [0, 1] images),
    ``seed``; integrated-gradients: ``alphas`` (32), ``baseline`` (black|blur|noise or a tensor), ``sigma`` (blur
    px), ``seed``; occlusion: ``window``, ``stride``, ``baseline``, ``sigma``, ``seed``.
    """
    entry = SALIENCY[method]
    if images.dim() != 4 or images.shape[1] != 3:
        raise NnfeatError(f"images must have shape (B, 3, H, W); got {tuple(images.shape)}")
    batch_size = int(options.pop("batch_size", BATCH_SIZE))
    unknown = set(options) - entry.options
    if unknown:
        allowed = ", ".join(sorted(entry.options | {"batch_size"}))
        raise NnfeatError(f"{method} takes no option {', '.join(sorted(unknown))} (its options: {allowed})")
    if layer is not None and entry.family != "cam":
        raise NnfeatError(f"--layer is for the CAM methods ({', '.join(CAM_METHODS)}); {method} works on the input")
    images = images.detach().float()
    if entry.family == "control":
        return entry.compute(images)
    targets = resolve_targets(model, images, targets, batch_size)
    return entry.compute(model, images, targets, layer=layer, batch_size=batch_size, **options)


# -- a method's maps and how far to trust them ------------------------------------------------------------
def display_scale(maps: torch.Tensor, percentile: float = DISPLAY_PERCENTILE) -> float:
    """The ``percentile`` of |maps| over every pixel of every image (1.0 for all-zero maps)."""
    flat = maps.detach().abs().flatten().float()
    k = max(1, min(len(flat), int(math.ceil(percentile / 100 * len(flat)))))
    value = float(flat.kthvalue(k).values) if len(flat) else 0.0
    if value <= 0:
        value = float(flat.max()) if len(flat) else 0.0
    return value if value > 0 else 1.0


@dataclass(frozen=True)
class Check:
    """One named check of a method: ``name`` (deletion | insertion | randomization), ``outcome`` (passes | fails |
    not run) and ``text``, its part of the verdict (``deletion: worse than random (0.837 vs 0.759)``)."""

    name: str
    outcome: str
    text: str


def method_checks(causal: CausalScores | None, chance: CausalScores | None,
                  randomization: RandomizationResult | None) -> list[Check]:
    """Deletion, insertion (mean AUC vs the random map's ``chance``) and randomization, each named as passed, failed
    (with the numbers that failed it) or not run."""
    out = []
    for name, lower in (("deletion", True), ("insertion", False)):
        if causal is None or chance is None:
            out.append(Check(name, "not run", f"{name}: not run"))
            continue
        mine, rnd = float(getattr(causal, name).mean()), float(getattr(chance, name).mean())
        if mine < rnd if lower else mine > rnd:
            out.append(Check(name, "passes", f"{name}: better than random"))
        else:
            word = "no better than" if mine == rnd else "worse than"
            out.append(Check(name, "fails", f"{name}: {word} random ({mine:.3f} vs {rnd:.3f})"))
    r = randomization
    if r is None:
        out.append(Check("randomization", "not run", "randomization: not run (--sanity)"))
    elif r.passes:
        out.append(Check("randomization", "passes", "randomization: passes"))
    else:
        why = (f"median Spearman {r.final_median:.3f} >= {r.threshold:g}: the map ignores the model"
               if r.final_median == r.final_median else "every map of the randomized model was constant")
        out.append(Check("randomization", "fails", f"randomization: fails ({why})"))
    return out


@dataclass(repr=False)
class MethodMaps:
    """One saliency method's maps and how far to trust them: raw ``maps`` (B, H, W), ``scale`` (what they are
    divided by for display), ``signed``, the CAM ``layer`` (or None), and the numbers when computed: ``causal``
    (its deletion / insertion), ``chance`` (the random map's), ``randomization``."""

    method: str
    maps: torch.Tensor
    scale: float
    signed: bool
    layer: str | None = None
    causal: CausalScores | None = None
    randomization: RandomizationResult | None = None
    elapsed: float = 0.0
    chance: CausalScores | None = None

    @property
    def normalized(self) -> torch.Tensor:
        """(B, H, W) maps / scale, clamped to [-1, 1]."""
        return (self.maps / self.scale).clamp(-1, 1)

    @property
    def checks(self) -> list[Check]:
        return method_checks(self.causal, self.chance, self.randomization)

    @property
    def verdict(self) -> str:
        """Each check named as passed, failed or not run: ``deletion: worse than random (0.837 vs 0.759);
        insertion: better than random; randomization: passes``."""
        return "; ".join(c.text for c in self.checks)

    @property
    def status(self) -> str:
        """``fails`` (a check failed), ``passes`` (all three passed), ``partial`` (the run ones passed) or
        ``untested``."""
        outcomes = [c.outcome for c in self.checks]
        return ("fails" if "fails" in outcomes else "untested" if "passes" not in outcomes else
                "partial" if "not run" in outcomes else "passes")


__all__ = ["SALIENCY", "SaliencyMethod", "register", "METHODS", "GRADIENT_METHODS", "CAM_METHODS",
           "CONTROL_METHODS", "SIGNED_METHODS", "RANK_BY_ABS", "BASELINES", "check_method", "parse_methods",
           "saliency_maps", "predicted_classes", "resolve_targets", "input_gradients", "baseline_images",
           "integrated_gradients", "occlusion", "cam_maps", "default_cam_layer", "edge_map", "DISPLAY_PERCENTILE",
           "display_scale", "Check", "method_checks", "MethodMaps"]
