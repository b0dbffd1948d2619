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

Pre-activations: for the layers in ``pre_relu`` whose output is the result of a ReLU call (an ``nn.ReLU``
module, ``F.relu``, ``torch.relu``, ``Tensor.relu`` or an in-place form, called inside the layer's forward),
the capture also returns that call's input under :func:`pre_relu_key` (a :class:`TorchFunctionMode` records
the ReLU calls while such a layer runs; an in-place ReLU's input is copied first). A layer whose output is
not a ReLU output gets no such entry; :attr:`ActivationCapture.pre_relu_found` says which are which.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from nnfeat.errors import NnfeatError, unknown_layer
from nnfeat.layouts import OUTPUT, parse_layer_ref


#: Every call form of ReLU: what a TorchFunctionMode sees for ``nn.ReLU``, ``F.relu``, ``torch.relu``,
#: ``Tensor.relu`` and their in-place forms.
RELU_FUNCS = frozenset({F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu_})
_INPLACE_RELU = frozenset({torch.relu_, torch.Tensor.relu_, F.relu_})


def pre_relu_key(layer: str) -> str:
    """The key of ``layer``'s pre-activation (the input of the ReLU that made its output; the same shape as the
    output, e.g. (B, C, H, W)) in the captured acts."""
    return f"{layer} (pre-ReLU)"


def _is_inplace(func, args: tuple, kwargs: dict) -> bool:
    """Whether this ReLU call overwrites its input (``relu_``, ``F.relu(x, inplace=True)``,
    ``nn.ReLU(inplace=True)``)."""
    return func in _INPLACE_RELU or bool(kwargs.get("inplace")) or (func is F.relu and len(args) > 1 and bool(args[1]))


class _ReluRecorder(TorchFunctionMode):
    """While a ``pre_relu`` layer runs, remember each ReLU call's output and input: ``{id(out): (out, input)}``.

    Outside those layers every call passes straight through. An in-place call's input is cloned first (its output
    IS the input tensor, overwritten)."""

    def __init__(self) -> None:
        super().__init__()
        self.active = 0  # how many pre_relu layers are running now (set by the capture's hooks)
        self.calls: dict[int, tuple[torch.Tensor, torch.Tensor, bool]] = {}  # id(out) -> (out, input, copied)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in RELU_FUNCS or not self.active or not args or not torch.is_tensor(args[0]):
            return func(*args, **kwargs)
        inplace = _is_inplace(func, args, kwargs)
        before = args[0].clone() if inplace else args[0]
        out = func(*args, **kwargs)
        if torch.is_tensor(out):
            self.calls[id(out)] = (out, before, inplace)
        return out


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

    ``pre_relu``: layers (among ``layers``) whose pre-activation is captured too, under ``pre_relu_key(layer)``
    (B, 64, 8, 8) where the layer's output is a ReLU's result (see the module docstring and
    :attr:`pre_relu_found`).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], pre_relu: Sequence[str] = ()) -> None:
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        # layers whose pre-activation is wanted too (the network's output never has one: no hook sees it)
        self.pre_relu = [layer for layer in dict.fromkeys(pre_relu) if layer != OUTPUT]
        unknown = [layer for layer in self.pre_relu if layer not in self.layers]
        if unknown:
            raise ValueError(f"pre_relu layers must be captured layers too; not among them: {unknown}")
        self._pre_bases = {parse_layer_ref(layer).base for layer in self.pre_relu}
        self._recorder = _ReluRecorder() if self.pre_relu else None
        #: After each call: ``{layer: True where its output was a ReLU output (its pre-activation is in the acts
        #: under pre_relu_key(layer)), False where it was not}`` for the ``pre_relu`` layers.
        self.pre_relu_found: dict[str, bool] = {}
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
                if base in self._pre_bases:
                    self._handles.append(module.register_forward_pre_hook(self._enter_pre_relu_layer))
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

    def _enter_pre_relu_layer(self, _module, _inputs) -> None:
        self._recorder.active += 1

    def _record_pre_relu(self, layer: str, value: torch.Tensor) -> None:
        """Store the input of the ReLU call that produced ``value`` (``layer``'s output), if one did."""
        call = self._recorder.calls.get(id(value))
        found = call is not None and call[0] is value
        self.pre_relu_found[layer] = found
        if found:
            before, copied = call[1], call[2]
            self._acts[pre_relu_key(layer)] = before if copied else before.clone()  # safe from later in-place ops

    def _make_hook(self, base: str):
        def hook(_module, _inputs, output):
            pre_layer = base in self._pre_bases
            if pre_layer:
                self._recorder.active -= 1
            call = self._calls.get(base, 0)
            self._calls[base] = call + 1
            wanted = self._wanted.get((base, call))
            if wanted is None:
                if pre_layer and not self._recorder.active:
                    self._recorder.calls.clear()
                return None
            parts = list(output) if isinstance(output, (tuple, list)) else [output]
            for layer, element in wanted:
                if element >= len(parts) or not torch.is_tensor(parts[element]):
                    kinds = ", ".join(f"[{i}] {type(p).__name__}" for i, p in enumerate(parts))
                    raise NnfeatError(f"layer '{layer}' selects output element {element}, but '{base}' returns "
                                      f"{kinds}: pick a tensor element")
                self._acts[layer] = parts[element]
                if pre_layer and layer in self.pre_relu:
                    self._record_pre_relu(layer, parts[element])
            if pre_layer and not self._recorder.active:
                self._recorder.calls.clear()
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
                relu_call = self._recorder.calls.get(id(parts[element])) if self._recorder is not None else None
                if relu_call is not None and relu_call[0] is parts[element]:  # the copy is that ReLU's output too
                    self._recorder.calls[id(copy)] = (copy, *relu_call[1:])
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
        self.pre_relu_found = {layer: False for layer in self.pre_relu}
        recording = self._recorder if self._recorder is not None else contextlib.nullcontext()
        try:
            with recording:
                out = self.model(images)
            if self.need_output:
                self._acts[OUTPUT] = out[0] if isinstance(out, (tuple, list)) else out
        except _StopForward:
            pass
        finally:
            if self._recorder is not None:
                self._recorder.active = 0
                self._recorder.calls.clear()
        missing = [layer for layer in self.layers if layer not in self._acts]
        if missing:
            detail = ", ".join(f"{m} (called {self._calls.get(parse_layer_ref(m).base, 0)} times)" for m in missing)
            raise NnfeatError(f"layer(s) not reached in the forward pass: {detail}")
        return self._acts
