"""``nnfeat saliency``: (being written)."""

from __future__ import annotations


def register(sub) -> None:
    sub.add_parser("saliency", help="(being written)")
