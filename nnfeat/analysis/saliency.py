"""Saliency / attribution maps: which input pixels a class score depends on (tensors in, tensors out).

:func:`saliency_maps` turns (B, 3, H, W) images in [0, 1] into (B, H, W) float maps at input resolution for
one class per image (given, or the predicted one). Methods (:data:`METHODS`):

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
* ``gradcam`` (Selvaraju et al. 2017), ``gradcam++`` (Chattopadhay et al. 2018), ``layercam`` (Jiang et al.
  2021), ``xgradcam`` (Fu et al. 2020) -- class activation maps of a spatial layer (``layer``; token layers are
  folded onto their patch grid; default :func:`default_cam_layer`), ReLU'd and upsampled bilinearly;
* ``edge`` -- a model-independent control: the Sobel gradient magnitude of the input's luma. Any sanity check
  worth its name must flag it (it ignores the model).

The class score is the network's output (:data:`nnfeat.layouts.OUTPUT`, the logits) at the target class.
Captures use :class:`nnfeat.hooks.ActivationCapture`, so hooks are gone after every call, also on error.
No Python loop runs over images, samples or alphas; only over chunks of ``batch_size`` images.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnfeat.distributed import shard_map
from nnfeat.errors import NnfeatError, nearest
from nnfeat.hooks import ActivationCapture, layer_root
from nnfeat.layouts import OUTPUT

GRADIENT_METHODS = ("gradient", "gradient-x-input", "smoothgrad", "smoothgrad-sq", "vargrad",
                    "integrated-gradients", "occlusion")
CAM_METHODS = ("gradcam", "gradcam++", "layercam", "xgradcam")
CONTROL_METHODS = ("edge",)
#: every method :func:`saliency_maps` knows, in page order
METHODS = GRADIENT_METHODS + CAM_METHODS + CONTROL_METHODS
#: methods whose maps carry a sign (positive: evidence for the class)
SIGNED_METHODS = ("gradient", "gradient-x-input", "smoothgrad", "integrated-gradients", "occlusion")
#: methods whose sign is a direction, not evidence: pixels are ranked by |map| for deletion / insertion
RANK_BY_ABS = ("gradient", "smoothgrad")
BASELINES = ("black", "blur", "noise")
#: default images per forward/backward pass
BATCH_SIZE = 256


def check_method(method: str) -> str:
    """``method`` if :func:`saliency_maps` knows it, else a one-line error listing the methods."""
    if method not in METHODS:
        near = nearest(method, METHODS)
        hint = f" (nearest: {', '.join(near)})" if near else ""
        raise NnfeatError(f"unknown saliency method '{method}'{hint}; choose from {', '.join(METHODS)}")
    return method


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"gradient,gradcam"`` (or a list) -> checked, de-duplicated method names in the given order."""
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text)]
    names = [m for m in names if m]
    if not names:
        raise NnfeatError(f"no saliency method given; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(check_method(m) for m in names))


# -- small helpers ----------------------------------------------------------------------------------------
def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, K) logits (the model's output, element 0 if it returns a tuple)."""
    with ActivationCapture(model, [OUTPUT]) as capture:
        out = capture(images)[OUTPUT]
    if out.dim() != 2:
        raise NnfeatError(f"saliency needs a model whose output is (B, classes) logits; got {tuple(out.shape)}")
    return out


def _chunks(n: int, size: int) -> Iterator[slice]:
    size = max(1, int(size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def predicted_classes(model: nn.Module, images: torch.Tensor, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """(B, 3, H, W) -> (B,) the arg-max class of each image."""
    chunks = list(_chunks(len(images), batch_size))
    return torch.cat(shard_map(lambda i: _logits(model, images[chunks[i]]).argmax(1), len(chunks))).to(images.device)


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


def _check_classes(logits: torch.Tensor, targets: torch.Tensor) -> None:
    k = logits.shape[1]
    if bool((targets < 0).any()) or bool((targets >= k).any()):
        bad = int(targets[(targets < 0) | (targets >= k)][0])
        raise NnfeatError(f"target class {bad} out of range: the model has {k} classes (0..{k - 1})")


def input_gradients(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                    batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """(N, 3, H, W) images, (N,) classes -> (N, 3, H, W) d logit[target] / d image, one forward and one
    backward pass per chunk of ``batch_size`` images (chunk i on rank i % world under torchrun)."""
    chunks = list(_chunks(len(images), batch_size))

    def chunk_gradient(i: int) -> torch.Tensor:
        s = chunks[i]
        x = images[s].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = _logits(model, x)
            _check_classes(logits, targets[s])
            (grad,) = torch.autograd.grad(logits.gather(1, targets[s, None]).sum(), x)
        return grad

    return torch.cat(shard_map(chunk_gradient, len(chunks))).to(images.device)


def baseline_images(images: torch.Tensor, baseline: str = "black", *, sigma: float | None = None,
                    seed: int = 0) -> torch.Tensor:
    """The reference images of a perturbation: ``black`` (zeros), ``blur`` (a Gaussian blur of sigma px, default
    min(H, W) / 8) or ``noise`` (uniform [0, 1], seeded). (B, 3, H, W) -> (B, 3, H, W)."""
    if baseline == "black":
        return torch.zeros_like(images)
    if baseline == "blur":
        from nnfeat.imageops import gaussian_blur

        return gaussian_blur(images, float(sigma or min(images.shape[-2:]) / 8)).clamp(0, 1)
    if baseline == "noise":
        g = torch.Generator().manual_seed(int(seed))
        return torch.rand(images.shape, generator=g).to(images.device, images.dtype)
    raise NnfeatError(f"unknown baseline '{baseline}': use {', '.join(BASELINES)}")


# -- gradient methods -------------------------------------------------------------------------------------
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
    """Occlusion maps (B, H, W): logit(x) - logit(x with a window set to the baseline), averaged over the
    windows covering each pixel. ``window`` default min(H, W) // 8, ``stride`` default window // 2. Every
    (image, window) pair is one image of a batched pass."""
    b, _, h, w = images.shape
    window = int(window or max(1, min(h, w) // 8))
    stride = int(stride or max(1, window // 2))
    if window < 1 or stride < 1 or window > min(h, w):
        raise NnfeatError(f"occlusion window must be 1..{min(h, w)} px and stride >= 1; got {window}, {stride}")
    masks = _window_masks(h, w, window, stride, images.device)  # (P, H, W)
    p = len(masks)
    base = baseline_images(images, baseline, sigma=sigma, seed=seed)
    clean = _logits(model, images).gather(1, targets[:, None])[:, 0]
    chunks = list(_chunks(b * p, batch_size))

    def chunk_drops(c: int) -> torch.Tensor:
        idx = torch.arange(chunks[c].start, chunks[c].stop, device=images.device)
        i, j = idx // p, idx % p
        m = masks[j].unsqueeze(1)
        batch = images[i] * (1 - m) + base[i] * m
        return clean[i] - _logits(model, batch).gather(1, targets[i, None])[:, 0]

    drops = torch.cat(shard_map(chunk_drops, len(chunks))).to(images.device).view(b, p)
    return torch.einsum("bp,phw->bhw", drops, masks) / masks.sum(0).clamp_min(1)


# -- class activation maps --------------------------------------------------------------------------------
def _probe_spatial_layers(model: nn.Module, size: Sequence[int]) -> list[tuple[str, bool]]:
    """(name, whether the top logit's gradient reaches its spatial positions) of every module whose output is a
    map with more than one position or a token sequence, in the order the modules finish in one forward pass of
    a grey image of ``size`` (one backward pass from the arg-max logit; token layers folded, extra tokens out)."""
    from nnfeat.analysis.tokens import fold_tokens

    root = layer_root(model)
    aspect = size[0] / size[1]
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def make(name):
        def hook(_m, _i, out):
            out = out[0] if isinstance(out, (tuple, list)) and out else out
            if torch.is_tensor(out) and name not in seen and (out.dim() == 3 or (
                    out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1  # a map shaped like the image, not
                    and abs(math.log((out.shape[-2] / out.shape[-1]) / aspect)) < math.log(1.5))):  # (B,h,N,d)
                seen[name] = out
        return hook

    try:
        for name, module in root.named_modules():
            if name:
                handles.append(module.register_forward_hook(make(name)))
        device = next((t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
        x = torch.full((1, 3, *size), 0.5, device=device, requires_grad=True)
        with torch.enable_grad():
            out = model(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            names = [n for n, t in seen.items() if t.requires_grad]
            grads = torch.autograd.grad(out.flatten(1).max(1).values.sum(), [seen[n] for n in names],
                                        allow_unused=True) if names else []
    finally:
        for handle in handles:
            handle.remove()
    reached = {}
    for name, grad in zip(names, grads):
        if grad is not None and grad.dim() == 3:
            try:
                grad = fold_tokens(grad, model, size)
            except NnfeatError:
                grad = None
        reached[name] = grad is not None and bool(grad.abs().amax() > 0)
    return [(name, reached.get(name, False)) for name in seen]


def default_cam_layer(model: nn.Module, size: Sequence[int] | None = None) -> str:
    """The last spatial layer before the head: the last layer, in forward order, whose output is a map (h * w > 1)
    or a token sequence and whose positions the top logit's gradient reaches (for a CIFAR ResNet ``layer3``; for a
    class-token ViT not the final norm, whose patch tokens the head never reads, but the last block's input)."""
    size = tuple(size or getattr(model, "input_size", (224, 224)))
    layers = _probe_spatial_layers(model, size)
    if not layers:
        raise NnfeatError("the model has no layer with a spatial map or tokens: CAM methods need one (pass --layer)")
    reached = [name for name, ok in layers if ok]
    return (reached or [layers[-1][0]])[-1]


def _layer_act_and_grad(model, images, targets, layer: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, h, w) activation of ``layer`` and d logit[target] / d activation (token layers folded)."""
    from nnfeat.analysis.heatmap import no_spatial_map
    from nnfeat.analysis.tokens import fold_tokens

    chunks = list(_chunks(len(images), batch_size))

    def chunk_act_and_grad(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = chunks[i]
        x = images[s].detach().clone().requires_grad_(True)
        with torch.enable_grad(), ActivationCapture(model, [layer, OUTPUT]) as capture:
            out = capture(x)
            act, logits = out[layer], out[OUTPUT]
            if not (act.dim() == 3 or (act.dim() == 4 and act.shape[-1] * act.shape[-2] > 1)):
                raise no_spatial_map(layer, tuple(act.shape[1:]))
            _check_classes(logits, targets[s])
            (grad,) = torch.autograd.grad(logits.gather(1, targets[s, None]).sum(), act, allow_unused=True)
        grad = torch.zeros_like(act) if grad is None else grad
        if act.dim() == 3:
            act, grad = fold_tokens(act, model, images.shape[-2:]), fold_tokens(grad, model, images.shape[-2:])
        return act.detach().float(), grad.detach().float()

    parts = shard_map(chunk_act_and_grad, len(chunks))  # chunk i on rank i % world under torchrun
    return (torch.cat([a for a, _ in parts]).to(images.device), torch.cat([g for _, g in parts]).to(images.device))


def cam_maps(model, images: torch.Tensor, targets: torch.Tensor, method: str = "gradcam", *,
             layer: str | None = None, batch_size: int = BATCH_SIZE, upsample: bool = True) -> torch.Tensor:
    """A CAM of ``layer`` (default :func:`default_cam_layer`): (B, 3, H, W) -> (B, H, W) (``upsample``, bilinear)
    or (B, h, w) at the layer's grid. With A the (B, C, h, w) maps and G = d logit / d A:

    * gradcam: ReLU(sum_c mean_hw(G_c) A_c);
    * gradcam++: weights sum_hw(a_c * ReLU(G_c)), a = G^2 / (2 G^2 + sum_hw(A_c) G^3) (exp-score closed form);
    * layercam: ReLU(sum_c ReLU(G_c) A_c) (per position);
    * xgradcam: ReLU(sum_c (sum_hw(G_c A_c) / sum_hw(A_c)) A_c).
    """
    layer = layer or default_cam_layer(model, images.shape[-2:])
    a, g = _layer_act_and_grad(model, images, targets, layer, batch_size)
    if method == "gradcam":
        cam = (g.mean((2, 3), keepdim=True) * a).sum(1)
    elif method == "gradcam++":
        g2 = g.square()
        denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g2 * g
        alpha = torch.where(denom.abs() > 1e-12, g2 / denom.where(denom.abs() > 1e-12, torch.ones_like(denom)),
                            torch.zeros_like(g))
        cam = ((alpha * g.clamp_min(0)).sum((2, 3), keepdim=True) * a).sum(1)
    elif method == "layercam":
        cam = (g.clamp_min(0) * a).sum(1)
    elif method == "xgradcam":
        w = (g * a).sum((2, 3), keepdim=True) / (a.sum((2, 3), keepdim=True) + 1e-7)
        cam = (w * a).sum(1)
    else:
        raise NnfeatError(f"unknown CAM method '{method}': use {', '.join(CAM_METHODS)}")
    cam = cam.clamp_min(0)
    if upsample:
        cam = F.interpolate(cam[:, None], size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    return cam


def edge_map(images: torch.Tensor) -> torch.Tensor:
    """The model-independent control: Sobel gradient magnitude of the luma, (B, 3, H, W) -> (B, H, W)."""
    import kornia

    from nnfeat.imageops import luma

    return kornia.filters.sobel(luma(images.float()))[:, 0]


# -- the one entry point ----------------------------------------------------------------------------------
_OPTIONS = {
    "smoothgrad": {"samples", "noise", "seed"}, "smoothgrad-sq": {"samples", "noise", "seed"},
    "vargrad": {"samples", "noise", "seed"}, "integrated-gradients": {"alphas", "baseline", "sigma", "seed"},
    "occlusion": {"window", "stride", "baseline", "sigma", "seed"},
}


def saliency_maps(model, images: torch.Tensor, targets: torch.Tensor | None = None, method: str = "gradient", *,
                  layer: str | None = None, **options) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] -> (B, H, W) float maps at input resolution (signed where the method is);
    targets (B,) class indices, None = the predicted class.

    ``layer``: the CAM methods' layer (default :func:`default_cam_layer`; an error for other methods).
    ``options`` (each method takes only its own, plus ``batch_size``, images per pass, default 256):
    smoothgrad/-sq/vargrad: ``samples`` (16), ``noise`` (0.15, the std of the Gaussian noise on [0, 1] images),
    ``seed``; integrated-gradients: ``alphas`` (32), ``baseline`` (black|blur|noise or a tensor), ``sigma`` (blur
    px), ``seed``; occlusion: ``window``, ``stride``, ``baseline``, ``sigma``, ``seed``.
    """
    check_method(method)
    if images.dim() != 4 or images.shape[1] != 3:
        raise NnfeatError(f"images must have shape (B, 3, H, W); got {tuple(images.shape)}")
    batch_size = int(options.pop("batch_size", BATCH_SIZE))
    unknown = set(options) - _OPTIONS.get(method, set())
    if unknown:
        allowed = ", ".join(sorted(_OPTIONS.get(method, set()) | {"batch_size"}))
        raise NnfeatError(f"{method} takes no option {', '.join(sorted(unknown))} (its options: {allowed})")
    if layer is not None and method not in CAM_METHODS:
        raise NnfeatError(f"--layer is for the CAM methods ({', '.join(CAM_METHODS)}); {method} works on the input")
    images = images.detach().float()
    if method == "edge":
        return edge_map(images)
    targets = resolve_targets(model, images, targets, batch_size)
    if method in CAM_METHODS:
        return cam_maps(model, images, targets, method, layer=layer, batch_size=batch_size)
    if method == "gradient":
        return input_gradients(model, images, targets, batch_size).sum(1)
    if method == "gradient-x-input":
        return (input_gradients(model, images, targets, batch_size) * images).sum(1)
    if method in ("smoothgrad", "smoothgrad-sq", "vargrad"):
        return _smoothgrad(model, images, targets, method, batch_size=batch_size, **options)
    if method == "integrated-gradients":
        return integrated_gradients(model, images, targets, batch_size=batch_size, **options).sum(1)
    return occlusion(model, images, targets, batch_size=batch_size, **options)


__all__ = ["METHODS", "GRADIENT_METHODS", "CAM_METHODS", "CONTROL_METHODS", "SIGNED_METHODS", "RANK_BY_ABS",
           "BASELINES", "check_method", "parse_methods", "saliency_maps", "predicted_classes", "resolve_targets",
           "input_gradients", "baseline_images", "integrated_gradients", "occlusion", "cam_maps",
           "default_cam_layer", "edge_map"]
