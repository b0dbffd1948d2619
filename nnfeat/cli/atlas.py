"""``nnfeat atlas``: an activation atlas (or class atlas) of a layer over a dataset, every stage cached."""

from __future__ import annotations

import argparse
import sys

from nnfeat.cli.common import add_images, add_model, add_shared, finish, load_images_from_args, load_model, positive
from nnfeat.distributed import current
from nnfeat.engine.transforms import TRANSFORM_PRESETS
from nnfeat.errors import NnfeatError
from nnfeat.finite import probe_finite
from nnfeat.layouts import OUTPUT
from nnfeat.ops.atlas import AtlasSettings, build_atlas
from nnfeat.ops.results import check_out_dir
from nnfeat.units import parse_units


def register(sub) -> None:
    p = sub.add_parser(
        "atlas", help="activation atlas of a layer over a dataset (resumable)",
        description="Build an activation atlas (Carter et al., Distill 2019): sample activations of LAYER over "
                    "--images, lay them out in 2-D, grid them, render one icon per cell and stitch the icons. "
                    "Every stage is cached in --out, so re-running the same command resumes where an interrupted "
                    "run stopped.")
    add_model(p)
    p.add_argument("layer", metavar="LAYER", help="a layer (units without channels: the whole layer, e.g. layer3)")
    add_images(p)
    p.add_argument("--samples", type=int, default=100_000, help="activation samples to collect (default 100000, "
                   "capped by images x --per-image)")
    p.add_argument("--per-image", type=int, default=1, help="spatial positions sampled per image (default 1)")
    p.add_argument("--layout", choices=("umap", "tsne", "pca"), default="umap", help="2-D layout (default umap)")
    p.add_argument("--grid", type=int, default=None, help="cells per side (default 20; class atlas 10)")
    p.add_argument("--min-count", type=int, default=None,
                   help="samples a cell needs to get an icon (default 5; class atlas 4)")
    p.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=True,
                   help="whiten cell directions with S = inv(AᵀA/N) in the icon objective (default on)")
    p.add_argument("--icon-size", type=int, default=None, help="icon side in px (default min(80, model input))")
    p.add_argument("--steps", type=int, default=512,
                   help="render steps per icon batch (default 512, the Activation Atlas paper's; `render` defaults "
                        "to 256, where single units of small models have converged)")
    p.add_argument("--batch", type=int, default=32, help="icons rendered together (default 32)")
    p.add_argument("--class", dest="class_", default=None, metavar="C",
                   help="class atlas: only samples whose attribution favours class C (name or index)")
    p.add_argument("--cossim-pow", type=float, default=3.0, help="exponent p of the icon objective (default 3)")
    p.add_argument("--spatial-weight", type=float, default=0.5,
                   help="add W x the cell direction averaged over all positions to the centre objective "
                        "(default 0.5: more recognisable icons; 0 is the paper's objective)")
    p.add_argument("--transforms", default="auto", choices=TRANSFORM_PRESETS,
                   help="render transforms (default auto; atlas: the Activation Atlas paper's icon set)")
    p.add_argument("--layout-sample", type=int, default=100_000,
                   help="above this many samples the layout is fitted on a seeded sample of this size and the rest "
                        "placed with transform (umap, pca; default 100000)")
    add_shared(p, out=None)
    p.add_argument("--out", default=None, help="output folder (default out/atlas-MODEL-LAYER[-CLASS])")
    p.set_defaults(func=cmd_atlas)


def safe_name(text: str) -> str:
    """``text`` with every character outside letters, digits and ``-_.`` replaced by ``_`` (for folder names)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def cmd_atlas(args) -> int:
    """``nnfeat atlas``: build or resume an atlas; prints one line per stage and the output paths."""
    units = parse_units(args.layer, what="atlas layer")
    if units.channels is not None or units.position is not None:
        raise NnfeatError(f"an atlas is of a whole layer: give '{units.layer}', not '{args.layer}'")
    suffix = f"-{safe_name(str(args.class_))}" if args.class_ is not None else ""
    out = check_out_dir(args.out or f"out/atlas-{safe_name(args.model)}-{safe_name(units.layer)}{suffix}")
    settings = AtlasSettings(samples=args.samples, per_image=args.per_image, layout=args.layout, grid=args.grid,
                             min_count=args.min_count, whiten=args.whiten, icon_size=args.icon_size, steps=args.steps,
                             batch=args.batch, seed=args.seed, class_=args.class_, cossim_pow=args.cossim_pow,
                             transforms=args.transforms, spatial_weight=args.spatial_weight,
                             precision=args.precision, layout_sample=args.layout_sample)
    settings.check()
    positive("n", args.n)
    model = load_model(args)
    model.check_layer(units.layer)
    probe_finite(model, [units.layer, OUTPUT])  # a NaN model fails now, not at the whitening
    images = load_images_from_args(args, model)
    try:
        result = build_atlas(model, units.layer, images, out, settings, progress=not args.quiet and sys.stderr.isatty(),
                             log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"interrupted: finished stages and icon batches are kept in {out}; run the same command to resume",
              file=sys.stderr)
        return 130
    finish(result, args, out)
    if current().writer:
        print(f"{result.mosaic} ({len(result.cells)} cells, mean cosine {result.mean_cosine:.3f}), {result.cells_json}"
              + (f", {result.html}" if result.html else ""))
    return 0


__all__ = ["register", "cmd_atlas", "safe_name"]
