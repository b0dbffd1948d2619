"""Figure 3: the objective types -- neuron, channel, layer (DeepDream), class logit, class probability.

All five are rendered in ONE batched render: item i maximizes objective i only.

    python experiments/fig03_objectives.py            # inceptionv1 (mixed4a_pre_relu:476, mixed4a), 512 steps
    python experiments/fig03_objectives.py --quick    # cifar10-resnet20, a few steps (CI)
"""

from __future__ import annotations

import sys

import _figures as F
from nnfeat import objectives as O

NAME = "fig03_objectives"
TITLE = "Objective types: neuron, channel, layer, logit, softmax"


def main(argv: list[str] | None = None) -> int:
    return F.main_wrapper(_main, argv)


def _main(argv):
    args = F.make_parser(__doc__.splitlines()[0]).parse_args(argv)
    run = F.setup(NAME, TITLE, args)
    layer, channel = run.units["main"]
    dream = run.units["dream"]
    cls = run.units["classes"][0]
    names = run.model.classes
    cls_name = f"{cls} ({names[cls]})" if names is not None and cls < len(names) else str(cls)
    objectives = {
        f"neuron {layer}:{channel} (centre)": O.neuron(layer, channel),
        f"channel {layer}:{channel}": O.channel(layer, channel),
        f"layer (DeepDream) {dream}": O.deepdream(dream),
        f"logit of class {cls_name}": O.logit(cls),
        f"softmax of class {cls_name}": O.softmax(cls),
    }
    steps = run.steps(512, 6)
    run.log(f"{len(objectives)} objectives in one batch, {steps} steps")
    result = run.render(O.per_item(list(objectives.values())), steps=steps)
    panels, entries = [], {}
    for i, (label, objective) in enumerate(objectives.items()):
        value = F.evaluate_each(run.model, objective, result.images[i : i + 1])[0]
        panels.append(F.Panel(result.images[i], f"{label}: {value:.3g}"))
        entries[label] = {"objective": objective.description, "value": value}
    F.save_figure(run, [("objective", panels)],
                  caption="One render, one objective per batch item: a neuron (centre position), a channel, a whole "
                  "layer (DeepDream), a class logit and a class probability.",
                  data={"steps": steps, "objectives": entries})
    return 0


if __name__ == "__main__":
    sys.exit(main())
