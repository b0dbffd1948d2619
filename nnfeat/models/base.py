"""The model wrapper: one object that knows a network's input contract and its layer names.

nnfeat images are always RGB in [0, 1], shape (B, 3, H, W). :class:`Model` converts them to what the
wrapped network expects (grey if it takes one channel, then ``(x - mean) / std``), so every other stage
of the pipeline can ignore normalization.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture, check_layer, find_module
from nnfeat.imageops import LUMA
from nnfeat.layouts import OUTPUT, channel_count
from nnfeat.models.spec import InputSpec, infer_channels, linear_size
from nnfeat.units import Units, parse_units

if TYPE_CHECKING:
    from nnfeat.models.registry import ModelCard


class Model(nn.Module):
    """A frozen, eval-mode network plus its input contract.

    Args:
        net: the network. It is put in eval mode and its parameters stop requiring grad.
        name: a short name used in outputs (``render.json``).
        mean, std: per-channel normalization applied to [0,1] input, length ``in_channels``.
        input_size: the native (H, W) input size, or an int for square inputs.
        in_channels: 3 for RGB networks, 1 for grey ones (RGB is converted with Rec. 601 luma).
        classes: optional class names, index-aligned with the logits.
        weights: which weights the network holds: ``"pretrained"``, ``"random"`` (the zoo's seeded
            initialisation), ``"file:PATH sha256:PREFIX"`` (a user's weights file, see
            :mod:`nnfeat.models.checkpoint`), or ``None`` when nnfeat does not know (a user's own network).
        card: the :class:`~nnfeat.models.registry.ModelCard` the model was built from, or ``None``.

    ``spec`` (:class:`~nnfeat.models.spec.InputSpec`) says the same facts and where they came from (the card's,
    or the model's own for a ``Model`` made by user code); :func:`as_model` of a bare module finds them.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        name: str = "model",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_size: int | tuple[int, int] = 224,
        in_channels: int = 3,
        classes: Sequence[str] | None = None,
        weights: str | None = None,
        card: "ModelCard | None" = None,
    ) -> None:
        super().__init__()
        self.net = net.eval()
        self.net.requires_grad_(False)
        self.name = name
        self.in_channels = int(in_channels)
        self.input_size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.classes = list(classes) if classes is not None else None
        self.weights = weights
        self.card = card
        source = "card" if card is not None else "model"
        self.spec = InputSpec(channels=self.in_channels, size=self.input_size,
                              mean=None if mean is None else tuple(mean), std=None if std is None else tuple(std),
                              classes=None if classes is None else tuple(classes), working_size=self.input_size,
                              sources=dict.fromkeys(("channels", "size", "normalize", "classes"), source))
        mean = [0.0] * self.in_channels if mean is None else list(mean)
        std = [1.0] * self.in_channels if std is None else list(std)
        if len(mean) != self.in_channels or len(std) != self.in_channels:
            raise NnfeatError(f"mean/std need {self.in_channels} values for a {self.in_channels}-channel model")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._shape_cache: dict[tuple, dict[str, torch.Size]] = {}

    # ----------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.mean.device

    def train(self, mode: bool = True) -> "Model":  # the wrapped net always stays in eval mode
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0,1] -> (B, in_channels, H, W) normalized network input."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise NnfeatError(f"images must have shape (B, 3, H, W); got {tuple(images.shape)}")
        if self.in_channels == 1 and images.shape[1] == 3:
            images = (images * self.luma).sum(1, keepdim=True)
        elif self.in_channels == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return (images - self.mean) / self.std

    def use_spec(self, spec: InputSpec) -> None:
        """Take ``spec``'s normalization, class names and size (its ``size``, else its ``working_size``) as this
        model's input contract (``spec.channels`` must be :attr:`in_channels`)."""
        count = self.in_channels
        mean = torch.tensor(spec.mean if spec.mean is not None else [0.0] * count, dtype=torch.float32)
        std = torch.tensor(spec.std if spec.std is not None else [1.0] * count, dtype=torch.float32)
        self.mean = mean.view(1, -1, 1, 1).to(self.device)
        self.std = std.view(1, -1, 1, 1).to(self.device)
        self.classes = list(spec.classes) if spec.classes is not None else None
        self.input_size = tuple(spec.size or spec.working_size or self.input_size)
        self._shape_cache.clear()
        self.__dict__.pop("_accepts_size", None)
        self.spec = spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0,1] -> the network's output, e.g. logits (B, classes)."""
        return self.net(self.preprocess(images))

    # ----------------------------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        """Dotted PyTorch names of every submodule of the network, in registration order."""
        return [n for n, _ in self.net.named_modules() if n]

    def module(self, name: str) -> nn.Module:
        """The submodule a layer reference names (``#k`` and ``[i]`` suffixes ignored), or a one-line error."""
        return find_module(self, name)

    def check_layer(self, name: str) -> None:
        """Raise a one-line :class:`NnfeatError` unless ``name`` is a layer of this model."""
        check_layer(self, name)

    def units(self, units: str | Units, size: tuple[int, int] | None = None) -> tuple[Units, list[int]]:
        """Units text (``"layer3:0..15"``, see :mod:`nnfeat.units`) checked against this model at input ``size``
        (default native) -> (the parsed units, their channel list). One-line errors name the valid ranges."""
        parsed = parse_units(units) if isinstance(units, str) else units
        self.check_layer(parsed.layer)
        shape = self.layer_shapes([parsed.layer], size)[parsed.layer]
        return parsed, parsed.channel_list(tuple(shape[1:]))

    def accepts_size(self, size: tuple[int, int]) -> bool:
        """Whether the network runs on inputs of ``size`` (H, W); ViTs with a fixed patch grid take only their
        native size. Probed once per size with one image."""
        size = tuple(size)
        if size == tuple(self.input_size):
            return True
        accepted = self.__dict__.setdefault("_accepts_size", {})
        if size not in accepted:
            try:
                self.layer_shapes([OUTPUT], size)
                accepted[size] = True
            except (AssertionError, RuntimeError, ValueError):
                accepted[size] = False
        return accepted[size]

    def fit(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images as this network can take them: unchanged, or resized (bilinear) to the native
        size when the network takes no other (:meth:`accepts_size`)."""
        if self.accepts_size(tuple(images.shape[-2:])):
            return images
        return torch.nn.functional.interpolate(images, size=tuple(self.input_size), mode="bilinear",
                                               align_corners=False)

    @torch.no_grad()
    def layer_shapes(self, layers: Sequence[str], size: tuple[int, int] | None = None) -> dict[str, torch.Size]:
        """Output shape of each requested layer for a batch of one image of ``size`` (default native).

        Returns ``{layer: torch.Size([1, C, H, W])}`` (or (1, N, C) for tokens, (1, C) for vectors); a layer
        whose output is not a tensor (a dict or tuple output) is left out.
        """
        size = tuple(size or self.input_size)
        key = (size, tuple(sorted(set(layers))))
        if key not in self._shape_cache:
            probe = torch.full((1, 3, *size), 0.5, device=self.device)
            with ActivationCapture(self, list(layers)) as capture:
                acts = capture(probe)
            self._shape_cache[key] = {k: v.shape for k, v in acts.items() if isinstance(v, torch.Tensor)}
        return self._shape_cache[key]

    @torch.no_grad()
    def describe_layers(self, size: tuple[int, int] | None = None) -> list[tuple[str, tuple[int, ...] | None, int | None]]:
        """(name, output shape without batch, channel count) for every module that yields a tensor.

        Modules that are not called in a forward pass at ``size`` get shape ``None``.
        Shared modules called k>1 times are listed once per call as ``name#i``.
        """
        size = tuple(size or self.input_size)
        return describe_modules(self.net, lambda: self.net(self.preprocess(torch.full((1, 3, *size), 0.5,
                                                                                        device=self.device))))


@torch.no_grad()
def describe_modules(net: nn.Module, run) -> list[tuple[str, tuple[int, ...] | None, int | None]]:
    """Run ``run()`` (one forward of ``net``) with a hook on every submodule -> (name, output shape without batch,
    channel count) per call, in registration order (``name#i`` for a module called more than once; shape
    ``None`` for one never called), and ``output`` last when the forward returns a tensor."""
    records: list[tuple[str, tuple[int, ...] | None]] = []
    calls: dict[str, int] = {}
    handles = []

    def make_hook(name: str):
        def hook(_m, _inp, out):
            out = out[0] if isinstance(out, (tuple, list)) and out else out
            if not torch.is_tensor(out):
                return
            i = calls.get(name, 0)
            calls[name] = i + 1
            records.append((f"{name}#{i}", tuple(out.shape[1:])))

        return hook

    names = [n for n, _ in net.named_modules() if n]
    try:
        for name, mod in net.named_modules():
            if name:
                handles.append(mod.register_forward_hook(make_hook(name)))
        out = run()
    finally:
        for h in handles:
            h.remove()
    rows: list[tuple[str, tuple[int, ...] | None, int | None]] = []
    seen = set()
    for key, shape in records:
        name, i = key.rsplit("#", 1)
        shown = name if calls[name] == 1 else key
        seen.add(name)
        rows.append((shown, shape, channel_count(shape)))
    order = {n: i for i, n in enumerate(names)}
    rows.sort(key=lambda r: (order.get(r[0].split("#")[0], 0), r[0]))
    rows += [(n, None, None) for n in names if n not in seen]
    if torch.is_tensor(out):
        rows.append((OUTPUT, tuple(out.shape[1:]), channel_count(tuple(out.shape[1:]))))
    return rows


def wrap_module(net: nn.Module, name: str) -> Model:
    """A network nnfeat does not know, as a :class:`Model` whose input spec is found, not assumed: channels from
    its first conv/linear layer (1 or 3; else 3), any size (working size 224 px, or the size a flatten head's
    first ``nn.Linear`` needs), no normalization, no class names (see :mod:`nnfeat.models.spec`)."""
    channels = infer_channels(net)
    model = Model(net, name=name, in_channels=channels or 3)
    size, size_source = None, "any"
    if not _runs_at(model, (224, 224)):
        found = linear_size(model, net)
        size, size_source = ((found, found), "found") if found else (None, "any")
    model.use_spec(InputSpec(channels=model.in_channels, size=size, working_size=size or (224, 224),
                             sources={"channels": "found" if channels else "default", "size": size_source,
                                      "normalize": "default", "classes": "default"}))
    return model


def _runs_at(model: Model, size: tuple[int, int]) -> bool:
    try:
        model.layer_shapes([OUTPUT], size)
    except Exception:  # noqa: BLE001 - any failure of the user's network at this size: it does not run there
        return False
    return True


def as_model(model: nn.Module | Model) -> Model:
    """Wrap a bare ``nn.Module`` (its input spec found: :func:`wrap_module`) unless it already is a :class:`Model`."""
    return model if isinstance(model, Model) else wrap_module(model, type(model).__name__)
