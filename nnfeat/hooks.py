"""Forward hooks on exactly the layers an objective needs, with early exit.

``ActivationCapture`` is a context manager. Inside it, ``capture(images)`` runs the model and returns
``{layer: activation}``. The forward pass stops as soon as the deepest requested layer has fired, so
no work is done past it. Hooks are removed on exit, also on error.

Layer names are the network's dotted module names (``layer3.1.conv2``), ``output`` for the network's
output, or ``name#k`` for the k-th call (0-based) of a module called several times in one forward pass
(a shared ``ReLU``). A plain name means the first call.

Each captured activation is the module's own output. Downstream code gets a copy, so a later in-place
op (``ReLU(inplace=True)``, ``out += identity``) cannot overwrite the captured value, and gradients flow
through the captured tensor.
"""

from __future__ import annotations

from typing import Sequence

import torch

from nnfeat.errors import NnfeatError
from nnfeat.models.base import OUTPUT, Model


class _StopForward(Exception):
    """Raised inside a hook once every requested activation is captured."""


def split_call(layer: str) -> tuple[str, int]:
    """``"relu#2"`` -> ``("relu", 2)``; ``"relu"`` -> ``("relu", 0)``."""
    if "#" in layer:
        base, idx = layer.rsplit("#", 1)
        if not idx.isdigit():
            raise NnfeatError(f"bad call index in layer '{layer}': expected NAME#K with K an integer")
        return base, int(idx)
    return layer, 0


class ActivationCapture:
    """Capture the activations of ``layers`` of ``model`` (see the module docstring).

    Usage::

        with ActivationCapture(model, ["layer3", "output"]) as capture:
            acts = capture(images)   # images (B, 3, H, W) in [0,1]
            acts["layer3"]           # (B, 64, 8, 8)
    """

    def __init__(self, model: Model, layers: Sequence[str]) -> None:
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        self.need_output = OUTPUT in self.layers
        # (module name, call index) -> requested layer strings ("relu" and "relu#0" name the same call)
        self._wanted: dict[tuple[str, int], list[str]] = {}
        for layer in self.layers:
            if layer == OUTPUT:
                continue
            model.check_layer(layer)
            self._wanted.setdefault(split_call(layer), []).append(layer)
        self._handles: list = []
        self._tangents: dict[str, torch.Tensor] = {}
        self._acts: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self._pending = 0

    def __enter__(self) -> "ActivationCapture":
        try:
            for base in dict.fromkeys(b for b, _ in self._wanted):
                module = self.model.module(base)
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
            layers = self._wanted.get((base, call))
            if layers is None:
                return None
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            for layer in layers:
                self._acts[layer] = tensor
            self._pending -= 1
            if self._pending == 0 and not self.need_output:
                raise _StopForward
            # Hand downstream a copy so later in-place ops leave the captured value intact.
            copy = tensor.clone()
            if self._tangents:  # forward-mode AD from here on (see __call__'s ``tangents``)
                tangent = next((self._tangents[layer] for layer in layers if layer in self._tangents), None)
                if tangent is not None:
                    copy = torch.autograd.forward_ad.make_dual(copy, tangent)
            if isinstance(output, tuple):
                return (copy, *output[1:])
            if isinstance(output, list):
                return [copy, *output[1:]]
            return copy

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
            detail = ", ".join(f"{m} (called {self._calls.get(split_call(m)[0], 0)} times)" for m in missing)
            raise NnfeatError(f"layer(s) not reached in the forward pass: {detail}")
        return self._acts
