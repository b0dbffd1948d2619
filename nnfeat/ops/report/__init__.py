"""``nnfeat report``: an offline Microscope for any model, one folder that ties every nnfeat view together.

:func:`report` composes the other operations into stages, each saved with ``timing=False`` into its own
sub-folder of ``out``:

* ``graph/``: the architecture page (:func:`nnfeat.ops.graph.graph`), its layer nodes linked to the
  layer pages;
* per layer ``layers/<layer>/``: the unit renders in batches (``render/``: one render per unit, kept at several
  thresholds, seeded like :func:`nnfeat.ops.microscope.microscope`), the microscope sheet (``microscope/``), the
  shared pooled collection (``cache/``, :func:`nnfeat.analysis.collect.pooled`; the projection sample's rows are taken
  from it, its layout cached in ``cache/projection/``), top and bottom dataset examples
  (``examples/``), activation heatmaps on a few inputs (``heatmap/``), the projection of a sample of the
  dataset (``projection/``, PCA by default) and, where asked, the activation atlas (``atlas/``);
* per unit ``layers/<layer>/units/<c>/``: diversity renders (``channel + W * diversity``; Mordvintsev et al.
  2018 / Olah et al. 2017, "Feature Visualization"), heatmaps on the unit's top examples, filter weights for
  conv layers;
* ``classes/``: class renders, saliency maps with their sanity numbers (Adebayo et al. 2018, "Sanity Checks
  for Saliency Maps"; deletion / insertion, Petsiuk et al. 2018) and the most uncertain images (TTA);
* the pages: ``index.html`` (search box over layer and unit names), one page per layer, per unit, the classes.

Resumable: each finished stage writes its record ``stages/<stage>.json`` (the settings key and the stage's
note), and ``report.json`` (rank 0, atomically) lists the finished stages, derived from those records; a
re-run with the same settings does only the missing ones (a render batch also when one of its PNGs or its
``render/batch-<first>.json`` does not read back), and the finished folder is byte-identical to an
uninterrupted run (no times or dates in any file). Progress (stage and layer) goes to stderr. Per-stage
seconds are kept in memory only (:attr:`ReportResult.timings`). Env ``NNFEAT_REPORT_STOP_AFTER=k`` stops a
run after k stages (a test hook that stands in for a kill; under a process group at the next sync point).

Several processes (``torchrun -m nnfeat report ...``, :mod:`nnfeat.distributed`): the stage list is the same on
every rank (its order fixes the seeds). The stages of kind ``render``, ``diversity`` and ``unit`` are
numbered among themselves and stage ``j`` is done by rank ``j % world``; collection stages (``collect:*``)
and atlases run on every rank (collectives: they shard their own batches); every other stage runs on rank 0.
Every rank waits at a barrier wherever the list passes between split stages and the others (a unit page
reads the examples, a microscope sheet the layer's render batches), before each collective stage and before
the pages (:func:`sync_points`). The folder is byte-identical to one process's with any rank count, and a
run killed on any rank resumes with the same or another rank count.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn as nn

from nnfeat import distributed
from nnfeat.data import ImageSet
from nnfeat.errors import NnfeatError
from nnfeat.io import read_json, write_json
from nnfeat.ops.results import Result, check_out_dir, cli_command

MANIFEST = "report.json"
STAGES_DIR = "stages"  #: per-stage records ``stages/<stage name, quoted>.json``
#: stage kinds split over the ranks (stage j of these kinds is rank j % world's), run on every rank (collectives),
#: and waited for (a barrier before the stage: it reads what other ranks wrote); every other stage is rank 0's
SHARDED_KINDS = ("render", "diversity", "unit")
COLLECTIVE_KINDS = ("collect", "atlas")
SYNC_KINDS = ("microscope", "pages", *COLLECTIVE_KINDS)
STOP_ENV = "NNFEAT_REPORT_STOP_AFTER"
#: stage kinds whose time is "render" time (the floor) and "collection" time in :attr:`ReportResult.timings`
RENDER_KINDS = ("render", "diversity", "class-renders")
COLLECT_KINDS = ("collect",)
REPORT_KINDS = ("microscope", "pages")
ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid)


class StopRequested(RuntimeError):
    """Raised by the ``NNFEAT_REPORT_STOP_AFTER`` test hook."""


def slug(name: str) -> str:
    """A layer name as a folder name (``layer1.0`` stays; anything but letters, digits, ``._-`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def default_layers(model) -> list[str]:
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


def _has_logits(model) -> bool:
    try:
        model.units("output")
        return True
    except NnfeatError:
        return False


@dataclass(repr=False)
class ReportResult(Result):
    """What :func:`report` returns. ``out``: the report folder; ``layers``: {layer: channels};
    ``key_images``: (B, 3, H, W) a few key pictures (the first units' renders); ``timings``: {stage: seconds}
    of this run (in memory only); ``notes``: {stage: why it was left out}."""

    model: str
    out: Path
    layers: dict[str, list[int]]
    key_images: torch.Tensor
    settings: dict
    timings: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0
    command: str | None = None
    kind: ClassVar[str] = "report"

    @property
    def images(self) -> torch.Tensor:
        return self.key_images

    def title(self) -> str:
        return f"{self.model} report  ({len(self.layers)} layers, {sum(map(len, self.layers.values()))} units)"

    def record(self) -> dict:
        return {"model": self.model, "settings": self.settings, "layers": {k: v for k, v in self.layers.items()},
                "notes": self.notes, "page": "index.html"}

    def save(self, out=None, *, timing: bool = False) -> Path:
        """The report is its folder: ``out`` (default the folder it was built in) must be that folder."""
        out = Path(out) if out is not None else self.out
        if out.resolve() != Path(self.out).resolve():
            raise NnfeatError(f"a report is saved where it was built ('{self.out}'), not '{out}'")
        return Path(self.out) / "index.html"

    def time_shares(self) -> dict[str, float]:
        """Seconds of this run by kind: ``render`` (unit, diversity and class renders: the floor), ``collect``
        (the pooled collections), ``views`` (graph, examples, heatmaps, projections, atlas, filters, saliency,
        uncertainty) and ``report`` (the report's own work: sheets, pages, manifest, everything between stages)."""
        shares = {"render": 0.0, "collect": 0.0, "views": 0.0, "report": 0.0}
        for stage, seconds in self.timings.items():
            kind = stage.split(":")[0]
            shares["render" if kind in RENDER_KINDS else "collect" if kind in COLLECT_KINDS
                   else "report" if kind in REPORT_KINDS else "views"] += seconds
        shares["report"] += max(0.0, self.elapsed - sum(self.timings.values()))
        return shares


@dataclass
class _Stage:
    name: str
    run: Callable[[], str | None]  # returns a note when the stage was left out (a one-line reason), else None


def report(model, images: ImageSet, out: str | Path, *, layers: Sequence[str] | str | None = None,
           units_per_layer: int = 16, steps: int = 128, seed: int = 0, batch: int = 16,
           thresholds: int = 4, diversity: int = 3, diversity_weight: float = 1e2, examples_k: int = 6,
           heatmap_n: int = 4, projection_n: int = 1000, projection_method: str = "pca",
           atlas: Sequence[str] | str | None = None, saliency_n: int = 4, uncertain_n: int = 256,
           class_render: Callable[..., tuple] | None = None, progress: bool = True) -> ReportResult:
    """Build (or finish) the report of ``model`` over ``images`` in the folder ``out``.

    Args:
        model: an nnfeat Model; images: an :class:`ImageSet` at the model's input size.
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
    from nnfeat.views import report_pages as pages

    started = time.perf_counter()
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
    channels = {}
    for name in names:
        _, all_channels = model.units(name)
        channels[name] = all_channels[:units_per_layer]
    out = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    steps_kept = sorted({max(1, round(steps * (i + 1) / thresholds)) for i in range(thresholds)})
    settings = {"model": model.name, "weights": getattr(model, "weights", None), "images": images.name,
                "n": len(images), "drawn": list(images.drawn) if images.drawn else None, "layers": names,
                "units_per_layer": units_per_layer, "steps": steps, "thresholds": steps_kept, "seed": seed,
                "batch": batch, "diversity": diversity, "diversity_weight": diversity_weight,
                "examples_k": examples_k, "heatmap_n": heatmap_n, "projection_n": projection_n,
                "projection_method": projection_method, "atlas": atlas_layers, "saliency_n": saliency_n,
                "uncertain_n": uncertain_n, "device": str(model.device),
                "class_render": None if class_render is None else
                f"{class_render.__module__}.{getattr(class_render, '__qualname__', class_render.__class__.__name__)}"}
    ctx = _Context(model=model, images=images, out=out, settings=settings, channels=channels,
                   steps_kept=steps_kept, class_render=class_render)
    stages = _plan(ctx, pages)
    ranks = distributed.current()
    owners = stage_owners([stage.name for stage in stages], ranks.world)
    record_key = _settings_key(settings)
    done = {name: info for name, info in _read_records(out, stages, record_key).items()
            if _outputs_ok(ctx, name)}
    stop_after = int(os.environ.get(STOP_ENV, "0") or 0)
    timings: dict[str, float] = {}
    ran, stop = 0, None
    syncs = sync_points([stage.name for stage in stages])
    for i, stage in enumerate(stages):
        if i in syncs:
            if ranks.sharded:
                ranks.barrier()  # the other ranks' stages before this one are on disk
                if not ranks.all_true(stop is None):
                    raise StopRequested(stop or f"{STOP_ENV}: another rank stopped")
                done = {**done, **_read_records(out, stages[:i], record_key)}
            if ranks.writer:  # the manifest the next stages read (the pages take their notes from it)
                _write_manifest(out, settings, stages, done)
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
        if owner is None:
            note = stage.run()
        else:
            with distributed.alone():  # one rank's stage: whatever it calls runs whole here, no collectives
                note = stage.run()
        timings[stage.name] = time.perf_counter() - t0
        done[stage.name] = {"note": note} if note else {}
        if owner is not None or ranks.writer:
            write_json(_record_path(out, stage.name), {"stage": stage.name, "key": record_key, "note": note})
        if ranks.writer:
            _write_manifest(out, settings, stages, done)
        ran += 1
        unfinished = i < len(stages) - 1 if ranks.sharded else len(done) < len(stages)
        if stop_after and ran >= stop_after and stop is None and unfinished:
            stop = f"{STOP_ENV}={stop_after}: stopped after stage '{stage.name}'"
            if not ranks.sharded:
                raise StopRequested(stop)
    ranks.barrier()
    if not ranks.all_true(stop is None):
        raise StopRequested(stop or f"{STOP_ENV}: another rank stopped")
    done = _read_records(out, stages, record_key)  # every rank's records: the same notes on every rank
    if ranks.writer:
        _write_manifest(out, settings, stages, done)  # (also when a kill came between a record and the manifest)
    notes = {s.name: done[s.name]["note"] for s in stages if done.get(s.name, {}).get("note")}
    key = [pages.read_png(out / "layers" / slug(n) / "render" / f"channel-{channels[n][0]}.png")
           for n in names[:4] if channels[n]]
    command = cli_command("report", model.name, images=images.name, n=(images.drawn or (None,))[0],
                          layers=",".join(names), units_per_layer=units_per_layer, steps=steps, seed=seed or None,
                          atlas=",".join(atlas_layers) or None,
                          weights="random" if getattr(model, "weights", None) == "random" else None)
    return ReportResult(model=model.name, out=out, layers=channels, key_images=torch.stack(key), settings=settings,
                        timings=timings, notes=notes, elapsed=time.perf_counter() - started, command=command)


def stage_owners(names: Sequence[str], world: int) -> dict[str, int | None]:
    """{stage: the rank that does it, None for a collective (every rank)}: the ``j``-th stage of the sharded
    kinds is rank ``j % world``'s, collectives every rank's, every other stage rank 0's."""
    owners, j = {}, 0
    for name in names:
        kind = name.split(":")[0]
        if kind in SHARDED_KINDS:
            owners[name], j = j % world, j + 1
        else:
            owners[name] = None if kind in COLLECTIVE_KINDS else 0
    return owners


def sync_points(names: Sequence[str]) -> set[int]:
    """The stage indices that every rank waits before: wherever the list passes between stages split over the
    ranks and stages of rank 0 or of every rank (so a stage never reads what another rank has not finished:
    unit pages read the examples, the microscope sheet reads the render batches), and before each stage of
    :data:`SYNC_KINDS`."""
    kinds = [name.split(":")[0] for name in names]
    return {i for i, kind in enumerate(kinds) if i > 0 and
            (kind in SYNC_KINDS or (kind in SHARDED_KINDS) != (kinds[i - 1] in SHARDED_KINDS))}


def _settings_key(settings: dict) -> str:
    from nnfeat.ops.microscope import settings_key

    return settings_key(settings)


def _record_path(out: Path, stage: str) -> Path:
    """``stages/<stage>.json``, the name quoted (``render:conv2:0`` -> ``render%3Aconv2%3A0.json``: one file
    per stage name, never two names on one file)."""
    return out / STAGES_DIR / (re.sub(r"[^A-Za-z0-9._-]", lambda m: f"%{ord(m.group()):02X}", stage) + ".json")


def _read_records(out: Path, stages, key: str) -> dict[str, dict]:
    """{stage: {"note": ...} or {}} of the stages whose record reads back with ``key``."""
    done = {}
    for stage in stages:
        try:
            record = read_json(_record_path(out, stage.name))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("key") == key and record.get("stage") == stage.name:
            done[stage.name] = {"note": record["note"]} if record.get("note") else {}
    return done


def _outputs_ok(ctx, stage: str) -> bool:
    """Whether a recorded stage's outputs read back: a render batch's PNGs and values record (other stages
    are trusted to their record, written after their files)."""
    from nnfeat.ops.microscope import _read_png

    parts = stage.split(":")
    if parts[0] != "render":
        return True
    layer, first = ":".join(parts[1:-1]), int(parts[-1])
    chans = ctx.channels.get(layer, [])
    chunk = chans[chans.index(first):chans.index(first) + ctx.settings["batch"]] if first in chans else []
    try:
        record = read_json(ctx.layer_dir(layer) / "render" / f"batch-{first}.json")
        if record.get("channels") != chunk or set(record.get("values", {})) != set(map(str, chunk)):
            return False
        for c in chunk:
            _read_png(ctx.layer_dir(layer) / "render" / f"channel-{c}.png")
            for step in ctx.steps_kept:
                _read_png(ctx.unit_dir(layer, c) / f"step-{step}.png")
    except (OSError, ValueError, SyntaxError, AttributeError, TypeError):
        return False
    return True


def _write_manifest(out: Path, settings: dict, stages, done: dict) -> None:
    """``report.json`` from the finished stages, in stage order (not rewritten when it holds that already)."""
    import json

    ordered = {s.name: done[s.name] for s in stages if s.name in done}
    manifest = {"kind": "report-manifest", "settings": settings, "stages": ordered,
                "complete": len(ordered) == len(stages)}
    path = out / MANIFEST
    try:
        if read_json(path) == json.loads(json.dumps(manifest)):
            return
    except (OSError, ValueError):
        pass
    write_json(path, manifest)


def _layer_list(model, layers) -> list[str]:
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


@dataclass
class _Context:
    model: object
    images: ImageSet
    out: Path
    settings: dict
    channels: dict[str, list[int]]
    steps_kept: list[int]
    class_render: Callable[..., tuple] | None = None

    def layer_dir(self, layer: str) -> Path:
        return self.out / "layers" / slug(layer)

    def unit_dir(self, layer: str, c: int) -> Path:
        return self.layer_dir(layer) / "units" / str(c)

    @property
    def cache(self) -> Path:
        return self.out / "cache"


def _note(fn: Callable[[], None]) -> Callable[[], str | None]:
    """Run ``fn``; a one-line :class:`NnfeatError` becomes the stage's note (the view does not apply)."""
    def run() -> str | None:
        try:
            fn()
        except NnfeatError as err:
            return str(err)
        return None
    return run


def diversity_chunks(channels: list[int], batch: int, per_unit: int) -> list[list[int]]:
    """The units whose diversity renders share one render batch: ``max(1, batch // per_unit)`` at a time (a
    ``batch``-image render of ``per_unit`` images per unit)."""
    size = max(1, batch // per_unit)
    return [channels[i:i + size] for i in range(0, len(channels), size)]


def _plan(ctx: _Context, pages) -> list[_Stage]:
    """Every stage of the report, in order (the order fixes the manifest and the seeds)."""
    from nnfeat.ops.report import stages as st

    s = ctx.settings
    stages = [_Stage("graph", _note(lambda: st.graph_stage(ctx)))]
    for layer in s["layers"]:
        chans = ctx.channels[layer]
        for b in range(0, len(chans), s["batch"]):
            chunk = chans[b:b + s["batch"]]
            stages.append(_Stage(f"render:{layer}:{chunk[0]}", _note(lambda l=layer, c=chunk: st.render_batch(ctx, l, c))))
        stages.append(_Stage(f"microscope:{layer}", _note(lambda l=layer: st.microscope_stage(ctx, l))))
        stages.append(_Stage(f"collect:{layer}", _note(lambda l=layer: st.collect_stage(ctx, l))))
        stages.append(_Stage(f"examples:{layer}", _note(lambda l=layer: st.examples_stage(ctx, l))))
        stages.append(_Stage(f"heatmap:{layer}", _note(lambda l=layer: st.heatmap_stage(ctx, l))))
        stages.append(_Stage(f"projection:{layer}", _note(lambda l=layer: st.projection_stage(ctx, l))))
        if layer in s["atlas"]:
            stages.append(_Stage(f"atlas:{layer}", _note(lambda l=layer: st.atlas_stage(ctx, l))))
        if s["diversity"] > 1:
            for chunk in diversity_chunks(chans, s["batch"], s["diversity"]):
                stages.append(_Stage(f"diversity:{layer}:{chunk[0]}",
                                     _note(lambda l=layer, c=chunk: st.diversity_stage(ctx, l, c))))
        for c in chans:
            stages.append(_Stage(f"unit:{layer}:{c}", _note(lambda l=layer, c=c: st.unit_stage(ctx, l, c))))
    stages.append(_Stage("class-renders", _note(lambda: st.class_renders_stage(ctx))))
    stages.append(_Stage("saliency", _note(lambda: st.saliency_stage(ctx))))
    stages.append(_Stage("uncertainty", _note(lambda: st.uncertainty_stage(ctx))))
    stages.append(_Stage("attention", _note(lambda: st.attention_stage(ctx))))
    stages.append(_Stage("pages", lambda: pages.write_pages(ctx)))
    return stages


__all__ = ["report", "ReportResult", "default_layers", "slug", "stage_owners", "sync_points", "MANIFEST", "STAGES_DIR", "STOP_ENV",
           "StopRequested"]
