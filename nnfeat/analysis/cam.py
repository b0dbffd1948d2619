"""Class activation maps (tensors in, tensors out): the CAM family as one base and one weighting step each.

With A the (B, C, h, w) activation of a spatial layer and G = d score / d A (the target's score,
:mod:`nnfeat.targets`: by default the target class's logit), every CAM is
ReLU(sum_c W_c * A_c), upsampled bilinearly to the input; the members differ only in the weights W
(:meth:`CAM.weights`, (B, C, 1, 1) per channel or (B, C, h, w) per position):

* ``gradcam`` (Selvaraju et al. 2017): W_c = mean_hw(G_c);
* ``gradcam++`` (Chattopadhay et al. 2018): W_c = sum_hw(a_c * ReLU(G_c)), a = G^2 / (2 G^2 + sum_hw(A_c) G^3)
  (the exp-score closed form);
* ``layercam`` (Jiang et al. 2021): W = ReLU(G), per position;
* ``xgradcam`` (Fu et al. 2020): W_c = sum_hw(G_c A_c) / sum_hw(A_c).

Token layers (B, N, d) are folded onto their patch grid (:func:`nnfeat.analysis.tokens.fold_tokens`). The layer
defaults to :func:`default_cam_layer`. A new member is a subclass with its ``weights`` registered in :data:`CAMS`.
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnfeat.analysis.attribution import BATCH_SIZE, chunks, output_and_acts
from nnfeat.analysis.heatmap import no_spatial_map
from nnfeat.analysis.registry import Registry
from nnfeat.analysis.tokens import fold_tokens
from nnfeat.distributed import shard_map
from nnfeat.errors import NnfeatError
from nnfeat.hooks import layer_root
from nnfeat.targets import Target, as_target, select_output, target_scores

#: the CAM family by name (registration order is page order)
CAMS = Registry("CAM method")


# -- the layer ---------------------------------------------------------------------------------------------
def _probe_output(out, part: str | None) -> torch.Tensor:
    """The tensor of a probe's output the top score is read from: ``part`` of a dict / tuple output; else the
    output, element 0 of a tuple, or the first tensor of a dict."""
    if part is not None:
        return select_output(out, Target(part=part))
    if isinstance(out, dict):
        return next(v for v in out.values() if torch.is_tensor(v))
    return out[0] if isinstance(out, (tuple, list)) else out


def _probe_spatial_layers(model: nn.Module, size: Sequence[int], part: str | None = None) -> list[tuple[str, bool]]:
    """(name, whether the top logit's gradient reaches its spatial positions) of every module whose output is a
    map with more than one position or a token sequence, in the order the modules finish in one forward pass of
    a grey image of ``size`` (one backward pass from the arg-max logit of output ``part``, see
    :func:`_probe_output`; token layers folded, extra tokens out)."""
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
            out = _probe_output(model(x), part)
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


def default_cam_layer(model: nn.Module, size: Sequence[int] | None = None, part: str | None = None) -> str:
    """The last spatial layer before the head: the last layer, in forward order, whose output is a map (h * w > 1)
    or a token sequence and whose positions the top logit's gradient reaches (for a CIFAR ResNet ``layer3``; for a
    class-token ViT not the final norm, whose patch tokens the head never reads, but the last block's input).
    ``part``: the dict key / tuple element of the output the target explains (default: the first)."""
    size = tuple(size or getattr(model, "input_size", (224, 224)))
    layers = _probe_spatial_layers(model, size, part)
    if not layers:
        raise NnfeatError("the model has no layer with a spatial map or tokens: CAM methods need one (pass --layer)")
    reached = [name for name, ok in layers if ok]
    return (reached or [layers[-1][0]])[-1]


def layer_act_and_grad(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | Target, layer: str,
                       batch_size: int = BATCH_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, h, w) activation of ``layer`` and d score / d activation (token layers folded); ``targets``: (B,)
    classes or a resolved :class:`~nnfeat.targets.Target`."""
    parts = list(chunks(len(images), batch_size))
    targets = as_target(targets)

    def chunk_act_and_grad(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = parts[i]
        x = images[s].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            output, acts = output_and_acts(model, x, [layer])
            act = acts[layer]
            if not (act.dim() == 3 or (act.dim() == 4 and act.shape[-1] * act.shape[-2] > 1)):
                raise no_spatial_map(layer, tuple(act.shape[1:]))
            score = target_scores(output, targets[s])
            (grad,) = torch.autograd.grad(score.sum(), act, allow_unused=True)
        grad = torch.zeros_like(act) if grad is None else grad
        if act.dim() == 3:
            act, grad = fold_tokens(act, model, images.shape[-2:]), fold_tokens(grad, model, images.shape[-2:])
        return act.detach().float(), grad.detach().float()

    done = shard_map(chunk_act_and_grad, len(parts))  # chunk i on rank i % world under torchrun
    return (torch.cat([a for a, _ in done]).to(images.device), torch.cat([g for _, g in done]).to(images.device))


# -- the family --------------------------------------------------------------------------------------------
class CAM:
    """A class activation map: ReLU(sum_c W * A) of one layer, W from :meth:`weights` (the one step a member
    overrides)."""

    name: ClassVar[str] = ""

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) activations and their gradients -> W, (B, C, 1, 1) or (B, C, h, w)."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor | Target, *,
                 layer: str | None = None,
                 batch_size: int = BATCH_SIZE, upsample: bool = True) -> torch.Tensor:
        """(B, 3, H, W) images, (B,) classes or a resolved Target -> (B, H, W) maps (``upsample``, bilinear) or
        (B, h, w) at the layer's grid."""
        layer = layer or default_cam_layer(model, images.shape[-2:], getattr(targets, "part", None))
        a, g = layer_act_and_grad(model, images, targets, layer, batch_size)
        cam = (self.weights(a, g) * a).sum(1).clamp_min(0)
        if upsample:
            cam = F.interpolate(cam[:, None], size=tuple(images.shape[-2:]), mode="bilinear",
                                align_corners=False)[:, 0]
        return cam


@CAMS.register("gradcam")
class GradCAM(CAM):
    """Grad-CAM: each channel weighted by its spatially averaged gradient."""

    def weights(self, acts, grads):
        return grads.mean((2, 3), keepdim=True)


@CAMS.register("gradcam++")
class GradCAMPlusPlus(CAM):
    """Grad-CAM++: each channel weighted by its positive gradients, each scaled by the closed-form alpha."""

    def weights(self, acts, grads):
        g2 = grads.square()
        denom = 2 * g2 + acts.sum((2, 3), keepdim=True) * g2 * grads
        alpha = torch.where(denom.abs() > 1e-12, g2 / denom.where(denom.abs() > 1e-12, torch.ones_like(denom)),
                            torch.zeros_like(grads))
        return (alpha * grads.clamp_min(0)).sum((2, 3), keepdim=True)


@CAMS.register("layercam")
class LayerCAM(CAM):
    """LayerCAM: every position weighted by its own positive gradient."""

    def weights(self, acts, grads):
        return grads.clamp_min(0)


@CAMS.register("xgradcam")
class XGradCAM(CAM):
    """XGrad-CAM: each channel weighted by its activation-weighted mean gradient."""

    def weights(self, acts, grads):
        return (grads * acts).sum((2, 3), keepdim=True) / (acts.sum((2, 3), keepdim=True) + 1e-7)


for _name in CAMS:
    CAMS[_name].name = _name


def cam_maps(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | Target, method: str = "gradcam", *,
             layer: str | None = None, batch_size: int = BATCH_SIZE, upsample: bool = True) -> torch.Tensor:
    """The CAM ``method`` (see the module docstring) of ``layer`` (default :func:`default_cam_layer`):
    (B, 3, H, W) -> (B, H, W) (``upsample``, bilinear) or (B, h, w) at the layer's grid."""
    if method not in CAMS:
        raise NnfeatError(f"unknown CAM method '{method}': use {', '.join(CAMS)}")
    return CAMS[method]()(model, images, targets, layer=layer, batch_size=batch_size, upsample=upsample)


__all__ = ["CAMS", "CAM", "GradCAM", "GradCAMPlusPlus", "LayerCAM", "XGradCAM", "cam_maps", "default_cam_layer",
           "layer_act_and_grad"]
