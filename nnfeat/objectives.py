"""The objective vocabulary under its public name, for recipe files and notebooks
(``from nnfeat.objectives import channel, diversity``): the objectives live in the render engine,
:mod:`nnfeat.engine.objectives`."""

from nnfeat.engine.objectives import *  # noqa: F401,F403 - the public re-export
