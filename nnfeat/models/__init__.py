"""Networks nnfeat can visualize: the :class:`Model` wrapper and the named model zoo."""

from nnfeat.layouts import OUTPUT
from nnfeat.models.base import Model, as_model
from nnfeat.models.weights import fetch_weights, nnfeat_home
from nnfeat.models.zoo import known_models, load_model

__all__ = ["OUTPUT", "Model", "as_model", "fetch_weights", "known_models", "load_model", "nnfeat_home"]
