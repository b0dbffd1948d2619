"""``nnfeat project``: a layer's pooled activations laid out in 2-D (PCA, t-SNE or UMAP), scored, drawn and
exported (PNG, an interactive HTML scatter, optionally a TensorBoard Projector folder)."""

from __future__ import annotations

import sys

from nnfeat.analysis.collect import POOLS
from nnfeat.analysis.projection import PROJECTIONS
from nnfeat.cli.common import add_images, add_model, add_shared, finish, load_images_from_args, load_model, positive
from nnfeat.finite import probe_finite
from nnfeat.ops.project import parse_layers, project
from nnfeat.ops.results import check_out_dir


def register(sub) -> None:
    p = sub.add_parser(
        "project", help="lay out a layer's activations over images in 2-D (pca, tsne, umap)",
        description="Pool each image's activations of LAYER (several: LAYER,LAYER2,...), lay them out in 2-D, and "
                    "report how much structure the map keeps: trustworthiness and k-NN label accuracy. Writes "
                    "projection.png, an interactive projection.html and, with --tensorboard, a Projector folder. "
                    "Activations are cached in --out: another --method reuses them.")
    add_model(p)
    p.add_argument("layers", metavar="LAYER[,LAYER2,...]", help="one or more whole layers, comma-separated")
    add_images(p)
    p.add_argument("--method", choices=PROJECTIONS.names(), default="umap", help="the 2-D layout (default umap)")
    p.add_argument("--pool", choices=POOLS, default="mean",
                   help="how a map becomes one vector per image: spatial mean (default), max, or the centre "
                        "position (token layers: the class token)")
    p.add_argument("--k", type=int, default=None,
                   help="neighbours for trustworthiness and k-NN accuracy (default 10, fewer for under 21 images)")
    p.add_argument("--thumbnails", action="store_true", help="paste image thumbnails on the PNG scatter")
    p.add_argument("--thumb-size", type=int, default=32, help="thumbnail size in px (default 32; sprites shrink to fit)")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write a TensorBoard Projector folder (tensorboard --logdir DIR)")
    p.add_argument("--batch", type=int, default=128, help="images per forward pass (default 128)")
    add_shared(p, out="out/project", precision=False)
    p.set_defaults(func=cmd_project)


def cmd_project(args) -> int:
    layers = parse_layers(args.layers)
    if args.k is not None:
        positive("k", args.k)
    positive("n", args.n, 3)
    positive("batch", args.batch)
    positive("thumb_size", args.thumb_size, 2)
    out = check_out_dir(args.out)
    if args.tensorboard is not None:
        check_out_dir(args.tensorboard)
    model = load_model(args)
    for layer in layers:
        model.units(layer)
    probe_finite(model, layers)
    images = load_images_from_args(args, model)
    if args.k is None:  # the default adapts to a small source: k must stay below half the images
        args.k = min(10, max(1, (len(images) + 1) // 2 - 1))
        if args.k != 10:
            print(f"note: --k {args.k} (neighbours for the scores; the default 10 needs at least 21 images)")
    result = project(model, layers, images, method=args.method, pool=args.pool, k=args.k, seed=args.seed,
                     batch_size=args.batch, cache=out / "cache", thumbnails=args.thumbnails,
                     thumb_size=args.thumb_size, tensorboard=args.tensorboard,
                     progress=not args.quiet and sys.stderr.isatty())
    for layer in result.layers:
        print(f"{result.caption(layer).replace(chr(10), '; ')}"
              + ("  (activations from the cache)" if result.cached[layer]["collect"] else ""))
    if result.tensorboard:
        print(f"wrote {result.tensorboard}/ (tensorboard --logdir {result.tensorboard}, then the Projector tab)")
    return finish(result, args, out)
