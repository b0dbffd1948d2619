"""Redirected ReLU (Lucid): for the first steps of a render, let gradient reach units stuck below zero.

Inside :class:`RedirectedReLU` (a ``TorchFunctionMode``), every ReLU call -- ``nn.ReLU`` modules,
``F.relu``, ``torch.relu``, ``Tensor.relu`` and their in-place forms -- uses a custom backward: the
normal ReLU gradient where it is non-zero for a batch item; where it is all zero for that item, the
gradient passes through negative inputs too, except where it would push them further down.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from nnfeat.hooks import RELU_FUNCS


class _RedirectedReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        relu_grad = torch.ops.aten.threshold_backward(grad, x, 0)  # grad where x > 0, else 0 (one fused pass)
        if x.dim() == 0:
            return relu_grad
        dims = tuple(range(1, x.dim()))  # reduce in place: reshape would copy a channels-last gradient
        item_has_grad = (relu_grad.amax(dims) > 0) | (relu_grad.amin(dims) < 0)  # (B,); faster than ne().any()
        # On the CPU reading the flag costs nothing, and usually every item has gradient: skip the rest.
        # (On accelerators this would be a host sync every step, so the branch-free form below runs instead.)
        if x.device.type == "cpu" and bool(item_has_grad.all()):
            return relu_grad
        # Redirected: gradient passes where x >= 0; where x < 0 only the part that raises x (grad <= 0)
        # passes, since grad > 0 means gradient descent would push x further down.
        redirected = torch.where(x < 0, grad.clamp(max=0), grad)
        return torch.where(item_has_grad.view(-1, *([1] * (x.dim() - 1))), relu_grad, redirected)


def redirected_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU forward with the redirected backward described in the module docstring."""
    return _RedirectedReLUFn.apply(x)


_RELU_FUNCS = RELU_FUNCS  # every ReLU call form (one definition, shared with the pre-ReLU capture of nnfeat.hooks)


class RedirectedReLU(TorchFunctionMode):
    """Context in which every ReLU call uses :func:`redirected_relu` (in-place calls return a new tensor)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_FUNCS:
            return redirected_relu(args[0])
        return func(*args, **kwargs)
