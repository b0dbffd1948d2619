"""Figure 1: naive pixel-space optimization next to Fourier + decorrelated + transformation-robust optimization.

Both rows maximize the same channel with the same optimizer, learning rate and seed; the naive row
optimizes raw pixels with no transforms, the robust row uses nnfeat's defaults (Fourier
parameterization, colour decorrelation, transforms). Columns are step counts (one render per row,
images kept at each threshold). The JSON holds each picture's objective value and the share of its
spectral energy above half the Nyquist frequency (high for the naive row's adversarial noise).

    python experiments/fig01_naive_vs_robust.py            # inceptionv1, mixed4a_pre_relu:476, 2048 steps
    python experiments/fig01_naive_vs_robust.py --quick    # cifar10-resnet20, a few steps (CI)
"""

from __future__ import annotations

import sys

import _figures as F
from nnfeat import objectives as O

NAME = "fig01_naive_vs_robust"
TITLE = "Naive pixel optimization vs. Fourier + decorrelation + robustness"


def main(argv: list[str] | None = None) -> int:
    return F.main_wrapper(_main, argv)


def _main(argv):
    args = F.make_parser(__doc__.splitlines()[0]).parse_args(argv)
    run = F.setup(NAME, TITLE, args)
    unit = run.units["main"]
    objective = O.channel(*unit)
    thresholds = run.thresholds([16, 64, 256, 1024, 2048], [1, 3, 6])
    steps = thresholds[-1]
    settings = {
        "naive: pixels, no decorrelation, no transforms": dict(param="pixel", decorrelate=False, transforms="none"),
        "Fourier + decorrelation + transforms (nnfeat default)": dict(param="fft", decorrelate=True, transforms="auto"),
    }
    rows, numbers = [], {}
    for label, kwargs in settings.items():
        run.log(f"{label}: {steps} steps")
        result = run.render(objective, steps=steps, thresholds=thresholds, **kwargs)
        panels, entries = [], []
        for step in sorted(result.history):
            image = result.history[step]
            value = F.evaluate_each(run.model, objective, image)[0]
            hf = F.high_frequency_share(image)[0]
            panels.append(F.Panel(image[0], f"step {step}: {value:.3g}"))
            entries.append({"step": step, "objective": value, "high_frequency_share": hf})
        rows.append((label, panels))
        numbers[label] = {"settings": kwargs, "thresholds": entries}
    F.save_figure(run, rows, caption=f"Channel {F.unit_label(unit)}: the same objective optimized naively in pixel "
                  "space (top) and with nnfeat's defaults (bottom), at several step counts.",
                  data={"unit": F.unit_label(unit), "steps": steps, "rows": numbers},
                  note="numbers under each picture: steps, channel activation (no transforms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
