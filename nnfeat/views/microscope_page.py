"""The microscope page: every rendered unit of a layer on one offline HTML page (``index.html``).

``nnfeat microscope`` writes it beside its contact sheet. Per unit it shows the unit's name (``layer3:5``),
its render, the render's final objective value and, when the microscope had an image set, the unit's top
dataset examples. Images are linked by paths relative to the page (nothing is fetched from the network)
and drawn at a readable size with ``image-rendering: pixelated``. The page body is
``templates/microscope.html``, each unit ``templates/microscope_unit.html`` (its examples
``microscope_examples.html`` / ``microscope_example.html``), its style ``templates/microscope.css`` (see
:mod:`nnfeat.views.templating`).

Stable hooks (for tests and scripting): ``#title``, ``#summary``, ``#sheet-link``, ``#units``, one
``article.unit`` per unit with ``data-unit`` (its name), ``img.render``, ``.value .num`` and ``.examples img``.
"""

from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

from nnfeat.errors import NnfeatError
from nnfeat.io import write_text
from nnfeat.views.templating import CSP_RELATIVE, fill_page, fill_template

__all__ = ["write_microscope_page"]


def write_microscope_page(path: str | os.PathLike, *, title: str, sheet: str, units: Sequence[Mapping[str, Any]]) -> Path:
    """Write the microscope page to ``path`` (atomically) and return ``path``.

    title: the page title (e.g. the microscope result's title).
    sheet: the contact sheet image, a path relative to the page's folder (linked from the page).
    units: one dict per unit, in page order: ``name`` (str, e.g. ``"layer3:5"``), ``image`` (its render, a
        path relative to the page's folder), ``value`` (its final objective value; None or NaN shows as a dash)
        and optionally ``examples`` (its top dataset example images, relative paths, best first).
    """
    cards = [_unit_card(i, unit) for i, unit in enumerate(units)]
    count = len(cards)
    document = fill_page(
        "microscope.html",
        title=str(title),
        css="microscope.css",
        csp=CSP_RELATIVE,
        summary=f"{count} unit{'' if count == 1 else 's'}",
        sheet=_relative_url(sheet, "sheet"),
        units="".join(cards),
    )
    return write_text(path, document)


def _unit_card(i: int, unit: Mapping[str, Any]) -> str:
    at = f"units[{i}]"
    if not isinstance(unit, Mapping):
        raise NnfeatError(f"{at} must be a dict with 'name', 'image' and 'value', got {type(unit).__name__}")
    for key in ("name", "image"):
        if key not in unit:
            raise NnfeatError(f"{at} has no '{key}' key; every unit needs 'name', 'image' and 'value'")
    name = html.escape(str(unit["name"]))
    examples = unit.get("examples") or []
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence):
        raise NnfeatError(f"{at}['examples'] must be a list of relative image paths, got {examples!r}")
    image = _relative_url(unit["image"], at + "['image']")
    value = _value_text(unit.get("value"), at)
    pictures = "".join(fill_template("microscope_example.html", src=_relative_url(src, f"{at}['examples'][{k}]"),
                                     rank=str(k + 1), unit=name) for k, src in enumerate(examples))
    block = fill_template("microscope_examples.html", images=pictures) if examples else ""
    return fill_template("microscope_unit.html", index=str(i), unit=name, image=image, value=value, examples=block)


def _value_text(value: Any, at: str) -> str:
    if value is None:
        return "\u2014"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise NnfeatError(f"{at}['value'] must be a number, got {value!r}") from None
    return f"{number:.4g}" if math.isfinite(number) else "\u2014"


def _relative_url(src: Any, what: str) -> str:
    """A page-relative path as an escaped URL for an attribute; absolute paths and URLs are refused."""
    text = str(src).replace("\\", "/")
    if not text or text.startswith("/") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text):
        raise NnfeatError(f"{what} = {text!r} must be a path relative to the page's folder (the page works offline)")
    return html.escape(quote(text, safe="/-_.~"))
