"""The architecture page and its PNG overview, drawn from a :class:`~nnfeat.analysis.graph.ModelGraph`.

:func:`graph_page` is the whole ``graph.html`` document: ``templates/graph.html`` with ``graph.css`` and
``graph.js``; the graph is inline JSON, the script is allowed by its SHA-256 hash in the
Content-Security-Policy (:func:`graph_csp`), nothing is fetched. The page lays the graph out itself (the
layered layout of :func:`nnfeat.analysis.graph.layered_layout`, ported to its script) and opens with the blocks of
:func:`initial_collapsed` collapsed. :func:`overview` is ``graph.png``: the graph drawn with PIL, blocks collapsed
as deep as needed to keep it readable (at most :data:`PNG_MAX_NODES` nodes).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json

import numpy as np
from PIL import Image, ImageDraw

from nnfeat.analysis.graph import ModelGraph, collapse, layered_layout
from nnfeat.views.sheets import _font
from nnfeat.views.templating import fill_page, template_text

__all__ = ["graph_page", "overview", "graph_csp", "initial_collapsed", "human", "PAGE_NAME", "PAGE_MAX_NODES",
           "PNG_MAX_NODES"]

PAGE_NAME = "graph.html"
#: The page opens with blocks collapsed until at most this many nodes show.
PAGE_MAX_NODES = 160
#: The PNG overview shows at most this many nodes (deeper blocks collapsed).
PNG_MAX_NODES = 48


def human(n: int | float, unit: str = "") -> str:
    """``81102080`` -> ``"81.1 M"`` + unit (k, M, G, T)."""
    n = float(n)
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {prefix}{unit}"
    return f"{int(n)} {unit}".rstrip()


def graph_csp(script: str) -> str:
    """Nothing from anywhere; inline style; only the one inline script whose text is ``script``."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"


def _depth(name: str) -> int:
    return name.count(".")


def initial_collapsed(g: ModelGraph, limit: int = PAGE_MAX_NODES) -> list[str]:
    """The blocks collapsed when the page opens: none if the graph has at most ``limit`` nodes, else every block
    at the deepest nesting depth d (0: ``layer1``, 1: ``layer1.0``) whose collapse leaves at most ``limit``
    nodes (d = 0 when none does)."""
    if len(g.nodes) <= limit or not g.groups:
        return []
    deepest = max(_depth(gr.name) for gr in g.groups)
    d = next((d for d in range(deepest, 0, -1) if len(collapse(g, d)[0]) <= limit), 0)
    return [gr.name for gr in g.groups if _depth(gr.name) == d]


def overview(g: ModelGraph, title: str) -> np.ndarray:
    """(H, W, 3) uint8: the graph collapsed to at most :data:`PNG_MAX_NODES` nodes, drawn top to bottom."""
    deepest = max((_depth(gr.name) for gr in g.groups), default=-1)
    depth = next((d for d in range(deepest + 1, 0, -1) if len(collapse(g, d)[0]) <= PNG_MAX_NODES), 0)
    items, edges = collapse(g, depth)
    ids = [i["id"] for i in items]
    keep = set(ids)
    edges = [e for e in edges if e[0] in keep and e[1] in keep]
    pos, paths = layered_layout(ids, edges)
    font = _font(11)
    bw, bh, gx, gy, top = 200, 30, 24, 22, 30
    cols = max((x for _, x in pos.values()), default=0) + 1
    ranks = max((r for r, _ in pos.values()), default=0) + 1
    width, height = int(cols * (bw + gx) + gx), int(top + ranks * (bh + gy) + gy)
    title_width = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=font)) + 16
    img = Image.new("RGB", (max(width, 320, title_width), height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((8, 8), title, fill=(30, 30, 30), font=font)

    def centre(r: int, x: float) -> tuple[float, float]:
        return gx + x * (bw + gx) + bw / 2, top + r * (bh + gy) + bh / 2

    colours = {"residual": (222, 120, 20), "concat": (40, 110, 200), "data": (140, 140, 150)}
    for (s, t, kind), path in zip(edges, paths):
        pts = [centre(r, x) for r, x in path]
        pts[0] = (pts[0][0], pts[0][1] + bh / 2)
        pts[-1] = (pts[-1][0], pts[-1][1] - bh / 2)
        draw.line(pts, fill=colours.get(kind, colours["data"]), width=2 if kind != "data" else 1)
    for item in items:
        r, x = pos[item["id"]]
        cx, cy = centre(r, x)
        box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
        fill = (232, 238, 250) if item["block"] else (248, 248, 250)
        draw.rounded_rectangle(box, 5, fill=fill, outline=(90, 100, 120))
        shape = "x".join(map(str, item["shape"][1:])) if item["shape"] else ""
        draw.text((box[0] + 5, box[1] + 2), item["label"][:32], fill=(20, 20, 30), font=font)
        draw.text((box[0] + 5, box[1] + 15), f"{item['type'][:18]}  {shape}"[:34], fill=(90, 90, 100), font=font)
    return np.asarray(img)


def _inline_json(payload) -> str:
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def graph_page(g: ModelGraph, *, command: str | None = None, links: dict | None = None) -> str:
    """The whole HTML document of ``graph.html``: ``g`` with its counts, ``command`` (the equivalent CLI
    command, shown as a note) and ``links`` ({node or block name: URL}, linked from the side panel)."""
    payload = {**g.to_dict(), "collapsed": initial_collapsed(g), "links": dict(links or {})}
    script = "\n" + template_text("graph.js")
    summary = (f"{len(g.nodes)} nodes \u00b7 {len(g.groups)} blocks \u00b7 {g.total_params:,} parameters \u00b7 "
               f"{human(g.total_flops, 'FLOPs')} \u00b7 input {'x'.join(map(str, g.input_shape))} \u00b7 "
               f"traced with {'torch.fx' if g.method == 'fx' else 'forward hooks'}")
    notes = f'<p class="note">{html.escape(command)}</p>' if command else ""
    return fill_page("graph.html", title=f"{g.model} graph", css="graph.css", csp=graph_csp(script),
                     summary=html.escape(summary), count=str(len(g.nodes)), notes=notes,
                     data=_inline_json(payload), js=script)
