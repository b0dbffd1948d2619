"""What every command shares: the one-line-error parser, the shared options, model loading, running.

Shared options (each command adds the ones it uses, always with the same name, default and help):
``MODEL``, ``--weights``, ``--device`` (default ``auto``), ``--precision``, ``--seed``, ``--out``, ``--quiet``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Sequence

from nnfeat.device import DEVICES_HELP, PRECISIONS
from nnfeat.errors import NnfeatError

MODEL_HELP = ("a model name (see `nnfeat models`): cifar10-resnet20, digits-cnn, digits-vit, inceptionv1, "
              "torchvision:NAME, timm:NAME or FILE.py:FACTORY")
UNITS_HELP = ("units (see the README's unit table): LAYER (every channel), LAYER:5, LAYER:0,4,7, LAYER:0..15, "
              "LAYER:5@Y,X")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what was wrong, what is valid, where help is), exit 2."""

    def error(self, message: str):
        print(f"nnfeat: error: {message} (see '{self.prog} -h')", file=sys.stderr)
        sys.exit(2)


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=MODEL_HELP)


def add_shared(p: argparse.ArgumentParser, *, out: str | None, weights: str = "pretrained", seed: bool = True,
               precision: bool = True) -> None:
    """The shared options. ``out``: the default output folder (None: the command writes no folder)."""
    p.add_argument("--weights", default=weights,
                   help=f"pretrained or random (default {weights}; random needs no download)")
    p.add_argument("--device", default="auto", help=DEVICES_HELP)
    if precision:
        p.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="model arithmetic: auto (bf16 where it was measured to pay on this device, else fp32; "
                            "default), fp32, bf16")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0): the same seed gives the same bytes")
    if out is not None:
        p.add_argument("--out", default=out, help=f"output folder (default {out})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_images(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--images SRC`` and ``--n N`` (how many images; a seeded sample, from ``--seed``, when fewer than the source)."""
    p.add_argument("--images", required=required, default=None, metavar="SRC",
                   help="image source: a folder (sub-folders are labels), an .npz, 'digits' or a torchvision dataset "
                        "name" + ("" if required else " (optional)"))
    p.add_argument("--n", type=int, default=None, metavar="N",
                   help="how many images to use (default: all; fewer than the source: a sample drawn from --seed)")


def load_images_from_args(args, model):
    """The ``--images``/``--n`` image set at ``model``'s input size (None without ``--images``); one-line errors
    for a missing source or an ``--n`` out of range, before any work."""
    if getattr(args, "images", None) is None:
        return None
    from nnfeat.data import load_images

    return load_images(args.images, size=model.input_size).sample(args.n, getattr(args, "seed", 0))


def load_model(args):
    """The model named by ``args.model`` on ``args.device`` (checked first: a one-line error, no loading)."""
    from nnfeat.device import resolve_device
    from nnfeat.models.zoo import load_model as load

    device = resolve_device(getattr(args, "device", "auto"))
    return load(args.model, weights=getattr(args, "weights", "pretrained"), device=device)


def command_line(argv: Sequence[str]) -> str:
    """The command as the user typed it, quoted for a shell (recorded in every JSON)."""
    return shlex.join(["nnfeat", *argv])


def positive(name: str, value, minimum: int = 1) -> None:
    """A one-line error unless ``value`` (an option's value) is None or at least ``minimum``."""
    if value is not None and value < minimum:
        raise NnfeatError(f"--{name.replace('_', '-')} must be at least {minimum}; got {value}")


def finish(result, args, out=None) -> int:
    """Record the command on ``result``, save it into ``out`` (default ``args.out``) and say where it went."""
    result.command = args.command_line
    path = result.save(out if out is not None else args.out)
    print(f"wrote {path.parent}/ ({result.title()})")
    return 0


__all__ = ["OneLineParser", "MODEL_HELP", "UNITS_HELP", "add_model", "add_shared", "add_images",
           "load_images_from_args", "load_model", "command_line",
           "positive", "finish"]
