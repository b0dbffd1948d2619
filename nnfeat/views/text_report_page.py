"""The index page of a text report (:func:`nnfeat.ops.text_report.text_report`): one section per view, each with
its picture linked to the view's own page, links to its other pages and a few numbers, or the one-line reason
the view was left out.

The page is ``templates/text_report.html`` in ``page.html`` with ``text_report.css``; no script, images are
files beside it (``CSP_RELATIVE``), every link relative. Drawn from plain data (:class:`TextSection`): the
caller decides which files exist, this module only escapes and lays them out. No times or dates.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nnfeat.io import write_text
from nnfeat.views.templating import CSP_RELATIVE, fill_page

__all__ = ["TextSection", "text_report_html", "write_text_report_page"]

e = html.escape


@dataclass
class TextSection:
    """One view of the report.

    Attributes:
        anchor: the section's id (``#anchor``); title: its heading; what: one line on what the view shows.
        page: the view's main page (relative to the index), or None; picture: its picture (relative), or None.
        links: other pages as (label, relative path); facts: lines of numbers (plain text).
        note: why the view was left out (then no picture or links); command: the equivalent command line.
    """

    anchor: str
    title: str
    what: str
    page: str | None = None
    picture: str | None = None
    links: list[tuple[str, str]] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    note: str | None = None
    command: str | None = None


def _section(s: TextSection) -> str:
    parts = [f"<section id='{e(s.anchor)}'>", f"<h2>{e(s.title)}</h2>", f"<p class='what'>{e(s.what)}</p>"]
    if s.note:
        parts.append(f"<p class='note'>Left out: {e(s.note)}</p>")
    else:
        if s.picture:
            image = f"<img src='{e(s.picture)}' alt='{e(s.title)}'>"
            parts.append(f"<p><a href='{e(s.page)}'>{image}</a></p>" if s.page else f"<p>{image}</p>")
        if s.page:
            parts.append(f"<p class='pages'><a href='{e(s.page)}'>open the page</a></p>")
        if s.links:
            items = "".join(f"<a href='{e(href)}'>{e(label)}</a>" for label, href in s.links)
            parts.append(f"<p class='pages'>{items}</p>")
        if s.facts:
            parts.append("<ul class='facts'>" + "".join(f"<li>{e(line)}</li>" for line in s.facts) + "</ul>")
        if s.command:
            parts.append(f"<p class='command'>{e(s.command)}</p>")
    parts.append("</section>")
    return "\n".join(parts) + "\n"


def text_report_html(title: str, summary: str, sections: Sequence[TextSection]) -> str:
    """The whole index page (HTML text)."""
    nav = "".join(f"<a href='#{e(s.anchor)}'>{e(s.title)}</a>" for s in sections)
    return fill_page("text_report.html", title=title, css="text_report.css", csp=CSP_RELATIVE, nav=nav,
                     summary=e(summary), sections="".join(_section(s) for s in sections))


def write_text_report_page(path: Path, title: str, summary: str, sections: Sequence[TextSection]) -> Path:
    """Write the index page to ``path`` (atomically); returns ``path``."""
    return write_text(path, text_report_html(title, summary, sections))
