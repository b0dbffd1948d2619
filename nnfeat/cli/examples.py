"""``nnfeat examples``: the dataset images that excite (and inhibit) units most."""

from __future__ import annotations

import sys

from nnfeat.cli.atlas import safe_name
from nnfeat.cli.common import UNITS_HELP, add_images, add_model, add_shared, finish, \
    load_images_from_args, load_model, positive, resolve_k
from nnfeat.cli.text_options import add_texts, check_inputs, texts_from_args
from nnfeat.distributed import current
from nnfeat.errors import NnfeatError
from nnfeat.finite import probe_finite
from nnfeat.models.text import TokenModel
from nnfeat.ops.examples import examples
from nnfeat.ops.results import check_out_dir
from nnfeat.ops.token_examples import DEFAULT_WINDOW, MAX_WINDOW, token_examples, token_units
from nnfeat.units import parse_units


#: Examples per unit and direction when --k is not given (fewer when the source has fewer images).
DEFAULT_K = 9


def register(sub) -> None:
    p = sub.add_parser(
        "examples", help="top and bottom dataset examples of units",
        description="Find the images of --images that excite each unit most (and least), and the receptive-field "
                    "patch around its strongest position. Token models: over a --text-file corpus, each unit's top "
                    "and bottom tokens in their context (--window tokens each side); with --text, each unit's "
                    "activation at every token of the texts.")
    add_model(p)
    p.add_argument("units", metavar="UNITS", help=UNITS_HELP)
    add_images(p, required=False)
    add_texts(p)
    p.add_argument("--window", type=int, default=None,
                   help=f"token models: tokens shown on each side of a top/bottom token (default {DEFAULT_WINDOW})")
    p.add_argument("--k", type=int, default=None,
                   help=f"examples per unit and direction (default {DEFAULT_K}, or every image of a smaller source)")
    p.add_argument("--score", choices=("mean", "max"), default="mean",
                   help="rank images by the unit's spatial mean (default) or max")
    p.add_argument("--batch", type=int, default=128, help="images per forward pass (default 128)")
    add_shared(p, out=None, precision=False)
    p.add_argument("--out", default=None, help="output folder (default out/examples-MODEL-LAYER)")
    p.set_defaults(func=cmd_examples)


def cmd_examples(args) -> int:
    units = parse_units(args.units)
    positive("k", args.k)
    positive("batch", args.batch)
    positive("n", args.n)
    out = check_out_dir(args.out or f"out/examples-{safe_name(args.model)}-{safe_name(units.layer)}")
    if args.window is not None and not 0 <= args.window <= MAX_WINDOW:
        raise NnfeatError(f"--window must be 0..{MAX_WINDOW}; got {args.window}")
    model = load_model(args)
    check_inputs(args, model)
    if isinstance(model, TokenModel):
        return _token_examples(args, model, units, out)
    if args.window is not None:
        raise NnfeatError("--window is for token models (text contexts); image examples show receptive-field patches")
    if args.images is None:
        raise NnfeatError("examples needs --images SRC for an image model")
    model.units(units)
    probe_finite(model, [units.layer], channels=units.channels)
    images = load_images_from_args(args, model)
    args.k = resolve_k(args.k, images, args.images, DEFAULT_K)
    result = examples(model, units, images, k=args.k, score=args.score, batch_size=args.batch,
                      progress=not args.quiet and sys.stderr.isatty(), cache=out / "cache")
    if current().writer:  # under torchrun rank 0 speaks for the group
        print(f"note: {result.field_note}")
    return finish(result, args, out)


def _token_examples(args, model: TokenModel, units, out) -> int:
    """``--text``: the units over those texts; ``--text-file``: their top and bottom contexts over the corpus."""
    texts = texts_from_args(args)
    if args.text is not None:
        if args.k is not None or args.window is not None:
            raise NnfeatError("--k and --window are for contexts over a --text-file corpus; with --text every "
                              "token of each text is shown")
        result = token_units(model, units, texts, batch_size=args.batch)
    else:
        result = token_examples(model, units, texts, k=args.k if args.k is not None else DEFAULT_K,
                                window=DEFAULT_WINDOW if args.window is None else args.window,
                                batch_size=args.batch, cache=out / "cache")
        if current().writer and result.reused:
            print(f"note: {result.reused} of {result.reused + result.computed} corpus chunks came from the cache "
                  f"({out / 'cache'})")
    if current().writer:
        for note in result.notes:
            print(f"note: {note}")
    return finish(result, args, out)
