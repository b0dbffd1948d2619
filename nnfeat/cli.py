"""The ``nnfeat`` command line.

Every sub-command turns a user mistake into one line on stderr and exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import platform
import sys
from pathlib import Path
from typing import Sequence

from nnfeat.errors import NnfeatError


def _load_model(args):
    from nnfeat.models.zoo import load_model
    from nnfeat.device import resolve_device

    resolve_device(getattr(args, "device", None))  # a one-line error for an unavailable device, before any loading
    return load_model(args.model, weights=getattr(args, "weights", "pretrained"), device=getattr(args, "device", None))


def load_objective_file(spec: str, model=None):
    """``FILE.py:NAME`` -> the Objective ``NAME`` in that file (or ``NAME(model)`` when it is a function)."""
    from nnfeat.objectives import Objective

    path_text, _, name = spec.rpartition(":")
    if not path_text or not name:
        raise NnfeatError(f"bad --objective-file '{spec}': expected FILE.py:NAME")
    path = Path(path_text)
    if not path.is_file():
        raise NnfeatError(f"objective file '{path}' not found: expected FILE.py:NAME with an existing FILE.py")
    module_spec = importlib.util.spec_from_file_location(f"nnfeat_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - a broken recipe file is user input
        raise NnfeatError(f"objective file '{path}' failed to load: {type(err).__name__}: {err}") from None
    if not hasattr(module, name):
        names = [n for n in vars(module) if not n.startswith("_") and (callable(vars(module)[n]) or
                                                                     isinstance(vars(module)[n], Objective))]
        raise NnfeatError(f"'{name}' not found in {path}; recipes there: {', '.join(sorted(names)) or 'none'}")
    value = getattr(module, name)
    if callable(value) and not isinstance(value, Objective):
        value = value(model)
    if not isinstance(value, Objective):
        raise NnfeatError(f"'{name}' in {path} is not an Objective (or a function of the model returning one)")
    return value


def _objective_from_args(args, model):
    from nnfeat.expr import parse_objective

    if args.objective_file:
        return load_objective_file(args.objective_file, model)
    if not args.expr:
        raise NnfeatError("give an objective expression (e.g. 'layer3:5') or --objective-file FILE.py:NAME")
    return parse_objective(args.expr)


def _versions() -> dict:
    import torch

    import nnfeat

    return {"nnfeat": getattr(nnfeat, "__version__", "0"), "torch": torch.__version__, "python": platform.python_version()}


# ---------------------------------------------------------------------------------------------------


def cmd_layers(args) -> int:
    model = _load_model(args)
    size = (args.size, args.size) if args.size else None
    rows = model.describe_layers(size)
    width = max(len(r[0]) for r in rows)
    print(f"{'layer':<{width}}  {'output shape':<18} channels")
    for name, shape, channels in rows:
        shape_text = "not called" if shape is None else "x".join(map(str, shape))
        print(f"{name:<{width}}  {shape_text:<18} {'' if channels is None else channels}")
    return 0


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
    from nnfeat.spectrum import load_spectrum

    return kind, load_spectrum(args.spectrum)


def _render_kwargs(args) -> dict:
    from nnfeat.device import autocast_for

    thresholds = [int(t) for t in args.thresholds.split(",")] if args.thresholds else None
    kind, spectrum = _param_and_spectrum(args)
    return dict(size=args.size, steps=args.steps, lr=args.lr, seed=args.seed, device=args.device, param=kind,
                spectrum=spectrum,
                decorrelate=not args.no_decorrelate, transforms=args.transforms, thresholds=thresholds,
                progress=not args.quiet, autocast=autocast_for(args.precision))


def cmd_render(args) -> int:
    from nnfeat.io import save_grid, save_image, write_json
    from nnfeat.rendering import render

    model = _load_model(args)
    objective = _objective_from_args(args, model)
    kwargs = _render_kwargs(args)
    result = render(model, objective, batch=args.batch, **kwargs)
    out = Path(args.out)
    final = result.final
    save_grid(out / "render.png", final)
    for i, image in enumerate(final):
        save_image(out / f"render-{i}.png", image)
    for step, images in result.images.items():
        if step != max(result.images):
            save_grid(out / f"render-step{step}.png", images)
    write_json(out / "render.json", {
        "model": args.model,
        "objective": args.expr or args.objective_file,
        "objective_parsed": objective.description,
        "settings": result.settings,
        "seed": args.seed,
        "final_values": result.final_values.tolist(),
        "values_last_step": result.values[-1].tolist(),
        "elapsed_seconds": round(result.elapsed, 3),
        "versions": _versions(),
    })
    print(f"wrote {out / 'render.png'} ({final.shape[0]} image(s)); final objective "
          f"{', '.join(f'{v:.3g}' for v in result.final_values.tolist())}")
    return 0


def parse_channel_range(text: str, n_channels: int, layer: str) -> list[int]:
    """``"A:B"`` (B exclusive), ``"A"`` or ``"1,5,9"`` -> channel list, checked against ``n_channels``."""
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            channels = list(range(int(a) if a else 0, int(b) if b else n_channels))
        else:
            channels = [int(c) for c in text.split(",")]
    except ValueError:
        raise NnfeatError(f"bad --channels '{text}': expected A:B, A or a comma list of integers") from None
    if not channels:
        raise NnfeatError(f"--channels '{text}' selects no channel: valid channels of '{layer}' are 0..{n_channels - 1}")
    bad = [c for c in channels if not 0 <= c < n_channels]
    if bad:
        raise NnfeatError(f"channel {bad[0]} out of range for layer '{layer}': valid channels are 0..{n_channels - 1}")
    return channels


def cmd_microscope(args) -> int:
    from nnfeat.microscope import microscope

    model = _load_model(args)
    microscope(model, args.layer, args.channels, out=Path(args.out), batch=args.batch, images=args.images,
               model_name=args.model, **_render_kwargs(args))
    return 0


def cmd_demo(args) -> int:
    from nnfeat.demo import run_demo

    run_demo(Path(args.out), steps=args.steps, atlas=not args.no_atlas, progress=not args.quiet)
    return 0


# ---------------------------------------------------------------------------------------------------


def _add_render_options(p: argparse.ArgumentParser, *, steps: int = 256) -> None:
    from nnfeat.param import PARAM_KINDS
    from nnfeat.device import PRECISIONS
    from nnfeat.transforms import TRANSFORM_PRESETS

    p.add_argument("--size", type=int, default=None, help="image size in px (default: the model's input size)")
    p.add_argument("--steps", type=int, default=steps, help=f"optimization steps (default {steps})")
    p.add_argument("--param", default=None, choices=PARAM_KINDS,
                   help="image parameterization (default fft; maco when --spectrum is given)")
    p.add_argument("--spectrum", default=None, metavar="FILE.pt",
                   help="Fourier magnitude for --param maco, written by `nnfeat spectrum --out FILE.pt`")
    p.add_argument("--no-decorrelate", action="store_true", help="turn colour decorrelation off")
    p.add_argument("--transforms", default="auto", choices=TRANSFORM_PRESETS,
                   help="robustness transforms: auto (size-aware, default), standard (Lucid's), none")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 0.05; cppn 0.005)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="model arithmetic: auto (bf16 where the device has native bf16, else fp32; default), "
                        "fp32, bf16")
    p.add_argument("--thresholds", default=None, help="comma list of steps at which to save images, e.g. 32,128,256")
    p.add_argument("--weights", default="pretrained", help="pretrained (default) or random")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what was wrong, what is valid, where help is), exit 2."""

    def error(self, message: str):
        print(f"nnfeat: error: {message} (see '{self.prog} -h')", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="nnfeat", description="See what neural networks learned.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    model_help = "cifar10-resnet20|32|44|56, digits-cnn, inceptionv1, torchvision:NAME or FILE.py:FACTORY"

    p = sub.add_parser("layers", help="list a model's layer names, output shapes and channel counts")
    p.add_argument("model", help=model_help)
    p.add_argument("--size", type=int, default=None, help="input size (default: the model's native size)")
    p.add_argument("--weights", default="random", help="weights to load (default random: shapes need none)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("render", help="render images that maximize an objective expression")
    p.add_argument("model", help=model_help)
    p.add_argument("expr", nargs="?", help="objective, e.g. 'layer3:5' or 'linear:3 - 0.5*diversity(\"layer2\")'")
    p.add_argument("--objective-file", default=None, help="FILE.py:NAME recipe instead of an expression")
    p.add_argument("--batch", type=int, default=None,
                   help="number of images (default: the objective's unit count or its highest batch=i + 1, else 1)")
    p.add_argument("--out", default="out/render", help="output folder (default out/render)")
    _add_render_options(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("microscope", help="render one image per channel of a layer (resumable)")
    p.add_argument("model", help=model_help)
    p.add_argument("layer", help="layer name, e.g. layer3")
    p.add_argument("--channels", default=None, help="A:B (B exclusive), A, or a comma list (default: all)")
    p.add_argument("--batch", type=int, default=16, help="channels rendered together (default 16)")
    p.add_argument("--images", default=None, help="image source: also show each channel's top dataset examples")
    p.add_argument("--out", default="out/microscope", help="output folder (default out/microscope)")
    _add_render_options(p)
    p.set_defaults(func=cmd_microscope)

    p = sub.add_parser("demo", help="offline demo on the embedded digits-cnn; writes OUT/index.html")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--no-atlas", action="store_true", help="skip the digits activation atlas")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    for module_name in ("nnfeat.atlas.commands", "nnfeat.spectrum"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NnfeatError as err:
        print(f"nnfeat: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nnfeat: interrupted; run the same command again to resume where it stopped", file=sys.stderr)
        return 130



if __name__ == "__main__":
    sys.exit(main())
