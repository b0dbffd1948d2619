"""What :func:`nnfeat.ops.report.report` returns: :class:`ReportResult` (kind ``report``), the report folder with
a few key pictures and this run's per-stage seconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from nnfeat.ops.results import FolderResult

#: stage kinds whose time is "render" time (the floor), "collection" time and the report's own in
#: :meth:`ReportResult.time_shares`
RENDER_KINDS = ("render", "diversity", "class-renders")
COLLECT_KINDS = ("collect",)
REPORT_KINDS = ("microscope", "pages")


@dataclass(repr=False)
class ReportResult(FolderResult):
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

    def title(self) -> str:
        return f"{self.model} report  ({len(self.layers)} layers, {sum(map(len, self.layers.values()))} units)"

    def record(self) -> dict:
        return {"model": self.model, "settings": self.settings, "layers": {k: v for k, v in self.layers.items()},
                "notes": self.notes, "page": "index.html"}

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


__all__ = ["ReportResult", "RENDER_KINDS", "COLLECT_KINDS", "REPORT_KINDS"]
