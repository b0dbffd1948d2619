"""Networks nnfeat can visualize: the :class:`Model` wrapper, the registry of model cards and the named zoo."""

from nnfeat.layouts import OUTPUT
from nnfeat.models.base import Model, as_model
from nnfeat.models.registry import ModelCard, cards, find_card, get_card
from nnfeat.models.weights import fetch_weights, nnfeat_home
from nnfeat.models.zoo import known_models, load_model

__all__ = ["OUTPUT", "Model", "ModelCard", "as_model", "cards", "fetch_weights", "find_card", "get_card",
           "known_models", "load_model", "nnfeat_home"]
