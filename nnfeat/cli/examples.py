"""``nnfeat examples``: the dataset images that excite (and inhibit) units most."""

from __future__ import annotations

import sys

from nnfeat.cli.atlas import safe_name
from nnfeat.cli.common import UNITS_HELP, add_images, add_model, add_shared, finish, \
    load_images_from_args, load_model, positive, resolve_k
from nnfeat.distributed import current
from nnfeat.finite import probe_finite
from nnfeat.ops.examples import examples
from nnfeat.ops.results import check_out_dir
from nnfeat.units import parse_units


#: Examples per unit and direction when --k is not given (fewer when the source has fewer images).
DEFAULT_K = 9


def register(sub) -> None:
    p = sub.add_parser(
        "examples", help="top and bottom dataset examples of units",
        description="Find the images of --images that excite each unit most (and least), and the receptive-field "
                    "patch around its strongest position.")
    add_model(p)
    p.add_argument("units", metavar="UNITS", help=UNITS_HELP)
    add_images(p)
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
    model = load_model(args)
    model.units(units)
    probe_finite(model, [units.layer], channels=units.channels)
    images = load_images_from_args(args, model)
    args.k = resolve_k(args.k, images, args.images, DEFAULT_K)
    result = examples(model, units, images, k=args.k, score=args.score, batch_size=args.batch,
                      progress=not args.quiet and sys.stderr.isatty(), cache=out / "cache")
    if current().writer:  # under torchrun rank 0 speaks for the group
        print(f"note: {result.field_note}")
    return finish(result, args, out)
