"""The activation atlas's algorithm (Carter et al., Distill 2019), stage by stage; the cached pipeline and its
result are the operation :mod:`nnfeat.ops.atlas`.

Stage 1 is the shared activation collection, :mod:`nnfeat.analysis.collect` (activations + attributions streamed to
disk, also read by projections); the atlas modules are
:mod:`~nnfeat.analysis.atlas.layout` (whitening, UMAP/t-SNE/PCA, normalization), :mod:`~nnfeat.analysis.atlas.grid`
(binning, cell summaries), :mod:`~nnfeat.analysis.atlas.icons` (resumable batched icon rendering),
:mod:`~nnfeat.analysis.atlas.stitch` (mosaic), :mod:`~nnfeat.analysis.atlas.cells` (the cell schema that ``cells.json``
and the viewer share), :mod:`~nnfeat.analysis.atlas.settings` (:class:`AtlasSettings`),
:mod:`~nnfeat.analysis.atlas.classes` (class atlases) and :mod:`~nnfeat.analysis.atlas.stages` (the cached stages'
checks) and :mod:`~nnfeat.ops.atlas` (the cached pipeline and :class:`AtlasResult`). The
``nnfeat atlas`` command is :mod:`nnfeat.cli.atlas`.

``cells.json`` is ``{header..., "cells": [...]}``. The header holds ``model``, ``layer``, ``layer_shape``,
``source``, ``grid``, ``icon_size``, ``samples``, ``classes`` (logit names), ``label_classes`` (dataset
label names), ``class`` (class atlas target or null), ``mean_cosine``, ``settings``, ``mosaic``, ``device``,
``precision`` and ``layout_fit`` (how the layout was fitted: on every sample, or on a seeded sample with the rest
placed by ``transform``); the cells follow :data:`nnfeat.analysis.atlas.cells.CELL_FIELDS`.
"""
