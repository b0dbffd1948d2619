"""Figure 8: dataset examples next to optimization, positive and negative.

For one channel: the images of a dataset that excite it most (positive examples) and least (negative
examples), cut to the receptive field of the strongest / weakest position, next to a render that
maximizes the channel and one that minimizes it (one batched render, item 0: +channel, item 1:
-channel). The JSON holds the example scores and the rendered activations; ``activation_ratio`` is
the positive render's activation over the best example's (above 1: stronger than any dataset image).

    python experiments/fig08_dataset_examples.py --images /data/imagenet/val   # inceptionv1, mixed4a_pre_relu:476
    python experiments/fig08_dataset_examples.py --quick                       # cifar10-resnet20 on CIFAR-10 (CI)
"""

from __future__ import annotations

import sys

import _figures as F
from nnfeat import objectives as O
from nnfeat.ops.examples import example_patches, top_examples

NAME = "fig08_dataset_examples"
TITLE = "Dataset examples vs. optimization, positive and negative"


def main(argv: list[str] | None = None) -> int:
    return F.main_wrapper(_main, argv)


def _main(argv):
    args = F.make_parser(__doc__.splitlines()[0], images=True).parse_args(argv)
    run = F.setup(NAME, TITLE, args)
    layer, channel = run.units["examples"]
    images = run.images("dataset examples")
    k = 4 if run.quick else 8
    run.log(f"{layer}:{channel}: top and bottom {k} of {len(images)} images")
    found = top_examples(run.model, layer, [channel], images, k=k, progress=not run.quick)[channel]
    objective = O.channel(layer, channel)
    steps = run.steps(512, 6)
    run.log(f"positive and negative optimization, {steps} steps")
    result = run.render(O.per_item([objective, -objective]), steps=steps)
    rendered = F.evaluate_each(run.model, objective, result.images)
    rows = []
    for sign, examples, image, value in (("positive", found.top, result.images[0], rendered[0]),
                                          ("negative", found.bottom, result.images[1], rendered[1])):
        patches = example_patches(images, examples, run.model.input_size)
        panels = [F.Panel(image, f"optimized: {value:.3g}")]
        panels += [F.Panel(p, f"#{e.index}: {e.score:.3g}") for p, e in zip(patches, examples)]
        rows.append((f"{sign}: {'max' if sign == 'positive' else 'min'}imize, then dataset examples", panels))
    best = found.top[0].score
    ratio = rendered[0] / best if best > 0 else None
    F.save_figure(run, rows, caption=f"Channel {layer}:{channel}: the render that maximizes (top) or minimizes "
                  f"(bottom) it, then the {k} dataset images (receptive-field crops) with the highest or lowest mean "
                  "activation.",
                  data={"unit": f"{layer}:{channel}", "steps": steps, "dataset": images.name, "dataset_images": len(images),
                        "optimized": {"positive": rendered[0], "negative": rendered[1]},
                        "examples": found.to_dict(), "activation_ratio": ratio},
                  note="numbers: channel activation (spatial mean); #N is the image's index in the dataset")
    return 0


if __name__ == "__main__":
    sys.exit(main())
