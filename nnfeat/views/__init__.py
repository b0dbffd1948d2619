"""Self-contained HTML viewers for nnfeat results (open them in any browser, offline).

* :func:`write_atlas_html`: the interactive activation-atlas viewer (everything embedded in one file).
* :func:`write_microscope_page`: every rendered unit of a layer, with its value and top dataset examples.
* :func:`write_gallery`: sections of captioned images.
* :func:`write_scatter_page`: an interactive 2-D scatter of images (projections), thumbnails on hover.
* :func:`write_projector`: a TensorBoard Projector folder (tensors, metadata, sprite, config).

Every module here draws from plain data (tensors, arrays, dicts, dataclasses of :mod:`nnfeat.analysis`) and never
imports an operation: the ``<view>_page`` modules hold the sheets, colour bars, captions and pages that the
operations' results (:mod:`nnfeat.ops`) call.

Their markup, style and scripts are package data in ``nnfeat/views/templates/`` (:mod:`nnfeat.views.templating`).
"""

from nnfeat.views.atlas_viewer import write_atlas_html
from nnfeat.views.gallery import write_gallery
from nnfeat.views.microscope_page import write_microscope_page
from nnfeat.views.projector import write_projector
from nnfeat.views.scatter_page import write_scatter_page

__all__ = ["write_atlas_html", "write_gallery", "write_microscope_page", "write_projector", "write_scatter_page"]
