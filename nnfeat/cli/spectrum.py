"""``nnfeat spectrum``: a dataset's mean Fourier magnitude for ``--param maco`` (:func:`nnfeat.ops.spectrum.spectrum`)."""

from __future__ import annotations

from nnfeat.cli.common import add_images, positive
from nnfeat.data import load_images
from nnfeat.engine.spectrum import SPACES
from nnfeat.errors import NnfeatError
from nnfeat.models.zoo import load_model as load_named_model
from nnfeat.ops.spectrum import spectrum


def register(sub) -> None:
    p = sub.add_parser("spectrum", help="compute (and cache) a dataset's mean Fourier magnitude for --param maco")
    add_images(p)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, default=None, help="render size in px (default: the images' own size)")
    size.add_argument("--model", default=None, help="use this model's input size (e.g. cifar10-resnet20)")
    p.add_argument("--space", default="param", choices=SPACES,
                   help="param (default: for the default maco parameterization) or pixel")
    p.add_argument("--seed", type=int, default=0, help="seed of the --n sample (default 0)")
    p.add_argument("--out", default=None, help="also write the spectrum to this .pt file")
    p.add_argument("--png", default=None, help="also write a log-magnitude picture of it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_spectrum)


def _model_size(name: str) -> tuple[int, int]:
    return tuple(load_named_model(name, weights="random").input_size)


def cmd_spectrum(args) -> int:
    if args.size is not None and args.size < 2:
        raise NnfeatError(f"--size must be at least 2, got {args.size}")
    positive("n", args.n)
    images = load_images(args.images).sample(args.n, args.seed)
    size = (args.size, args.size) if args.size else (_model_size(args.model) if args.model else None)
    result = spectrum(images, size, space=args.space, progress=not args.quiet)
    print(f"spectrum of {result.count} images at {result.size[0]}x{result.size[1]} ({result.space} space): "
          f"{result.cache_path}")
    if args.out:
        print(f"wrote {result.save_magnitude(args.out)}")
    if args.png:
        print(f"wrote {result.save_picture(args.png)}")
    return 0
