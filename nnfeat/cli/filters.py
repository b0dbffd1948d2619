"""``nnfeat filters``: a conv layer's weights as signed tiles (zero = mid-grey), optionally beside each unit's
render (``--with-renders``) and top dataset examples (``--images``)."""

from __future__ import annotations

from nnfeat.cli.common import add_images, add_model, add_shared, finish, load_images_from_args, \
    load_model, positive, resolve_k
from nnfeat.ops.filters import check_filters, filters
from nnfeat.ops.results import check_out_dir

DEFAULT_K = 4
#: the defaults of :func:`nnfeat.ops.filters.filters` (repeated here for the parser's help; a test checks they
#: agree)
MAX_FILTERS = 64
STEPS = 128


def register(sub) -> None:
    p = sub.add_parser(
        "filters", help="a conv layer's filters as signed tiles (zero = mid-grey)",
        description="Show a 2-D convolution's weights on one symmetric scale, zero at exactly mid-grey: the first "
                    "convolution as RGB tiles, deeper layers as per-input-channel grey tiles; with --with-renders "
                    "and/or --images, each filter beside its unit's render and top dataset examples.")
    add_model(p)
    p.add_argument("layer", metavar="LAYER", nargs="?", default=None,
                   help="a conv layer (default: the first nn.Conv2d); LAYER:0..7 picks filters")
    p.add_argument("--scale", choices=("layer", "filter"), default="layer",
                   help="one symmetric scale for the layer (default) or one per filter")
    p.add_argument("--max-filters", type=int, default=MAX_FILTERS,
                   help=f"with a plain LAYER: show at most this many filters, the first ones (default {MAX_FILTERS})")
    p.add_argument("--with-renders", action="store_true", help="render each shown filter's unit beside it")
    p.add_argument("--steps", type=int, default=STEPS, help=f"render steps with --with-renders (default {STEPS})")
    add_images(p, required=False)
    p.add_argument("--k", type=int, default=None, help=f"top dataset examples per filter with --images "
                                                       f"(default {DEFAULT_K}, or every image of a smaller source)")
    add_shared(p, out="out/filters", precision=False)
    p.set_defaults(func=cmd_filters)


def cmd_filters(args) -> int:
    positive("max_filters", args.max_filters)
    positive("steps", args.steps)
    positive("k", args.k)
    positive("n", args.n)
    out = check_out_dir(args.out)
    model = load_model(args)
    check_filters(model, args.layer, scale=args.scale, max_filters=args.max_filters)
    images = load_images_from_args(args, model)
    args.k = resolve_k(args.k, images, args.images, DEFAULT_K)
    result = filters(model, args.layer, scale=args.scale, max_filters=args.max_filters,
                     with_renders=args.with_renders, images=images, steps=args.steps, k=args.k, seed=args.seed,
                     progress=not args.quiet)
    return finish(result, args, out)
