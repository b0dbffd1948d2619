"""Figure 2: optimization progress -- one render, the image kept at several step thresholds.

The paper shows a unit after 1, 32, 128, 256 and 2048 steps. The last panel plots the objective
(measured on the transformed image each step) against the step.

    python experiments/fig02_progress.py            # inceptionv1, mixed4b_pre_relu:443, 2048 steps
    python experiments/fig02_progress.py --quick    # cifar10-resnet20, 8 steps (CI)
"""

from __future__ import annotations

import sys

import _figures as F
from nnfeat import objectives as O

NAME = "fig02_progress"
TITLE = "Optimization progress at step thresholds"


def main(argv: list[str] | None = None) -> int:
    return F.main_wrapper(_main, argv)


def _main(argv):
    args = F.make_parser(__doc__.splitlines()[0]).parse_args(argv)
    run = F.setup(NAME, TITLE, args)
    unit = run.units["progress"]
    objective = O.channel(*unit)
    thresholds = run.thresholds([1, 32, 128, 256, 2048], [1, 2, 4, 8])
    run.log(f"{F.unit_label(unit)}: {thresholds[-1]} steps")
    result = run.render(objective, steps=thresholds[-1], thresholds=thresholds)
    panels, entries = [], []
    for step in sorted(result.history):
        value = F.evaluate_each(run.model, objective, result.history[step])[0]
        panels.append(F.Panel(result.history[step][0], f"step {step}: {value:.3g}"))
        entries.append({"step": step, "objective": value})
    curve = result.values[:, 0].tolist()
    rows = [(F.unit_label(unit), panels), ("objective per step", [F.Panel(F.curve_image({"objective": curve}), "")])]
    F.save_figure(run, rows, caption=f"Channel {F.unit_label(unit)} after {', '.join(map(str, thresholds))} steps of "
                  "one render (Fourier, decorrelated, transforms), and its objective per step.",
                  data={"unit": F.unit_label(unit), "thresholds": entries, "values_per_step": curve})
    return 0


if __name__ == "__main__":
    sys.exit(main())
