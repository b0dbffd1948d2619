"""Tokens as figures draw them: whitespace made visible with glyphs that Pillow's default font has (a space as a
middle dot, a new line and a tab as ``\\n`` and ``\\t``), cut to a number of characters with an ellipsis.

Example:
    >>> drawn_token("june 25", 6)
    'june·…'
"""

from __future__ import annotations


def drawn_token(token: str, limit: int | None = None) -> str:
    """``token`` with visible whitespace, at most ``limit`` characters (None: uncut)."""
    text = str(token).replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u00b7")
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "\u2026"


def wrap_cells(widths: list[int], start: int, max_width: int) -> list[list[int]]:
    """Cells of ``widths`` px laid left to right after a ``start`` px label, wrapped into rows no wider than
    ``max_width`` (a row always takes at least one cell) -> each row's cell indices."""
    rows: list[list[int]] = [[]]
    used = start
    for i, w in enumerate(widths):  # laying out cells: drawing, once per figure
        if rows[-1] and used + w > max_width:
            rows.append([])
            used = start
        rows[-1].append(i)
        used += w
    return rows


__all__ = ["drawn_token", "wrap_cells"]
