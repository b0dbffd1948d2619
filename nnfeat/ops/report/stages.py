"""The stages of :func:`nnfeat.ops.report.report`: each calls one nnfeat operation and saves its result with
``timing=False`` into its folder of the report (so a resumed run writes the same bytes).

Every stage takes the report's :class:`~nnfeat.ops.report.context.ReportContext` (and the layer, the units it
works on) and returns nothing; a one-line :class:`~nnfeat.errors.NnfeatError` means the view does not apply
to that layer (it becomes a note on the page). :mod:`nnfeat.ops.report.plan` puts them in order.
"""

from __future__ import annotations

import numpy as np
import torch

from nnfeat.analysis.collect import pooled
from nnfeat.analysis.filters import conv_layers
from nnfeat.data import ImageSet
from nnfeat.engine.expr import units_objective
from nnfeat.engine.objectives import channel, diversity
from nnfeat.errors import NnfeatError
from nnfeat.io import read_json, save_image, write_json
from nnfeat.ops.atlas import AtlasSettings, build_atlas
from nnfeat.ops.attention import attention
from nnfeat.ops.examples import examples
from nnfeat.ops.filters import filters
from nnfeat.ops.graph import graph
from nnfeat.ops.heatmap import heatmap
from nnfeat.ops.microscope import MicroscopeResult, batch_seed
from nnfeat.ops.project import project
from nnfeat.ops.render import render
from nnfeat.ops.report.context import ReportContext, slug
from nnfeat.ops.report.pages import read_png
from nnfeat.ops.saliency import saliency
from nnfeat.ops.uncertainty import uncertainty
from nnfeat.units import Units, format_units


def graph_stage(ctx: ReportContext) -> None:
    """The architecture page (``graph/``), each report layer's node linked to its layer page."""
    links = {layer: f"../layers/{slug(layer)}/index.html" for layer in ctx.settings["layers"]}
    graph(ctx.model, links=links).save(ctx.out / "graph", timing=False)


def _seed(ctx: ReportContext, first_channel: int) -> int:
    """The seed of a render batch, as :func:`nnfeat.ops.microscope.microscope` derives it (same renders)."""
    return batch_seed(ctx.settings["seed"], first_channel)


def render_batch(ctx: ReportContext, layer: str, chunk: list[int]) -> None:
    """Render units ``chunk`` of ``layer`` together; write ``render/channel-<c>.png`` and, per unit, the render
    at each threshold (``units/<c>/step-<s>.png``) and ``render/batch-<first>.json`` (final values)."""
    s = ctx.settings
    result = render(ctx.model, units_objective(Units(layer, tuple(chunk))), batch=len(chunk), steps=s["steps"],
                    thresholds=ctx.steps_kept, seed=_seed(ctx, chunk[0]), progress=False)
    folder = ctx.layer_dir(layer) / "render"
    for i, c in enumerate(chunk):
        save_image(folder / f"channel-{c}.png", result.images[i])
        for step, images in sorted(result.history.items()):
            save_image(ctx.unit_dir(layer, c) / f"step-{step}.png", images[i])
    write_json(folder / f"batch-{chunk[0]}.json",
               {"layer": layer, "channels": chunk, "seed": _seed(ctx, chunk[0]), "steps": s["steps"],
                "thresholds": ctx.steps_kept, "values": dict(zip(map(str, chunk), result.final_values.tolist()))})


def render_values(ctx: ReportContext, layer: str) -> dict[int, float]:
    """{channel: final objective value} of ``layer``'s renders."""
    values = {}
    for path in sorted((ctx.layer_dir(layer) / "render").glob("batch-*.json")):
        values.update({int(c): float(v) for c, v in read_json(path)["values"].items()})
    return values


def microscope_stage(ctx: ReportContext, layer: str) -> None:
    """The microscope sheet and page of the layer's renders (:class:`nnfeat.ops.microscope.MicroscopeResult`)."""
    chans = ctx.channels[layer]
    values = render_values(ctx, layer)
    renders = torch.stack([read_png(ctx.layer_dir(layer) / "render" / f"channel-{c}.png") for c in chans])
    s = ctx.settings
    units = format_units(layer, chans)
    settings = {"model": ctx.model.name, "layer": layer, "units": units, "batch": s["batch"], "steps": s["steps"],
                "seed": s["seed"], "size": ctx.model.input_size[0], "device": s["device"]}
    result = MicroscopeResult(model=ctx.model.name, layer=layer, units=units, channels=chans, renders=renders,
                              values=torch.tensor([values[c] for c in chans]), examples=None, settings=settings,
                              command=None)
    result.save(ctx.layer_dir(layer) / "microscope", timing=False)


def collect_stage(ctx: ReportContext, layer: str) -> None:
    """The pooled collection of the layer over every image (shared by examples and the atlas)."""
    pooled(ctx.model, layer, ctx.images, ctx.cache, progress=False)


def examples_stage(ctx: ReportContext, layer: str) -> None:
    """Top and bottom dataset examples of the layer's units (``examples/``), from the shared collection."""
    result = examples(ctx.model, format_units(layer, ctx.channels[layer]), ctx.images, k=ctx.settings["examples_k"],
                      cache=ctx.cache, progress=False)
    folder = ctx.layer_dir(layer) / "examples"  # what the pages show: each unit's sheets, the top patches, the record
    files = result.write_files(folder, patch_sides=("top",))
    write_json(folder / "examples.json", result.full_record(files, timing=False))


def heatmap_sample(ctx: ReportContext) -> ImageSet:
    """The seeded sample of images the layer heatmaps are drawn on."""
    return ctx.images.sample(min(ctx.settings["heatmap_n"], len(ctx.images)), ctx.settings["seed"])


def heatmap_stage(ctx: ReportContext, layer: str) -> None:
    """Activation heatmaps of the layer's strongest channels on :func:`heatmap_sample` (``heatmap/``)."""
    heatmap(ctx.model, layer, heatmap_sample(ctx), top=min(8, len(ctx.channels[layer]))).save(
        ctx.layer_dir(layer) / "heatmap", timing=False)


def projection_sample(ctx: ReportContext) -> ImageSet:
    """The seeded sample of images the projections lay out (drawn from the report's images)."""
    return ctx.images.sample(min(ctx.settings["projection_n"], len(ctx.images)), ctx.settings["seed"])


def projection_stage(ctx: ReportContext, layer: str) -> None:
    """The projection of the sample, its rows taken from the layer's collection over every image (no second pass)."""
    s = ctx.settings
    sample = projection_sample(ctx)
    full, _ = pooled(ctx.model, layer, ctx.images, ctx.cache, progress=False)
    where = {int(source): i for i, source in enumerate(ctx.images.source_indices)}
    rows = np.asarray(full.acts)[[where[int(source)] for source in sample.source_indices]]
    result = project(ctx.model, layer, sample, method=s["projection_method"], seed=s["seed"],
                     k=max(1, min(10, (len(sample) - 1) // 2)), cache=ctx.cache / "projection",
                     activations={layer: rows}, progress=False)
    first = s["layers"][0]  # every layer lays out the same sample: the first layer's page holds the one sprite
    if layer != first and (ctx.layer_dir(first) / "projection" / "projection-sprite.png").is_file():
        result.shared_sprite = f"../../{slug(first)}/projection/projection-sprite.png"
    result.save(ctx.layer_dir(layer) / "projection", timing=False)


def atlas_stage(ctx: ReportContext, layer: str) -> None:
    """The activation atlas of the layer (``atlas/``)."""
    s = ctx.settings
    settings = AtlasSettings(samples=min(20000, len(ctx.images) * 4), layout="umap", steps=s["steps"],
                             seed=s["seed"])
    result = build_atlas(ctx.model, layer, ctx.images, ctx.layer_dir(layer) / "atlas", settings, progress=False)
    result.save(ctx.layer_dir(layer) / "atlas", timing=False)


def diversity_stage(ctx: ReportContext, layer: str, chunk: list[int]) -> None:
    """``diversity`` renders of each unit of ``chunk``, all in one render batch: item ``i * D + j`` is render j of
    unit ``chunk[i]`` under ``channel(layer, c) + W * diversity(layer, group=D)`` (each unit's D items are
    compared only with each other). Writes ``units/<c>/diversity/render-<j>.png`` and
    ``render/diversity-<first>.json`` (the final values)."""
    s = ctx.settings
    d = s["diversity"]
    per_item = [c for c in chunk for _ in range(d)]
    objective = channel(layer, per_item) + s["diversity_weight"] * diversity(layer, group=d)
    seed = _seed(ctx, chunk[0]) + 7
    result = render(ctx.model, objective, batch=len(per_item), steps=s["steps"], seed=seed, progress=False)
    for i, c in enumerate(chunk):
        for j in range(d):
            save_image(ctx.unit_dir(layer, c) / "diversity" / f"render-{j}.png", result.images[i * d + j])
    values = result.final_values.view(len(chunk), d).tolist()
    write_json(ctx.layer_dir(layer) / "render" / f"diversity-{chunk[0]}.json",
               {"layer": layer, "channels": chunk, "images_per_unit": d, "seed": seed, "steps": s["steps"],
                "objective": f"channel + {s['diversity_weight']:g} * diversity(group={d})",
                "values": dict(zip(map(str, chunk), values))})


def unit_stage(ctx: ReportContext, layer: str, c: int) -> None:
    """The unit's heatmaps on its top examples and, for a conv layer, its filter weights."""
    folder = ctx.unit_dir(layer, c)
    record = {"layer": layer, "channel": c, "unit": format_units(layer, [c])}
    top = ctx.layer_dir(layer) / "examples" / "examples.json"
    if top.is_file():
        found = next((r for r in read_json(top)["channels"] if r["channel"] == c), None)
        if found is not None:
            indices = [e["index"] for e in found["top"]]
            try:  # the unit page shows the figure only: its sheet and record, not each image's files
                maps = heatmap(ctx.model, format_units(layer, [c]), ctx.images.subset(indices))
                save_image(folder / "heatmap" / "heatmap.png", maps.sheet())
                write_json(folder / "heatmap" / "heatmap.json", maps.full_record(["heatmap.png"], timing=False))
            except NnfeatError as err:
                record["heatmap_note"] = str(err)
    if layer in conv_layers(ctx.model):
        filters(ctx.model, format_units(layer, [c])).save(folder / "filters", timing=False)
    write_json(folder / "unit.json", record)


def _output_classes(ctx: ReportContext) -> int:
    """How many logits the model has."""
    _, chans = ctx.model.units("output")
    return len(chans)


def class_renders_stage(ctx: ReportContext) -> None:
    """One render per class: with ``class_render`` (the report's recipe) always; otherwise ``output:0..K-1``
    plainly, unless ``output`` is a report layer (its unit renders serve)."""
    seed = _seed(ctx, 0) + 11
    if ctx.class_render is not None:  # the recipe sets its own seed rule: it gets the report's seed as is
        objective, kwargs = ctx.class_render(steps=ctx.settings["steps"], seed=ctx.settings["seed"])
        result = render(ctx.model, objective, progress=False, **kwargs)
    elif "output" in ctx.settings["layers"]:
        return
    else:
        k = _output_classes(ctx)
        result = render(ctx.model, units_objective(Units("output", tuple(range(k)))), batch=k,
                        steps=ctx.settings["steps"], seed=seed, progress=False)
    result.save(ctx.out / "classes" / "renders", timing=False)


def saliency_stage(ctx: ReportContext) -> None:
    """Gradient and Grad-CAM maps with their sanity numbers on a seeded sample (``classes/saliency/``)."""
    s = ctx.settings
    sample = ctx.images.sample(min(s["saliency_n"], len(ctx.images)), s["seed"] + 1)
    result = saliency(ctx.model, sample, "gradient,gradcam", sanity=True, steps=16, cascade=3, seed=s["seed"])
    result.save(ctx.out / "classes" / "saliency", timing=False)


def uncertainty_stage(ctx: ReportContext) -> None:
    """The most uncertain images of a seeded sample under test-time augmentation (``classes/uncertainty/``)."""
    s = ctx.settings
    sample = ctx.images.sample(min(s["uncertain_n"], len(ctx.images)), s["seed"] + 2)
    uncertainty([ctx.model], sample, method="tta", top=8, seed=s["seed"]).save(
        ctx.out / "classes" / "uncertainty", timing=False)


def attention_stage(ctx: ReportContext) -> None:
    """Attention of the class token per layer and head, with rollout and gradient rollout, on the saliency
    images (a model without attention layers gets the one-line note)."""
    s = ctx.settings
    sample = ctx.images.sample(min(s["saliency_n"], len(ctx.images)), s["seed"] + 1)
    attention(ctx.model, sample, rollout=True, grad_rollout=True).save(ctx.out / "classes" / "attention",
                                                                      timing=False)


__all__ = ["graph_stage", "render_batch", "microscope_stage", "collect_stage", "examples_stage", "heatmap_stage",
           "projection_stage", "atlas_stage", "diversity_stage", "unit_stage", "class_renders_stage",
           "saliency_stage", "uncertainty_stage", "attention_stage", "render_values"]
