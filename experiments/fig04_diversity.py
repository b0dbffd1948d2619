"""Figure 4: diversity -- a batch of 4 with and without the diversity term.

Top row: 4 independent renders of the same channel (different random starts). Bottom row: the same
plus ``w * diversity(layer)``, which rewards batch items whose Gram matrices differ (Lucid weighs it
1e2 on InceptionV1; for other models ``w`` is the plain render's mean activation, so the two terms
are comparable). The JSON reports each row's mean pairwise cosine similarity of Gram matrices
(lower = more diverse).

    python experiments/fig04_diversity.py            # inceptionv1, mixed4a_pre_relu:97, 512 steps
    python experiments/fig04_diversity.py --quick    # cifar10-resnet20, a few steps (CI)
"""

from __future__ import annotations

import sys

import _figures as F
from nnfeat import objectives as O

NAME = "fig04_diversity"
TITLE = "Diversity (batch of 4)"
BATCH = 4


def main(argv: list[str] | None = None) -> int:
    return F.main_wrapper(_main, argv)


def gram_similarity(model, layer: str, images) -> float:
    """Mean pairwise cosine similarity of the items' Gram matrices at ``layer`` (= -diversity)."""
    return -sum(F.evaluate_each(model, O.diversity(layer), images)) / len(images)


def _main(argv):
    args = F.make_parser(__doc__.splitlines()[0]).parse_args(argv)
    run = F.setup(NAME, TITLE, args)
    layer, channel = run.units["diversity"]
    steps = run.steps(512, 6)
    base = O.channel(layer, channel)
    run.log(f"{F.unit_label((layer, channel))}, batch {BATCH}, {steps} steps, without diversity")
    plain = run.render(base, batch=BATCH, steps=steps)
    weight = run.units["diversity_weight"]
    if weight is None:
        weight = max(1e-3, float(plain.final_values.abs().mean()))
    run.log(f"with diversity, weight {weight:.3g}")
    diverse = run.render(base + weight * O.diversity(layer), batch=BATCH, steps=steps)
    rows, numbers = [], {}
    for label, result in (("channel only", plain), (f"channel + {weight:.3g} x diversity", diverse)):
        values = F.evaluate_each(run.model, base, result.images)
        similarity = gram_similarity(run.model, layer, result.images)
        rows.append((f"{label} (Gram similarity {similarity:.2f})",
                     [F.Panel(img, f"{v:.3g}") for img, v in zip(result.images, values)]))
        numbers[label] = {"channel_values": values, "gram_similarity": similarity}
    F.save_figure(run, rows, caption=f"Channel {layer}:{channel}, 4 images per row. Adding the diversity term "
                  "makes the batch show different facets of the unit.",
                  data={"unit": f"{layer}:{channel}", "steps": steps, "diversity_weight": weight, "rows": numbers})
    return 0


if __name__ == "__main__":
    sys.exit(main())
