"""Figure 5: neuron addition -- unit a, unit b, and a + b, rendered in one batch.

The JSON reports, for each of the three images, the activation of a and of b: the joint image
excites both.

    python experiments/fig05_addition.py            # inceptionv1, mixed4b_pre_relu:111 + mixed4a_pre_relu:476
    python experiments/fig05_addition.py --quick    # cifar10-resnet20, a few steps (CI)
"""

from __future__ import annotations

import sys

import _figures as F
from nnfeat import objectives as O

NAME = "fig05_addition"
TITLE = "Neuron addition"


def main(argv: list[str] | None = None) -> int:
    return F.main_wrapper(_main, argv)


def _main(argv):
    args = F.make_parser(__doc__.splitlines()[0]).parse_args(argv)
    run = F.setup(NAME, TITLE, args)
    unit_a, unit_b = run.units["addition"]
    a, b = O.channel(*unit_a), O.channel(*unit_b)
    steps = run.steps(512, 6)
    run.log(f"{F.unit_label(unit_a)}, {F.unit_label(unit_b)} and their sum, {steps} steps")
    result = run.render(O.per_item([a, b, a + b]), steps=steps)
    values_a = F.evaluate_each(run.model, a, result.images)
    values_b = F.evaluate_each(run.model, b, result.images)
    labels = [F.unit_label(unit_a), F.unit_label(unit_b), f"{F.unit_label(unit_a)} + {F.unit_label(unit_b)}"]
    panels = [F.Panel(img, f"{label}: a={va:.3g}, b={vb:.3g}")
              for img, label, va, vb in zip(result.images, labels, values_a, values_b)]
    F.save_figure(run, [("a, b, a + b", panels)],
                  caption=f"a = {labels[0]}, b = {labels[1]}; the third image maximizes a + b and shows both.",
                  data={"a": labels[0], "b": labels[1], "steps": steps,
                        "images": [{"objective": label, "a": va, "b": vb}
                                   for label, va, vb in zip(labels, values_a, values_b)]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
