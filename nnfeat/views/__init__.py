"""Self-contained HTML viewers for nnfeat results (open them in any browser, offline).

* :func:`write_atlas_html`: the interactive activation-atlas viewer (everything embedded in one file).
* :func:`write_microscope_page`: every rendered unit of a layer, with its value and top dataset examples.
* :func:`write_gallery`: sections of captioned images.

Their markup, style and scripts are package data in ``nnfeat/views/templates/`` (:mod:`nnfeat.views.templating`).
"""

from nnfeat.views.atlas_viewer import write_atlas_html
from nnfeat.views.gallery import write_gallery
from nnfeat.views.microscope_page import write_microscope_page

__all__ = ["write_atlas_html", "write_gallery", "write_microscope_page"]
