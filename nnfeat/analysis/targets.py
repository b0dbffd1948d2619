"""Moved to :mod:`nnfeat.targets` (the target grammar is shared by the render engine's objectives)."""

from nnfeat.targets import *  # noqa: F401,F403
from nnfeat.targets import __all__  # noqa: F401
