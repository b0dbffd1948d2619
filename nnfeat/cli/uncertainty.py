"""``nnfeat uncertainty``: how unsure a classifier (or an ensemble) is on --images, and whether its confidence is
calibrated: entropy, mutual information, accuracy, ECE with a reliability diagram, error-detection AUROC, and the
saliency maps of the most uncertain images across members / dropout samples / augmentations."""

from __future__ import annotations

from nnfeat.analysis.uncertainty import check_distribution_target, check_same_classes, distribution_model
from nnfeat.analysis.uncertainty_methods import UNCERTAINTY, check_method
from nnfeat.cli.common import MODEL_HELP, add_images, add_shared, finish, load_images_from_args, load_model, positive
from nnfeat.errors import NnfeatError
from nnfeat.finite import probe_finite, probe_gradient_finite
from nnfeat.layouts import OUTPUT
from nnfeat.models.registry import find_card
from nnfeat.ops.results import check_out_dir
from nnfeat.ops.uncertainty import uncertainty
from nnfeat.targets import parse_target


def register(sub) -> None:
    p = sub.add_parser(
        "uncertainty", help="predictive uncertainty and calibration of a model or an ensemble",
        description="Predictive entropy and mutual information per image, accuracy, expected calibration error "
                    "(15 bins) with a reliability diagram and the error-detection AUROC of the entropy over a "
                    "labelled --images set, for an ensemble (MODEL1,MODEL2,...), MC dropout or test-time "
                    "augmentation; plus the gradient saliency maps of the most uncertain images and how much "
                    "they vary.")
    p.add_argument("model", metavar="MODEL[,MODEL2,...]",
                   help=f"{MODEL_HELP}; a comma-separated list of models with the same classes for an ensemble")
    add_images(p)
    p.add_argument("--method", choices=UNCERTAINTY.names(), default=None,
                   help="ensemble (two or more models; the default for a list), mc-dropout (a model with dropout) "
                        "or tta (test-time augmentation: flips, shifts, zooms)")
    p.add_argument("--samples", type=int, default=None, metavar="T",
                   help="dropout samples or augmentations (default 20 for mc-dropout, 8 for tta; at least 2)")
    p.add_argument("--flip", choices=("auto", "yes", "no"), default="auto",
                   help="whether tta mirrors images (default auto: yes, unless every class is one letter or digit)")
    p.add_argument("--top", type=int, default=8,
                   help="how many of the most uncertain images to show with their saliency maps (default 8)")
    p.add_argument("--batch", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--target", default=None, metavar="[PART:]pred[@Y0:Y1,X0:X1]",
                   help="which class distribution of the output to measure: pred (the logits, default), PART:pred "
                        "for a dict or tuple output (out:pred), PART:pred@Y0:Y1,X0:X1 for a segmentation map's "
                        "per-pixel distribution averaged over a box (without a box: over every pixel)")
    add_shared(p, out="out/uncertainty", precision=False)
    p.set_defaults(func=cmd_uncertainty)


def model_names(text: str) -> list[str]:
    """``A,B,C`` -> the names, each checked against the zoo (a one-line error naming the nearest ones)."""
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise NnfeatError(f"empty model name in '{text}': write MODEL or MODEL1,MODEL2 without empty entries")
    for name in names:
        find_card(name)
    return names


def cmd_uncertainty(args) -> int:
    names = model_names(args.model)
    method = args.method
    if method is None:
        if len(names) < 2:
            raise NnfeatError("one model needs --method mc-dropout or --method tta (an ensemble needs two or more "
                              "models: MODEL1,MODEL2)")
        method = "ensemble"
    check_method(method, names, args.samples)
    if args.flip != "auto" and not UNCERTAINTY[method].augments:
        raise NnfeatError(f"--flip is for --method tta; got --method {method}")
    positive("n", args.n)
    positive("top", args.top, 0)
    positive("batch", args.batch)
    explained = None if args.target is None else check_distribution_target(parse_target(args.target))
    out = check_out_dir(args.out)
    models = []
    for name in names:
        args.model = name
        models.append(distribution_model(load_model(args), explained))
    args.model = ",".join(names)
    check_same_classes(models)
    for model in models:  # the output and its input gradient (the saliency maps), before any work
        probe_finite(model, [OUTPUT])
        probe_gradient_finite(model)
    UNCERTAINTY[method]().check_models(models)
    images = load_images_from_args(args, models[0])
    flip = None if args.flip == "auto" else args.flip == "yes"
    result = uncertainty(models, images, method, samples=args.samples, top=args.top, seed=args.seed, flip=flip,
                         batch_size=args.batch, target=args.target)
    specs = {m.name: m.spec.record() for m in models if not m.spec.from_card()}
    if len(models) > 1 and specs:  # each member's own spec, not the last one loaded
        args.input_spec = None
        result.input_spec = {"members": {m.name: m.spec.record() for m in models}}
    return finish(result, args, out)
