"""The pages of ``nnfeat report`` (:mod:`nnfeat.ops.report`): ``index.html`` (search box over layer and unit
names), one page per layer (``layers/<layer>/index.html``), per unit (``layers/<layer>/units/<c>/index.html``)
and the classes page (``classes/index.html``).

Every page is ``templates/report.html`` with ``report.css``; images and pages are relative links to the files
the stages wrote (only files that exist are linked, so every link resolves). Only ``index.html`` has a script
(``report.js``, the search filter), allowed by its SHA-256 hash in the Content-Security-Policy; nothing is
fetched. No times or dates: the same stages give the same bytes.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nnfeat.io import read_json, write_text
from nnfeat.ops.report.context import ReportContext, diversity_chunks
from nnfeat.ops.report.manifest import read_notes
from nnfeat.views.scatter_page import scatter_csp
from nnfeat.views.templating import CSP_RELATIVE, fill_page, template_text

__all__ = ["write_pages", "read_png", "layer_page", "unit_page", "classes_page", "index_page"]

e = html.escape


def read_png(path: Path) -> torch.Tensor:
    """A PNG file -> (3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255


def _rel(target: Path, page: Path) -> str:
    return Path(os.path.relpath(target, page.parent)).as_posix()


class _Page:
    """Collects a page's HTML, linking only files that exist."""

    def __init__(self, path: Path, root: Path):
        self.path, self.root, self.parts = path, root, []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def url(self, target: Path) -> str:
        return e(_rel(target, self.path))

    def img(self, target: Path, alt: str, cls: str = "", link: Path | None = None) -> str:
        if not target.is_file():
            return ""
        tag = f'<img src="{self.url(target)}" alt="{e(alt)}"' + (f' class="{cls}"' if cls else "") + ">"
        if link is not None and link.is_file():
            tag = f'<a href="{self.url(link)}">{tag}</a>'
        return tag

    def link(self, target: Path, text: str) -> str:
        return f'<a href="{self.url(target)}">{e(text)}</a>' if target.exists() else ""

    def nav(self) -> str:
        items = [(self.root / "index.html", "index"), (self.root / "graph" / "graph.html", "architecture"),
                 (self.root / "classes" / "index.html", "classes")]
        return " ".join(f'<a href="{self.url(p)}">{t}</a>' for p, t in items if p != self.path)

    def write(self, title: str, script: str | None = None) -> Path:
        content = "\n".join(p for p in self.parts if p) + "\n"
        if script is None:
            doc = fill_page("report.html", title=title, css="report.css", csp=CSP_RELATIVE, nav=self.nav(),
                            content=content, script="")
        else:
            doc = fill_page("report.html", title=title, css="report.css", csp=scatter_csp(script), nav=self.nav(),
                            content=content, script=f"<script>{script}</script>")
        return write_text(self.path, doc)


def _notes(page: _Page, notes: dict, *stages: str) -> None:
    for stage in stages:
        if stage in notes:
            page.add(f'<p class="note">{e(stage.split(":")[0])}: not shown ({e(notes[stage])})</p>')


def layer_page(ctx: ReportContext, layer: str, notes: dict) -> Path:
    d = ctx.layer_dir(layer)
    page = _Page(d / "index.html", ctx.out)
    page.add(f"<p>layer <code>{e(layer)}</code> of <code>{e(ctx.model.name)}</code>: "
             f"{len(ctx.channels[layer])} units, {ctx.settings['steps']} render steps; "
             f"{page.link(ctx.out / 'graph' / 'graph.html', 'in the architecture')}</p>")
    page.add("<h2>Units</h2>")
    page.add(f"<p>{page.link(d / 'microscope' / 'index.html', 'microscope page')} "
             f"{page.link(d / 'microscope' / 'microscope.png', 'microscope sheet')}</p>")
    _notes(page, notes, f"examples:{layer}")
    cards = []
    for c in ctx.channels[layer]:
        unit = ctx.unit_dir(layer, c) / "index.html"
        name = f"{layer}:{c}"
        ex = d / "examples"
        cards.append(f'<div class="unit" id="unit-{c}"><a href="{page.url(unit)}">{e(name)}</a><br>'
                     + page.img(d / "render" / f"channel-{c}.png", f"render of {name}", "render", unit)
                     + page.img(ex / f"ch{c:04d}-top.png", f"top examples of {name}", "examples")
                     + page.img(ex / f"ch{c:04d}-bottom.png", f"bottom examples of {name}", "examples") + "</div>")
    page.add('<div class="units">' + "".join(cards) + "</div>")
    page.add("<h2>Activation heatmaps</h2>")
    _notes(page, notes, f"heatmap:{layer}")
    page.add(page.img(d / "heatmap" / "heatmap.png", f"heatmaps of {layer}"))
    page.add("<h2>Projection of the dataset</h2>")
    _notes(page, notes, f"projection:{layer}")
    page.add(page.img(d / "projection" / "projection.png", f"projection of {layer}",
                      link=d / "projection" / "projection.html"))
    page.add(f"<p>{page.link(d / 'projection' / 'projection.html', 'interactive projection')}</p>")
    if layer in ctx.settings["atlas"]:
        page.add("<h2>Activation atlas</h2>")
        _notes(page, notes, f"atlas:{layer}")
        page.add(page.img(d / "atlas" / "atlas.png", f"atlas of {layer}", link=d / "atlas" / "atlas.html"))
    return page.write(f"{ctx.model.name} {layer}")


def unit_page(ctx: ReportContext, layer: str, c: int, notes: dict) -> Path:
    d, u = ctx.layer_dir(layer), ctx.unit_dir(layer, c)
    name = f"{layer}:{c}"
    page = _Page(u / "index.html", ctx.out)
    # the layer page is written after its unit pages (it links to them): link it without checking
    page.add(f"<p>unit <code>{e(name)}</code> of the <a href=\"{page.url(d / 'index.html')}\">layer page</a></p>")
    page.add("<h2>Render at several thresholds</h2><div class=\"renders\">")
    page.add("".join(page.img(u / f"step-{s}.png", f"{name} at step {s}") for s in ctx.steps_kept) + "</div>")
    page.add("<p>steps " + ", ".join(map(str, ctx.steps_kept)) + "</p>")
    if ctx.settings["diversity"] > 1:
        page.add("<h2>Diversity renders</h2>")
        chunk = next(ch for ch in diversity_chunks(ctx.channels[layer], ctx.settings["batch"],
                                                    ctx.settings["diversity"]) if c in ch)
        _notes(page, notes, f"diversity:{layer}:{chunk[0]}")
        page.add('<div class="renders">' + "".join(
            page.img(u / "diversity" / f"render-{i}.png", f"{name} diversity {i}")
            for i in range(ctx.settings["diversity"])) + "</div>")
    page.add("<h2>Dataset examples</h2>")
    ex = d / "examples"
    page.add("<p>top</p>" + page.img(ex / f"ch{c:04d}-top.png", f"top examples of {name}"))
    page.add(page.img(ex / f"ch{c:04d}-top-patches.png", f"top patches of {name}"))
    page.add("<p>bottom</p>" + page.img(ex / f"ch{c:04d}-bottom.png", f"bottom examples of {name}"))
    page.add("<h2>Heatmaps on the top examples</h2>")
    record = read_json(u / "unit.json") if (u / "unit.json").is_file() else {}
    if record.get("heatmap_note"):
        page.add(f'<p class="note">not shown ({e(record["heatmap_note"])})</p>')
    page.add(page.img(u / "heatmap" / "heatmap.png", f"heatmaps of {name}"))
    if (u / "filters" / "filters.png").is_file():
        page.add("<h2>Filter weights</h2>" + page.img(u / "filters" / "filters.png", f"filters of {name}"))
    return page.write(f"{ctx.model.name} {name}")


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows) + "</table>"


def _saliency_numbers(record: dict) -> list[tuple[str, str]]:
    """(name, value) rows of a saliency record's sanity numbers: deletion / insertion AUC beside a random
    map's, the randomization test's final median Spearman and each method's verdict."""
    rows = []
    for m in record.get("methods", []):
        name = m.get("method", "?")
        di = m.get("deletion_insertion") or {}
        for key in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc"):
            if isinstance(di.get(key), (int, float)):
                rows.append((f"{name} {key.replace('_', ' ')}", f"{di[key]:.3f}"))
        rnd = m.get("randomization") or {}
        if isinstance(rnd.get("final_median_spearman"), (int, float)):
            rows.append((f"{name} randomization: median Spearman after full re-initialization",
                         f"{rnd['final_median_spearman']:.3f}"))
        if m.get("verdict"):
            rows.append((f"{name} verdict", str(m["verdict"])))
    return rows


def classes_page(ctx: ReportContext, notes: dict) -> Path:
    c = ctx.out / "classes"
    page = _Page(c / "index.html", ctx.out)
    page.add("<h2>Class renders</h2>")
    _notes(page, notes, "class-renders")
    classes = ctx.model.classes or []
    if "output" in ctx.settings["layers"] and ctx.class_render is None:
        d = ctx.layer_dir("output")
        images = [(d / "render" / f"channel-{k}.png", ctx.unit_dir("output", k) / "index.html")
                  for k in ctx.channels["output"]]
    else:
        images = [(p, None) for p in sorted((c / "renders").glob("render-*.png"),
                                             key=lambda p: int(p.stem.split("-")[1]))]
    cells = []
    for k, (path, link) in enumerate(images):
        label = classes[k] if k < len(classes) else str(k)
        cells.append(f'<div class="unit">{e(label)}<br>{page.img(path, f"class {label}", "render", link)}</div>')
    page.add('<div class="units">' + "".join(cells) + "</div>")
    page.add("<h2>Saliency maps and their sanity numbers</h2>")
    _notes(page, notes, "saliency")
    page.add(page.img(c / "saliency" / "saliency.png", "saliency maps", link=c / "saliency" / "index.html"))
    page.add(f"<p>{page.link(c / 'saliency' / 'index.html', 'saliency page with the sanity checks')}</p>")
    if (c / "saliency" / "saliency.json").is_file():
        page.add(_table(_saliency_numbers(read_json(c / "saliency" / "saliency.json"))))
    page.add("<h2>The most uncertain images (test-time augmentation)</h2>")
    _notes(page, notes, "uncertainty")
    page.add(page.img(c / "uncertainty" / "uncertainty.png", "most uncertain images"))
    page.add("<h2>Attention and rollout</h2>")
    _notes(page, notes, "attention")
    if (c / "attention" / "attention.png").is_file():
        page.add(page.img(c / "attention" / "attention.png", "attention maps"))
    return page.write(f"{ctx.model.name} classes")


def index_page(ctx: ReportContext, notes: dict) -> Path:
    page = _Page(ctx.out / "index.html", ctx.out)
    s = ctx.settings
    page.add(f"<p>{e(ctx.model.name)} over {e(s['images'])} ({s['n']} images): {len(s['layers'])} layers, "
             f"{sum(len(v) for v in ctx.channels.values())} units, {s['steps']} render steps, seed {s['seed']}.</p>")
    page.add(page.img(ctx.out / "graph" / "graph.png", "architecture overview", link=ctx.out / "graph" / "graph.html"))
    page.add("<h2>Layer pages</h2><ul id=\"layers\">" + "".join(
        f'<li>{page.link(ctx.layer_dir(l) / "index.html", l)} ({len(ctx.channels[l])} units)</li>'
        for l in s["layers"]) + "</ul>")
    page.add("<h2>Search layers and units</h2>"
             '<p><input id="search" type="search" placeholder="layer or unit name, e.g. layer2 or :3" '
             'aria-label="search layers and units"><span id="search-count"></span></p>')
    items = []
    for layer in s["layers"]:
        items.append(f'<li data-name="{e(layer)}">{page.link(ctx.layer_dir(layer) / "index.html", layer)}</li>')
        for c in ctx.channels[layer]:
            items.append(f'<li data-name="{e(f"{layer}:{c}")}">'
                         f'{page.link(ctx.unit_dir(layer, c) / "index.html", f"{layer}:{c}")}</li>')
    page.add('<ul id="names">' + "".join(items) + "</ul>")
    if notes:
        page.add("<h2>Left out</h2><ul>" + "".join(f"<li>{e(k)}: {e(v)}</li>" for k, v in notes.items()) + "</ul>")
    return page.write(f"{ctx.model.name} report", script="\n" + template_text("report.js"))


def write_pages(ctx: ReportContext) -> None:
    """Write every page of the report (after every other stage), each view's note from the manifest."""
    notes = read_notes(ctx.out)
    for layer in ctx.settings["layers"]:
        for c in ctx.channels[layer]:
            unit_page(ctx, layer, c, notes)
        layer_page(ctx, layer, notes)
    classes_page(ctx, notes)
    index_page(ctx, notes)
