"""The ``report`` operation: :func:`report` checks its settings, plans the stages (:mod:`~nnfeat.ops.report.plan`)
and runs the missing ones, one process or several (see the package docstring, :mod:`nnfeat.ops.report`)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from nnfeat import distributed
from nnfeat.data import ImageSet
from nnfeat.errors import NnfeatError
from nnfeat.finite import probe_finite
from nnfeat.io import remove_stale_temporaries, track_writes
from nnfeat.layouts import OUTPUT
from nnfeat.models.base import Model, as_model
from nnfeat.ops.report.context import ClassRender, ReportContext, slug
from nnfeat.ops.report.manifest import (outputs_ok, read_records, record_key, stage_files, write_manifest,
                                        write_record)
from nnfeat.ops.report.pages import read_png
from nnfeat.ops.report.plan import Stage, plan, stage_owners, sync_points
from nnfeat.ops.report.result import ReportResult
from nnfeat.ops.results import check_out_dir, cli_command, weights_flag

STOP_ENV = "NNFEAT_REPORT_STOP_AFTER"
ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid)


class StopRequested(RuntimeError):
    """Raised by the ``NNFEAT_REPORT_STOP_AFTER`` test hook."""


def default_layers(model: Model) -> list[str]:
    """The model's main layers: each block of its top-level stages (a top-level container whose children have
    children: ``layer1.0``, ``layer1.1``, ...), else its top-level convolutions (or activations when it has
    none), then ``output`` when the model has logits."""
    net = model.net
    top = list(net.named_children())
    blocks = [f"{name}.{child}" for name, m in top if len(list(m.children())) > 1
              for child, sub in m.named_children() if len(list(sub.children())) > 0]
    if not blocks:
        blocks = [name for name, m in top if isinstance(m, nn.Conv2d)]
    if not blocks:
        blocks = [name for name, m in top if isinstance(m, ACTIVATIONS)]
    if "output" in model.layer_names() or _has_logits(model):
        blocks.append("output")
    return blocks


def _has_logits(model: Model) -> bool:
    try:
        model.units("output")
        return True
    except NnfeatError:
        return False


def _layer_list(model: Model, layers: Sequence[str] | str | None) -> list[str]:
    """``layers`` (a list or ``"a,b"``; None: :func:`default_layers`) checked: one-line errors before any work."""
    if layers is None:
        names = default_layers(model)
    else:
        names = [n.strip() for n in (layers.split(",") if isinstance(layers, str) else layers) if n.strip()]
    if not names:
        raise NnfeatError("--layers is empty: give layer names such as 'layer1.0,layer2.0' (see `nnfeat layers`)")
    for name in names:
        if ":" in name:
            raise NnfeatError(f"--layers takes layer names, not units: '{name}' (use --units-per-layer)")
        model.units(name)  # a one-line error for an unknown layer, before any work
    if len(set(names)) != len(names):
        raise NnfeatError(f"--layers names a layer twice: {','.join(names)}")
    return names


def report(model, images: ImageSet, out: str | Path, *, layers: Sequence[str] | str | None = None,
           units_per_layer: int = 16, steps: int = 128, seed: int = 0, batch: int = 16,
           thresholds: int = 4, diversity: int = 3, diversity_weight: float = 1e2, examples_k: int = 6,
           heatmap_n: int = 4, projection_n: int = 1000, projection_method: str = "pca",
           atlas: Sequence[str] | str | None = None, saliency_n: int = 4, uncertain_n: int = 256,
           class_render: ClassRender | None = None, progress: bool = True) -> ReportResult:
    """Build (or finish) the report of ``model`` over ``images`` in the folder ``out``.

    Args:
        model: an nnfeat Model (a bare ``nn.Module`` is wrapped); images: an :class:`ImageSet` at the model's
            input size.
        layers: layer names (list or ``"a,b"``); default :func:`default_layers`.
        units_per_layer: units 0..N-1 of each layer (fewer when the layer has fewer channels).
        steps: render steps; thresholds: how many evenly spaced steps each unit's render is kept at.
        diversity: images per diversity render (0: none); diversity_weight: W in ``channel + W * diversity``.
        examples_k: top and bottom examples per unit; heatmap_n: inputs of the layer heatmaps;
        projection_n: images in the projection sample; projection_method: pca | tsne | umap;
        atlas: layers that also get an activation atlas; saliency_n / uncertain_n: images for the classes page.
        class_render: the class renders' recipe, ``class_render(steps=, seed=) -> (objective, render kwargs)``
            (e.g. :func:`nnfeat.ops.demo.readable_class_render`: priors that make digits readable); default one plain
            render per logit (the ``output`` layer's unit renders when it is a report layer).
    Returns:
        :class:`ReportResult` (``out/index.html`` is the entry page).
    """
    started = time.perf_counter()
    model = as_model(model)
    for name, value in (("units_per_layer", units_per_layer), ("steps", steps), ("batch", batch),
                        ("thresholds", thresholds), ("examples_k", examples_k), ("heatmap_n", heatmap_n),
                        ("projection_n", projection_n)):
        if value < 1:
            raise NnfeatError(f"--{name.replace('_', '-')} must be at least 1; got {value}")
    names = _layer_list(model, layers)
    atlas_layers = _layer_list(model, atlas) if atlas else []
    for name in atlas_layers:
        if name not in names:
            raise NnfeatError(f"--atlas layer '{name}' is not one of the report's layers ({', '.join(names)})")
    channels = {name: model.units(name)[1][:units_per_layer] for name in names}
    out = check_out_dir(out)
    # a NaN/Inf model fails now in one line, not after the first stages (the classes page reads the logits)
    probe_finite(model, names + ([OUTPUT] if _has_logits(model) else []))
    out.mkdir(parents=True, exist_ok=True)
    steps_kept = sorted({max(1, round(steps * (i + 1) / thresholds)) for i in range(thresholds)})
    settings = {"model": model.name, "weights": getattr(model, "weights", None), "images": images.name,
                "n": len(images), "drawn": list(images.drawn) if images.drawn else None, "layers": names,
                "units_per_layer": units_per_layer, "steps": steps, "thresholds": steps_kept, "seed": seed,
                "batch": batch, "diversity": diversity, "diversity_weight": diversity_weight,
                "examples_k": examples_k, "heatmap_n": heatmap_n, "projection_n": projection_n,
                "projection_method": projection_method, "atlas": atlas_layers, "saliency_n": saliency_n,
                "uncertain_n": uncertain_n, "device": str(model.device),
                # the input spec when it is not the zoo card's (a model nnfeat does not know, or input options)
                "input": None if model.spec.from_card() else model.spec.record(),
                "class_render": None if class_render is None else
                f"{class_render.__module__}.{getattr(class_render, '__qualname__', class_render.__class__.__name__)}"}
    ctx = ReportContext(model=model, images=images, out=out, settings=settings, channels=channels,
                        steps_kept=steps_kept, class_render=class_render)
    timings, notes = run_stages(ctx, plan(ctx), progress)
    key = [read_png(out / "layers" / slug(n) / "render" / f"channel-{channels[n][0]}.png")
           for n in names[:4] if channels[n]]
    command = cli_command("report", model.name, images=images.name, n=(images.drawn or (None,))[0],
                          layers=",".join(names), units_per_layer=units_per_layer, steps=steps, seed=seed or None,
                          atlas=",".join(atlas_layers) or None,
                          weights=weights_flag(model))
    return ReportResult(model=model.name, out=out, layers=channels, key_images=torch.stack(key), settings=settings,
                        timings=timings, notes=notes, elapsed=time.perf_counter() - started, command=command)


def run_stages(ctx: ReportContext, stages: list[Stage], progress: bool) -> tuple[dict[str, float], dict[str, str]]:
    """Run the stages not done yet (those of this rank), recording each; returns ({stage: seconds} of this run,
    {stage: note} of every stage left out). Every rank returns the same notes."""
    out, settings = ctx.out, ctx.settings
    names = [stage.name for stage in stages]
    ranks = distributed.current()
    owners = stage_owners(names, ranks.world)
    key = record_key(settings)
    done = {name: info for name, info in read_records(out, names, key).items() if outputs_ok(ctx, name)}
    stop_after = int(os.environ.get(STOP_ENV, "0") or 0)
    if ranks.writer:  # the hidden temporaries a killed run left (older than this run: never a write in flight)
        remove_stale_temporaries(out, older_than=ctx.started, recursive=True)
    if ranks.sharded:
        ranks.barrier()  # no rank writes before rank 0 has cleaned
    timings: dict[str, float] = {}
    ran, stop = 0, None
    syncs = sync_points(names)
    for i, stage in enumerate(stages):
        if i in syncs:
            if ranks.sharded:
                ranks.barrier()  # the other ranks' stages before this one are on disk
                if not ranks.all_true(stop is None):
                    raise StopRequested(stop or f"{STOP_ENV}: another rank stopped")
                done = {**done, **read_records(out, names[:i], key)}
            if ranks.writer:  # the manifest the next stages read (the pages take their notes from it)
                write_manifest(out, settings, names, done)
        owner = owners[stage.name]
        if owner is None:  # a collective: every rank runs it, unless every rank has it done
            if ranks.all_true(stage.name in done):
                continue
        elif owner != ranks.rank or stage.name in done:
            continue
        if progress:
            where = f" (rank {ranks.rank}/{ranks.world})" if ranks.sharded else ""
            print(f"report [{i + 1}/{len(stages)}] {stage.name}{where}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        with track_writes() as written:
            if owner is None:
                note = stage.run(ctx)
            else:
                with distributed.alone():  # one rank's stage: whatever it calls runs whole here, no collectives
                    note = stage.run(ctx)
        timings[stage.name] = time.perf_counter() - t0
        done[stage.name] = {"note": note} if note else {}
        if owner is not None or ranks.writer:
            write_record(out, stage.name, key, note, stage_files(ctx, stage.name, written))
        if ranks.writer:
            write_manifest(out, settings, names, done)
        ran += 1
        unfinished = i < len(stages) - 1 if ranks.sharded else len(done) < len(stages)
        if stop_after and ran >= stop_after and stop is None and unfinished:
            stop = f"{STOP_ENV}={stop_after}: stopped after stage '{stage.name}'"
            if not ranks.sharded:
                raise StopRequested(stop)
    ranks.barrier()
    if not ranks.all_true(stop is None):
        raise StopRequested(stop or f"{STOP_ENV}: another rank stopped")
    done = read_records(out, names, key)  # every rank's records: the same notes on every rank
    if ranks.writer:
        write_manifest(out, settings, names, done)  # (also when a kill came between a record and the manifest)
    return timings, {name: done[name]["note"] for name in names if done.get(name, {}).get("note")}


__all__ = ["report", "run_stages", "default_layers", "StopRequested", "STOP_ENV", "ACTIVATIONS"]
