"""A small static HTML gallery page: sections of captioned images, all files relative to the page.

The page body is ``templates/gallery.html``, its style ``templates/gallery.css`` (see :mod:`nnfeat.views.templating`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

from nnfeat.io import write_text
from nnfeat.views.templating import CSP_RELATIVE, fill_page

__all__ = ["write_gallery"]


def write_gallery(path: Path, title: str, sections: Sequence[dict]) -> Path:
    """Write ``path`` (HTML). Each section: ``{"title", "note"?, "items": [{"src", "caption", "href"?}], "wide"?: bool}``
    (``href``: the image links there).

    ``src`` paths are relative to the page's folder; ``note`` is HTML, inserted as given. Returns ``path``.
    """
    parts = []
    for section in sections:
        parts.append(f"<h2>{html.escape(section['title'])}</h2>")
        if section.get("note"):
            parts.append(f"<p class='note'>{section['note']}</p>")
        cls = " class='wide'" if section.get("wide") else ""
        parts.append("<div class='grid'>")
        for item in section["items"]:
            image = f"<img src='{html.escape(str(item['src']))}' alt=''>"
            if item.get("href"):
                image = f"<a href='{html.escape(str(item['href']))}'>{image}</a>"
            parts.append(f"<figure{cls}>{image}"
                         f"<figcaption>{html.escape(str(item.get('caption', '')))}</figcaption></figure>")
        parts.append("</div>")
    page = fill_page("gallery.html", title=title, css="gallery.css", csp=CSP_RELATIVE, sections="\n".join(parts))
    return write_text(path, page)
