"""nnfeat: see what neural networks learned.

Quick start::

    import nnfeat
    model = nnfeat.load_model("cifar10-resnet20")
    result = nnfeat.render(model, nnfeat.objectives.channel("layer3", 5), steps=256)
    result.images            # (1, 3, 32, 32) RGB in [0, 1]
"""

from nnfeat import objectives
from nnfeat.errors import NnfeatError
from nnfeat.expr import parse_objective
from nnfeat.models.base import Model
from nnfeat.rendering import RenderResult, evaluate, render

__version__ = "0.1.0"


def load_model(name: str, *, weights: str = "pretrained", device=None) -> Model:
    """Load a model by name: ``cifar10-resnet20``, ``digits-cnn``, ``inceptionv1``, ``torchvision:NAME``,
    ``FILE.py:FACTORY``. See :func:`nnfeat.models.zoo.load_model`."""
    from nnfeat.models.zoo import load_model as _load

    return _load(name, weights=weights, device=device)


__all__ = ["Model", "NnfeatError", "RenderResult", "evaluate", "load_model", "objectives", "parse_objective", "render",
           "__version__"]
