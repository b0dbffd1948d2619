"""``nnfeat attention``: where a vision transformer's class token looks -- per layer and head, attention rollout
and gradient-weighted rollout -- over images."""

from __future__ import annotations

from nnfeat.cli.common import add_images, add_model, add_shared, finish, load_images_from_args, load_model, positive
from nnfeat.cli.text_options import add_texts, check_inputs, texts_from_args
from nnfeat.errors import NnfeatError
from nnfeat.models.text import TokenModel
from nnfeat.ops.attention import attention, check_request
from nnfeat.ops.results import check_out_dir
from nnfeat.ops.token_attention import token_attention
from nnfeat.views.attention_page import SCALE_CHOICES

DEFAULT_N = 4


def register(sub) -> None:
    p = sub.add_parser(
        "attention", help="attention of a vision transformer over images, or of a token model over text",
        description="Images: overlay the class token's attention over the patch tokens on --images, per attention "
                    "layer and head (torchvision and timm ViTs, digits-vit, any nn.MultiheadAttention model); add "
                    "attention rollout (Abnar & Zuidema 2020) and gradient-weighted rollout for a class (Chefer "
                    "et al. 2021). Text (token models: minilm, dates-seq2seq, tiny-lm, hf:PATH, FILE.py:FACTORY): "
                    "per text the layers x heads model view, the head view (an offline page of token-to-token "
                    "lines), for encoder-decoder models the source x target cross attention, and every head's "
                    "scores (previous-token, induction, diagonal, first-token sink, alignment). One colour scale "
                    "per figure, or with --scale per-map one per head (its limits written under it).")
    add_model(p)
    add_images(p, required=False)
    add_texts(p, target=True)
    for action in p._actions:
        if action.dest == "n":  # default None: "at most 4", so a smaller source is not an --n error
            action.help = (f"how many images (default: {DEFAULT_N}, or all of a smaller source; fewer than the "
                           "source: a sample drawn from --seed)")
    p.add_argument("--layer", default=None, metavar="L",
                   help="attention layers: names (blocks.3.attn, or the block blocks.3) or indices (0, -1), "
                        "comma-separated (default: all)")
    p.add_argument("--head", default="all", metavar="H|mean|max|all",
                   help="one head (a number), the mean or max over the heads, or all heads (default all)")
    p.add_argument("--query", type=int, default=None, metavar="TOKEN",
                   help="the query token whose attention is shown (default: the class token; 0 is the first token)")
    p.add_argument("--rollout", action="store_true", help="add attention rollout over every layer")
    p.add_argument("--fusion", choices=("mean", "max", "min"), default="mean",
                   help="how rollout fuses the heads of a layer (default mean)")
    p.add_argument("--grad-rollout", action="store_true",
                   help="add gradient-weighted rollout for --target (needs class logits)")
    p.add_argument("--target", default=None, metavar="C|pred",
                   help="with --grad-rollout: the class (number or name; default pred, each image's prediction)")
    p.add_argument("--scale", choices=SCALE_CHOICES, default="figure",
                   help="figure: one colour scale for every head map (default); per-map: each head map on its own "
                        "scale, its limits written under its tile (a head with small weights is not drawn dark)")
    p.add_argument("--batch", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--save-weights", action="store_true",
                   help="token models: also write every layer's weights into attention.npz (large for long texts)")
    add_shared(p, out="out/attention", precision=False)
    p.set_defaults(func=cmd_attention)


def cmd_attention(args) -> int:
    positive("n", args.n)
    positive("batch", args.batch)
    out = check_out_dir(args.out)
    model = load_model(args)
    check_inputs(args, model)
    if isinstance(model, TokenModel):
        return _token_attention(args, model, out)
    if args.images is None:
        raise NnfeatError("attention needs --images SRC for an image model")
    if args.save_weights:
        raise NnfeatError("--save-weights is for token models (an image model's attention-maps.npz is always written)")
    check_request(model, args.layer, args.head, args.query, grad_rollout=args.grad_rollout, target=args.target,
                  fusion=args.fusion, scale=args.scale)
    images = load_images_from_args(args, model)
    if args.n is None and len(images) > DEFAULT_N:
        images = images.sample(DEFAULT_N, args.seed)
    result = attention(model, images, layers=args.layer, head=args.head, query=args.query, rollout=args.rollout,
                       grad_rollout=args.grad_rollout, target=args.target, fusion=args.fusion, batch_size=args.batch,
                       scale=args.scale)
    return finish(result, args, out)


def _token_attention(args, model, out) -> int:
    if args.grad_rollout or args.query is not None or args.head != "all":
        raise NnfeatError("--grad-rollout, --query and --head are for image models; a token model's figures show "
                          "every query and head")
    texts = texts_from_args(args, default_n=DEFAULT_N)
    result = token_attention(model, texts, target_texts=args.target_text, layers=args.layer, rollout=args.rollout,
                             seed=args.seed, save_weights=args.save_weights, scale=args.scale)
    for note in result.notes:
        print(f"note: {note}")
    return finish(result, args, out)
