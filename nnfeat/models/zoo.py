"""``load_model(name)``: every network nnfeat knows by name, wrapped as a :class:`~nnfeat.models.base.Model`.

The names, and every fact about them, are the cards of :mod:`nnfeat.models.registry` (``nnfeat models``
lists them):

* ``cifar10-resnet20`` / ``-32`` / ``-44`` / ``-56``: CIFAR-10 ResNets (32 px), weights via :func:`fetch_weights`.
* ``digits-cnn``: a small grey-digit CNN trained by nnfeat itself (offline, a few seconds, then cached).
* ``inceptionv1``: GoogLeNet as in Lucid (see :mod:`nnfeat.models.inceptionv1`).
* ``torchvision:NAME``: any torchvision classification model (``torchvision:resnet18``).
* ``timm:NAME``: any timm model (``timm:vit_tiny_patch16_224``; needs ``pip install timm``).
* ``FILE.py:FACTORY``: ``FACTORY()`` from a Python file, returning an ``nn.Module`` (its input spec found, not
  assumed: :func:`~nnfeat.models.base.wrap_module`) or a ``Model``.

``weights="random"`` gives randomly initialised weights, drawn from a fixed seed so the same name
always gives the same net; the global torch RNG is left untouched. ``weights=PATH`` (an existing file: a
state_dict, a checkpoint, safetensors, TorchScript or a ``.pt2``, see :mod:`nnfeat.models.checkpoint`) builds
the network as ``random`` does, then loads the file into it, for every kind of name. The returned model records
its weights in ``model.weights`` (``"pretrained"`` / ``"random"`` / ``"file:PATH sha256:PREFIX"``; ``None`` for a
``FILE.py`` model with its own weights) and its card in ``model.card``. The words win over a file of the same
name: write ``./random`` for a file called ``random``.

``device="auto"`` (the default) is the first CUDA GPU, else MPS, else the CPU
(:func:`nnfeat.device.resolve_device`); ``device=None`` leaves the model where it was built.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import logging
import os
import sys
import urllib.error
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet18_Weights, get_model_weights, list_models

from nnfeat.device import resolve_device
from nnfeat.errors import NnfeatError, nearest, shorten
from nnfeat.io import is_existing_file
from nnfeat.models.base import Model, wrap_module
from nnfeat.models.checkpoint import load_weights_file
from nnfeat.models.hf import load_hf, minilm_path
from nnfeat.models.spec import InputSpec
from nnfeat.models.text import TokenModel
from nnfeat.models.registry import PUBLISHED, TRAINED, ModelCard, find_card, known_models
from nnfeat.models.weights import fetch_weights, hash_prefix_from_name, weights_dir

WEIGHT_CHOICES = ("pretrained", "random")
#: Model families whose weights file may hold a network fine-tuned to another class count (the output layer is
#: rebuilt to fit it: :func:`~nnfeat.models.checkpoint.fit_output_layer`).
_HEAD_FAMILIES = ("torchvision", "timm")
#: The kinds of weights file ``weights=PATH`` takes, in words (see :mod:`nnfeat.models.checkpoint`).
WEIGHT_FILE_KINDS = "state_dict, checkpoint, safetensors, TorchScript, .pt2"
RANDOM_SEED = 0


def load_model(name: str, *, weights: str | os.PathLike = "pretrained",
               device: str | torch.device | None = "auto") -> Model:
    """The model called ``name`` (see the module docstring), in eval mode, on ``device``.

    Args:
        name: a zoo name, ``torchvision:NAME``, ``timm:NAME`` or ``FILE.py:FACTORY``.
        weights: ``"pretrained"``, ``"random"``, or the path of an existing weights file.
        device: ``"auto"``, a device, or ``None`` to leave the model where it was built.

    Raises:
        NnfeatError: one line, for an unknown name, unknown weights (neither word nor existing file), weights
            that cannot be found, downloaded or loaded (a file that does not fit the network names its keys and
            shapes), or an unavailable device (checked before anything is built).
    """
    file = _weights_path(weights)
    card, arg = find_card(name)
    target = None if device is None else resolve_device(device)
    model = _LOADERS[card.family](card, arg, "random" if file is not None else str(weights))
    if file is not None:
        loaded = load_weights_file(model.net, file, name=model.name, fit_head=card.family in _HEAD_FAMILIES)
        model.weights = loaded.label
        if loaded.head is not None:
            _fine_tuned(model)
    return model if target is None else _to_device(model, target)


def _weights_path(weights: str | os.PathLike) -> Path | None:
    """``None`` for ``"pretrained"``/``"random"``, the path of an existing weights file, else one line."""
    if isinstance(weights, str) and weights in WEIGHT_CHOICES:
        return None
    path = Path(weights).expanduser() if str(weights) else None
    if path is not None and is_existing_file(path):
        return path
    shown = shorten(str(weights))
    found = f"'{shown}' is a folder" if path is not None and _is_folder(path) else f"there is no file '{shown}'"
    raise NnfeatError(f"unknown weights '{shown}'; expected one of {', '.join(WEIGHT_CHOICES)}, or a weights file "
                      f"({WEIGHT_FILE_KINDS}), but {found}")


def _fine_tuned(model: Model) -> None:
    """``model`` after its output layer was rebuilt for a file fine-tuned to another class count: the card's
    training set no longer says what the network takes, so its spec is that of a network nnfeat does not know
    (any size, no normalization, no class names unless options give them), keeping the card's channels."""
    model.use_spec(InputSpec(channels=model.in_channels, size=None, working_size=tuple(model.input_size),
                             sources={"channels": "card", "size": "any", "normalize": "default",
                                      "classes": "default"}))


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name no file system can hold
        return False


def _to_device(model: Model, target: torch.device) -> Model:
    try:
        return model.to(target)
    except (RuntimeError, AssertionError) as err:
        reason = " ".join(str(err).split())[:120]
        raise NnfeatError(f"device '{target}' is not usable here ({reason}); try --device cpu") from None


def _random_init(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a network from a fixed seed without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()


# ---------------------------------------------------------------------------------------------------
def _load_card(card: ModelCard, _arg: None, weights: str) -> Model:
    """A zoo card: ``card.builder()`` from the fixed seed, then (pretrained) its weights file loaded into it."""
    net = _random_init(card.builder)
    if weights == "pretrained" and card.load_weights is not None:
        path = _weights_file(card)
        try:
            card.load_weights(net, path)
        except NnfeatError:
            raise
        except Exception as err:  # noqa: BLE001 - a weights file that does not load is a user-facing problem
            raise NnfeatError(f"weights file {path} does not load into {card.name} ({_one_line(err)}); delete it "
                              f"so it is fetched again, or use --weights random") from err
    return card.model(net, weights)


def _weights_file(card: ModelCard) -> Path:
    """The local file with ``card``'s pretrained weights: fetched if published, else where nnfeat trains them."""
    if card.weights_source == PUBLISHED:
        return fetch_weights(card.weights_file, card.weights_url, sha256_prefix=card.sha256_prefix)
    if card.weights_source == TRAINED:
        return weights_dir() / card.weights_file
    raise NnfeatError(f"{card.name} has no pretrained weights; use --weights random")  # pragma: no cover


# ---------------------------------------------------------------------------------------------------
#: torchvision nets whose pretrained weights expect (x - 0.5) / 0.5 and, by default, convert ImageNet-normalized
#: input to that inside the net (``transform_input=True``). nnfeat turns that off and normalizes with 0.5/0.5
#: itself, which gives the net exactly the same input, so hooks on its first layer see its real input.
_TRANSFORM_INPUT_NETS = ("googlenet", "inception_v3")


def _load_torchvision(card: ModelCard, arch: str, weights: str) -> Model:
    available = list_models(module=torchvision.models)
    if arch not in available:
        close = nearest(arch, available)
        hint = f"; nearest: {', '.join(card.prefix + c for c in close)}" if close else ""
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
    build = functools.partial(card.builder, arch, **kwargs)
    net = _torchvision_pretrained(arch, default, build) if weights == "pretrained" else _random_init(build)
    crop = transform.crop_size
    size = int(crop[0]) if isinstance(crop, (list, tuple)) else int(crop)
    classes = default.meta.get("categories")
    file = Path(default.url).name
    made = dataclasses.replace(
        card, name=f"{card.prefix}{arch}", summary=f"torchvision.models.{arch}", builder=build, mean=mean, std=std,
        input_size=(size, size), classes=tuple(classes) if classes else None,
        num_classes=len(classes) if classes else None, weights_file=file, weights_url=default.url,
        sha256_prefix=hash_prefix_from_name(file), pattern=False,
    )
    return made.model(net, weights)


def _torchvision_pretrained(arch: str, weights_enum, build: Callable[..., nn.Module]) -> nn.Module:
    """``build(weights=DEFAULT)``; a failed download becomes a one-line error naming the cache file."""
    try:
        return _random_init(lambda: build(weights=weights_enum))
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_enum.url).name
        reason = " ".join(str(getattr(err, "reason", err)).split())[:120]
        raise NnfeatError(
            f"cannot download torchvision weights for '{arch}' ({reason}); "
            f"put {weights_enum.url} at {cache} or use --weights random"
        ) from None


# ---------------------------------------------------------------------------------------------------
def _load_timm(card: ModelCard, arch: str, weights: str) -> Model:
    """``timm.create_model(arch)``: random from the fixed seed, or timm's own pretrained download. Input
    contract from the net's ``pretrained_cfg``; ImageNet-1k class names when it has 1000 classes."""
    try:
        import timm  # optional extra: pip install timm
    except ImportError:
        raise NnfeatError(
            f"{card.prefix}{arch} needs timm, which is not installed: pip install timm (or pip install nnfeat[timm])"
        ) from None
    if not timm.is_model(arch):
        close = nearest(arch, timm.list_models())
        hint = f"; nearest: {', '.join(card.prefix + c for c in close)}" if close else ""
        raise NnfeatError(f"unknown timm model '{arch}'{hint} (any of timm.list_models() works)")
    if weights == "pretrained":
        net = _timm_pretrained(card, arch)
    else:
        net = _timm_call(card, arch, lambda: _random_init(lambda: card.builder(arch, pretrained=False)))
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    channels, height, width = cfg.get("input_size", (3, 224, 224))
    num_classes = getattr(net, "num_classes", None) or cfg.get("num_classes")
    hub = cfg.get("hf_hub_id")
    made = dataclasses.replace(
        card, name=f"{card.prefix}{arch}", summary=f"timm.create_model('{arch}')",
        builder=functools.partial(card.builder, arch, pretrained=False),
        mean=tuple(cfg.get("mean", (0.0,) * channels)), std=tuple(cfg.get("std", (1.0,) * channels)),
        input_size=(int(height), int(width)), in_channels=int(channels),
        classes=_imagenet_classes() if num_classes == 1000 else None, num_classes=num_classes,
        weights_url=f"https://huggingface.co/{hub}" if hub else cfg.get("url") or None,
        licence=cfg.get("license") or card.licence, pattern=False,
    )
    return made.model(net, weights)


def _timm_pretrained(card: ModelCard, arch: str) -> nn.Module:
    """``timm.create_model(arch, pretrained=True)`` (timm's own download; the global RNG untouched). Without a connection the Hugging Face
    hub retries for a while; its retry warnings are held back so a failure ends as one line."""
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        return _random_init(lambda: card.builder(arch, pretrained=True))
    except Exception as err:  # noqa: BLE001 - hub, torch hub and file errors of many kinds: the download failed
        reason = _one_line(err).split(". ")[0][:160]  # the hub's messages run on for several sentences
        raise NnfeatError(
            f"cannot get timm's pretrained weights for '{card.prefix}{arch}' ({reason}); "
            "connect to the Hugging Face hub once, or use --weights random"
        ) from None
    finally:
        hub_log.setLevel(level)


def _timm_call(card: ModelCard, arch: str, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()``; timm's refusal (a bad pretrained tag, say) becomes one line."""
    try:
        return build()
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise NnfeatError(f"timm cannot build '{arch}': {_one_line(err)} (see timm.list_models())") from None


@functools.lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    """The ImageNet-1k class names, as torchvision lists them."""
    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# ---------------------------------------------------------------------------------------------------
def _load_file_factory(_card: ModelCard, name: str, _weights: str) -> Model:
    """Import ``FILE`` of ``name`` (``FILE.py:FACTORY``) as a fresh module and call ``FACTORY()``; wrap an
    ``nn.Module`` with its input spec found (:func:`~nnfeat.models.base.wrap_module`; its ``weights`` and ``card``
    unknown: ``None``)."""
    file, _, factory = name.rpartition(":")
    path = Path(file).expanduser()
    if not is_existing_file(path):
        raise NnfeatError(f"model file '{shorten(file)}' not found; expected FILE.py:FACTORY with FILE an existing Python file")
    if not factory.isidentifier():
        raise NnfeatError(f"'{shorten(factory)}' is not a Python name; expected FILE.py:FACTORY, e.g. "
                          f"{shorten(file)}:make_model")
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
    if isinstance(made, (Model, TokenModel)):
        return made
    if isinstance(made, nn.Module):
        if _takes_tokens(made):
            raise NnfeatError(f"{file}:{factory}() returned a network that takes token ids (its first layer is an "
                              "nn.Embedding): return nnfeat.TokenModel(net, tokenizer=..., kind=..., max_length=...) "
                              "with its tokenizer (nnfeat.WordTokenizer('vocab.txt') or nnfeat.CallableTokenizer(fn))")
        return wrap_module(made, name=f"{path.stem}:{factory}")
    raise NnfeatError(
        f"{file}:{factory}() returned {type(made).__name__}; expected a torch.nn.Module or an nnfeat Model"
    )


def _load_hf_card(card: ModelCard, path: str | None, weights: str) -> TokenModel:
    """``minilm`` (the installed package's folder) or ``hf:PATH``: a Hugging Face folder, loaded offline.
    ``weights="random"`` re-initialises every module that has a ``reset_parameters`` (PyTorch's default
    initialisation of its linear, embedding and norm layers) from the fixed seed."""
    model = load_hf(minilm_path() if path is None else path, name=card.name if path is None else f"hf:{path}")
    model.card = card
    model.weights = weights if path is None or weights == "random" else f"folder:{path}"
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            for module in model.net.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return model


def _takes_tokens(net: nn.Module) -> bool:
    """Whether the first of its embedding, convolution and linear layers is an ``nn.Embedding``."""
    first = next((m for m in net.modules() if isinstance(m, (nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Linear))), None)
    return isinstance(first, nn.Embedding)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


#: How each kind of card is loaded: ``loader(card, the name's part for the family, weights) -> Model``.
_LOADERS: dict[str | None, Callable[[ModelCard, str | None, str], Model]] = {
    None: _load_card,
    "torchvision": _load_torchvision,
    "timm": _load_timm,
    "file": _load_file_factory,
    "hf": _load_hf_card,
}

__all__ = ["WEIGHT_CHOICES", "known_models", "load_model"]
