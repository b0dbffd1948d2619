"""``nnfeat render`` (an objective expression) and ``nnfeat microscope`` (one render per unit of a layer)."""

from __future__ import annotations

import argparse

from nnfeat.cli.common import UNITS_HELP, add_images, add_model, add_shared, check_k, check_render_pixels, \
    finish, load_images_from_args, load_model, positive
from nnfeat.errors import NnfeatError, shorten

STEPS = 256


def add_render_options(p: argparse.ArgumentParser) -> None:
    """The render options shared by ``render`` and ``microscope`` (same names, defaults and help)."""
    from nnfeat.engine.param import PARAM_KINDS
    from nnfeat.engine.transforms import TRANSFORM_PRESETS

    p.add_argument("--size", type=int, default=None, help="image size in px (default: the model's input size)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"optimization steps (default {STEPS})")
    p.add_argument("--param", default=None, choices=PARAM_KINDS,
                   help="image parameterization (default fft; maco when --spectrum is given)")
    p.add_argument("--spectrum", default=None, metavar="FILE.pt",
                   help="Fourier magnitude for --param maco, written by `nnfeat spectrum --out FILE.pt`")
    p.add_argument("--no-decorrelate", action="store_true", help="turn colour decorrelation off")
    p.add_argument("--transforms", default="auto", choices=TRANSFORM_PRESETS,
                   help="robustness transforms: auto (size-aware, default), standard (Lucid's), none")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 0.05; cppn 0.005)")
    p.add_argument("--thresholds", default=None, help="comma list of steps at which to save images, e.g. 32,128,256")


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
                                   "('layer3:5 - 0.5*diversity(\"layer3\")'); a leading '-' works: '-layer3:5'.")
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

    p = sub.add_parser("microscope", help="render one image per unit of a layer (resumable), with a page",
                       description="Render every unit (default: every channel of LAYER), BATCH units per render; "
                                   "finished batches are kept in --out and a re-run resumes.")
    add_model(p)
    p.add_argument("units", metavar="UNITS", help=UNITS_HELP)
    p.add_argument("--batch", type=int, default=16, help="units rendered together (default 16)")
    add_images(p, required=False)
    p.add_argument("--k", type=int, default=4, help="dataset examples per unit with --images (default 4)")
    add_render_options(p)
    add_shared(p, out="out/microscope")
    p.set_defaults(func=cmd_microscope)


def _param_and_spectrum(args) -> tuple[str, object]:
    """``--param`` / ``--spectrum`` -> (kind, magnitude or None), with one-line errors for a bad pairing."""
    kind = args.param or ("maco" if args.spectrum else "fft")
    if args.spectrum and kind != "maco":
        raise NnfeatError(f"--spectrum is for --param maco, not --param {kind}: drop one of them")
    if kind == "maco" and not args.spectrum:
        raise NnfeatError("--param maco needs --spectrum FILE.pt: make one with "
                          "`nnfeat spectrum --images SRC --model MODEL --out FILE.pt`")
    if not args.spectrum:
        return kind, None
    from nnfeat.engine.spectrum import load_spectrum

    return kind, load_spectrum(args.spectrum)


def render_kwargs(args) -> dict:
    """The keyword arguments of :func:`nnfeat.render` that the shared render options give."""
    from nnfeat.device import autocast_for

    positive("steps", args.steps)
    positive("size", args.size, 2)
    try:
        thresholds = [int(t) for t in args.thresholds.split(",")] if args.thresholds else None
    except ValueError:
        raise NnfeatError(f"bad --thresholds '{shorten(args.thresholds)}': expected a comma list of steps, e.g. 32,128,256"
                          ) from None
    if thresholds is not None and (min(thresholds) < 1 or max(thresholds) > args.steps):
        raise NnfeatError(f"--thresholds must lie in 1..{args.steps} (--steps); got {shorten(args.thresholds)}")
    kind, spectrum = _param_and_spectrum(args)
    return dict(size=args.size, steps=args.steps, lr=args.lr, seed=args.seed, param=kind, spectrum=spectrum,
                decorrelate=not args.no_decorrelate, transforms=args.transforms, thresholds=thresholds,
                autocast=autocast_for(args.precision))


def load_objective_file(spec: str, model=None):
    """``FILE.py:NAME`` -> the Objective ``NAME`` in that file (or ``NAME(model)`` when it is a function)."""
    import importlib.util
    from pathlib import Path

    from nnfeat.engine.objectives import Objective

    path_text, _, name = spec.rpartition(":")
    if not path_text or not name:
        raise NnfeatError(f"bad --objective-file '{shorten(spec)}': expected FILE.py:NAME")
    path = Path(path_text)
    from nnfeat.io import is_existing_file

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
    from nnfeat.engine.expr import parse_objective
    from nnfeat.ops.render import render
    from nnfeat.ops.results import check_out_dir

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
    print(f"final objective {', '.join(f'{v:.3g}' for v in result.final_values.tolist())}")
    return 0


def cmd_microscope(args) -> int:
    from nnfeat.finite import probe_finite
    from nnfeat.ops.microscope import microscope
    from nnfeat.ops.results import check_out_dir

    positive("batch", args.batch)
    positive("k", args.k)
    positive("n", args.n)
    out = check_out_dir(args.out)
    kwargs = render_kwargs(args)
    model = load_model(args)
    size = (kwargs["size"] or model.input_size[0],) * 2
    parsed, channels = model.units(args.units, size)  # bad units: one line before any work
    check_render_pixels(min(args.batch, len(channels)), kwargs["size"], model.input_size[0])
    probe_finite(model, [parsed.layer], size)  # a NaN model fails now, not after the first finished batches
    images = load_images_from_args(args, model)  # a bad source fails now, not after the renders
    check_k(args.k, images, args.images)
    result = microscope(model, args.units, out=out, batch=args.batch, images=images, examples_k=args.k,
                        progress=not args.quiet, **kwargs)
    return finish(result, args)
