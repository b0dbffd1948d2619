"""User-facing errors: one line that says what was wrong and what would be right."""

from __future__ import annotations

import difflib
from typing import Iterable


class NnfeatError(Exception):
    """An error caused by user input. The CLI prints ``str(err)`` on one line and exits 2."""


def shorten(text: str, limit: int = 80) -> str:
    """``text`` as it may appear in an error line: at most ``limit`` characters (``...`` and the total length
    when cut), newlines shown as ``\\n``."""
    text = str(text).replace("\n", "\\n")
    if len(text) <= limit:
        return text
    return f"{text[:limit - 3]}... ({len(text)} characters)"


def nearest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The ``n`` entries of ``choices`` closest to ``name`` (difflib ratio, then prefix matches)."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.4)
    if len(close) < n:
        close += [c for c in choices if c.startswith(name) and c not in close][: n - len(close)]
    return close


def unknown_layer(name: str, choices: Iterable[str]) -> NnfeatError:
    """Error for a layer name the model does not have, naming the nearest valid names."""
    near = nearest(name[:200], choices)
    hint = f"; nearest: {', '.join(near)}" if near else ""
    return NnfeatError(f"unknown layer '{shorten(name)}'{hint} (see `nnfeat layers MODEL`)")
