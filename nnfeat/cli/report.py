"""``nnfeat report``: one offline folder (open ``index.html``) with the architecture, a page per layer and unit,
and the classes, built from the other commands' stages and resumable (see :mod:`nnfeat.ops.report`); for a token
model given ``--text`` / ``--text-file``: the text report (:mod:`nnfeat.ops.text_report`)."""

from __future__ import annotations

import sys

from nnfeat.analysis.token_saliency import TOKEN_SALIENCY
from nnfeat.cli.common import add_images, add_model, add_shared, load_images_from_args, load_model, positive
from nnfeat.cli.text_options import add_texts, check_inputs, texts_from_args
from nnfeat.distributed import current
from nnfeat.errors import NnfeatError
from nnfeat.models.text import TokenModel
from nnfeat.ops.report import report
from nnfeat.ops.results import check_out_dir
from nnfeat.ops.text_report import DEFAULT_METHODS, text_report

#: options only image models take, with their defaults (given otherwise with a token model: one line)
IMAGE_ONLY = {"steps": 128, "batch": 16, "diversity": 3, "projection_n": 1000, "atlas": None, "fit": "pad"}
#: options only token models take, with their defaults
TEXT_ONLY = {"pair": None, "unembed": None, "method": None}


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="an offline Microscope of a model: every layer, unit and class in one folder",
        description="Write a browsable folder (open index.html; no server): the architecture page linked to one "
                    "page per layer (unit renders, top and bottom dataset examples, heatmaps, the projection, "
                    "the atlas where asked), one page per unit (renders at several thresholds, diversity "
                    "renders, examples with heatmaps, filter weights for conv units) and a classes page (class "
                    "renders, saliency with sanity numbers, the most uncertain images). A token model with "
                    "--text / --text-file: the architecture, the attention of every head with its scores, the "
                    "embeddings with neighbours, units with their top contexts, saliency with its numbers and the "
                    "logit lens where it applies. A killed run resumes.")
    add_model(p)
    add_images(p, required=False)
    add_texts(p)
    p.add_argument("--layers", default=None, metavar="A,B,...",
                   help="layer names (default: each block of the model's top-level stages, else its top-level "
                        "convolutions, and the logits 'output'; token models: the first and last block)")
    p.add_argument("--units-per-layer", type=int, default=None,
                   help="units 0..N-1 of each layer (default 16; token models 4)")
    p.add_argument("--steps", type=int, default=128, help="render steps (default 128)")
    p.add_argument("--batch", type=int, default=16, help="units rendered together (default 16)")
    p.add_argument("--diversity", type=int, default=3,
                   help="images per unit's diversity render (default 3; 0 or 1: none)")
    p.add_argument("--projection-n", type=int, default=1000,
                   help="images in each layer's projection (default 1000, a seeded sample; `nnfeat project` lays out any number)")
    p.add_argument("--projection-method", default="pca", choices=("pca", "tsne", "umap"),
                   help="projection layout (default pca)")
    p.add_argument("--atlas", default=None, metavar="LAYER[,LAYER]", help="also build these layers' atlases")
    p.add_argument("--method", default=None, metavar="M[,M2,...]",
                   help=f"token models: saliency methods (default {DEFAULT_METHODS}; any of "
                        f"{', '.join(TOKEN_SALIENCY.names())})")
    p.add_argument("--pair", default=None, metavar="TEXT",
                   help="sentence encoders: the text whose cosine similarity saliency explains (default the first)")
    p.add_argument("--unembed", default=None, metavar="MODULE",
                   help="token models: the logit lens's unembedding when the model has no known one")
    add_shared(p, out="out/report", precision=False)
    p.set_defaults(func=cmd_report)


def _given(args, options: dict) -> list[str]:
    return ["--" + name.replace("_", "-") for name, default in options.items() if getattr(args, name) != default]


def cmd_report(args) -> int:
    for name in ("units_per_layer", "steps", "batch", "projection_n", "n"):
        positive(name, getattr(args, name))
    positive("diversity", args.diversity, 0)
    out = check_out_dir(args.out)
    model = load_model(args)
    check_inputs(args, model)
    if isinstance(model, TokenModel):
        return _text(args, model, out)
    if args.images is None:
        raise NnfeatError("report needs --images SRC for an image model")
    given = _given(args, TEXT_ONLY)
    if given:
        raise NnfeatError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for token models given text; "
                          f"{model.name} takes images")
    images = load_images_from_args(args, model)
    result = report(model, images, out, layers=args.layers, units_per_layer=args.units_per_layer or 16,
                    steps=args.steps, seed=args.seed, batch=args.batch, diversity=args.diversity,
                    projection_n=args.projection_n, projection_method=args.projection_method, atlas=args.atlas,
                    progress=not args.quiet)
    if not current().writer:  # under torchrun rank 0 speaks for the group
        return 0
    for stage, note in result.notes.items():
        print(f"note: {stage}: {note}", file=sys.stderr)
    print(f"wrote {out}/index.html ({result.title()})")
    return 0


def _text(args, model: TokenModel, out) -> int:
    """The text report of a token model (one-line errors for image-only options, before any work)."""
    given = _given(args, IMAGE_ONLY)
    if given:
        raise NnfeatError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for image models; a token "
                          "model's report takes --text/--text-file, --n, --layers, --units-per-layer, --method, "
                          "--pair, --unembed, --projection-method, --seed")
    texts = texts_from_args(args)
    result = text_report(model, texts, out, layers=args.layers, units_per_layer=args.units_per_layer or 4,
                         methods=args.method or DEFAULT_METHODS, projection_method=args.projection_method,
                         pair=args.pair, unembed=args.unembed, seed=args.seed, progress=not args.quiet)
    if not current().writer:
        return 0
    for stage, note in result.notes.items():
        print(f"note: {stage}: {note}", file=sys.stderr)
    print(f"wrote {out}/index.html ({result.title()})")
    return 0
