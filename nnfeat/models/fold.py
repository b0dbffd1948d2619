"""Exact rewrites of a frozen eval-mode network that make render steps cheaper.

:func:`folded_copy` folds each BatchNorm into the convolution that feeds it. The result computes the
same function (outputs and input gradients equal within float tolerance). A convolution whose own output
an objective reads is left unfolded, so its hooks still see the pre-BatchNorm value.
"""

from __future__ import annotations

import copy
import itertools
from typing import Sequence

import torch
from torch import nn

from nnfeat.models.base import Model


def _conv_bn_pairs(net: nn.Module) -> list[tuple[str, str]]:
    """(conv name, bn name) pairs where the BN directly consumes the conv's output in a probe forward.

    Candidates are a Conv2d registered right before a BatchNorm2d of matching width in the same parent;
    a probe forward confirms the BN's input IS the conv's output tensor.
    """
    candidates: list[tuple[str, str]] = []
    for parent_name, parent in net.named_modules():
        children = list(parent.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and a.out_channels == b.num_features:
                prefix = f"{parent_name}." if parent_name else ""
                candidates.append((prefix + a_name, prefix + b_name))
    return candidates


def _verify_pairs(model: Model, net: nn.Module, candidates: list[tuple[str, str]], size) -> list[tuple[str, str]]:
    modules = dict(net.named_modules())
    conv_out: dict[str, list[int]] = {}
    bn_in: dict[str, list[int]] = {}
    handles = []
    try:
        for conv_name, bn_name in candidates:
            handles.append(modules[conv_name].register_forward_hook(
                lambda m, i, o, n=conv_name: conv_out.setdefault(n, []).append(id(o))))
            handles.append(modules[bn_name].register_forward_pre_hook(
                lambda m, i, n=bn_name: bn_in.setdefault(n, []).append(id(i[0]))))
        with torch.no_grad():
            probe = torch.full((1, model.in_channels, *size), 0.0, device=model.device)
            net(probe)
    finally:
        for h in handles:
            h.remove()
    return [(c, b) for c, b in candidates if conv_out.get(c) and conv_out.get(c) == bn_in.get(b)]


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d equal to ``bn(conv(x))`` for an eval-mode BN."""
    fused = copy.deepcopy(conv)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
    fused.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)
    return fused


def weights_version(net: nn.Module) -> tuple:
    """A key that changes whenever a parameter or buffer of ``net`` is replaced or changed in place (an optimizer
    step, ``load_state_dict``, ``weight.mul_(2)``, a BatchNorm's running statistics updated in train mode): each
    tensor's identity and autograd version counter. Caches of copies derived from the weights compare it, so a
    model fine-tuned in a notebook after a first pass is not run with its old weights. Inference-mode tensors keep
    no version counter: only their identity counts."""
    def version(t: torch.Tensor) -> int:
        try:
            return t._version
        except RuntimeError:  # an inference tensor
            return -1
    return tuple((id(t), version(t)) for t in itertools.chain(net.parameters(), net.buffers()))


def folded_copy(model: Model, keep: Sequence[str] = ()) -> Model:
    """A copy of ``model`` with BatchNorms folded into their convolutions, except convs named in ``keep``.

    The copy is cached on ``model`` per ``keep`` set and remade when the weights changed since
    (:func:`weights_version`). Returns ``model`` itself when nothing folds.
    """
    kept_convs = {k.split("#", 1)[0] for k in keep}
    cache = model.__dict__.setdefault("_folded_cache", {})
    # keyed by the network too: a shallow copy of the model around another network shares this cache (its
    # __dict__); an entry holds its source network, so a reused id never hits
    key = (tuple(sorted(kept_convs)), str(model.device), id(model.net))
    version = weights_version(model.net)
    if key in cache and cache[key][0] is model.net and cache[key][2] == version:
        return cache[key][1]
    candidates = [p for p in _conv_bn_pairs(model.net) if p[0] not in kept_convs]
    pairs = _verify_pairs(model, model.net, candidates, model.input_size) if candidates else []
    if not pairs:
        cache[key] = (model.net, model, version)
        return model
    net = copy.deepcopy(model.net)
    for conv_name, bn_name in pairs:
        conv, bn = net.get_submodule(conv_name), net.get_submodule(bn_name)
        _set_submodule(net, conv_name, fold_conv_bn(conv, bn))
        _set_submodule(net, bn_name, nn.Identity())
    folded = Model(net, name=model.name, mean=model.mean.flatten().tolist(), std=model.std.flatten().tolist(),
                   input_size=model.input_size, in_channels=model.in_channels, classes=model.classes).to(model.device)
    cache[key] = (model.net, folded, version)
    return folded


def _set_submodule(net: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, module)
