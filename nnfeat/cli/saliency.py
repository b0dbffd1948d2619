"""``nnfeat saliency``: which pixels a class depends on (attribution maps), with the numbers that say how far to
trust each map (deletion / insertion AUC against a random map by default, printed as a table with each method's
verdict; the model-randomization test with ``--sanity``); on token models,
which tokens (and words) a class, a sentence similarity (``--pair``) or each generated token depends on."""

from __future__ import annotations

from nnfeat.analysis.attribution import BASELINES, BATCH_SIZE
from nnfeat.analysis.heatmap import check_spatial
from nnfeat.analysis.saliency import CAM_METHODS, SALIENCY, parse_methods
from nnfeat.analysis.token_saliency import TOKEN_BASELINES, TOKEN_SALIENCY, parse_token_methods
from nnfeat.cli.common import add_images, add_model, add_shared, finish, load_images_from_args, load_model, positive
from nnfeat.cli.text_options import add_texts, check_inputs, has_texts, texts_from_args
from nnfeat.distributed import current
from nnfeat.errors import NnfeatError
from nnfeat.finite import probe_finite
from nnfeat.layouts import OUTPUT
from nnfeat.models.text import TokenModel
from nnfeat.ops.results import check_out_dir
from nnfeat.ops.saliency import parse_target, saliency
from nnfeat.ops.token_saliency import token_saliency

DEFAULT_N = 8


def register(sub) -> None:
    p = sub.add_parser(
        "saliency", help="saliency / attribution maps with deletion, insertion and randomization numbers",
        description="Attribution maps of a class (each image's prediction, or --target) over --images, one "
                    "colour scale per figure (absolute and signed views) and an HTML page, with deletion / "
                    "insertion AUC beside a random map's and a verdict naming each check passed or failed "
                    "(printed as a table; --no-numbers skips them); --sanity adds the cascading "
                    "model-randomization test (Adebayo et al. 2018) with an edge-filter control. "
                    "Token models (--text / --text-file): per token and word (word pieces summed), for a class "
                    "(classifiers), the cosine similarity with --pair TEXT (sentence encoders such as minilm) or "
                    "each generated token (lm and seq2seq: a matrix of output x input tokens); methods: "
                    + ", ".join(TOKEN_SALIENCY.names()) + ".")
    add_model(p)
    add_images(p, required=False)
    add_texts(p, target=True)
    p.add_argument("--pair", default=None, metavar="TEXT",
                   help="sentence encoders: a second text; the cosine similarity of each --text with it is "
                        "explained (which tokens make the two alike)")
    for action in p._actions:
        if action.dest == "n":
            action.help = (f"how many images (default: {DEFAULT_N}, or all of a smaller source; fewer than the "
                           "source: a sample drawn from --seed)")
    p.add_argument("--method", default="gradient", metavar="M[,M2,...]",
                   help=f"one or more of: {', '.join(SALIENCY.names())} (default gradient)")
    p.add_argument("--target", default="pred", metavar="[PART:]CLASS|pred|value[@mask|@Y0:Y1,X0:X1]",
                   help="what to explain: a class name or index, or pred (each image's prediction; default); "
                        "PART: a key of a dict output or an element of a tuple output (out:3); @mask: a "
                        "segmentation map's class summed over its predicted mask (out:3@mask), @Y0:Y1,X0:X1 over "
                        "a box in output pixels (out:3@8:24,16:40); value: a (B,) or (B, 1) regression output")
    p.add_argument("--layer", default=None,
                   help="the CAM methods' layer (conv or token layer; default: the last spatial layer)")
    p.add_argument("--no-numbers", dest="numbers", action="store_false",
                   help="skip the deletion / insertion AUC beside a random map (on by default: about 4 x --steps "
                        "forward passes per image and method)")
    p.add_argument("--sanity", action="store_true",
                   help="add the cascading randomization test and the edge control (slower)")
    p.add_argument("--alphas", type=int, default=32, help="integrated-gradients: path points (default 32)")
    p.add_argument("--baseline", choices=tuple(BASELINES) + TOKEN_BASELINES, default=None,
                   help="integrated-gradients baseline: images black (default), blur or noise; token models (also "
                        "what occlusion puts in) pad (default), mask ([MASK]) or zero (a zero embedding)")
    p.add_argument("--samples", type=int, default=16, help="smoothgrad family: noisy samples (default 16)")
    p.add_argument("--window", type=int, default=None,
                   help="occlusion window in px (default: input side / 8); token models: occlusion-span's window "
                        "in tokens (default 3)")
    p.add_argument("--steps", type=int, default=16, help="deletion / insertion steps (default 16)")
    p.add_argument("--deletion-baseline", choices=("blur", "black"), default="blur",
                   help="what deleted pixels become (default blur, the insertion start)")
    p.add_argument("--patch", type=int, default=None,
                   help="deletion / insertion: perturb PATCH x PATCH px regions (default: input side / 16; 1 = single "
                        "pixels)")
    p.add_argument("--cascade", type=int, default=None,
                   help="--sanity: evaluate this many cascade depths, evenly spread (default: every layer)")
    p.add_argument("--repeats", type=int, default=1,
                   help="--sanity: independent random networks pooled in the randomization test (default 1)")
    p.add_argument("--batch", type=int, default=None,
                   help="images per forward/backward pass (default 256); token models: rows per pass (default: "
                        "8,192 tokens' worth, 64 rows of 128 tokens)")
    add_shared(p, out="out/saliency", precision=False)
    p.set_defaults(func=cmd_saliency)


def cmd_saliency(args) -> int:
    if has_texts(args) or args.images is None:
        return _token_or_missing(args)
    methods = parse_methods(args.method)
    for name in ("n", "alphas", "samples", "window", "steps", "patch", "cascade", "repeats", "batch"):
        positive(name, getattr(args, name))
    if args.samples < 2 and "vargrad" in methods:
        positive("samples", args.samples, 2)
    if args.sanity and not args.numbers:
        raise NnfeatError("--sanity needs the deletion / insertion numbers: drop --no-numbers or --sanity")
    out = check_out_dir(args.out)
    model = load_model(args)
    check_inputs(args, model)
    _image_only(args)
    target = parse_target(model, args.target)
    if args.layer is not None:
        if not any(m in CAM_METHODS for m in methods):
            raise NnfeatError(f"--layer is for the CAM methods ({', '.join(CAM_METHODS)}); none of "
                              f"{', '.join(methods)} is one")
        model.check_layer(args.layer)
        shape = check_spatial(model, args.layer)
        if shape[1] * shape[2] <= 1:
            raise NnfeatError(f"layer '{args.layer}' has no spatial map (shape {'x'.join(map(str, shape))}): "
                              "pick a conv or token layer")
    probe_finite(model, [OUTPUT] + ([args.layer] if args.layer else []))
    images = load_images_from_args(args, model)
    if args.n is None and len(images) > DEFAULT_N:
        images = images.sample(DEFAULT_N, args.seed)
    result = saliency(model, images, methods, target=target, layer=args.layer, numbers=args.numbers,
                      sanity=args.sanity,
                      steps=args.steps, deletion_baseline=args.deletion_baseline, patch=args.patch,
                      cascade=args.cascade, repeats=args.repeats, alphas=args.alphas,
                      baseline=args.baseline or "black", samples=args.samples, window=args.window,
                      batch_size=BATCH_SIZE if args.batch is None else args.batch, seed=args.seed)
    code = finish(result, args, out)
    if current().writer:  # under torchrun only rank 0 prints
        print(result.numbers_table())
    return code


def _image_only(args) -> None:
    if args.pair is not None:
        raise NnfeatError("--pair is for sentence encoders given --text; this is an image model")
    if args.baseline in TOKEN_BASELINES:
        raise NnfeatError(f"--baseline {args.baseline} is for token models; an image model takes "
                          f"{', '.join(BASELINES)}")


def _token_or_missing(args) -> int:
    """Texts given (or no --images): a token model's saliency; an image model without --images is an error."""
    for name in ("n", "alphas", "samples", "window", "batch"):
        positive(name, getattr(args, name))
    out = check_out_dir(args.out)
    model = load_model(args)
    check_inputs(args, model)
    if not isinstance(model, TokenModel):
        raise NnfeatError("saliency needs --images SRC for an image model")
    methods = parse_token_methods(args.method)
    if args.layer is not None or args.patch is not None or args.cascade is not None:
        raise NnfeatError("--layer, --patch and --cascade are for image models; a token model takes --method, "
                          "--target, --pair, --baseline, --alphas, --samples, --window, --sanity, --no-numbers")
    if args.baseline is not None and args.baseline not in TOKEN_BASELINES:
        raise NnfeatError(f"--baseline {args.baseline} is for image models; a token model takes "
                          f"{', '.join(TOKEN_BASELINES)}")
    texts = texts_from_args(args, default_n=DEFAULT_N)
    result = token_saliency(model, texts, methods, target=args.target, pair=args.pair,
                            target_texts=args.target_text, baseline=args.baseline or "pad", steps=args.alphas,
                            samples=args.samples, window=args.window or 3, seed=args.seed,
                            batch_size=args.batch, numbers=args.numbers, sanity=args.sanity)
    for note in result.notes:
        print(f"note: {note}")
    code = finish(result, args, out)
    if result.checks and current().writer:  # under torchrun only rank 0 prints
        print(result.numbers_table())
    return code
