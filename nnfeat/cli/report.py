"""``nnfeat report``: one offline folder (open ``index.html``) with the architecture, a page per layer and unit,
and the classes, built from the other commands' stages and resumable (see :mod:`nnfeat.ops.report`)."""

from __future__ import annotations

import sys

from nnfeat.cli.common import add_images, add_model, add_shared, load_images_from_args, load_model, positive
from nnfeat.distributed import current
from nnfeat.ops.report import report
from nnfeat.ops.results import check_out_dir


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="an offline Microscope of a model: every layer, unit and class in one folder",
        description="Write a browsable folder (open index.html; no server): the architecture page linked to one "
                    "page per layer (unit renders, top and bottom dataset examples, heatmaps, the projection, "
                    "the atlas where asked), one page per unit (renders at several thresholds, diversity "
                    "renders, examples with heatmaps, filter weights for conv units) and a classes page (class "
                    "renders, saliency with sanity numbers, the most uncertain images). A killed run resumes.")
    add_model(p)
    add_images(p)
    p.add_argument("--layers", default=None, metavar="A,B,...",
                   help="layer names (default: each block of the model's top-level stages, else its top-level "
                        "convolutions, and the logits 'output')")
    p.add_argument("--units-per-layer", type=int, default=16, help="units 0..N-1 of each layer (default 16)")
    p.add_argument("--steps", type=int, default=128, help="render steps (default 128)")
    p.add_argument("--batch", type=int, default=16, help="units rendered together (default 16)")
    p.add_argument("--diversity", type=int, default=3,
                   help="images per unit's diversity render (default 3; 0 or 1: none)")
    p.add_argument("--projection-n", type=int, default=1000,
                   help="images in each layer's projection (default 1000, a seeded sample; `nnfeat project` lays out any number)")
    p.add_argument("--projection-method", default="pca", choices=("pca", "tsne", "umap"),
                   help="projection layout (default pca)")
    p.add_argument("--atlas", default=None, metavar="LAYER[,LAYER]", help="also build these layers' atlases")
    add_shared(p, out="out/report", precision=False)
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    for name in ("units_per_layer", "steps", "batch", "projection_n", "n"):
        positive(name, getattr(args, name))
    positive("diversity", args.diversity, 0)
    out = check_out_dir(args.out)
    model = load_model(args)
    images = load_images_from_args(args, model)
    result = report(model, images, out, layers=args.layers, units_per_layer=args.units_per_layer, steps=args.steps,
                    seed=args.seed, batch=args.batch, diversity=args.diversity, projection_n=args.projection_n,
                    projection_method=args.projection_method, atlas=args.atlas, progress=not args.quiet)
    if not current().writer:  # under torchrun rank 0 speaks for the group
        return 0
    for stage, note in result.notes.items():
        print(f"note: {stage}: {note}", file=sys.stderr)
    print(f"wrote {out}/index.html ({result.title()})")
    return 0
