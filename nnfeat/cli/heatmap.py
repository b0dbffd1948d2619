"""``nnfeat heatmap``: where in each image a layer's channels respond (activation heatmaps over the images)."""

from __future__ import annotations

from nnfeat.analysis.heatmap import check_spatial
from nnfeat.cli.common import UNITS_HELP, add_images, add_model, add_shared, finish, load_images_from_args, \
    load_model, positive
from nnfeat.cli.text_options import add_texts, check_inputs, texts_from_args
from nnfeat.errors import NnfeatError
from nnfeat.finite import probe_finite
from nnfeat.layouts import OUTPUT
from nnfeat.models.text import TokenModel
from nnfeat.ops.heatmap import check_top, heatmap
from nnfeat.ops.results import check_out_dir
from nnfeat.ops.token_heatmap import token_heatmap
from nnfeat.units import parse_units

DEFAULT_N = 8


def register(sub) -> None:
    p = sub.add_parser(
        "heatmap", help="activation heatmaps of a layer's channels over images",
        description="Overlay the maps of a conv or token layer on --images: the --top strongest channels "
                    "(by mean activation), the units given, or their sum / norm; one colour scale per figure. "
                    "A token model (--text/--text-file): per text, its tokens in a row and under them a strip of "
                    "the layer's --top strongest channels (by mean |activation| over the text's tokens).")
    add_model(p)
    p.add_argument("layer", metavar="LAYER", help=UNITS_HELP)
    add_images(p, required=False)
    add_texts(p, target=True)
    for action in p._actions:
        if action.dest == "n":  # default None: "at most 8", so a smaller source is not an --n error
            action.help = (f"how many images (default: {DEFAULT_N}, or all of a smaller source; fewer than the "
                           "source: a sample drawn from --seed)")
    p.add_argument("--reduce", choices=("channels", "sum", "norm"), default="channels",
                   help="one map per channel (default), or their sum or L2 norm")
    p.add_argument("--top", type=int, default=None,
                   help="with a plain LAYER: the K strongest channels (default 8, or every channel of a smaller layer)")
    p.add_argument("--scale", choices=("figure", "per-map"), default="figure",
                   help="one colour scale for the whole figure (default) or one per map")
    p.add_argument("--batch", type=int, default=64, help="images (or texts) per forward pass (default 64)")
    add_shared(p, out="out/heatmap", precision=False)
    p.set_defaults(func=cmd_heatmap)


def cmd_heatmap(args) -> int:
    units = parse_units(args.layer)
    if args.top is not None:
        positive("top", args.top)
        check_top(args.top, units, args.reduce)  # before the model loads
    positive("n", args.n)
    positive("batch", args.batch)
    out = check_out_dir(args.out)
    model = load_model(args)
    check_inputs(args, model)
    if isinstance(model, TokenModel):
        return _token_heatmap(args, model, units, out)
    if args.images is None:
        raise NnfeatError("heatmap needs --images SRC for an image model")
    model.units(units)
    check_spatial(model, units.layer)
    probe_finite(model, [units.layer, OUTPUT], channels=units.channels)  # the layer and the output, before work
    images = load_images_from_args(args, model)
    if args.n is None and len(images) > DEFAULT_N:
        images = images.sample(DEFAULT_N, args.seed)
    result = heatmap(model, units, images, reduce=args.reduce, top=args.top, scale=args.scale, batch_size=args.batch)
    return finish(result, args, out)


def _token_heatmap(args, model: TokenModel, units, out) -> int:
    texts = texts_from_args(args, default_n=DEFAULT_N)
    result = token_heatmap(model, units, texts, top=args.top, reduce=args.reduce, scale=args.scale,
                           target_texts=args.target_text, batch_size=args.batch)
    for note in result.notes:
        print(f"note: {note}")
    return finish(result, args, out)
