"""The architecture page: :func:`graph` -> :class:`GraphResult` (kind ``graph``): ``graph.html``, ``graph.json``
and ``graph.png``.

``graph.html`` is one self-contained, offline page (``templates/graph.html`` with ``graph.css`` and ``graph.js``;
the graph is inline JSON, the script is allowed by its SHA-256 hash in the Content-Security-Policy, nothing is
fetched). It lays the graph out itself (layered, top to bottom: :func:`nnfeat.analysis.graph.layered_layout`,
ported to the page's script) and draws it as SVG: wheel to zoom about the cursor, drag to pan; each block
(``layer1``, ``layer1.0``...) is a box whose header collapses it into one node, and a collapsed block expands
on click; residual edges are drawn in orange, concat edges in blue. Clicking a node shows its name, type,
output shape, parameters and FLOPs in the side panel (hovering gives the same as a tooltip).

Stable hooks (for tests, scripting and ``nnfeat report`` links): each drawn node or block is an SVG ``g`` with
``id`` = :func:`~nnfeat.analysis.graph.node_anchor` of its name and ``data-name`` = the name; opening
``graph.html#<anchor>`` expands the blocks around that node, selects and centres it. ``#summary`` gives the
counts, ``#visible-count`` the nodes on screen, ``#panel`` the selected node (``#panel-name``, ``#panel-type``,
``#panel-shape``, ``#panel-params``, ``#panel-flops``); ``#expand-all``, ``#collapse-all``, ``#reset-view``;
``window.nnfeatGraph`` (``ready``, ``visibleCount()``, ``toggle(block)``, ``expandAll()``, ``collapseAll()``,
``select(name)``, ``centre(name)``, ``collapsed()``).

``graph.png`` is an overview drawn with PIL: the graph with blocks collapsed as deep as needed to keep it
readable (at most :data:`PNG_MAX_NODES` nodes).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image, ImageDraw

from nnfeat.analysis.graph import ModelGraph, collapse, layered_layout, model_graph
from nnfeat.io import write_text
from nnfeat.ops.results import Result, cli_command
from nnfeat.views.sheets import _font
from nnfeat.views.templating import fill_page, template_text

__all__ = ["GraphResult", "graph", "graph_csp", "initial_collapsed", "human", "PAGE_NAME", "PNG_MAX_NODES"]

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


def _overview(g: ModelGraph, title: str) -> np.ndarray:
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


@dataclass(repr=False)
class GraphResult(Result):
    """What :func:`graph` returns: ``graph`` the :class:`~nnfeat.analysis.graph.ModelGraph`; ``onnx`` the path
    of an exported ONNX file or None."""

    graph: ModelGraph
    device: str = "cpu"
    onnx: str | None = None
    elapsed: float = 0.0
    command: str | None = None
    #: {node or block name: URL}: the side panel of a selected node links there (``nnfeat report``'s layer pages)
    links: dict | None = None
    kind: ClassVar[str] = "graph"

    def title(self) -> str:
        g = self.graph
        return (f"{g.model}  {len(g.nodes)} nodes  {len(g.groups)} blocks  {g.total_params:,} parameters  "
                f"{human(g.total_flops, 'FLOPs')}  ({g.method})")

    def sheet(self) -> np.ndarray:
        if not hasattr(self, "_sheet"):
            self._sheet = _overview(self.graph, self.title())
        return self._sheet

    @property
    def images(self) -> torch.Tensor:
        return torch.from_numpy(self.sheet().copy()).permute(2, 0, 1).unsqueeze(0).float() / 255

    def record(self) -> dict:
        return {**self.graph.to_dict(), "device": self.device, "onnx": self.onnx,
                "residual_additions": len(self.graph.residual_additions())}

    def page(self) -> str:
        """The whole HTML document of ``graph.html``."""
        g = self.graph
        payload = {**g.to_dict(), "collapsed": initial_collapsed(g), "links": dict(self.links or {})}
        script = "\n" + template_text("graph.js")
        summary = (f"{len(g.nodes)} nodes \u00b7 {len(g.groups)} blocks \u00b7 {g.total_params:,} parameters \u00b7 "
                   f"{human(g.total_flops, 'FLOPs')} \u00b7 input {'x'.join(map(str, g.input_shape))} \u00b7 "
                   f"traced with {'torch.fx' if g.method == 'fx' else 'forward hooks'}")
        notes = f'<p class="note">{html.escape(self.command)}</p>' if self.command else ""
        return fill_page("graph.html", title=f"{g.model} graph", css="graph.css", csp=graph_csp(script),
                         summary=html.escape(summary), count=str(len(g.nodes)), notes=notes,
                         data=_inline_json(payload), js=script)

    def write_files(self, out: Path) -> list[str]:
        write_text(out / PAGE_NAME, self.page())
        return [PAGE_NAME]


def graph(model, *, size: tuple[int, int] | None = None, method: str = "auto", onnx: str | None = None,
          links: dict | None = None) -> GraphResult:
    """The architecture of ``model`` (an nnfeat Model) at input ``size`` (default native): its graph
    (:func:`~nnfeat.analysis.graph.model_graph`) and, with ``onnx`` (a file path), an ONNX export of the
    wrapper (input: (B, 3, H, W) RGB in [0, 1], like every nnfeat command) written there. ``links``
    ({layer name: URL}): the side panel of a selected layer links to its URL (``#panel-report-link``)."""
    started = time.perf_counter()
    if onnx is not None:
        from nnfeat.analysis.onnx_export import export_onnx

        onnx = str(export_onnx(model, onnx, size=size))
    g = model_graph(model, size, method=method)
    command = cli_command("graph", model.name, onnx=onnx,
                          weights="random" if getattr(model, "weights", None) == "random" else None)
    return GraphResult(graph=g, device=str(model.device), onnx=onnx, elapsed=time.perf_counter() - started,
                       command=command, links=links)
