"""What every command shares: the one-line-error parser, the shared options, model loading, running.

Shared options (each command adds the ones it uses, always with the same name, default and help):
``MODEL``, ``--weights``, ``--device`` (default ``auto``), ``--precision``, ``--seed``, ``--out``, ``--quiet``, and
the input spec options ``--normalize``, ``--classes`` and (for a command without its own) ``--size``
(see :mod:`nnfeat.models.spec`; :func:`load_model` applies them and prints the spec line).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Sequence

from nnfeat.data import FIT_POLICIES, load_images
from nnfeat.device import DEVICES_HELP, PRECISIONS, autocast_for, resolve_device
from nnfeat.distributed import current
from nnfeat.engine.param import PARAM_KINDS
from nnfeat.engine.spectrum import load_spectrum
from nnfeat.engine.transforms import TRANSFORM_PRESETS
from nnfeat.errors import NnfeatError, shorten
from nnfeat.models.spec import CLASSES_HELP, NORMALIZE_HELP, NORMALIZE_PRESETS, check_input, parse_classes, parse_normalize
from nnfeat.models.text import TokenModel
from nnfeat.models.zoo import load_model as load_named_model

MODEL_HELP = ("a model name (see `nnfeat models`): cifar10-resnet20, digits-cnn, digits-vit, inceptionv1, "
              "torchvision:NAME, timm:NAME, FILE.py:FACTORY, or a token model: dates-seq2seq, tiny-lm, minilm, "
              "hf:PATH")
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
                   help=f"pretrained, random, or a weights file (state_dict, checkpoint, safetensors, TorchScript, "
                        f".pt2) (default {weights}; random needs no download)")
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
    p.add_argument("--normalize", default=None, metavar="SPEC", help=NORMALIZE_HELP)
    p.add_argument("--classes", default=None, metavar="FILE|a,b,c", help=CLASSES_HELP)
    if "--size" not in p._option_string_actions:  # a command with its own --size keeps it (its meaning, its help)
        p.add_argument("--size", type=int, default=None, dest="input_size",
                       help="input size in px (default: the model's; for a model nnfeat does not know, the images' "
                            "own size)")


def add_images(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--images SRC`` and ``--n N`` (how many images; a seeded sample, from ``--seed``, when fewer than the source)."""
    p.add_argument("--images", required=required, default=None, metavar="SRC",
                   help="image source: a folder (sub-folders are labels), an .npz, 'digits' or a torchvision dataset "
                        "name" + ("" if required else " (optional)"))
    p.add_argument("--n", type=int, default=None, metavar="N",
                   help="how many images to use (default: all; fewer than the source: a sample drawn from --seed)")
    p.add_argument("--fit", choices=FIT_POLICIES, default=FIT_POLICIES[0],
                   help="how an image of another aspect ratio than the model's input is fitted: pad (default: "
                        "scaled to fit inside, centred on its own mean colour, so nothing is lost or distorted and "
                        "the border adds no edge), crop (scaled to cover, the centre kept) or stretch")


def load_images_from_args(args, model):
    """The ``--images``/``--n`` image set at ``model``'s input size (None without ``--images``); one-line errors
    for a missing source or an ``--n`` out of range, before any work. Says in one line each when images are
    fitted (``--fit``; then ``args.image_fit`` records it) or converted between grey and RGB."""
    if getattr(args, "images", None) is None:
        return None
    images = getattr(args, "image_set", None) or load_images(args.images)
    images.size = tuple(model.input_size)
    images.fit = getattr(args, "fit", None) or FIT_POLICIES[0]
    images = images.sample(args.n, getattr(args, "seed", 0))
    survey, (h, w), n = images.survey(images.size), images.size, len(images)
    notes = []
    if survey["fitted"]:
        args.image_fit = {"policy": images.fit, "fitted": survey["fitted"], "of": n, "size": [h, w]}
        how = {"pad": "keeps the aspect ratio", "crop": "keeps the centre", "stretch": "distorts the aspect ratio"}
        notes.append(f"{survey['fitted']} of {n} images are not {h}x{w} in shape; fitted by {images.fit} "
                     f"({how[images.fit]}; --fit)")
    grey, colour = survey["grey"], survey["colour"]
    if model.in_channels == 1 and colour and images.files is not None:
        notes.append(f"{colour} of {n} images are colour; converted to grey (Rec. 601 luma) for a 1-channel model")
    elif model.in_channels == 3 and grey:
        notes.append(f"{grey} of {n} images are grey; repeated to RGB" + ("" if colour else " for a 3-channel model"))
    for note in notes if current().writer else ():
        print(f"note: {note}")
    return images


def load_model(args):
    """The model named by ``args.model`` on ``args.device`` (checked first: a one-line error, no loading), with
    its input spec settled (:func:`input_spec`), checked by a probe forward (:func:`check_input`) and printed
    as one line; ``args.input_spec`` keeps it for the JSON record (:func:`finish`)."""
    device = resolve_device(getattr(args, "device", "auto"))
    model = load_named_model(args.model, weights=getattr(args, "weights", "pretrained"), device=device)
    if isinstance(model, TokenModel):  # text in: the tokenizer is the spec; image options do not apply
        args.input_spec = model.spec
        if current().writer:
            print(model.spec.describe())
        return model
    spec = input_spec(args, model)
    if spec != model.spec:
        model.use_spec(spec)
    if not spec.from_card():
        count = check_input(model)
        if spec.classes and spec.sources["classes"] == "images" and count != len(spec.classes):
            model.use_spec(dataclasses.replace(spec, classes=None, sources={**spec.sources, "classes": "default"}))
        args.input_spec = model.spec
    if current().writer:
        print(model.spec.describe())
    return model


def input_spec(args, model):
    """``model.spec`` with the input options of ``args`` applied (``--normalize``, ``--classes``, ``--size``;
    a command's own ``--size`` only for a model nnfeat does not know) and, for a spec of any size, the size
    (and class names, if it has none) of ``--images``; one-line errors for bad values."""
    spec, sources = model.spec, dict(model.spec.sources)
    changes: dict = {}
    if getattr(args, "normalize", None) is not None:
        changes["mean"], changes["std"] = parse_normalize(args.normalize, model.in_channels) or (None, None)
        sources["normalize"] = "--normalize"
        changes["preset"] = args.normalize.strip().lower() if changes["mean"] is not None and \
            args.normalize.strip().lower() in NORMALIZE_PRESETS else None
    if getattr(args, "classes", None) is not None:
        changes["classes"] = parse_classes(args.classes)
        sources["classes"] = "--classes"
    own_size = getattr(args, "size", None) if sources["size"] not in ("card", "model") else None
    size = getattr(args, "input_size", None)
    size = own_size if size is None else size
    if size is not None:
        positive("size", size, 2)
        if size > LIMITS["size"][1]:
            raise NnfeatError(f"--size {size} is out of range: valid is at most {LIMITS['size'][1]}")
        changes["size"] = changes["working_size"] = (size, size)
        sources["size"] = "--size"
    source = getattr(args, "images", None)
    wants_classes = sources["classes"] == "default" and source is not None and _is_folder(source)
    if source is not None and ((spec.size is None and size is None) or wants_classes):
        args.image_set = load_images(source)
    if spec.size is None and size is None and source is not None:
        changes["working_size"] = tuple(args.image_set.native_size)
        sources["size"] = "images"
    if wants_classes and args.image_set.classes:
        changes["classes"] = tuple(args.image_set.classes)
        sources["classes"] = "images"
    return dataclasses.replace(spec, **changes, sources=sources) if changes else spec


def _is_folder(source: str) -> bool:
    try:
        return os.path.isdir(os.path.expanduser(source))
    except (OSError, ValueError):
        return False


def command_line(argv: Sequence[str]) -> str:
    """The command as the user typed it, quoted for a shell (recorded in every JSON)."""
    return shlex.join(["nnfeat", *argv])


def positive(name: str, value, minimum: int = 1) -> None:
    """A one-line error unless ``value`` (an option's value) is None or at least ``minimum``."""
    if value is not None and value < minimum:
        raise NnfeatError(f"--{name.replace('_', '-')} must be at least {minimum}; got {value}")


#: Option -> (smallest, largest) value any command accepts: a value past these would not finish (or would crash
#: the allocator) rather than give a result, so it is refused before any work. Commands check their own,
#: often larger, minimums (:func:`positive`); ``None`` = no bound on that side.
LIMITS: dict[str, tuple[float | None, float | None]] = {
    "steps": (None, 100_000), "size": (None, 4096), "batch": (None, 4096), "seed": (0, 2**32 - 1),
    "n": (None, 100_000_000), "k": (None, 10_000), "lr": (None, 10.0), "top": (None, 100_000),
    "icon_size": (None, 1024), "thumb_size": (None, 1024), "grid": (None, 1000), "per_image": (None, 10_000),
    "min_count": (None, 100_000_000), "max_filters": (None, 100_000), "units_per_layer": (None, 100_000),
    "diversity": (None, 4096), "projection_n": (None, 10_000_000), "alphas": (None, 4096), "window": (None, 4096),
    "patch": (None, 4096), "cascade": (None, 10_000), "repeats": (None, 1000),
}
#: ``--samples`` means activation samples in ``atlas`` and noisy passes elsewhere.
SAMPLES_LIMIT = {"atlas": 100_000_000}
#: Float options that must be finite.
FLOATS = ("lr", "cossim_pow", "spatial_weight")
#: At most this many image pixels in one render batch (``--batch`` x ``--size``²: 256 images of 512 px).
RENDER_PIXELS = 2**26


def check_option_ranges(args) -> None:
    """One-line errors for option values no command can use (non-finite floats, a non-positive ``--lr``,
    values past :data:`LIMITS`), before any work. Options the command lacks or left at None are skipped."""
    for name in FLOATS:
        value = getattr(args, name, None)
        if value is not None and not math.isfinite(value):
            raise NnfeatError(f"--{_flag(name)} must be a finite number; got {value}")
    if getattr(args, "lr", None) is not None and args.lr <= 0:
        raise NnfeatError(f"--lr must be a positive learning rate (e.g. 0.05), at most {LIMITS['lr'][1]:g}; got {args.lr:g}")
    limits = dict(LIMITS, samples=(None, SAMPLES_LIMIT.get(getattr(args, "command", None), 4096)))
    for name, (low, high) in limits.items():
        value = getattr(args, name, None)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            valid = f"{_number(low)}..{_number(high)}" if low is not None and high is not None else \
                (f"at most {_number(high)}" if high is not None else f"at least {_number(low)}")
            raise NnfeatError(f"--{_flag(name)} {shorten(str(value), 40)} is out of range: valid is {valid}")


def check_render_pixels(batch: int | None, size: int | None, native: int) -> None:
    """A one-line error when ``batch`` images of ``size`` px (default ``native``) exceed :data:`RENDER_PIXELS`."""
    side = size or native
    if batch and batch * side * side > RENDER_PIXELS:
        most = max(1, RENDER_PIXELS // (side * side))
        raise NnfeatError(f"--batch {batch} of {side}x{side} px images is too large to render at once "
                          f"(at most {RENDER_PIXELS // 2**20} Mpx per batch): use --batch {most} or less, or a smaller --size")


def check_out_file(path: str | os.PathLike, flag: str, example: str) -> Path:
    """``path`` as a file an option writes (``--onnx FILE``), with the checks ``--out`` gets, before any work: a
    one-line error when it is a folder, lies under a file, or its folder cannot be made or written to."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise NnfeatError(f"{flag} {path} is a folder: give a file name such as {example}")
    for parent in path.parents:  # the nearest folder that exists: the file (and any folders above it) go there
        if parent.exists():
            if not parent.is_dir():
                raise NnfeatError(f"{flag} {path} lies under '{parent}', which is a file: choose another {flag}")
            if not _can_write_in(parent):
                raise NnfeatError(f"{flag} {path} cannot be written: '{parent}' is not writable; choose another {flag}")
            break
    if path.exists() and not os.access(path, os.W_OK):
        raise NnfeatError(f"{flag} {path} is not writable: choose another {flag}")
    return path


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be made in the existing ``folder`` (``os.access`` says yes to root on read-only mounts
    and on /proc): a nameless temporary file is made there and dropped at once."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return os.access(folder, os.W_OK)
    except OSError:
        return False


def check_k(k: int, images, source: str | None) -> None:
    """A one-line error when ``k`` examples per unit are asked of fewer images (``images``: an ImageSet or None)."""
    if images is not None and k > len(images):
        raise NnfeatError(f"--k {k} is more than the {len(images)} images of --images {shorten(str(source))}: "
                          f"use --k {len(images)} or less (or more images)")


def resolve_k(k: int | None, images, source: str | None, default: int) -> int:
    """Dataset examples per unit: a given ``k`` (a one-line error when larger than the source), or ``default``
    capped at the source's size when ``--k`` was not given (said in a note line)."""
    if k is not None:
        check_k(k, images, source)
        return k
    k = default if images is None else min(default, len(images))
    if k < default and current().writer:
        print(f"note: --k {k} (the source has {len(images)} images; the default is {default})")
    return k


def user_files(args) -> list[str]:
    """The user's own Python files the command runs (``FILE.py:FACTORY`` models, ``--objective-file``)."""
    texts = [str(v) for k, v in vars(args).items() if isinstance(v, str) and k in ("model", "objective_file")]
    files = []
    for text in texts:
        for part in text.split(","):
            file, sep, _name = part.rpartition(":")
            if sep and file.endswith(".py"):
                files.append(os.path.realpath(os.path.expanduser(file)))
    return files


def user_code_error(err: BaseException, files: Sequence[str]) -> NnfeatError | None:
    """A one-line error for an exception raised inside one of the user's ``files`` (a model's forward, a
    recipe), naming the file, line and the exception; None when no frame of the traceback is in those files
    (then it is nnfeat's own bug and keeps its traceback)."""
    if not files:
        return None
    frames = [f for f in traceback.extract_tb(err.__traceback__) if os.path.realpath(f.filename) in files]
    if not frames:
        return None
    frame = frames[-1]
    text = " ".join(str(err).split())
    what = f"{type(err).__name__}: {shorten(text, 160)}" if text else type(err).__name__
    return NnfeatError(f"your code in {frame.filename}:{frame.lineno} ({frame.name}) raised {what}; fix it there "
                       "(NNFEAT_DEBUG=1 shows the traceback)")


def out_of_memory_error(err: BaseException) -> NnfeatError | None:
    """A one-line error for running out of host or device memory (None for any other exception)."""
    text = str(err)
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and (
            "out of memory" in text.lower() or "can't allocate memory" in text or "not enough memory" in text)):
        return NnfeatError(f"out of memory ({shorten(' '.join(text.split()), 100) or type(err).__name__}): "
                           "use a smaller --batch, --size or --n")
    return None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _flag(name: str) -> str:
    return name.replace("_", "-")


def finish(result, args, out=None) -> int:
    """Record the command on ``result``, save it into ``out`` (default ``args.out``) and say where it went."""
    result.command = args.command_line
    if getattr(args, "input_spec", None) is not None:  # a model nnfeat does not know, or input options given
        result.input_spec = args.input_spec.record()
    result.image_fit = getattr(args, "image_fit", None)  # set by load_images_from_args when images were fitted
    path = result.save(out if out is not None else args.out)
    if current().writer:  # under torchrun only rank 0 writes the shared files, and says so
        print(f"wrote {path.parent}/ ({result.title()})")
    return 0


#: Default of ``--steps`` for ``render`` and ``microscope``.
STEPS = 256


def add_render_options(p: argparse.ArgumentParser) -> None:
    """The render options shared by ``render`` and ``microscope`` (same names, defaults and help)."""
    p.add_argument("--size", type=int, default=None, help="image size in px (default: the model's input size)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"optimization steps (default {STEPS})")
    p.add_argument("--param", default=None, choices=PARAM_KINDS,
                   help="image parameterization (default fft; maco when --spectrum is given)")
    p.add_argument("--spectrum", default=None, metavar="FILE.pt",
                   help="Fourier magnitude for --param maco, written by `nnfeat spectrum --out FILE.pt`")
    p.add_argument("--no-decorrelate", action="store_true", help="turn colour decorrelation off")
    p.add_argument("--transforms", default="auto", choices=TRANSFORM_PRESETS,
                   help="robustness transforms: auto (size-aware, default), standard (Lucid's), none")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 0.05; cppn 0.005)")
    p.add_argument("--thresholds", default=None, help="comma list of steps at which to save images, e.g. 32,128,256")


def _param_and_spectrum(args) -> tuple[str, object]:
    """``--param`` / ``--spectrum`` -> (kind, magnitude or None), with one-line errors for a bad pairing."""
    kind = args.param or ("maco" if args.spectrum else "fft")
    if args.spectrum and kind != "maco":
        raise NnfeatError(f"--spectrum is for --param maco, not --param {kind}: drop one of them")
    if kind == "maco" and not args.spectrum:
        raise NnfeatError("--param maco needs --spectrum FILE.pt: make one with "
                          "`nnfeat spectrum --images SRC --model MODEL --out FILE.pt`")
    if not args.spectrum:
        return kind, None
    return kind, load_spectrum(args.spectrum)


def render_kwargs(args) -> dict:
    """The keyword arguments of :func:`nnfeat.render` that the shared render options give."""
    positive("steps", args.steps)
    positive("size", args.size, 2)
    try:
        thresholds = [int(t) for t in args.thresholds.split(",")] if args.thresholds else None
    except ValueError:
        raise NnfeatError(f"bad --thresholds '{shorten(args.thresholds)}': expected a comma list of steps, e.g. 32,128,256"
                          ) from None
    if thresholds is not None and (min(thresholds) < 1 or max(thresholds) > args.steps):
        raise NnfeatError(f"--thresholds must lie in 1..{args.steps} (--steps); got {shorten(args.thresholds)}")
    kind, spectrum = _param_and_spectrum(args)
    return dict(size=args.size, steps=args.steps, lr=args.lr, seed=args.seed, param=kind, spectrum=spectrum,
                decorrelate=not args.no_decorrelate, transforms=args.transforms, thresholds=thresholds,
                autocast=autocast_for(args.precision))


__all__ = ["OneLineParser", "MODEL_HELP", "UNITS_HELP", "add_model", "add_shared", "add_images",
           "load_images_from_args", "load_model", "input_spec", "command_line",
           "positive", "finish", "LIMITS", "RENDER_PIXELS", "check_option_ranges", "check_render_pixels", "check_out_file", "check_k", "resolve_k", "STEPS", "add_render_options", "render_kwargs",
           "user_files", "user_code_error", "out_of_memory_error"]
