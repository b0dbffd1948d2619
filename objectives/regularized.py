"""Objective recipes with Lucid-style regularizers, for any model.

Use from the command line as ``--objective-file objectives/regularized.py:NAME``. A recipe is an
``Objective``, or a function ``recipe(model) -> Objective`` that may look at the model (its layers, classes).
"""

from nnfeat.objectives import blur, channel, deepdream, diversity, l1, logit, total_variation


def _last_conv_stage(model):
    """The deepest layer whose name is a top-level stage (``layer3``, ``conv3``, ``mixed5b``...)."""
    names = [n for n in model.layer_names() if "." not in n and model.module(n).__class__.__name__ != "Linear"]
    shapes = model.layer_shapes(names)
    spatial = [n for n in names if len(shapes[n]) == 4]
    return spatial[-1]


def smooth_logit0(model):
    """Class 0's logit with total-variation and L1 penalties: smoother, less saturated images."""
    return logit(0) - 0.5 * total_variation() - 0.1 * l1()


def diverse_channel0(model):
    """Channel 0 of the deepest conv stage, with a diversity reward: use --batch 4 for four different looks."""
    layer = _last_conv_stage(model)
    return channel(layer, 0) + 100 * diversity(layer)


def dream(model):
    """DeepDream on the deepest conv stage, with a little blur to keep it clean."""
    return deepdream(_last_conv_stage(model)) - 1.0 * blur()
