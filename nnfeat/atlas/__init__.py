"""Activation atlases (Carter et al., Distill 2019), following the paper's method, stage by stage.

Stage 1 is the shared activation collection, :mod:`nnfeat.collect` (activations + attributions streamed to
disk, also read by projections); the atlas modules are
:mod:`~nnfeat.atlas.layout` (whitening, UMAP/t-SNE/PCA, normalization), :mod:`~nnfeat.atlas.grid`
(binning, cell summaries), :mod:`~nnfeat.atlas.icons` (resumable batched icon rendering),
:mod:`~nnfeat.atlas.stitch` (mosaic), :mod:`~nnfeat.atlas.cells` (the cell schema that ``cells.json`` and
the viewer share) and :mod:`~nnfeat.atlas.pipeline` (the cached pipeline and :class:`AtlasResult`). The
``nnfeat atlas`` command is :mod:`nnfeat.cli.atlas`.

``cells.json`` is ``{header..., "cells": [...]}``. The header holds ``model``, ``layer``, ``layer_shape``,
``source``, ``grid``, ``icon_size``, ``samples``, ``classes`` (logit names), ``label_classes`` (dataset
label names), ``class`` (class atlas target or null), ``mean_cosine``, ``settings``, ``mosaic``, ``device``,
``precision`` and ``layout_fit`` (how the layout was fitted: on every sample, or on a seeded sample with the rest
placed by ``transform``); the cells follow :data:`nnfeat.atlas.cells.CELL_FIELDS`.
"""

from nnfeat.atlas.pipeline import AtlasResult, AtlasSettings, build_atlas

__all__ = ["AtlasSettings", "AtlasResult", "build_atlas"]
