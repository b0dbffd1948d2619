"""The page templates: HTML, CSS and JavaScript files shipped as package data in ``nnfeat/views/templates/``.

Every page of :mod:`nnfeat.views` is ``page.html`` (doctype, head, inline style, Content-Security-Policy)
around a page body template (``atlas.html``, ``microscope.html``, ``gallery.html``) and its stylesheet
(``<name>.css``): :func:`fill_page`. Templates use :class:`string.Template` placeholders (``$name``, ``$$``
for a literal dollar), replaced in one pass, so a substituted value is never scanned again. Values are
inserted as given: escape them for their place in the page first (:func:`html.escape` for text, JSON made
safe for ``<script>``...). CSS and JavaScript files are plain files (no placeholders): read them with
:func:`template_text` and pass them in as values, so they may contain ``$`` freely.
"""

from __future__ import annotations

import html
import string
from importlib.resources import files

__all__ = ["CSP_EMBEDDED", "CSP_RELATIVE", "fill_page", "fill_template", "template_text"]

#: Content-Security-Policy of a page that embeds everything (images as data: URLs, inline style and script).
CSP_EMBEDDED = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
#: Content-Security-Policy of a page without scripts whose images are files beside it (relative links).
CSP_RELATIVE = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"


def template_text(name: str) -> str:
    """The text of the package-data file ``nnfeat/views/templates/<name>`` (UTF-8)."""
    return (files("nnfeat.views") / "templates" / name).read_text(encoding="utf-8")


def fill_template(name: str, **values: str) -> str:
    """The template ``name`` with every ``$key`` replaced by ``values[key]``; a missing value is a KeyError."""
    return string.Template(template_text(name)).substitute(values)


def fill_page(body: str, *, title: str, css: str, csp: str, **values: str) -> str:
    """A whole HTML document: ``page.html`` with the title, the stylesheet ``css`` (a template file name)
    inlined, the policy ``csp`` and the body template ``body`` filled with ``values`` (and ``$title``, the
    HTML-escaped ``title``)."""
    title = html.escape(str(title))
    inner = fill_template(body, title=title, **values)
    return fill_template("page.html", title=title, csp=csp, css=template_text(css), body=inner)
