"""Forward hooks on exactly the layers an objective needs, with early exit.

``ActivationCapture`` is a context manager. Inside it, ``capture(images)`` runs the model and returns
``{layer: activation}``. The forward pass stops as soon as the deepest requested layer has fired, so
no work is done past it. Hooks are removed on exit, also on error.

Layer names are the network's dotted module names (``layer3.1.conv2``), ``output`` for the network's
output, ``name#k`` for the k-th call (0-based) of a module called several times in one forward pass
(a shared ``ReLU``; a plain name means the first call) and ``name[i]`` for element i of a module that
returns a tuple (attention modules return ``(output, weights)``; a plain name means element 0). See
:mod:`nnfeat.layouts`. For an nnfeat ``Model`` the names are those of its wrapped network ``model.net``;
for any other ``nn.Module``, its own.

This module depends on ``torch.nn`` and the leaf modules only, so every stage can use it.

Each captured activation is the module's own output. Downstream code gets a copy, so a later in-place
op (``ReLU(inplace=True)``, ``out += identity``) cannot overwrite the captured value, and gradients flow
through the captured tensor.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nnfeat.errors import NnfeatError, unknown_layer
from nnfeat.layouts import OUTPUT, parse_layer_ref


class _StopForward(Exception):
    """Raised inside a hook once every requested activation is captured."""


def layer_root(model: nn.Module) -> nn.Module:
    """The module whose dotted names layer references use: an nnfeat ``Model``'s network, else ``model``."""
    net = getattr(model, "net", None)
    return net if isinstance(net, nn.Module) else model


def find_module(model: nn.Module, layer: str) -> nn.Module:
    """The submodule a layer reference names (``#call``/``[element]`` ignored), or a one-line error with the
    nearest valid names."""
    base = parse_layer_ref(layer).base
    modules = dict(layer_root(model).named_modules())
    if base == "" or base not in modules:
        raise unknown_layer(layer, [OUTPUT, *(n for n in modules if n)])
    return modules[base]


def check_layer(model: nn.Module, layer: str) -> None:
    """Raise a one-line error unless ``layer`` is :data:`OUTPUT` or names a submodule of ``model``."""
    if layer != OUTPUT:
        find_module(model, layer)


class ActivationCapture:
    """Capture the activations of ``layers`` of ``model`` (see the module docstring).

    Usage::

        with ActivationCapture(model, ["layer3", "output"]) as capture:
            acts = capture(images)   # images (B, 3, H, W) in [0,1]
            acts["layer3"]           # (B, 64, 8, 8)
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        self.need_output = OUTPUT in self.layers
        # (module name, call index) -> [(requested layer string, tuple element)] ("relu" and "relu#0" are one call)
        self._wanted: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for layer in self.layers:
            if layer == OUTPUT:
                continue
            check_layer(model, layer)
            ref = parse_layer_ref(layer)
            self._wanted.setdefault((ref.base, ref.call), []).append((layer, ref.element))
        self._handles: list = []
        self._tangents: dict[str, torch.Tensor] = {}
        self._acts: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self._pending = 0

    def __enter__(self) -> "ActivationCapture":
        try:
            for base in dict.fromkeys(b for b, _ in self._wanted):
                module = find_module(self.model, base)
                self._handles.append(module.register_forward_hook(self._make_hook(base)))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook this object registered."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, base: str):
        def hook(_module, _inputs, output):
            call = self._calls.get(base, 0)
            self._calls[base] = call + 1
            wanted = self._wanted.get((base, call))
            if wanted is None:
                return None
            parts = list(output) if isinstance(output, (tuple, list)) else [output]
            for layer, element in wanted:
                if element >= len(parts) or not torch.is_tensor(parts[element]):
                    kinds = ", ".join(f"[{i}] {type(p).__name__}" for i, p in enumerate(parts))
                    raise NnfeatError(f"layer '{layer}' selects output element {element}, but '{base}' returns "
                                      f"{kinds}: pick a tensor element")
                self._acts[layer] = parts[element]
            self._pending -= 1
            if self._pending == 0 and not self.need_output:
                raise _StopForward
            # Hand downstream a copy of each captured element so later in-place ops leave it intact.
            for element in sorted({e for _, e in wanted}):
                copy = parts[element].clone()
                if self._tangents:  # forward-mode AD from here on (see __call__'s ``tangents``)
                    tangent = next((self._tangents[layer] for layer, e in wanted
                                    if e == element and layer in self._tangents), None)
                    if tangent is not None:
                        copy = torch.autograd.forward_ad.make_dual(copy, tangent)
                parts[element] = copy
            if isinstance(output, tuple):
                return tuple(parts)
            if isinstance(output, list):
                return parts
            return parts[0]

        return hook

    def __call__(self, images: torch.Tensor, tangents: dict[str, torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
        """Run the model on (B, 3, H, W) images in [0,1]; return ``{layer: activation}``.

        ``tangents``: ``{layer: tensor shaped like its activation}``, for forward-mode AD inside
        ``torch.autograd.forward_ad.dual_level()``: downstream of ``layer`` the network runs on a dual
        tensor, so ``forward_ad.unpack_dual(acts["output"]).tangent`` is the Jacobian-vector product of
        the output with the tangent (one pass for every output unit at once).
        """
        if not self._handles and self._wanted:
            raise RuntimeError("ActivationCapture must be used as a context manager")
        self._tangents = dict(tangents or {})
        self._acts = {}
        self._calls = {}
        self._pending = len(self._wanted)
        try:
            out = self.model(images)
            if self.need_output:
                self._acts[OUTPUT] = out[0] if isinstance(out, (tuple, list)) else out
        except _StopForward:
            pass
        if len(self._acts) != len(self.layers):
            missing = [layer for layer in self.layers if layer not in self._acts]
            detail = ", ".join(f"{m} (called {self._calls.get(parse_layer_ref(m).base, 0)} times)" for m in missing)
            raise NnfeatError(f"layer(s) not reached in the forward pass: {detail}")
        return self._acts
