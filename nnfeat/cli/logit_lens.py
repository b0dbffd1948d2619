"""``nnfeat logit-lens``: what a decoder language model would predict after each block, per position (the logit
lens, nostalgebraist 2020)."""

from __future__ import annotations

from nnfeat.cli.common import add_model, add_shared, finish, load_model
from nnfeat.cli.text_options import add_texts, check_inputs, texts_from_args
from nnfeat.errors import NnfeatError
from nnfeat.models.text import TokenModel
from nnfeat.ops.logit_lens import DEFAULT_TOP, logit_lens
from nnfeat.ops.results import check_out_dir

DEFAULT_N = 4


def register(sub) -> None:
    p = sub.add_parser(
        "logit-lens", help="the logit lens of a decoder language model: its prediction after every block",
        description="Decode the residual stream after each block of a decoder language model (tiny-lm, hf:PATH of "
                    "a causal LM, or any token model with --unembed) through its final norm and unembedding: per "
                    "layer and position the top tokens with their probabilities, and the rank of the actual next "
                    "token (at the last position: of the model's own prediction). Writes a figure per text "
                    "(lens-I.png), a table page (logit-lens.html) and logit-lens.json; prints the mean rank of "
                    "the next token per layer.")
    add_model(p)
    add_texts(p)
    p.add_argument("--n", type=int, default=None, metavar="N",
                   help=f"how many texts of --text-file (default: {DEFAULT_N}, or all of a smaller file; a sample "
                        "drawn from --seed)")
    p.add_argument("--layers", default=None, metavar="M,M",
                   help="the modules whose outputs are the residual stream, comma-separated (default: the model's "
                        "blocks, the children of its first module list whose outputs are (batch, tokens, width))")
    p.add_argument("--unembed", default=None, metavar="MODULE",
                   help="the module mapping the residual stream to vocabulary logits (default: the model's own, "
                        "e.g. unembed for tiny-lm, lm_head for Hugging Face causal LMs)")
    p.add_argument("--final-norm", default=None, metavar="MODULE",
                   help="the norm applied before the unembedding (default: the normalisation layer whose output "
                        "the unembedding reads, if any)")
    p.add_argument("--top", type=int, default=DEFAULT_TOP, help=f"top tokens per layer and position (default "
                                                                 f"{DEFAULT_TOP})")
    add_shared(p, out="out/logit-lens", precision=False)
    p.set_defaults(func=cmd_logit_lens)


def cmd_logit_lens(args) -> int:
    if args.top < 1:
        raise NnfeatError(f"--top must be at least 1; got {args.top}")
    if args.n is not None and args.n < 1:
        raise NnfeatError(f"--n must be at least 1; got {args.n}")
    out = check_out_dir(args.out)
    model = load_model(args)
    if not isinstance(model, TokenModel):
        raise NnfeatError(f"{args.model} takes images: the logit lens reads decoder language models (tiny-lm, "
                          "hf:PATH of a causal LM, FILE.py:FACTORY returning a TokenModel)")
    check_inputs(args, model)
    texts = texts_from_args(args, default_n=DEFAULT_N)
    result = logit_lens(model, texts, layers=args.layers, unembed=args.unembed, final_norm=args.final_norm,
                        top=args.top)
    for note in result.notes:
        print(f"note: {note}")
    if not args.quiet:
        summary = result.summary()
        print(f"rank of the actual next token (1 = top of {result.vocab}), over every position with one:")
        for i, name in enumerate(result.layers):
            print(f"  {name}: mean {summary['mean_rank'][i]:.2f}, median {summary['median_rank'][i]:g}, "
                  f"top-1 {100 * summary['top1'][i]:.1f} %, mean p {summary['mean_prob'][i]:.3f}")
    return finish(result, args, out)
