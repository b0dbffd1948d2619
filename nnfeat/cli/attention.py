"""``nnfeat attention``: (being written)."""

from __future__ import annotations


def register(sub) -> None:
    sub.add_parser("attention", help="(being written)")
