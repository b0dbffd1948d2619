"""Lucid's InceptionV1 (GoogLeNet as released in TensorFlow's ``inception5h``), with Lucid's layer names.

This is the network of the Feature Visualization (2017), Building Blocks (2018) and Activation Atlas
(2019) papers. Unit numbers from those papers (``mixed4a:476``, ``mixed4d:139``) index the same
channels here, because every mixed block concatenates its branches in the graph's order:
1x1, 3x3, 5x5, pool-reduce.

Layer names (all top-level modules of the network, registered in execution order)::

    conv2d0_pre_relu -> conv2d0 -> maxpool0 -> localresponsenorm0       64 ch, 112 -> 56 px at 224
    conv2d1_pre_relu -> conv2d1                                          64 ch, 56 px
    conv2d2_pre_relu -> conv2d2 -> localresponsenorm1 -> maxpool1        192 ch, 56 -> 28 px
    mixed3a, mixed3b                     256, 480 ch at 28 px
    maxpool4, mixed4a .. mixed4e         508, 512, 512, 528, 832 ch at 14 px
    maxpool10, mixed5a, mixed5b          832, 1024 ch at 7 px
    avgpool0 -> softmax2_pre_activation (the logits, 1008) -> softmax2 (probabilities)

Inside mixed block ``M`` (e.g. ``mixed4a``)::

    M_1x1_pre_relu                                              1x1 conv
    M_3x3_bottleneck_pre_relu -> M_3x3_bottleneck -> M_3x3_pre_relu    1x1 conv, ReLU, 3x3 conv
    M_5x5_bottleneck_pre_relu -> M_5x5_bottleneck -> M_5x5_pre_relu    1x1 conv, ReLU, 5x5 conv
    M_pool -> M_pool_reduce_pre_relu                            3x3 max pool, 1x1 conv
    M_pre_relu = concat(1x1, 3x3, 5x5, pool_reduce pre-ReLU values)   (Lucid adds this node too)
    M = ReLU(M_pre_relu)                                        the block output

``conv2d0`` .. ``conv2d2`` and ``mixed3a`` .. ``mixed5b`` are ``nn.ReLU`` modules, so a hook on them
sees the post-ReLU activation; the ``*_pre_relu`` names see the value before it. The ReLU of a
branch is taken after the concatenation (ReLU is elementwise, so ``mixed4a`` equals the
concatenation of the branches' ReLU outputs); :func:`branch_channel` says which branch a unit of a
mixed block belongs to.

The graph's operations are reproduced exactly:

* Input is RGB in ``[-117, 138]`` (``255 * x - 117``). :func:`load` expresses this as the wrapper's
  ``mean = 117/255``, ``std = 1/255``, so nnfeat images stay RGB in [0, 1].
* Convolutions and max pools use TensorFlow "SAME" padding, computed from the input size (at
  224 px: the 7x7 stride-2 conv pads 2 before / 3 after, stride-2 pools pad 0 / 1 with -inf). At
  every even size this equals the fixed padding of the public PyTorch port.
* Local response normalization with the graph's attributes: ``depth_radius=5, bias=2, alpha=1e-4,
  beta=0.5``. (The PyTorch port that lucent uses has ``size=9, alpha=1e-4, k=1`` instead; pass
  ``lrn="lucent"`` to reproduce lucent's numbers.)
* The head averages ``mixed5b`` globally (the graph's 7x7 VALID pool at 224 px) and applies the
  1024 -> 1008 ``softmax2`` classifier. The two auxiliary heads are not part of the weights file.
  The network returns the logits; the ``softmax2`` module gives the probabilities to hooks.

Weights: ``inception5h.pth`` from ProGamerGov's ``pytorch-old-tensorflow-models`` repository (the
file lucent downloads), 116 tensors, 7,066,380 parameters. Its keys are this network's keys with
``_conv`` (convolutions) or ``_matmul`` (classifier) appended to the module name; see
:func:`port_to_nnfeat_state_dict`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple

import torch
from torch import nn

from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model
# the TensorFlow blocks stay reachable as this port's names (iv.SameConv2d, iv.same_padding)
from nnfeat.models.tf_layers import Concat, SameConv2d, SameMaxPool2d, TFLocalResponseNorm, same_padding  # noqa: F401
from nnfeat.models.weights import fetch_weights

#: File name and public URL of the PyTorch port of Lucid's InceptionV1 (no hash is published).
WEIGHTS_FILE = "inception5h.pth"
WEIGHTS_URL = "https://github.com/ProGamerGov/pytorch-old-tensorflow-models/raw/master/inception5h.pth"
WEIGHTS_SHA256_PREFIX: str | None = None

#: ``(x - mean) / std`` with these values maps RGB [0, 1] to the graph's input range [-117, 138].
INPUT_MEAN = (117.0 / 255.0,) * 3
INPUT_STD = (1.0 / 255.0,) * 3
INPUT_SIZE = 224
NUM_CLASSES = 1008

#: Local response normalization, in TensorFlow's terms:
#: ``x / (bias + alpha * sum of x^2 over channels d-r..d+r) ** beta``.
LRN_SETTINGS = {
    # The attributes of localresponsenorm0/1 in Lucid's graph.
    "lucid": {"depth_radius": 5, "bias": 2.0, "alpha": 1e-4, "beta": 0.5},
    # What lucent's port computes: torch size=9, alpha=1e-4 (divided by size), k=1.
    "lucent": {"depth_radius": 4, "bias": 1.0, "alpha": 1e-4 / 9, "beta": 0.5},
}


class MixedSpec(NamedTuple):
    """Channel counts of one mixed (Inception) block."""

    name: str
    in_channels: int
    c1x1: int
    c3x3_bottleneck: int
    c3x3: int
    c5x5_bottleneck: int
    c5x5: int
    pool_reduce: int

    @property
    def out_channels(self) -> int:
        return self.c1x1 + self.c3x3 + self.c5x5 + self.pool_reduce

    @property
    def branches(self) -> tuple[tuple[str, int], ...]:
        """(branch suffix, channels) in concatenation order."""
        return (("1x1", self.c1x1), ("3x3", self.c3x3), ("5x5", self.c5x5), ("pool_reduce", self.pool_reduce))


MIXED_BLOCKS = (
    MixedSpec("mixed3a", 192, 64, 96, 128, 16, 32, 32),
    MixedSpec("mixed3b", 256, 128, 128, 192, 32, 96, 64),
    MixedSpec("mixed4a", 480, 192, 96, 204, 16, 48, 64),
    MixedSpec("mixed4b", 508, 160, 112, 224, 24, 64, 64),
    MixedSpec("mixed4c", 512, 128, 128, 256, 24, 64, 64),
    MixedSpec("mixed4d", 512, 112, 144, 288, 32, 64, 64),
    MixedSpec("mixed4e", 528, 256, 160, 320, 32, 128, 128),
    MixedSpec("mixed5a", 832, 256, 160, 320, 48, 128, 128),
    MixedSpec("mixed5b", 832, 384, 192, 384, 48, 128, 128),
)
_BLOCKS_BY_NAME = {spec.name: spec for spec in MIXED_BLOCKS}

#: Stride-2 max pools that precede a mixed block.
POOL_BEFORE = {"mixed4a": "maxpool4", "mixed5a": "maxpool10"}

#: The main layers Lucid lists for InceptionV1, with their channel counts.
LUCID_LAYERS = {
    "conv2d0": 64,
    "conv2d1": 64,
    "conv2d2": 192,
    **{spec.name: spec.out_channels for spec in MIXED_BLOCKS},
    "softmax2": NUM_CLASSES,
}


def _conv_shapes() -> dict[str, tuple[int, int, int]]:
    """``{conv module name: (in_channels, out_channels, kernel)}`` in execution order."""
    convs = {
        "conv2d0_pre_relu": (3, 64, 7),
        "conv2d1_pre_relu": (64, 64, 1),
        "conv2d2_pre_relu": (64, 192, 3),
    }
    for s in MIXED_BLOCKS:
        convs[f"{s.name}_1x1_pre_relu"] = (s.in_channels, s.c1x1, 1)
        convs[f"{s.name}_3x3_bottleneck_pre_relu"] = (s.in_channels, s.c3x3_bottleneck, 1)
        convs[f"{s.name}_3x3_pre_relu"] = (s.c3x3_bottleneck, s.c3x3, 3)
        convs[f"{s.name}_5x5_bottleneck_pre_relu"] = (s.in_channels, s.c5x5_bottleneck, 1)
        convs[f"{s.name}_5x5_pre_relu"] = (s.c5x5_bottleneck, s.c5x5, 5)
        convs[f"{s.name}_pool_reduce_pre_relu"] = (s.in_channels, s.pool_reduce, 1)
    return convs


CONV_SHAPES = _conv_shapes()
CLASSIFIER = "softmax2_pre_activation"

#: nnfeat state-dict key -> key in the port's ``inception5h.pth``.
_PORT_KEY_MAP = {
    **{f"{name}.{p}": f"{name}_conv.{p}" for name in CONV_SHAPES for p in ("weight", "bias")},
    **{f"{CLASSIFIER}.{p}": f"{CLASSIFIER}_matmul.{p}" for p in ("weight", "bias")},
}
_NNFEAT_KEY_MAP = {port: ours for ours, port in _PORT_KEY_MAP.items()}


# --------------------------------------------------------------------------------------------------
# The network


class InceptionV1(nn.Module):
    """Lucid's InceptionV1: (B, 3, H, W) RGB in [-117, 138] -> (B, 1008) logits (see the module docstring).

    Any input size works for the convolutional layers (SAME padding); the head pools globally.
    """

    def __init__(self, lrn: str = "lucid") -> None:
        super().__init__()
        if lrn not in LRN_SETTINGS:
            raise NnfeatError(f"unknown lrn setting '{lrn}'; choose one of {', '.join(LRN_SETTINGS)}")
        self.lrn = lrn
        self.conv2d0_pre_relu = self._conv("conv2d0_pre_relu", stride=2)
        self.conv2d0 = nn.ReLU()
        self.maxpool0 = SameMaxPool2d(3, stride=2)
        self.localresponsenorm0 = TFLocalResponseNorm(**LRN_SETTINGS[lrn])
        self.conv2d1_pre_relu = self._conv("conv2d1_pre_relu")
        self.conv2d1 = nn.ReLU()
        self.conv2d2_pre_relu = self._conv("conv2d2_pre_relu")
        self.conv2d2 = nn.ReLU()
        self.localresponsenorm1 = TFLocalResponseNorm(**LRN_SETTINGS[lrn])
        self.maxpool1 = SameMaxPool2d(3, stride=2)
        for spec in MIXED_BLOCKS:
            if spec.name in POOL_BEFORE:
                self.add_module(POOL_BEFORE[spec.name], SameMaxPool2d(3, stride=2))
            self._add_mixed(spec)
        self.avgpool0 = nn.AdaptiveAvgPool2d(1)
        self.softmax2_pre_activation = nn.Linear(MIXED_BLOCKS[-1].out_channels, NUM_CLASSES)
        self.softmax2 = nn.Softmax(dim=1)

    @staticmethod
    def _conv(name: str, stride: int = 1) -> SameConv2d:
        c_in, c_out, k = CONV_SHAPES[name]
        return SameConv2d(c_in, c_out, k, stride=stride)

    def _add_mixed(self, spec: MixedSpec) -> None:
        m = spec.name
        self.add_module(f"{m}_1x1_pre_relu", self._conv(f"{m}_1x1_pre_relu"))
        self.add_module(f"{m}_3x3_bottleneck_pre_relu", self._conv(f"{m}_3x3_bottleneck_pre_relu"))
        self.add_module(f"{m}_3x3_bottleneck", nn.ReLU())
        self.add_module(f"{m}_3x3_pre_relu", self._conv(f"{m}_3x3_pre_relu"))
        self.add_module(f"{m}_5x5_bottleneck_pre_relu", self._conv(f"{m}_5x5_bottleneck_pre_relu"))
        self.add_module(f"{m}_5x5_bottleneck", nn.ReLU())
        self.add_module(f"{m}_5x5_pre_relu", self._conv(f"{m}_5x5_pre_relu"))
        self.add_module(f"{m}_pool", SameMaxPool2d(3, stride=1))
        self.add_module(f"{m}_pool_reduce_pre_relu", self._conv(f"{m}_pool_reduce_pre_relu"))
        self.add_module(f"{m}_pre_relu", Concat())
        self.add_module(m, nn.ReLU())

    def _mixed(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """One mixed block: (B, C_in, H, W) -> (B, C_out, H, W), post-ReLU."""
        sub = self._modules
        b1 = sub[f"{m}_1x1_pre_relu"](x)
        b3 = sub[f"{m}_3x3_pre_relu"](sub[f"{m}_3x3_bottleneck"](sub[f"{m}_3x3_bottleneck_pre_relu"](x)))
        b5 = sub[f"{m}_5x5_pre_relu"](sub[f"{m}_5x5_bottleneck"](sub[f"{m}_5x5_bottleneck_pre_relu"](x)))
        bp = sub[f"{m}_pool_reduce_pre_relu"](sub[f"{m}_pool"](x))
        return sub[m](sub[f"{m}_pre_relu"](b1, b3, b5, bp))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-117, 138] -> (B, 1008) logits."""
        x = self.localresponsenorm0(self.maxpool0(self.conv2d0(self.conv2d0_pre_relu(x))))
        x = self.conv2d1(self.conv2d1_pre_relu(x))
        x = self.maxpool1(self.localresponsenorm1(self.conv2d2(self.conv2d2_pre_relu(x))))
        for spec in MIXED_BLOCKS:
            if spec.name in POOL_BEFORE:
                x = self._modules[POOL_BEFORE[spec.name]](x)
            x = self._mixed(spec.name, x)
        logits = self.softmax2_pre_activation(torch.flatten(self.avgpool0(x), 1))
        self.softmax2(logits)  # so hooks on "softmax2" see the probabilities
        return logits


def _init_random(net: nn.Module, seed: int) -> None:
    """Deterministic He-normal weights and zero biases drawn from a private ``torch.Generator``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
                module.bias.zero_()


def build_inceptionv1(*, lrn: str = "lucid", seed: int = 0) -> InceptionV1:
    """A randomly initialised :class:`InceptionV1` (deterministic in ``seed``; the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):  # nn layers' default init draws from the global RNG
        net = InceptionV1(lrn=lrn)
    _init_random(net, seed)
    return net


# --------------------------------------------------------------------------------------------------
# Weights


def nnfeat_to_port_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This network's state dict -> the key names of the port's ``inception5h.pth``."""
    unknown = [k for k in state if k not in _PORT_KEY_MAP]
    if unknown:
        raise NnfeatError(f"'{unknown[0]}' is not an InceptionV1 parameter ({len(unknown)} unknown keys)")
    return {_PORT_KEY_MAP[k]: v for k, v in state.items()}


def port_to_nnfeat_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The port's ``inception5h.pth`` keys (``conv2d0_pre_relu_conv.weight``) -> this network's keys.

    Keys that are already this network's names are kept as they are.
    """
    return {_NNFEAT_KEY_MAP.get(k, k): v for k, v in state.items()}


def load_weights(net: InceptionV1, path: str | Path) -> InceptionV1:
    """Load an ``inception5h.pth`` state dict (port or nnfeat key names) into ``net``, strictly."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user-facing problem
        raise NnfeatError(f"cannot read weights file {path} ({type(err).__name__}); delete it so it is fetched again") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise NnfeatError(f"weights file {path} holds no state dict; expected {WEIGHTS_FILE} from {WEIGHTS_URL}")
    state = port_to_nnfeat_state_dict({str(k).removeprefix("module."): v for k, v in state.items()})
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state
             and (not torch.is_tensor(state[k]) or tuple(state[k].shape) != tuple(expected[k].shape))]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                key = _PORT_KEY_MAP.get(keys[0], keys[0])
                parts.append(f"{len(keys)} {label}, e.g. {key}")
        raise NnfeatError(
            f"weights file {path} is not Lucid's InceptionV1 ({'; '.join(parts)}); expected {WEIGHTS_FILE} from {WEIGHTS_URL}"
        )
    net.load_state_dict(state, strict=True)
    return net


def branch_channel(layer: str, channel: int) -> tuple[str, int]:
    """Which branch a unit of a mixed block comes from: ``("mixed4a", 476) -> ("mixed4a_pool_reduce", 32)``.

    For a ``*_pre_relu`` block name the branch's pre-ReLU module is returned
    (``("mixed4a_pre_relu", 476) -> ("mixed4a_pool_reduce_pre_relu", 32)``).
    """
    block, pre = (layer[: -len("_pre_relu")], "_pre_relu") if layer.endswith("_pre_relu") else (layer, "")
    spec = _BLOCKS_BY_NAME.get(block)
    if spec is None:
        raise NnfeatError(f"'{layer}' is not a mixed block; use one of {', '.join(_BLOCKS_BY_NAME)}")
    if not 0 <= channel < spec.out_channels:
        raise NnfeatError(f"{layer} has channels 0..{spec.out_channels - 1}, not {channel}")
    offset = channel
    for suffix, width in spec.branches:
        if offset < width:
            return f"{block}_{suffix}{pre}", offset
        offset -= width
    raise AssertionError("unreachable")  # pragma: no cover


def load(weights: str = "pretrained", *, lrn: str = "lucid", seed: int = 0, progress: bool = True) -> Model:
    """Lucid's InceptionV1 wrapped as an nnfeat :class:`Model` (RGB [0, 1] in, 1008 logits out, 224 px).

    Args:
        weights: ``"pretrained"`` (fetch ``inception5h.pth``, see :mod:`nnfeat.models.weights`),
            ``"random"`` (He-normal init from ``seed``), or the path of an ``inception5h.pth`` file (recorded
            as given in the model's ``weights``).
        lrn: ``"lucid"`` (the TensorFlow graph's LRN, default) or ``"lucent"`` (lucent's port).
        seed: seed of the random initialisation (only matters for ``"random"``).
        progress: show a download progress bar.
    """
    net = build_inceptionv1(lrn=lrn, seed=seed)
    if weights == "pretrained":
        path = fetch_weights(WEIGHTS_FILE, WEIGHTS_URL, sha256_prefix=WEIGHTS_SHA256_PREFIX, progress=progress)
        load_weights(net, path)
    elif weights != "random":
        if not Path(weights).is_file():
            raise NnfeatError(
                f"unknown weights '{weights}' for inceptionv1; use 'pretrained', 'random' or a path to {WEIGHTS_FILE}"
            )
        load_weights(net, weights)
    label = weights if weights in ("pretrained", "random") else "pretrained"
    return Model(net, name="inceptionv1", mean=INPUT_MEAN, std=INPUT_STD, input_size=INPUT_SIZE, weights=label)
