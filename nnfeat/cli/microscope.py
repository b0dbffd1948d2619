"""``nnfeat microscope``: one render per unit of a layer, resumable, with a page
(:func:`nnfeat.ops.microscope.microscope`)."""

from __future__ import annotations

from nnfeat.cli.common import UNITS_HELP, add_images, add_model, add_render_options, add_shared, \
    check_render_pixels, finish, load_images_from_args, load_model, positive, render_kwargs, resolve_k
from nnfeat.finite import probe_finite
from nnfeat.ops.microscope import microscope
from nnfeat.ops.results import check_out_dir


#: Dataset examples per unit with --images when --k is not given.
DEFAULT_K = 4


def register(sub) -> None:
    p = sub.add_parser("microscope", help="render one image per unit of a layer (resumable), with a page",
                       description="Render every unit (default: every channel of LAYER), BATCH units per render; "
                                   "finished batches are kept in --out and a re-run resumes.")
    add_model(p)
    p.add_argument("units", metavar="UNITS", help=UNITS_HELP)
    p.add_argument("--batch", type=int, default=16, help="units rendered together (default 16)")
    add_images(p, required=False)
    p.add_argument("--k", type=int, default=None,
                   help=f"dataset examples per unit with --images (default {DEFAULT_K}, or every image of a smaller "
                        "source)")
    add_render_options(p)
    add_shared(p, out="out/microscope")
    p.set_defaults(func=cmd_microscope)


def cmd_microscope(args) -> int:
    positive("batch", args.batch)
    positive("k", args.k)
    positive("n", args.n)
    out = check_out_dir(args.out)
    kwargs = render_kwargs(args)
    model = load_model(args)
    size = (kwargs["size"] or model.input_size[0],) * 2
    parsed, channels = model.units(args.units, size)  # bad units: one line before any work
    check_render_pixels(min(args.batch, len(channels)), kwargs["size"], model.input_size[0])
    probe_finite(model, [parsed.layer], size)  # a NaN model fails now, not after the first finished batches
    images = load_images_from_args(args, model)  # a bad source fails now, not after the renders
    args.k = resolve_k(args.k, images, args.images, DEFAULT_K)
    result = microscope(model, args.units, out=out, batch=args.batch, images=images, examples_k=args.k,
                        progress=not args.quiet, **kwargs)
    return finish(result, args)
