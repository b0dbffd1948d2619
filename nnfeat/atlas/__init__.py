"""Activation atlases (Carter et al., Distill 2019), following REFERENCE §4, stage by stage.

Modules: :mod:`~nnfeat.atlas.collect` (sample activations + attributions, streamed to disk),
:mod:`~nnfeat.atlas.layout` (whitening, UMAP/t-SNE/PCA, normalization), :mod:`~nnfeat.atlas.grid`
(binning, cell summaries), :mod:`~nnfeat.atlas.icons` (resumable batched icon rendering),
:mod:`~nnfeat.atlas.stitch` (mosaic), :mod:`~nnfeat.atlas.pipeline` (the cached pipeline) and
:mod:`~nnfeat.atlas.commands` (the ``atlas`` and ``examples`` CLI commands).

``cells.json`` is ``{header..., "cells": [...]}``. The header holds ``model``, ``layer``, ``layer_shape``,
``source``, ``grid``, ``icon_size``, ``samples``, ``classes`` (logit names), ``label_classes`` (dataset
label names), ``class`` (class atlas target or null), ``mean_cosine``, ``settings`` and ``mosaic``.
Each cell entry holds ``row``, ``col``, ``count``, ``icon`` (path relative to the output folder),
``position`` (mean normalized layout (x, y)), ``cosine`` (rendered icon's centre activation vs. cell
vector), ``members`` (dataset indices of the member images closest to the cell vector), and when known
``top_class`` {index, name, attribution}, ``labels`` {label name: count} and ``majority_label``
{index, name, share}.
"""

from nnfeat.atlas.pipeline import AtlasResult, AtlasSettings, build_atlas

__all__ = ["AtlasSettings", "AtlasResult", "build_atlas"]
