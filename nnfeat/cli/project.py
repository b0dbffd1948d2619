"""``nnfeat project``: a layer's pooled activations laid out in 2-D (PCA, t-SNE or UMAP), scored, drawn and
exported (PNG, an interactive HTML scatter, optionally a TensorBoard Projector folder).

Token models (and embedding matrices from files) take the same command (:mod:`nnfeat.ops.project_tokens`):

* ``nnfeat project MODEL --embeddings [--text-file F | --tokens FILE|a,b,c] [--neighbours w,w]`` -- rows of the
  input embedding matrix: the ``--top`` most frequent tokens of the texts, or the listed tokens;
* ``nnfeat project MODEL LAYER --text-file F`` (or ``--text``) -- LAYER's vector at every token of the texts;
* ``nnfeat project --embedding-file VECTORS.npy --vocab vocab.txt ...`` (also ``WEIGHTS.safetensors:KEY`` with a
  vocabulary, or word2vec text) -- a matrix from a file, as with ``--embeddings``.
"""

from __future__ import annotations

import sys

from nnfeat.analysis.collect import POOLS
from nnfeat.analysis.projection import PROJECTIONS
from nnfeat.cli.common import MODEL_HELP, add_images, add_shared, finish, load_images_from_args, load_model, positive
from nnfeat.cli.text_options import add_texts, check_inputs, has_texts, texts_from_args
from nnfeat.errors import NnfeatError
from nnfeat.finite import probe_finite
from nnfeat.layouts import OUTPUT
from nnfeat.models.embedding_file import read_embedding_file, read_token_list
from nnfeat.models.text import TokenModel
from nnfeat.ops.project import parse_layers, project
from nnfeat.ops.project_tokens import parse_words, project_tokens
from nnfeat.ops.results import check_out_dir

TOKEN_USAGE = ("token models: MODEL --embeddings [--text-file F | --tokens FILE|a,b,c], MODEL LAYER --text-file F, "
               "or --embedding-file FILE")


def register(sub) -> None:
    p = sub.add_parser(
        "project", help="lay out a layer's activations over images (or token embeddings) in 2-D (pca, tsne, umap)",
        description="Pool each image's activations of LAYER (several: LAYER,LAYER2,...), lay them out in 2-D, and "
                    "report how much structure the map keeps: trustworthiness and k-NN label accuracy. Writes "
                    "projection.png, an interactive projection.html and, with --tensorboard, a Projector folder. "
                    "Activations are cached in --out: another --method reuses them. Token models: --embeddings "
                    "lays out rows of the input embedding matrix (the most frequent tokens of --text-file, or "
                    "--tokens), a LAYER its vector at every token of --text/--text-file; --embedding-file reads a "
                    "matrix from a file instead of a model; --neighbours lists cosine nearest tokens.")
    p.add_argument("model", nargs="?", default=None,
                   help=MODEL_HELP + " (a token model for the token options; none with --embedding-file)")
    p.add_argument("layers", nargs="?", default=None, metavar="LAYER[,LAYER2,...]",
                   help="one or more whole layers, comma-separated (token models: one layer, its vector at every "
                        "token of the texts)")
    add_images(p, required=False)
    add_texts(p)
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
    p.add_argument("--batch", type=int, default=128, help="images (or texts) per forward pass (default 128)")
    t = p.add_argument_group("token models and embedding files")
    t.add_argument("--embeddings", action="store_true",
                   help="lay out rows of the model's input embedding matrix (word embeddings)")
    t.add_argument("--embedding-file", default=None, metavar="FILE",
                   help="an embedding matrix instead of a model: VECTORS.npy or WEIGHTS.safetensors[:KEY] (with "
                        "--vocab; default vocab.txt beside it), or word2vec text ('V D' line, then 'token v1 ... vD')")
    t.add_argument("--vocab", default=None, metavar="FILE",
                   help="the vocabulary of --embedding-file's .npy/.safetensors rows: one token a line")
    t.add_argument("--tokens", default=None, metavar="FILE|a,b,c",
                   help="the tokens to show: a file (one a line; 'token<TAB>group' colours groups and scores k-NN "
                        "accuracy by group) or a comma list (default: the --top most frequent of the texts)")
    t.add_argument("--top", type=int, default=500,
                   help="--embeddings: how many of the texts' most frequent tokens (without texts or --tokens: the "
                        "first rows) to show (default 500)")
    t.add_argument("--neighbours", default=None, metavar="WORD[,WORD2,...]",
                   help="list each word's nearest tokens by cosine similarity (contextual: of the texts' tokens' "
                        "mean vectors)")
    t.add_argument("--neighbours-k", type=int, default=10, metavar="K",
                   help="how many nearest tokens --neighbours lists (default 10)")
    t.add_argument("--max-points", type=int, default=5000,
                   help="contextual vectors: at most this many token occurrences (a sample drawn from --seed "
                        "beyond; default 5000)")
    add_shared(p, out="out/project", precision=False)
    p.set_defaults(func=cmd_project)


def _token_options(args) -> bool:
    return bool(args.embeddings or args.embedding_file is not None or args.vocab is not None or has_texts(args)
                or args.tokens is not None or args.neighbours is not None)


def cmd_project(args) -> int:
    if _token_options(args):
        return cmd_project_tokens(args)
    if args.model is None or args.layers is None:
        raise NnfeatError("give MODEL LAYER[,LAYER2,...] --images SRC (image models), or for " + TOKEN_USAGE)
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
    check_inputs(args, model)  # a token model without text: one line
    if args.images is None:
        raise NnfeatError("the following arguments are required: --images (image models; " + TOKEN_USAGE + ")")
    for layer in layers:
        model.units(layer)
    probe_finite(model, [*layers, OUTPUT])  # the layers and the output, before any work
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


def cmd_project_tokens(args) -> int:
    """The token options: checked (one line each), then :func:`project_tokens`, before anything is written."""
    if args.images is not None:
        raise NnfeatError("--images is for image models; token embeddings take --text/--text-file/--tokens "
                          f"({TOKEN_USAGE})")
    layer = args.layers
    if layer is not None and ("," in layer or ":" in layer or "@" in layer):
        raise NnfeatError(f"'{layer}': token vectors are of one whole LAYER at a time (no commas, :channels or "
                          "@positions)")
    for name, least in (("k", 1), ("top", 1), ("neighbours_k", 1), ("max_points", 3), ("batch", 1), ("n", 1)):
        positive(name, getattr(args, name), least)
    if args.tokens is not None:
        read_token_list(args.tokens)
    parse_words(args.neighbours)
    out = check_out_dir(args.out)
    if args.tensorboard is not None:
        check_out_dir(args.tensorboard)
    model, table = None, None
    if args.embedding_file is not None:
        if args.model is not None:
            raise NnfeatError("give a token MODEL or --embedding-file FILE, not both")
        table = read_embedding_file(args.embedding_file, args.vocab)
    else:
        if args.model is None:
            raise NnfeatError("no model: give a token MODEL, or --embedding-file FILE (" + TOKEN_USAGE + ")")
        if args.vocab is not None:
            raise NnfeatError("--vocab names the rows of an --embedding-file; a model brings its own tokenizer")
        if args.embeddings == (layer is not None):
            raise NnfeatError("give --embeddings (rows of the input embedding matrix) or a LAYER (its vector at every "
                              "token of --text/--text-file), one of them")
        model = load_model(args)
        if not isinstance(model, TokenModel):
            raise NnfeatError(f"{model.name} takes images: --embeddings, --tokens, --neighbours and --text are for "
                              "token models (see nnfeat models) or an --embedding-file")
        if layer is not None:
            model.module(layer)
    texts = texts_from_args(args) if has_texts(args) else None
    result = project_tokens(model, layer, embedding_file=table, texts=texts, tokens=args.tokens, top=args.top,
                            neighbours=args.neighbours, neighbours_k=args.neighbours_k, method=args.method, k=args.k,
                            seed=args.seed, batch_size=args.batch, max_points=args.max_points,
                            tensorboard=args.tensorboard)
    for note in result.notes:
        print(f"note: {note}")
    print(result.caption().replace("\n", "; "))
    for query in result.neighbours:
        shown = (t if t and t.strip() == t else repr(t) for t, _ in query["neighbours"])  # ' ' stays visible
        print(f"{query['query']}: " + ", ".join(f"{t} {c:.3f}" for t, (_, c) in zip(shown, query["neighbours"])))
    if result.tensorboard:
        print(f"wrote {result.tensorboard}/ (tensorboard --logdir {result.tensorboard}, then the Projector tab)")
    return finish(result, args, out)
