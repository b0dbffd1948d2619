"""``load_model(name)``: every network nnfeat knows by name, wrapped as a :class:`~nnfeat.models.base.Model`.

Names:

* ``cifar10-resnet20`` / ``-32`` / ``-44`` / ``-56``: CIFAR-10 ResNets (32 px), weights via :func:`fetch_weights`.
* ``digits-cnn``: a small grey-digit CNN trained by nnfeat itself (offline, a few seconds, then cached).
* ``inceptionv1``: GoogLeNet as in Lucid (see :mod:`nnfeat.models.inceptionv1`).
* ``torchvision:NAME``: any torchvision classification model (``torchvision:resnet18``).
* ``FILE.py:FACTORY``: ``FACTORY()`` from a Python file, returning an ``nn.Module`` or a ``Model``.

``weights="random"`` gives randomly initialised weights, drawn from a fixed seed so the same name
always gives the same net; the global torch RNG is left untouched.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import urllib.error
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from nnfeat.errors import NnfeatError, nearest
from nnfeat.models.base import Model

CIFAR_DEPTHS = (20, 32, 44, 56)
TORCHVISION_PREFIX = "torchvision:"
WEIGHT_CHOICES = ("pretrained", "random")
RANDOM_SEED = 0


def known_models() -> list[str]:
    """Every model name :func:`load_model` accepts (patterns written as ``torchvision:NAME``, ``FILE.py:FACTORY``)."""
    return [
        *(f"cifar10-resnet{d}" for d in CIFAR_DEPTHS),
        "digits-cnn",
        "inceptionv1",
        f"{TORCHVISION_PREFIX}NAME",
        "FILE.py:FACTORY",
    ]


def load_model(name: str, *, weights: str = "pretrained", device: str | torch.device | None = None) -> Model:
    """The model called ``name`` (see the module docstring), in eval mode, optionally moved to ``device``.

    Raises a one-line :class:`NnfeatError` for an unknown name, unknown weights, weights that cannot be
    found or downloaded, or an unavailable device.
    """
    if weights not in WEIGHT_CHOICES:
        raise NnfeatError(f"unknown weights '{weights}'; expected one of {', '.join(WEIGHT_CHOICES)}")
    loader = _loader_for(name)
    model = loader(weights)
    return _to_device(model, device)


def _loader_for(name: str) -> Callable[[str], Model]:
    builtin: dict[str, Callable[[str], Model]] = {f"cifar10-resnet{d}": _cifar_loader(d) for d in CIFAR_DEPTHS}
    builtin["digits-cnn"] = _load_digits
    builtin["inceptionv1"] = _load_inceptionv1
    if name in builtin:
        return builtin[name]
    if name.startswith(TORCHVISION_PREFIX):
        return lambda weights: _load_torchvision(name[len(TORCHVISION_PREFIX) :], weights)
    file_part, sep, factory = name.rpartition(":")
    if sep and file_part.endswith(".py"):
        return lambda weights: _load_file_factory(file_part, factory)
    if name.endswith(".py"):
        raise NnfeatError(f"model file '{name}' needs a factory: write it as {name}:FACTORY")
    close = nearest(name, builtin)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise NnfeatError(f"unknown model '{name}'{hint}; known: {', '.join(known_models())}")


def _to_device(model: Model, device: str | torch.device | None) -> Model:
    if device is None:
        return model
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise NnfeatError(f"unknown device '{device}'; expected e.g. cpu, cuda, cuda:1 or mps") from None
    try:
        return model.to(target)
    except (RuntimeError, AssertionError) as err:
        reason = " ".join(str(err).split())[:120]
        raise NnfeatError(f"device '{device}' is not usable here ({reason}); try --device cpu") from None


def _random_init(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a network from a fixed seed without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()


# ---------------------------------------------------------------------------------------------------
def _cifar_loader(depth: int) -> Callable[[str], Model]:
    def load(weights: str) -> Model:
        from nnfeat.models import cifar_resnet as cr
        from nnfeat.models.weights import fetch_weights

        net = _random_init(lambda: cr.CifarResNet(depth))
        if weights == "pretrained":
            filename = cr.WEIGHT_FILES[depth]
            path = fetch_weights(filename, cr.WEIGHTS_URL.format(file=filename))
            cr.load_checkpoint(net, path)
        return Model(
            net,
            name=f"cifar10-resnet{depth}",
            mean=cr.CIFAR10_MEAN,
            std=cr.CIFAR10_STD,
            input_size=32,
            classes=cr.CIFAR10_CLASSES,
        )

    return load


def _load_digits(weights: str) -> Model:
    from nnfeat.models import digits

    return digits.load(weights=weights)


def _load_inceptionv1(weights: str) -> Model:
    return importlib.import_module("nnfeat.models.inceptionv1").load(weights=weights)


# ---------------------------------------------------------------------------------------------------
#: torchvision nets whose pretrained weights expect (x - 0.5) / 0.5 and, by default, convert ImageNet-normalized
#: input to that inside the net (``transform_input=True``). nnfeat turns that off and normalizes with 0.5/0.5
#: itself, which gives the net exactly the same input, so hooks on its first layer see its real input.
_TRANSFORM_INPUT_NETS = ("googlenet", "inception_v3")


def _load_torchvision(arch: str, weights: str) -> Model:
    import torchvision
    from torchvision.models import get_model, get_model_weights, list_models

    available = list_models(module=torchvision.models)
    if arch not in available:
        close = nearest(arch, available)
        hint = f"; nearest: {', '.join(TORCHVISION_PREFIX + c for c in close)}" if close else ""
        raise NnfeatError(
            f"unknown torchvision model '{arch}'{hint} (any of torchvision.models.list_models() works)"
        )
    default = get_model_weights(arch).DEFAULT
    transform = default.transforms()
    mean, std = tuple(transform.mean), tuple(transform.std)
    kwargs: dict = {}
    if arch in _TRANSFORM_INPUT_NETS:
        kwargs["init_weights"] = True  # the documented default; silences torchvision's FutureWarning
        if weights == "pretrained":
            kwargs = {"transform_input": False}
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if weights == "pretrained":
        net = _torchvision_pretrained(arch, default, kwargs)
    else:
        net = _random_init(lambda: get_model(arch, weights=None, **kwargs))
    crop = transform.crop_size
    size = int(crop[0]) if isinstance(crop, (list, tuple)) else int(crop)
    return Model(
        net,
        name=f"{TORCHVISION_PREFIX}{arch}",
        mean=mean,
        std=std,
        input_size=size,
        classes=default.meta.get("categories"),
    )


def _torchvision_pretrained(arch: str, weights_enum, kwargs: dict) -> nn.Module:
    """``get_model(arch, weights=DEFAULT)``; a failed download becomes a one-line error naming the cache file."""
    from torchvision.models import get_model

    try:
        return get_model(arch, weights=weights_enum, **kwargs)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_enum.url).name
        reason = " ".join(str(getattr(err, "reason", err)).split())[:120]
        raise NnfeatError(
            f"cannot download torchvision weights for '{arch}' ({reason}); "
            f"put {weights_enum.url} at {cache} or use --weights random"
        ) from None


# ---------------------------------------------------------------------------------------------------
def _load_file_factory(file: str, factory: str) -> Model:
    """Import ``file`` as a fresh module and call ``factory()``; wrap an ``nn.Module`` with default settings."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise NnfeatError(f"model file '{file}' not found; expected FILE.py:FACTORY with FILE an existing Python file")
    if not factory.isidentifier():
        raise NnfeatError(f"'{factory}' is not a Python name; expected {file}:FACTORY, e.g. {file}:make_model")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"nnfeat_user_model_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise NnfeatError(f"cannot import model file '{file}'; expected a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # lets classes defined in the file pickle and introspect normally
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - the user's file is user input
        sys.modules.pop(module_name, None)
        raise NnfeatError(f"importing model file '{file}' failed: {_one_line(err)}") from err
    make = getattr(module, factory, None)
    if not callable(make):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        close = nearest(factory, defined)
        hint = f"; nearest: {', '.join(close)}" if close else ""
        raise NnfeatError(f"model file '{file}' has no function '{factory}'{hint}")
    try:
        made = make()
    except Exception as err:  # noqa: BLE001
        raise NnfeatError(f"{file}:{factory}() failed: {_one_line(err)}") from err
    if isinstance(made, Model):
        return made
    if isinstance(made, nn.Module):
        return Model(made, name=f"{path.stem}:{factory}")
    raise NnfeatError(
        f"{file}:{factory}() returned {type(made).__name__}; expected a torch.nn.Module or an nnfeat Model"
    )


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__
