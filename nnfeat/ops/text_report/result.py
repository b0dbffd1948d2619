"""What :func:`nnfeat.ops.text_report.text_report` returns: :class:`TextReportResult` (kind ``text-report``), the
report folder with its key picture and this run's per-stage seconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from nnfeat.ops.results import FolderResult

#: stage kinds that are the report's own work (not a view's passes) in :meth:`TextReportResult.time_shares`
OWN_KINDS = ("pages",)


@dataclass(repr=False)
class TextReportResult(FolderResult):
    """What :func:`text_report` returns. ``out``: the report folder (``index.html`` the entry page);
    ``key_images``: (1, 3, H, W) the attention picture (or none, (0, 3, 1, 1)); ``timings``: {stage: seconds} of
    this run (in memory only); ``notes``: {stage: why it was left out}."""

    model: str
    out: Path
    settings: dict
    key_images: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0
    command: str | None = None
    kind: ClassVar[str] = "text-report"

    def title(self) -> str:
        return f"{self.model} text report ({self.settings['n']} texts, {len(self.settings['layers'])} units layers)"

    def record(self) -> dict:
        return {"model": self.model, "settings": self.settings, "notes": self.notes, "page": "index.html"}

    def time_shares(self) -> dict[str, float]:
        """Seconds of this run: ``views`` (the stages' operations: their passes and their own figures) and
        ``report`` (the index page, the records, everything between stages)."""
        own = sum(v for k, v in self.timings.items() if k.split(":")[0] in OWN_KINDS)
        views = sum(self.timings.values()) - own
        return {"views": views, "report": own + max(0.0, self.elapsed - sum(self.timings.values()))}


__all__ = ["TextReportResult", "OWN_KINDS"]
