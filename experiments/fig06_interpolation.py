"""Figure 6: interpolation between two units with shared components and the alignment objective.

Frame i of N maximizes ``(1 - t_i) * a + t_i * b`` with ``t_i = i / (N - 1)``. The images share
low-resolution Fourier components (the ``fft+shared`` parameterization) and the alignment objective
rewards neighbouring frames for similar activations, so the frames morph smoothly. The JSON reports
each frame's activation of a and b.

    python experiments/fig06_interpolation.py            # inceptionv1, mixed4a_pre_relu:476 -> 460, 6 frames
    python experiments/fig06_interpolation.py --quick    # cifar10-resnet20, 4 frames, a few steps (CI)
"""

from __future__ import annotations

import sys

import _figures as F
from nnfeat import objectives as O

NAME = "fig06_interpolation"
TITLE = "Interpolation between two units (shared components + alignment)"
ALIGNMENT_WEIGHT = 1e-1


def main(argv: list[str] | None = None) -> int:
    return F.main_wrapper(_main, argv)


def _main(argv):
    args = F.make_parser(__doc__.splitlines()[0]).parse_args(argv)
    run = F.setup(NAME, TITLE, args)
    unit_a, unit_b = run.units["main"], run.units["second"]
    frames = 4 if run.quick else 6
    a, b = O.channel(*unit_a), O.channel(*unit_b)
    mix = [(1 - i / (frames - 1)) * a + (i / (frames - 1)) * b for i in range(frames)]
    objective = O.per_item(mix) + ALIGNMENT_WEIGHT * O.alignment(unit_a[0])
    steps = run.steps(512, 6)
    run.log(f"{F.unit_label(unit_a)} -> {F.unit_label(unit_b)}, {frames} frames, {steps} steps")
    result = run.render(objective, batch=frames, param="fft+shared", steps=steps)
    values_a = F.evaluate_each(run.model, a, result.images)
    values_b = F.evaluate_each(run.model, b, result.images)
    panels = [F.Panel(img, f"t={i / (frames - 1):.2f} a={va:.3g} b={vb:.3g}")
              for i, (img, va, vb) in enumerate(zip(result.images, values_a, values_b))]
    F.save_figure(run, [(f"{F.unit_label(unit_a)} to {F.unit_label(unit_b)}", panels)],
                  caption=f"Frames interpolating from a = {F.unit_label(unit_a)} to b = {F.unit_label(unit_b)}; "
                  f"shared low-resolution components plus {ALIGNMENT_WEIGHT:g} x alignment({unit_a[0]}).",
                  data={"a": F.unit_label(unit_a), "b": F.unit_label(unit_b), "steps": steps, "frames": frames,
                        "alignment_weight": ALIGNMENT_WEIGHT,
                        "values": [{"t": i / (frames - 1), "a": va, "b": vb}
                                   for i, (va, vb) in enumerate(zip(values_a, values_b))]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
