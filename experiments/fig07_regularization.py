"""Figure 7: the regularization comparison -- none, L1, total variation, blur, transformation robustness.

All columns optimize raw pixels (no Fourier, no decorrelation) for the same channel, so only the
regularizer differs. Each penalty's weight is set so that, on the unregularized result, the penalty
equals half the objective (``0.5 * objective / penalty``): a comparable strength on any model. L1,
TV and blur run in one batched render (one objective per item); robustness is a render with the
transforms on. The JSON reports each result's activation and the share of its spectral energy above
half the Nyquist frequency (regularizers should lower it).

    python experiments/fig07_regularization.py            # inceptionv1, mixed4b_pre_relu:443, 512 steps
    python experiments/fig07_regularization.py --quick    # cifar10-resnet20, a few steps (CI)
"""

from __future__ import annotations

import sys

import _figures as F
from nnfeat import objectives as O

NAME = "fig07_regularization"
TITLE = "Regularization: L1, total variation, blur, transformation robustness"
STRENGTH = 0.5


def main(argv: list[str] | None = None) -> int:
    return F.main_wrapper(_main, argv)


def _main(argv):
    args = F.make_parser(__doc__.splitlines()[0]).parse_args(argv)
    run = F.setup(NAME, TITLE, args)
    unit = run.units["regularize"]
    objective = O.channel(*unit)
    steps = run.steps(512, 6)
    pixels = dict(param="pixel", decorrelate=False, steps=steps)
    run.log(f"{F.unit_label(unit)}: unregularized, {steps} steps")
    plain = run.render(objective, transforms="none", **pixels)
    value = float(plain.final_values[0])
    penalties = {"L1 (toward grey)": O.l1(), "total variation": O.total_variation(), "blur": O.blur()}
    weights = {}
    for name, penalty in penalties.items():
        at_plain = F.evaluate_each(run.model, penalty, plain.images)[0]
        weights[name] = STRENGTH * abs(value) / max(at_plain, 1e-8)
    run.log("L1, TV and blur in one batch; weights " + ", ".join(f"{k} {w:.3g}" for k, w in weights.items()))
    regularized = run.render(O.per_item([objective - weights[k] * p for k, p in penalties.items()]),
                             transforms="none", **pixels)
    robust = run.render(objective, transforms="auto", **pixels)
    images = {"none": plain.images[0]}
    images.update({k: regularized.images[i] for i, k in enumerate(penalties)})
    images["transformation robustness"] = robust.images[0]
    panels, numbers = [], {}
    for name, image in images.items():
        act = F.evaluate_each(run.model, objective, image[None])[0]
        hf = F.high_frequency_share(image[None])[0]
        weight = weights.get(name)
        label = name if weight is None else f"{name} (w={weight:.3g})"
        panels.append(F.Panel(image, f"{label}: act {act:.3g}, HF {hf:.2f}"))
        numbers[name] = {"weight": weight, "activation": act, "high_frequency_share": hf}
    F.save_figure(run, [(F.unit_label(unit), panels)],
                  caption=f"Channel {F.unit_label(unit)} optimized in pixel space with no regularizer, with an L1, "
                  "total-variation or blur penalty, and with transformation robustness.",
                  data={"unit": F.unit_label(unit), "steps": steps, "strength": STRENGTH, "columns": numbers},
                  note="act: channel activation; HF: share of spectral energy above half the Nyquist frequency")
    return 0


if __name__ == "__main__":
    sys.exit(main())
