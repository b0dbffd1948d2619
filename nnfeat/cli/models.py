"""``nnfeat models`` (the zoo) and ``nnfeat layers MODEL`` (a model's layer names and shapes)."""

from __future__ import annotations

import json

from nnfeat.cli.common import add_model, add_shared, load_model, positive
from nnfeat.errors import NnfeatError
from nnfeat.models.registry import cards
from nnfeat.models.text import TokenModel


def register(sub) -> None:
    p = sub.add_parser("models", help="the model zoo: names, input size and colour, classes, weights, licence")
    p.add_argument("--json", action="store_true", help="print the model cards as one JSON list instead of a table")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("layers", help="list a model's layer names, output shapes and channel counts")
    add_model(p)
    p.add_argument("--size", type=int, default=None, help="input size (default: the model's native size)")
    add_shared(p, out=None, weights="random", seed=False, precision=False)
    p.set_defaults(func=cmd_layers)


MODELS_COLUMNS = ("name", "input", "classes", "licence", "weights")


def cmd_models(args) -> int:
    """One line per registry card, from the cards alone (nothing is built, loaded, hashed or downloaded)."""
    if getattr(args, "json", False):
        print(json.dumps([card.as_dict() for card in cards()], indent=2))
        return 0
    rows = [MODELS_COLUMNS] + [
        (card.name, card.input_text(), card.classes_text(), card.licence, card.weights_status()) for card in cards()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(MODELS_COLUMNS) - 1)]
    for row in rows:
        print("  ".join([*(text.ljust(width) for text, width in zip(row, widths)), row[-1]]))
    return 0


def cmd_layers(args) -> int:
    positive("size", args.size)
    model = load_model(args)
    if isinstance(model, TokenModel):
        if args.size:
            raise NnfeatError(f"{model.name} is a token model: --size is for image models")
        _print_rows(model.describe_layers())
        return 0
    size = (args.size, args.size) if args.size else None
    if size is not None and not model.accepts_size(size):
        raise NnfeatError(f"{model.name} does not run on {args.size}x{args.size} px input: use a larger --size "
                          f"(its native size is {model.input_size[0]})")
    _print_rows(model.describe_layers(size))
    return 0


def _print_rows(rows) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'layer':<{width}}  {'output shape':<18} channels")
    for name, shape, channels in rows:
        shape_text = "not called" if shape is None else "x".join(map(str, shape))
        print(f"{name:<{width}}  {shape_text:<18} {'' if channels is None else channels}")
