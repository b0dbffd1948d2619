"""The report's stage list: :func:`plan` (every stage, in order: the order fixes the manifest and the seeds) and
which rank does each stage (:func:`stage_owners`) and where the ranks wait for each other (:func:`sync_points`).

A stage's name is ``kind`` or ``kind:layer[:first unit]`` (``render:conv2:0``, ``unit:conv2:3``, ``pages``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from nnfeat.errors import NnfeatError
from nnfeat.ops.report import stages as st
from nnfeat.ops.report.context import ReportContext, diversity_chunks
from nnfeat.ops.report.pages import write_pages

#: stage kinds split over the ranks (stage j of these kinds is rank j % world's), run on every rank (collectives),
#: and waited for (a barrier before the stage: it reads what other ranks wrote); every other stage is rank 0's
SHARDED_KINDS = ("render", "diversity", "unit")
COLLECTIVE_KINDS = ("collect", "atlas")
SYNC_KINDS = ("microscope", "pages", *COLLECTIVE_KINDS)


@dataclass(frozen=True)
class Stage:
    """One step of the report: ``work(ctx, *args)`` writes its files. With ``optional`` (every stage but the
    pages) a one-line :class:`NnfeatError` means the view does not apply: it becomes the stage's note."""

    name: str
    work: Callable[..., None]
    args: tuple = ()
    optional: bool = True

    @property
    def kind(self) -> str:
        return self.name.split(":")[0]

    def run(self, ctx: ReportContext) -> str | None:
        """Do the stage; returns its note (a one-line reason) when it was left out, else None."""
        if not self.optional:
            self.work(ctx, *self.args)
            return None
        try:
            self.work(ctx, *self.args)
        except NnfeatError as err:
            return str(err)
        return None


def layer_stages(ctx: ReportContext, layer: str) -> list[Stage]:
    """The stages of one layer: its render batches, microscope sheet, collection, examples, heatmaps,
    projection, atlas (where asked), diversity renders and unit pages' views."""
    s = ctx.settings
    chans = ctx.channels[layer]
    found = [Stage(f"render:{layer}:{chans[b]}", st.render_batch, (layer, chans[b:b + s["batch"]]))
             for b in range(0, len(chans), s["batch"])]
    found += [Stage(f"microscope:{layer}", st.microscope_stage, (layer,)),
              Stage(f"collect:{layer}", st.collect_stage, (layer,)),
              Stage(f"examples:{layer}", st.examples_stage, (layer,)),
              Stage(f"heatmap:{layer}", st.heatmap_stage, (layer,)),
              Stage(f"projection:{layer}", st.projection_stage, (layer,))]
    if layer in s["atlas"]:
        found.append(Stage(f"atlas:{layer}", st.atlas_stage, (layer,)))
    if s["diversity"] > 1:
        found += [Stage(f"diversity:{layer}:{chunk[0]}", st.diversity_stage, (layer, chunk))
                  for chunk in diversity_chunks(chans, s["batch"], s["diversity"])]
    found += [Stage(f"unit:{layer}:{c}", st.unit_stage, (layer, c)) for c in chans]
    return found


def plan(ctx: ReportContext) -> list[Stage]:
    """Every stage of the report, in order (the order fixes the manifest and the seeds)."""
    stages = [Stage("graph", st.graph_stage)]
    for layer in ctx.settings["layers"]:
        stages += layer_stages(ctx, layer)
    stages += [Stage("class-renders", st.class_renders_stage), Stage("saliency", st.saliency_stage),
               Stage("uncertainty", st.uncertainty_stage), Stage("attention", st.attention_stage),
               Stage("pages", write_pages, optional=False)]
    return stages


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


__all__ = ["Stage", "plan", "layer_stages", "stage_owners", "sync_points", "SHARDED_KINDS", "COLLECTIVE_KINDS",
           "SYNC_KINDS"]
