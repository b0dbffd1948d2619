"""CLI commands ``nnfeat atlas`` and ``nnfeat examples`` (wired into ``nnfeat/cli.py`` by :func:`register`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``atlas`` and ``examples`` sub-commands to an argparse ``subparsers`` object."""
    from nnfeat.device import PRECISIONS

    atlas = subparsers.add_parser(
        "atlas", help="activation atlas of a layer over a dataset (REFERENCE §4)",
        description="Build an activation atlas: sample activations of LAYER over --images, lay them out in 2-D, "
                    "grid them, render one icon per cell and stitch the icons. Every stage is cached in --out, "
                    "so re-running the same command resumes where an interrupted run stopped.")
    atlas.add_argument("model", help="model name (see `nnfeat models`)")
    atlas.add_argument("layer", help="layer name (see `nnfeat layers MODEL`)")
    atlas.add_argument("--images", required=True, metavar="SRC",
                       help="image source: folder, .npz, 'digits' or a torchvision dataset name (cifar10[:train])")
    atlas.add_argument("--n", type=int, default=100_000, help="activation samples to collect (default 100000, "
                       "capped by images x --per-image)")
    atlas.add_argument("--per-image", type=int, default=1, help="spatial positions sampled per image (default 1)")
    atlas.add_argument("--layout", choices=("umap", "tsne", "pca"), default="umap", help="2-D layout (default umap)")
    atlas.add_argument("--grid", type=int, default=None, help="cells per side (default 20; class atlas 10)")
    atlas.add_argument("--min-count", type=int, default=None,
                       help="samples a cell needs to get an icon (default 5; class atlas 4)")
    atlas.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=True,
                       help="whiten cell directions with S = inv(AᵀA/N) in the icon objective (default on)")
    atlas.add_argument("--icon-size", type=int, default=None, help="icon side in px (default min(80, model input))")
    atlas.add_argument("--steps", type=int, default=512, help="render steps per icon batch (default 512)")
    atlas.add_argument("--batch", type=int, default=32, help="icons rendered together (default 32)")
    atlas.add_argument("--seed", type=int, default=0, help="seed of sampling, layout and icons (default 0)")
    atlas.add_argument("--class", dest="class_", default=None, metavar="C",
                       help="class atlas: only samples whose attribution favours class C (name or index)")
    atlas.add_argument("--cossim-pow", type=float, default=3.0, help="exponent p of the icon objective (default 3)")
    atlas.add_argument("--spatial-weight", type=float, default=0.5,
                       help="add W x the cell direction averaged over all positions to the centre objective "
                            "(default 0.5: more recognisable icons; 0 is the paper's objective)")
    atlas.add_argument("--transforms", default="auto", choices=("auto", "standard", "none"),
                       help="render transforms (default auto)")
    atlas.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="icon render arithmetic (default auto: bf16 where the device has native bf16)")
    atlas.add_argument("--limit", type=int, default=None, help="use only the first N images of the source")
    atlas.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: cuda when available)")
    atlas.add_argument("--out", default=None, help="output folder (default out/atlas-MODEL-LAYER[-CLASS])")
    atlas.set_defaults(func=run_atlas)

    examples = subparsers.add_parser(
        "examples", help="top and bottom dataset examples of channels",
        description="Find the images of --images that excite a channel most (and least), and the receptive-field "
                    "patch around the strongest position.")
    examples.add_argument("model", help="model name (see `nnfeat models`)")
    examples.add_argument("unit", metavar="LAYER:CH", help="layer and channel(s), e.g. layer3:5, layer3:0,4,7, layer3:0-3")
    examples.add_argument("--images", required=True, metavar="SRC",
                          help="image source: folder, .npz, 'digits' or a torchvision dataset name")
    examples.add_argument("--k", type=int, default=9, help="examples per channel and direction (default 9)")
    examples.add_argument("--score", choices=("mean", "max"), default="mean",
                          help="rank images by the channel's spatial mean (default) or max")
    examples.add_argument("--batch", type=int, default=128, help="images per forward pass (default 128)")
    examples.add_argument("--limit", type=int, default=None, help="use only the first N images of the source")
    examples.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: cuda when available)")
    examples.add_argument("--out", default=None, help="output folder (default out/examples-MODEL-LAYER)")
    examples.set_defaults(func=run_examples)


def _load_model(name: str, device: str | None):
    import torch

    from nnfeat.models.zoo import load_model
    from nnfeat.device import resolve_device

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model(name, device=resolve_device(device))


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def run_atlas(args: argparse.Namespace) -> int:
    """``nnfeat atlas``: build or resume an atlas; prints one line per stage and the output paths."""
    from nnfeat.atlas.pipeline import AtlasSettings, build_atlas
    from nnfeat.data import load_images

    model = _load_model(args.model, args.device)
    model.check_layer(args.layer)
    images = load_images(args.images, limit=args.limit, size=model.input_size)
    settings = AtlasSettings(n=args.n, per_image=args.per_image, layout=args.layout, grid=args.grid,
                             min_count=args.min_count, whiten=args.whiten, icon_size=args.icon_size, steps=args.steps,
                             batch=args.batch, seed=args.seed, class_=args.class_, cossim_pow=args.cossim_pow,
                             transforms=args.transforms, spatial_weight=args.spatial_weight,
                             precision=args.precision)
    suffix = f"-{_safe(str(args.class_))}" if args.class_ is not None else ""
    out = Path(args.out or f"out/atlas-{_safe(args.model)}-{_safe(args.layer)}{suffix}")
    try:
        result = build_atlas(model, args.layer, images, out, settings, progress=sys.stderr.isatty(),
                             log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"interrupted: finished stages and icon batches are kept in {out}; run the same command to resume",
              file=sys.stderr)
        return 130
    print(f"wrote {result.mosaic} ({len(result.cells)} cells, mean cosine {result.mean_cosine:.3f}), "
          f"{result.cells_json}" + (f", {result.html}" if result.html else ""))
    return 0


def run_examples(args: argparse.Namespace) -> int:
    """``nnfeat examples``: write top/bottom images and patches per channel, plus ``examples.json``."""
    from nnfeat.data import load_images
    from nnfeat.examples import example_images, example_patches, parse_unit, top_examples
    from nnfeat.io import save_grid, upscale_nearest, write_json

    layer, channels = parse_unit(args.unit)
    model = _load_model(args.model, args.device)
    model.check_layer(layer)
    images = load_images(args.images, limit=args.limit, size=model.input_size)
    found = top_examples(model, layer, channels, images, args.k, score=args.score, batch_size=args.batch,
                         progress=sys.stderr.isatty())
    out = Path(args.out or f"out/examples-{_safe(args.model)}-{_safe(layer)}")
    written = []
    for channel, result in found.items():
        for which in ("top", "bottom"):
            chosen = getattr(result, which)
            pictures = example_images(images, chosen, model.input_size)
            patches = example_patches(images, chosen, model.input_size)
            for kind, batch in (("", pictures), ("-patches", patches)):
                factor = max(1, -(-96 // max(batch.shape[-2:])))  # show small images at >= 96 px
                path = out / f"ch{channel:04d}-{which}{kind}.png"
                save_grid(path, upscale_nearest(batch, factor))
                written.append(path)
    write_json(out / "examples.json", {
        "model": model.name, "layer": layer, "source": images.name, "k": args.k, "score": args.score,
        "classes": images.classes, "channels": [r.to_dict() for r in found.values()],
    })
    print(f"wrote {len(written)} images and {out / 'examples.json'}")
    return 0


__all__ = ["register", "run_atlas", "run_examples"]
