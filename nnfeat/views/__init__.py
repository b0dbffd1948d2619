"""Self-contained HTML viewers for nnfeat results (open them in any browser, offline)."""

from nnfeat.views.atlas_viewer import write_atlas_html

__all__ = ["write_atlas_html"]
