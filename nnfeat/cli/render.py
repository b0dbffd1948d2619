"""``nnfeat render``: images that maximize an objective expression, units, or a recipe file
(:func:`nnfeat.ops.render.render`)."""

from __future__ import annotations

import argparse

import importlib.util
from pathlib import Path

from nnfeat.cli.common import add_model, add_render_options, add_shared, check_render_pixels, finish, load_model, \
    positive, render_kwargs
from nnfeat.engine.expr import parse_objective
from nnfeat.engine.objectives import Objective
from nnfeat.errors import NnfeatError, shorten
from nnfeat.io import is_existing_file
from nnfeat.ops.render import render
from nnfeat.ops.results import check_out_dir

def leading_minus(argv: list[str]) -> list[str]:
    """``render MODEL -layer3:5 ...`` -> ``render MODEL --objective=-layer3:5 ...``: an objective that starts
    with ``-`` (minimize) is not an option (every render option is a long ``--name``, and none is ``-X``)."""
    if not argv or argv[0] != "render":
        return argv
    for i, word in enumerate(argv[1:], start=1):
        if word == "--":
            return argv
        if len(word) > 1 and word[0] == "-" and word[1] != "-" and word != "-h" and not _is_number(word):
            return [*argv[:i], f"--objective={word}", *argv[i + 1:]]
    return argv


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def register(sub) -> None:
    p = sub.add_parser("render", help="render images that maximize an objective expression or units",
                       description="Render images that maximize an objective. OBJECTIVE is units (layer3:5, "
                                   "layer3:0..15: one unit per image) or an expression "
                                   "('layer3:5 - 0.5*diversity(\"layer3\")'); a leading '-' works: '-layer3:5' "
                                   "(a minimized unit reads its layer's value before the ReLU, where the layer ends in "
                                   "one).")
    add_model(p)
    p.add_argument("expr", nargs="?", metavar="OBJECTIVE",
                   help="units or an objective expression, e.g. layer3:5, layer3:0..3, 'output:3 - 0.5*l1()'")
    p.add_argument("--objective", dest="objective_text", default=None, help=argparse.SUPPRESS)
    p.add_argument("--objective-file", default=None, help="FILE.py:NAME recipe instead of an expression")
    p.add_argument("--batch", type=int, default=None,
                   help="number of images (default: the objective's unit count or its highest batch=i + 1, else 1)")
    add_render_options(p)
    add_shared(p, out="out/render")
    p.set_defaults(func=cmd_render)


def load_objective_file(spec: str, model=None):
    """``FILE.py:NAME`` -> the Objective ``NAME`` in that file (or ``NAME(model)`` when it is a function)."""
    path_text, _, name = spec.rpartition(":")
    if not path_text or not name:
        raise NnfeatError(f"bad --objective-file '{shorten(spec)}': expected FILE.py:NAME")
    path = Path(path_text)
    if not is_existing_file(path):
        raise NnfeatError(f"objective file '{shorten(str(path))}' not found: expected FILE.py:NAME with an existing FILE.py")
    module_spec = importlib.util.spec_from_file_location(f"nnfeat_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - a broken recipe file is user input
        raise NnfeatError(f"objective file '{path}' failed to load: {type(err).__name__}: {err}") from None
    if not hasattr(module, name):
        names = [n for n, v in vars(module).items() if not n.startswith("_") and (isinstance(v, Objective) or (
            callable(v) and getattr(v, "__module__", None) == module.__name__))]  # defined there, not imported
        raise NnfeatError(f"'{name}' not found in {path}; recipes there: {', '.join(sorted(names)) or 'none'}")
    value = getattr(module, name)
    if callable(value) and not isinstance(value, Objective):
        try:
            value = value(model)
        except NnfeatError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's recipe raised
            raise NnfeatError(f"recipe {spec}(model) failed: {type(err).__name__}: {str(err)[:200]}") from None
    if not isinstance(value, Objective):
        raise NnfeatError(f"'{name}' in {path} is not an Objective (or a function of the model returning one)")
    return value


def cmd_render(args) -> int:
    if args.objective_text is not None:
        if args.expr:
            raise NnfeatError(f"two objectives given ('{args.expr}' and '{args.objective_text}'): give one expression")
        args.expr = args.objective_text
    if args.objective_file and args.expr:
        raise NnfeatError("give an objective expression or --objective-file, not both")
    if not args.objective_file and not args.expr:
        raise NnfeatError("give an objective (e.g. 'layer3:5' or 'layer3:0..3') or --objective-file FILE.py:NAME")
    positive("batch", args.batch)
    check_out_dir(args.out)
    kwargs = render_kwargs(args)
    model = load_model(args)
    objective = load_objective_file(args.objective_file, model) if args.objective_file else \
        parse_objective(args.expr, model)
    check_render_pixels(args.batch or objective.min_batch, kwargs["size"], model.input_size[0])
    result = render(model, objective, batch=args.batch, device=None, progress=not args.quiet, **kwargs)
    if args.objective_file:
        result.settings["objective_file"] = args.objective_file
    finish(result, args)
    for note in result.notes():
        print(f"note: {note}")
    print(f"final objective {', '.join(f'{v:.3g}' for v in result.final_values.tolist())}")
    return 0
