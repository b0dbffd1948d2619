"""Figure 10: MACO against Fourier on the same units, with the activation reached and transferability.

MACO (Fel et al. 2023) fixes the image's Fourier magnitude to a dataset's mean spectrum
(:func:`nnfeat.engine.spectrum.dataset_spectrum`) and optimizes only the phase; the Fourier parameterization
(nnfeat's default) optimizes the whole spectrum. Each parameterization renders, in one batch, the
figure's units (channel objectives) and class logits (several random starts per class). Reported:

* activation reached per unit, and its ratio to the unit's maximum over the dataset;
* transferability: the share of class renders that the judge models (``--judge``; default: the other
  shared CIFAR-10 ResNet for CIFAR models, none otherwise, since a judge must share the class list)
  classify as the target class.

Without ``--images`` on an ImageNet model, MACO uses a synthetic 1/f spectrum and no activation ratio
is reported.

    python experiments/fig10_maco.py --images /data/imagenet/val   # inceptionv1, 4 paper units, 512 steps
    python experiments/fig10_maco.py --model cifar10-resnet20      # CIFAR-10: 10 classes x 4 starts, judged by resnet32
    python experiments/fig10_maco.py --quick                       # a few steps (CI)
"""

from __future__ import annotations

import sys

import _figures as F
import quality as Q

import nnfeat
from nnfeat import objectives as O
from nnfeat.errors import NnfeatError
from nnfeat.layouts import OUTPUT
from nnfeat.engine.spectrum import dataset_spectrum, power_law_spectrum

NAME = "fig10_maco"
TITLE = "MACO vs. Fourier parameterization"


def main(argv: list[str] | None = None) -> int:
    return F.main_wrapper(_main, argv)


def default_judges(model_name: str) -> list[str]:
    if model_name.startswith("cifar10-resnet"):
        return ["cifar10-resnet20" if model_name == "cifar10-resnet32" else "cifar10-resnet32"]
    return []


def _main(argv):
    parser = F.make_parser(__doc__.splitlines()[0], images=True)
    parser.add_argument("--judge", default=None, help="comma list of judge models with the same classes")
    args = parser.parse_args(argv)
    run = F.setup(NAME, TITLE, args)
    units = [tuple(u) for u in run.units["maco"]]
    try:
        images = run.images("the MACO spectrum")
    except NnfeatError as err:
        run.log(f"{err}; using a synthetic 1/f spectrum instead")
        images = None
    spectrum = dataset_spectrum(images, run.size) if images is not None else power_law_spectrum(run.size)
    judge_names = args.judge.split(",") if args.judge else default_judges(run.model_name)
    for name in judge_names:
        F.setup_weights_path(name)
    judges = [nnfeat.load_model(name, device=run.model.device) for name in judge_names]
    n_classes = run.model.layer_shapes([OUTPUT])[OUTPUT][1]
    if run.model_name.startswith("cifar10-"):
        classes = list(range(4)) if run.quick else list(range(n_classes))
    else:
        classes = list(run.units["classes"])
    restarts = 1 if run.quick else 4
    targets = [c for _ in range(restarts) for c in classes]
    layers = sorted({layer for layer, _ in units})
    maxima = Q.dataset_maxima(run.model, [*layers, OUTPUT], images) if images is not None else None
    steps = run.steps(512, 6)
    objectives = [O.channel(*u) for u in units] + [O.logit(c) for c in targets]
    rows, numbers = [], {}
    for kind in ("fft", "maco"):
        run.log(f"{kind}: {len(units)} units + {len(targets)} class renders, {steps} steps")
        param = Q.make_param(kind, run.size, len(objectives), decorrelate=True, spectrum=spectrum, seed=args.seed,
                             device=run.model.device)
        result = run.render(O.per_item(objectives), param=param, steps=steps)
        values = [float(v) for v in result.final_values]
        ratios = [values[i] / float(maxima[u[0]][u[1]]) if maxima is not None and maxima[u[0]][u[1]] > 0 else None
                  for i, u in enumerate(units)]
        renders = result.images[len(units):]
        verdicts = Q.judge(judges, renders, targets) if judges else {}
        panels = [F.Panel(result.images[i], f"{F.unit_label(u)}: {values[i]:.3g}" +
                          ("" if ratios[i] is None else f" ({ratios[i]:.2f} x max)")) for i, u in enumerate(units)]
        names = run.model.classes
        panels += [F.Panel(renders[i], f"logit {c}" + (f" ({names[c]})" if names is not None else ""))
                   for i, c in enumerate(classes[:4])]
        transfer = ", ".join(f"{100 * v['share']:.0f} % by {j}" for j, v in verdicts.items()) or "no judge"
        label = "Fourier (fft, default)" if kind == "fft" else "MACO (dataset magnitude, phase only)"
        rows.append((f"{label}; transfer: {transfer}", panels))
        numbers[kind] = {"units": {F.unit_label(u): {"activation": values[i], "ratio_to_dataset_max": ratios[i]}
                                   for i, u in enumerate(units)},
                         "transfer": verdicts, "class_renders": len(targets)}
    spectrum_source = images.name if images is not None else "synthetic 1/f"
    F.save_figure(run, rows, caption="The same units and class logits rendered with the Fourier parameterization "
                  f"and with MACO (magnitude from {spectrum_source}); numbers are the activation reached and its "
                  "ratio to the dataset maximum; transfer is the share of class renders the judge models classify "
                  "as the target.",
                  data={"steps": steps, "spectrum": spectrum_source, "classes": classes, "restarts": restarts,
                        "judges": judge_names, "results": numbers})
    return 0


if __name__ == "__main__":
    sys.exit(main())
