"""The pages of ``nnfeat report`` (:mod:`nnfeat.ops.report`): ``index.html`` (search box over layer and unit
names), one page per layer (``layers/<layer>/index.html``), per unit (``layers/<layer>/units/<c>/index.html``)
and the classes page (``classes/index.html``).

Every page is ``templates/report.html`` with ``report.css`` around a body template (``report_index.html``,
``report_layer.html``, ``report_unit.html``, ``report_classes.html``) filled from small snippet templates
(``report_*.html``: a link, an image, a unit card, a table row...); this module only computes the values,
HTML-escaped where they are text. A template file's closing newline is not part of its snippet; a line that
may be left out is a placeholder at the end of the line before it, filled with ``"\\n" + line`` or ``""``.
Images and pages are relative links to the files the stages wrote (only files that exist are linked, so every
link resolves). Only ``index.html`` has a script (``report.js``, the search filter), allowed by its SHA-256
hash in the Content-Security-Policy; nothing is fetched. No times or dates: the same stages give the same bytes.
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
from nnfeat.views.templating import CSP_RELATIVE, fill_page, fill_template, template_text

__all__ = ["write_pages", "read_png", "layer_page", "unit_page", "classes_page", "index_page"]

e = html.escape


def read_png(path: Path) -> torch.Tensor:
    """A PNG file -> (3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255


def _rel(target: Path, page: Path) -> str:
    return Path(os.path.relpath(target, page.parent)).as_posix()


def _fill(template: str, **values: object) -> str:
    """The snippet template ``report_<template>.html`` filled with ``values`` (as ``str``), without the file's
    closing newline."""
    return fill_template(f"report_{template}.html", **{k: str(v) for k, v in values.items()}).removesuffix("\n")


def _line(text: str) -> str:
    """An optional line of a page: ``"\\n" + text``, or nothing when ``text`` is empty."""
    return "\n" + text if text else ""


class _Page:
    """One page's links and images (only to files that exist), written as ``report.html`` around a body."""

    def __init__(self, path: Path, root: Path):
        self.path, self.root = path, root

    def url(self, target: Path) -> str:
        return e(_rel(target, self.path))

    def img(self, target: Path, alt: str, cls: str = "", link: Path | None = None) -> str:
        if not target.is_file():
            return ""
        if cls:
            tag = _fill("image_class", src=self.url(target), alt=e(alt), cls=cls)
        else:
            tag = _fill("image", src=self.url(target), alt=e(alt))
        if link is not None and link.is_file():
            tag = _fill("link", href=self.url(link), text=tag)
        return tag

    def link(self, target: Path, text: str) -> str:
        return _fill("link", href=self.url(target), text=e(text)) if target.exists() else ""

    def nav(self) -> str:
        items = [(self.root / "index.html", "index"), (self.root / "graph" / "graph.html", "architecture"),
                 (self.root / "classes" / "index.html", "classes")]
        return " ".join(_fill("link", href=self.url(p), text=e(t)) for p, t in items if p != self.path)

    def write(self, title: str, body: str, script: str | None = None) -> Path:
        """Write the page: ``body`` (the filled body template, its lines) inside ``report.html``."""
        content = body + "\n"
        if script is None:
            doc = fill_page("report.html", title=title, css="report.css", csp=CSP_RELATIVE, nav=self.nav(),
                            content=content, script="")
        else:
            doc = fill_page("report.html", title=title, css="report.css", csp=scatter_csp(script), nav=self.nav(),
                            content=content, script=_fill("script", script=script))
        return write_text(self.path, doc)


def _notes(notes: dict, *stages: str) -> str:
    """The optional note lines of the stages left out (each ``"\\n" + line``)."""
    return "".join(_line(_fill("note", label=e(stage.split(":")[0]) + ": ", reason=e(notes[stage])))
                   for stage in stages if stage in notes)


def layer_page(ctx: ReportContext, layer: str, notes: dict) -> Path:
    d = ctx.layer_dir(layer)
    page = _Page(d / "index.html", ctx.out)
    ex = d / "examples"
    cards = []
    for c in ctx.channels[layer]:
        unit = ctx.unit_dir(layer, c) / "index.html"
        name = f"{layer}:{c}"
        cards.append(_fill("layer_unit", index=c, href=page.url(unit), unit=e(name),
                           render=page.img(d / "render" / f"channel-{c}.png", f"render of {name}", "render", unit),
                           top=page.img(ex / f"ch{c:04d}-top.png", f"top examples of {name}", "examples"),
                           bottom=page.img(ex / f"ch{c:04d}-bottom.png", f"bottom examples of {name}", "examples")))
    atlas = ""
    if layer in ctx.settings["atlas"]:
        atlas = _line(_fill("layer_atlas", note=_notes(notes, f"atlas:{layer}"),
                            image=_line(page.img(d / "atlas" / "atlas.png", f"atlas of {layer}",
                                                 link=d / "atlas" / "atlas.html"))))
    body = _fill(
        "layer", layer=e(layer), model=e(ctx.model.name), units=len(ctx.channels[layer]),
        steps=ctx.settings["steps"], graph_link=page.link(ctx.out / "graph" / "graph.html", "in the architecture"),
        microscope_page=page.link(d / "microscope" / "index.html", "microscope page"),
        microscope_sheet=page.link(d / "microscope" / "microscope.png", "microscope sheet"),
        examples_note=_notes(notes, f"examples:{layer}"), cards="".join(cards),
        heatmap_note=_notes(notes, f"heatmap:{layer}"),
        heatmap=_line(page.img(d / "heatmap" / "heatmap.png", f"heatmaps of {layer}")),
        projection_note=_notes(notes, f"projection:{layer}"),
        projection=_line(page.img(d / "projection" / "projection.png", f"projection of {layer}",
                                  link=d / "projection" / "projection.html")),
        projection_link=page.link(d / "projection" / "projection.html", "interactive projection"), atlas=atlas)
    return page.write(f"{ctx.model.name} {layer}", body)


def unit_page(ctx: ReportContext, layer: str, c: int, notes: dict) -> Path:
    d, u = ctx.layer_dir(layer), ctx.unit_dir(layer, c)
    name = f"{layer}:{c}"
    page = _Page(u / "index.html", ctx.out)
    diversity = ""
    if ctx.settings["diversity"] > 1:
        chunk = next(ch for ch in diversity_chunks(ctx.channels[layer], ctx.settings["batch"],
                                                    ctx.settings["diversity"]) if c in ch)
        diversity = _line(_fill("unit_diversity", note=_notes(notes, f"diversity:{layer}:{chunk[0]}"),
                                renders="".join(page.img(u / "diversity" / f"render-{i}.png", f"{name} diversity {i}")
                                                for i in range(ctx.settings["diversity"]))))
    record = read_json(u / "unit.json") if (u / "unit.json").is_file() else {}
    heatmap_note = ""
    if record.get("heatmap_note"):
        heatmap_note = _line(_fill("note", label="", reason=e(record["heatmap_note"])))
    filters = ""
    if (u / "filters" / "filters.png").is_file():
        filters = _line(_fill("unit_filters", image=page.img(u / "filters" / "filters.png", f"filters of {name}")))
    ex = d / "examples"
    body = _fill(
        # the layer page is written after its unit pages (it links to them): link it without checking
        "unit", unit=e(name), layer_page=page.url(d / "index.html"),
        renders="".join(page.img(u / f"step-{s}.png", f"{name} at step {s}") for s in ctx.steps_kept),
        steps=", ".join(map(str, ctx.steps_kept)), diversity=diversity,
        top=page.img(ex / f"ch{c:04d}-top.png", f"top examples of {name}"),
        top_patches=_line(page.img(ex / f"ch{c:04d}-top-patches.png", f"top patches of {name}")),
        bottom=page.img(ex / f"ch{c:04d}-bottom.png", f"bottom examples of {name}"),
        heatmap_note=heatmap_note, heatmap=_line(page.img(u / "heatmap" / "heatmap.png", f"heatmaps of {name}")),
        filters=filters)
    return page.write(f"{ctx.model.name} {name}", body)


def _table(rows: list[tuple[str, str]]) -> str:
    return _fill("table", rows="".join(_fill("table_row", key=e(k), value=e(v)) for k, v in rows))


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
    classes = ctx.model.classes or []
    if "output" in ctx.settings["layers"] and ctx.class_render is None:
        d = ctx.layer_dir("output")
        images = [(d / "render" / f"channel-{k}.png", ctx.unit_dir("output", k) / "index.html")
                  for k in ctx.channels["output"]]
    else:
        images = [(p, None) for p in sorted((c / "renders").glob("render-*.png"),
                                             key=lambda p: int(p.stem.split("-")[1]))]
    cards = []
    for k, (path, link) in enumerate(images):
        label = classes[k] if k < len(classes) else str(k)
        cards.append(_fill("class", label=e(label), image=page.img(path, f"class {label}", "render", link)))
    saliency_json = c / "saliency" / "saliency.json"
    body = _fill(
        "classes", renders_note=_notes(notes, "class-renders"), cards="".join(cards),
        saliency_note=_notes(notes, "saliency"),
        saliency=_line(page.img(c / "saliency" / "saliency.png", "saliency maps", link=c / "saliency" / "index.html")),
        saliency_link=page.link(c / "saliency" / "index.html", "saliency page with the sanity checks"),
        sanity_table=_line(_table(_saliency_numbers(read_json(saliency_json)))) if saliency_json.is_file() else "",
        uncertainty_note=_notes(notes, "uncertainty"),
        uncertainty=_line(page.img(c / "uncertainty" / "uncertainty.png", "most uncertain images")),
        attention_note=_notes(notes, "attention"),
        attention=_line(page.img(c / "attention" / "attention.png", "attention maps")))
    return page.write(f"{ctx.model.name} classes", body)


def index_page(ctx: ReportContext, notes: dict) -> Path:
    page = _Page(ctx.out / "index.html", ctx.out)
    s = ctx.settings
    layer_items = "".join(_fill("index_layer", link=page.link(ctx.layer_dir(l) / "index.html", l),
                                units=len(ctx.channels[l])) for l in s["layers"])
    name_items = []
    for layer in s["layers"]:
        name_items.append(_fill("index_name", unit=e(layer),
                                link=page.link(ctx.layer_dir(layer) / "index.html", layer)))
        for c in ctx.channels[layer]:
            name_items.append(_fill("index_name", unit=e(f"{layer}:{c}"),
                                    link=page.link(ctx.unit_dir(layer, c) / "index.html", f"{layer}:{c}")))
    left_out = ""
    if notes:
        left_out = _line(_fill("index_left_out", items="".join(
            _fill("index_left_out_item", stage=e(k), reason=e(v)) for k, v in notes.items())))
    body = _fill(
        "index", model=e(ctx.model.name), images=e(s["images"]), n=s["n"], layers=len(s["layers"]),
        units=sum(len(v) for v in ctx.channels.values()), steps=s["steps"], seed=s["seed"],
        graph=_line(page.img(ctx.out / "graph" / "graph.png", "architecture overview",
                             link=ctx.out / "graph" / "graph.html")),
        layer_items=layer_items, name_items="".join(name_items), left_out=left_out)
    return page.write(f"{ctx.model.name} report", body, script="\n" + template_text("report.js"))


def write_pages(ctx: ReportContext) -> None:
    """Write every page of the report (after every other stage), each view's note from the manifest."""
    notes = read_notes(ctx.out)
    for layer in ctx.settings["layers"]:
        for c in ctx.channels[layer]:
            unit_page(ctx, layer, c, notes)
        layer_page(ctx, layer, notes)
    classes_page(ctx, notes)
    index_page(ctx, notes)
