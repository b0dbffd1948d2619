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

Resumable: each finished stage writes its record ``stages/<stage>.json`` (the settings key, the stage's
note and the sha256 digest of every file it wrote outside ``cache/``, whose collections and layouts check
themselves), and ``report.json`` (rank 0, atomically) lists the finished stages, derived from those records; a
re-run with the same settings does only the missing ones, and again every stage one of whose files is missing,
truncated or replaced (:func:`nnfeat.io.is_whole`), after removing the hidden temporaries a killed run left;
the finished folder is byte-identical to an uninterrupted run (no times or dates in any file). A model that
gives NaN or Inf at a report layer or its output on a probe image is a one-line error before any work. Progress (stage and layer) goes to stderr. Per-stage
seconds are kept in memory only (:attr:`ReportResult.timings`). Env ``NNFEAT_REPORT_STOP_AFTER=k`` stops a
run after k stages (a test hook that stands in for a kill; under a process group at the next sync point).

Several processes (``torchrun -m nnfeat report ...``, :mod:`nnfeat.distributed`): the stage list is the same on
every rank (its order fixes the seeds). The stages of kind ``render``, ``diversity`` and ``unit`` are
numbered among themselves and stage ``j`` is done by rank ``j % world``; collection stages (``collect:*``)
and atlases run on every rank (collectives: they shard their own batches); every other stage runs on rank 0.
Every rank waits at a barrier wherever the list passes between split stages and the others (a unit page
reads the examples, a microscope sheet the layer's render batches), before each collective stage and before
the pages (:func:`~nnfeat.ops.report.plan.sync_points`). The folder is byte-identical to one process's with
any rank count, and a run killed on any rank resumes with the same or another rank count.

The package: :mod:`~nnfeat.ops.report.context` (the typed :class:`ReportContext` every stage and page takes),
:mod:`~nnfeat.ops.report.stages` (one function per stage kind), :mod:`~nnfeat.ops.report.pages` (the HTML),
:mod:`~nnfeat.ops.report.plan` (the stage list, which rank does what), :mod:`~nnfeat.ops.report.manifest` (the
records on disk), :mod:`~nnfeat.ops.report.result` (:class:`ReportResult`) and :mod:`~nnfeat.ops.report.run`
(:func:`report`). No submodule imports this one.
"""

from __future__ import annotations

from nnfeat.ops.report.context import ReportContext, diversity_chunks, slug
from nnfeat.ops.report.manifest import MANIFEST, STAGES_DIR
from nnfeat.ops.report.plan import COLLECTIVE_KINDS, SHARDED_KINDS, SYNC_KINDS, Stage, stage_owners, sync_points
from nnfeat.ops.report.result import COLLECT_KINDS, RENDER_KINDS, REPORT_KINDS, ReportResult
from nnfeat.ops.report.run import ACTIVATIONS, STOP_ENV, StopRequested, default_layers, report

__all__ = ["report", "ReportResult", "default_layers", "slug", "stage_owners", "sync_points", "MANIFEST", "STAGES_DIR",
           "STOP_ENV", "StopRequested", "ReportContext", "Stage", "diversity_chunks"]
