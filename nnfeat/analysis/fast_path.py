"""The network a dataset pass runs: what made rendering fast, applied to heatmaps, saliency, uncertainty and the
activation collection.

:func:`fast_network` ``(model, keep=layers)`` -> a :class:`FastPath`: its ``network`` is an
:class:`~nnfeat.models.base.Model` computing the same function as ``model`` (outputs and input gradients equal
within float rounding), with

* BatchNorm folded into the convolution that feeds it (:func:`nnfeat.models.fold.folded_copy`), except for the
  convolutions named in ``keep``, whose own (pre-BatchNorm) outputs the pass reads. A kept BatchNorm layer is
  folded into an ``nn.Identity`` of the same name, whose output is the BatchNorm's: hooks on it see what the user
  asked to see;
* channels-last input on the CPU for convolutional networks (:func:`nnfeat.device.default_channels_last`: 8-20 %
  faster per step in ``experiments/bench_render.py``): its ``preprocess`` hands the network a channels-last
  tensor. A network that rejects channels-last (a ``.view`` on a conv output) is found by one probe forward of one
  image, once per model, and runs contiguous, as the render loop's ``_first_forward`` does;
* float32 (``precision`` ``"fp32"``). bf16 autocast is not used by the dataset passes: on a CPU without native
  bf16 (this project's test machines) :func:`nnfeat.device.default_autocast` never chooses it, and attribution
  maps must match float32 ones (r >= 0.9999), which bf16's 8-bit mantissa does not promise for gradients.

The forward stops after the deepest captured layer wherever the output is not needed: that is
:class:`nnfeat.hooks.ActivationCapture`'s ``_StopForward``, which every capture of the passes uses.

Built once per (model, kept layers, device, channels-last wish) and cached on the model: no re-fold per batch;
built again when the model's weights changed since (:func:`nnfeat.models.fold.weights_version`).
``record()`` says what ran, for each result's JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from nnfeat.device import default_channels_last
from nnfeat.models.base import Model
from nnfeat.models.fold import folded_copy, weights_version

PRECISION = "fp32"


class ChannelsLastModel(Model):
    """A :class:`Model` whose network gets its normalized input (B, C, H, W) in channels-last memory format.
    Values, shapes and gradients are those of the plain model; only the memory layout the convolutions see
    changes (the gradient with respect to the caller's images comes back in the caller's layout)."""

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return super().preprocess(images).contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class FastPath:
    """``network``: the model to run for the pass; ``batchnorm_folded``: how many BatchNorms were folded;
    ``channels_last``: whether the network sees channels-last input; ``precision``: ``fp32``."""

    network: Model
    batchnorm_folded: int
    channels_last: bool
    precision: str = PRECISION

    def record(self) -> dict:
        """What ran, for a result's JSON: ``{"batchnorm_folded": bool, "folded_layers": n, "channels_last":
        bool, "precision": "fp32"}``."""
        return {"batchnorm_folded": self.batchnorm_folded > 0, "folded_layers": self.batchnorm_folded,
                "channels_last": self.channels_last, "precision": self.precision}


def _batchnorm_count(net: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def _same_contract(model: Model, net: nn.Module, cls: type = Model) -> Model:
    """A ``cls`` around ``net`` with ``model``'s input contract (normalization, size, channels, classes, spec,
    name and weights); ``net`` is shared, not copied."""
    made = cls(net, name=model.name, mean=model.mean.flatten().tolist(), std=model.std.flatten().tolist(),
               input_size=model.input_size, in_channels=model.in_channels, classes=model.classes,
               weights=getattr(model, "weights", None), card=getattr(model, "card", None))
    made.spec = model.spec
    return made.to(model.device)


@torch.no_grad()
def _accepts_channels_last(network: Model) -> bool:
    """One probe forward of one image at the native size: False when the network raises on channels-last
    input (e.g. ``.view`` on a conv output: a RuntimeError; a model's own layout check may raise anything). A
    network broken for any input then runs contiguous and fails there with its own error."""
    probe = torch.full((1, 3, *network.input_size), 0.5, device=network.device)
    try:
        network(probe)
    except Exception:  # noqa: BLE001 - reason: any refusal of the layout means "run contiguous"
        return False
    return True


def fast_network(model: Model, keep: Sequence[str] = (), *, fold: bool = True,
                 channels_last: bool | None = None) -> FastPath:
    """The network to run for a dataset pass of ``model`` (see the module docstring), cached on ``model``.

    ``keep``: layer references whose outputs the pass reads (a conv named here stays unfolded; ``#k`` / ``[i]``
    suffixes ignored); ``fold``: fold BatchNorm (default); ``channels_last``: None = where
    :func:`~nnfeat.device.default_channels_last` says (CPU and a conv network), False = never (e.g. MC dropout,
    whose random masks are drawn in memory order, so the layout would change which units a seed drops).
    """
    wish = default_channels_last(model.device, model) if channels_last is None else bool(channels_last)
    kept = tuple(sorted({str(k) for k in keep}))
    cache = model.__dict__.setdefault("_fast_paths", {})
    # keyed by the network too: a shallow copy of the model around another network (a distribution_model) shares
    # this cache; an entry holds its source network, so a reused id never hits
    key = (kept, str(model.device), bool(fold), wish, id(model.net))
    version = weights_version(model.net)  # weights changed in place since (a fine-tune): fold again
    if key in cache and cache[key][0] is model.net and cache[key][2] == version:
        return cache[key][1]
    folded = folded_copy(model, keep=kept) if fold else model
    count = _batchnorm_count(model.net) - _batchnorm_count(folded.net)
    network, used = (folded if folded is model else _same_contract(model, folded.net)), False
    if wish:
        candidate = _same_contract(model, folded.net, ChannelsLastModel)
        if _accepts_channels_last(candidate):
            network, used = candidate, True
    made = FastPath(network=network, batchnorm_folded=count, channels_last=used)
    cache[key] = (model.net, made, version)
    return made


__all__ = ["FastPath", "ChannelsLastModel", "fast_network", "PRECISION"]
