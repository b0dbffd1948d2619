"""``nnfeat heatmap`` (being built)."""

from __future__ import annotations


def register(sub) -> None:
    """Adds nothing yet."""
