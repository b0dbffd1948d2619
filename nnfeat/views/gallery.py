"""A small static HTML gallery page: sections of captioned images, all files relative to the page."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

from nnfeat.io import write_text

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;text-align:center;font-size:12px;color:#555}
figure img{width:96px;height:96px;image-rendering:pixelated;border:1px solid #ccc;display:block}
figure.wide img{width:auto;height:auto;max-width:100%}
p.note{color:#555;font-size:14px}
"""


def write_gallery(path: Path, title: str, sections: Sequence[dict]) -> Path:
    """Write ``path`` (HTML). Each section: ``{"title", "note"?, "items": [{"src", "caption"}], "wide"?: bool}``.

    ``src`` paths are relative to the page's folder. Returns ``path``.
    """
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section['title'])}</h2>")
        if section.get("note"):
            parts.append(f"<p class='note'>{section['note']}</p>")
        cls = " class='wide'" if section.get("wide") else ""
        parts.append("<div class='grid'>")
        for item in section["items"]:
            parts.append(f"<figure{cls}><img src='{html.escape(str(item['src']))}' alt=''>"
                         f"<figcaption>{html.escape(str(item.get('caption', '')))}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return write_text(path, "\n".join(parts))
