"""A network's input spec: what it takes (channels, size, normalization, class names) and where each fact came from.

A zoo model's spec is its card's. For a network nnfeat does not know (a plain ``nn.Module`` from
``FILE.py:FACTORY``, or :func:`~nnfeat.models.base.as_model` of a bare module) each fact is found or asked for,
never assumed:

* channels: the first ``nn.Conv2d``/``nn.Linear``'s ``in_channels``/``in_features`` when that is 1 or 3, else 3;
* size: any (images are used at their own size, no resizing) unless ``--size`` says otherwise; without images the
  network's working size is 224 px, or the size its first ``nn.Linear`` needs (found by probing);
* normalization: none unless ``--normalize`` says so (:func:`parse_normalize`);
* class names: ``--classes FILE|a,b,c`` (:func:`parse_classes`) or an image folder's sub-folders.

Sources, in :attr:`InputSpec.sources`: ``"card"``, ``"model"`` (a ``Model`` built by the user's own code),
``"found"``, ``"option"`` and ``"images"``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from nnfeat.errors import NnfeatError, shorten

#: ``--normalize`` presets: name -> (mean, std) per RGB channel. ``imagenet``: the ImageNet training set's statistics
#: (torchvision's, and also what the zoo's CIFAR-10 ResNets were trained with); ``cifar``: the CIFAR-10 training set's
#: per-channel mean and standard deviation, as most CIFAR training scripts normalize.
NORMALIZE_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "none": None,
}
NORMALIZE_HELP = ("input normalization, (x - mean) / std of [0, 1] images: imagenet, cifar, none, or MEAN/STD as "
                  "comma lists, one value per channel or one for all (e.g. 0.5,0.5,0.5/0.25,0.25,0.25 or 0.5/0.25) "
                  "(default: the zoo card's; none for a model nnfeat does not know)")
CLASSES_HELP = ("class names, index-aligned with the logits: a text file (one name a line) or a comma list a,b,c "
                "(default: the zoo card's, or an image folder's sub-folders)")
#: Words for where a fact came from, in :meth:`InputSpec.describe`.
_SOURCE_WORDS = {"card": "", "model": "", "found": " (found)", "images": " from the image folders"}
#: Input sizes tried first when looking for the size a network's first ``nn.Linear`` needs.
_COMMON_SIZES = (224, 32, 28, 64, 96, 128, 256, 299, 16, 48, 56, 112, 160, 192, 227, 384, 512)


@dataclass
class InputSpec:
    """What a network takes. ``size`` None = any size (``working_size`` is the one used: the images' own, or
    the found or default one); ``mean``/``std`` None = no normalization; ``sources``: fact -> where it came from
    (``channels``, ``size``, ``normalize``, ``classes``; ``"card"``, ``"model"``, ``"found"``, ``"option"``,
    ``"images"``, or ``"--FLAG"`` for an option)."""

    channels: int
    size: tuple[int, int] | None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None
    working_size: tuple[int, int] | None = None
    sources: dict[str, str] = field(default_factory=dict)
    #: the ``--normalize`` preset name that gave ``mean``/``std``, if one did (presets may share numbers)
    preset: str | None = None

    def from_card(self) -> bool:
        """Whether every fact is the zoo card's (then nothing about the model's input changed)."""
        return all(source == "card" for source in self.sources.values())

    def describe(self) -> str:
        """One line, e.g. ``input: 1 channel (RGB images become grey), size as the images (28x28), no
        normalization, 10 classes from --classes``."""
        c = self.channels
        found = {"found": "found", "default": ""}.get(self.sources.get("channels", ""), "")
        notes = "; ".join(n for n in (found, "RGB images become grey" if c == 1 else "") if n)
        channels = f"{c} channel{'s' if c != 1 else ''}" + (f" ({notes})" if notes else self._from("channels"))
        if self.size is None:
            shown = "x".join(map(str, self.working_size)) if self.working_size else "?"
            size = (f"size as the images ({shown})" if self.sources.get("size") == "images"
                    else f"any size ({shown} without images)")
        else:
            size = f"size {self.size[0]}x{self.size[1]}{self._from('size')}"
        if self.mean is None:
            norm = "no normalization" + (self._from("normalize") if self.sources.get("normalize", "").startswith("-")
                                         else "")
        else:
            name = self.preset or next((k for k, v in NORMALIZE_PRESETS.items() if v and _same(v, (self.mean, self.std))),
                                       None)
            norm = (f"{name} normalization" if name else
                    f"normalized by mean {_floats(self.mean)} std {_floats(self.std)}") + self._from("normalize")
        classes = f"{len(self.classes)} classes{self._from('classes')}" if self.classes else "no class names"
        return f"input: {channels}, {size}, {norm}, {classes}"

    def _from(self, fact: str) -> str:
        source = self.sources.get(fact, "")
        return f" from {source}" if source.startswith("--") else _SOURCE_WORDS.get(source, "")

    def record(self) -> dict:
        """JSON-ready: channels, size ([H, W] or "any"), working size, mean, std, class names, sources."""
        return {"channels": self.channels, "size": list(self.size) if self.size else "any",
                "working_size": list(self.working_size) if self.working_size else None,
                "mean": list(self.mean) if self.mean is not None else None,
                "std": list(self.std) if self.std is not None else None,
                "classes": list(self.classes) if self.classes else None, "sources": dict(self.sources)}


def _same(a, b) -> bool:
    return all(len(x) == len(y) and all(abs(p - q) < 1e-9 for p, q in zip(x, y)) for x, y in zip(a, b))


def _floats(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


# ---------------------------------------------------------------------------------------------------
def first_layer(net: nn.Module) -> tuple[str, nn.Module] | None:
    """The first ``nn.Conv2d`` or ``nn.Linear`` of ``net`` in registration order, with its name."""
    return next(((n, m) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)


def infer_channels(net: nn.Module) -> int | None:
    """1 or 3 from ``net``'s first conv/linear layer (``in_channels``/``in_features``), else None."""
    found = first_layer(net)
    if found is None:
        return None
    count = found[1].in_channels if isinstance(found[1], nn.Conv2d) else found[1].in_features
    return count if count in (1, 3) else None


class _Reached(Exception):
    """Raised by a pre-hook to stop a probe once it reaches the layer it watches."""


@torch.no_grad()
def _features_at(run, linear: nn.Linear, size: int) -> int | None:
    """How many features reach ``linear`` when ``run`` takes a (1, 3, size, size) image (None: it failed first)."""
    seen: list[int] = []

    def pre_hook(_m, inputs):
        seen.append(int(inputs[0].shape[-1]))
        raise _Reached

    handle = linear.register_forward_pre_hook(pre_hook)
    try:
        run(torch.full((1, 3, size, size), 0.5, device=linear.weight.device))
    except _Reached:
        pass
    except Exception:  # noqa: BLE001 - any failure before the layer: this size does not tell
        return None
    finally:
        handle.remove()
    return seen[0] if seen else None


def linear_size(run, net: nn.Module) -> int | None:
    """The square input size at which the first ``nn.Linear`` after a conv gets its ``in_features`` (a flatten
    head that fixes the size), or None. ``run``: (1, 3, S, S) images in [0, 1] -> the network's output."""
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    linear = next((m for m in layers[1:] if isinstance(m, nn.Linear)), None)
    if linear is None:
        return None
    features = _features_at(run, linear, 64)
    guesses = []
    if features:
        estimate = round(64 * math.sqrt(linear.in_features / features))
        guesses = sorted(range(max(2, estimate - 4), estimate + 5), key=lambda s: abs(s - estimate))
    for size in dict.fromkeys([*guesses, *_COMMON_SIZES]):
        if _features_at(run, linear, size) == linear.in_features:
            return size
    return None


# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def check_input(model, size_flag: str | None = "--size") -> int | None:
    """A probe forward of one (1, 3, H, W) image at ``model.input_size`` before any work. A channel count the
    network cannot take, or a size it cannot take, is nnfeat's own one-line error (with the size that works
    when it can be found, and ``size_flag``); any other failure is raised as it is (the user's code). Returns
    the number of outputs of a (1, K) output, else None; ``--classes`` names that do not match it are an error."""
    height, width = model.input_size
    try:
        out = model(torch.full((1, 3, height, width), 0.5, device=model.device))
    except (RuntimeError, ValueError) as err:
        text = " ".join(str(err).split())
        if "channels" in text and "expected" in text:
            raise _channel_error(model, text) from None
        if "shapes cannot be multiplied" in text or "size mismatch" in text:
            raise _size_error(model, size_flag) from None
        raise
    count = int(out.shape[1]) if torch.is_tensor(out) and out.dim() == 2 else None
    named = model.spec.classes
    if named and count is not None and count != len(named) and model.spec.sources.get("classes", "").startswith("-"):
        raise NnfeatError(f"{len(model.spec.classes)} class names{model.spec._from('classes')} but model "
                          f"'{model.name}' gives {count} outputs: give {count} names")
    return count


def _channel_error(model, text: str) -> NnfeatError:
    found = first_layer(model.net)
    wanted = ""
    if found is not None:
        count = found[1].in_channels if isinstance(found[1], nn.Conv2d) else found[1].in_features
        wanted = f" (its first layer '{found[0]}' takes {count})"
    return NnfeatError(f"model '{model.name}' does not take {model.in_channels}-channel input{wanted}: nnfeat feeds "
                       "1-channel (grey) or 3-channel (RGB) images, so its first layer must take 1 or 3 channels; "
                       f"wrap it in FILE.py:FACTORY ({shorten(text, 100)})")


def _size_error(model, size_flag: str | None) -> NnfeatError:
    height, width = model.input_size
    found = model.spec.size[0] if model.spec.size and tuple(model.spec.size) != (height, width) else \
        linear_size(model, model.net)
    fix = (f"use {size_flag} {found} (it runs on {found}x{found})" if found and size_flag else
           f"it runs on {found}x{found} px images" if found else
           f"use {size_flag} with the size it was built for" if size_flag else "give it the size it was built for")
    return NnfeatError(f"model '{model.name}' does not run on {height}x{width} px input: {fix}")


def parse_normalize(text: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``--normalize`` -> (mean, std) with ``channels`` values each, or None for ``none``; one-line errors."""
    key = text.strip().lower()
    if key in NORMALIZE_PRESETS:
        preset = NORMALIZE_PRESETS[key]
        if preset is not None and channels != 3:
            raise NnfeatError(f"--normalize {key} is for 3-channel (RGB) models; this one takes {channels}: "
                              f"use --normalize MEAN/STD, e.g. 0.5/0.25")
        return preset
    mean_text, sep, std_text = text.partition("/")
    try:
        mean = [float(v) for v in mean_text.split(",")]
        std = [float(v) for v in std_text.split(",")]
    except ValueError:
        mean = std = []
    if not sep or not mean or not std or not all(math.isfinite(v) for v in mean + std):
        raise NnfeatError(f"bad --normalize '{shorten(text, 60)}': expected imagenet, cifar, none or MEAN/STD, "
                          "e.g. 0.5,0.5,0.5/0.25,0.25,0.25 or 0.5/0.25")
    if min(std) <= 0:
        raise NnfeatError(f"bad --normalize '{shorten(text, 60)}': every std must be positive")
    mean, std = (v * channels if len(v) == 1 else v for v in (mean, std))
    if len(mean) != channels or len(std) != channels:
        raise NnfeatError(f"bad --normalize '{shorten(text, 60)}': this model takes {channels} channel"
                          f"{'s' if channels != 1 else ''}, so give {channels} values (or one) for mean and for std")
    return tuple(mean), tuple(std)


def parse_classes(text: str) -> tuple[str, ...]:
    """``--classes FILE|a,b,c`` -> the class names; one-line errors for a missing file or an empty name."""
    path = Path(os.path.expanduser(text))
    try:
        is_file = path.is_file()
    except (OSError, ValueError):
        is_file = False
    if is_file:
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise NnfeatError(f"cannot read --classes file '{shorten(text)}' ({type(err).__name__}): expected a "
                              "text file with one class name a line") from None
        if not names:
            raise NnfeatError(f"--classes file '{shorten(text)}' holds no class names: one name a line")
        return tuple(names)
    if "," not in text:
        raise NnfeatError(f"--classes '{shorten(text)}' is neither a file nor a comma list: give a text file with "
                          "one class name a line, or names as a,b,c")
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise NnfeatError(f"bad --classes '{shorten(text)}': an empty class name; expected a,b,c")
    return tuple(names)


__all__ = ["InputSpec", "NORMALIZE_PRESETS", "NORMALIZE_HELP", "CLASSES_HELP", "infer_channels", "first_layer", "check_input",
           "linear_size", "parse_normalize", "parse_classes"]
