"""What every stage and the index page of :func:`nnfeat.ops.text_report.text_report` work from:
:class:`TextReportContext` (the token model, the texts, the folder, the settings) and where each stage's files go.

This module imports no other module of the text report package: the stages, the page and the run read it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nnfeat.models.text import TokenModel
from nnfeat.ops.report.context import slug
from nnfeat.texts import TextSet

#: the sub-folder of each stage kind (``units:<layer>`` goes to ``units/<layer slug>/``)
FOLDERS = {"graph": "graph", "attention": "attention", "embeddings": "embeddings", "units": "units",
           "saliency": "saliency", "logit-lens": "logit-lens"}


def texts_digest(texts: TextSet) -> str:
    """A short digest of the texts and their line numbers (the settings key of a report over them)."""
    digest = hashlib.sha256()
    for text in texts.texts:  # hashing the texts: once per run
        digest.update(text.encode("utf-8") + b"\n")
    digest.update(repr(texts.indices).encode())
    return digest.hexdigest()[:16]


def subset(texts: TextSet, n: int, seed: int) -> TextSet:
    """``n`` of ``texts`` drawn from ``seed`` (kept in source order), or all of them when there are no more."""
    if n >= len(texts):
        return texts
    g = torch.Generator().manual_seed(int(seed))
    keep = sorted(torch.randperm(len(texts), generator=g)[:n].tolist())
    return TextSet([texts.texts[i] for i in keep], texts.source, [texts.indices[i] for i in keep])


@dataclass
class TextReportContext:
    """One text report's inputs, fixed before the first stage.

    ``settings``: what the stage records are keyed by (the model, the texts' digest, the units' layers and every
    option); ``started``: the ``time.time()`` of the run (a hidden temporary older than it is a killed run's).
    """

    model: TokenModel
    texts: TextSet
    out: Path
    settings: dict
    started: float = field(default_factory=time.time)

    def folder(self, kind: str, layer: str | None = None) -> Path:
        """``out/<kind>`` (``out/units/<layer>`` for a units stage)."""
        base = self.out / FOLDERS[kind]
        return base / slug(layer) if layer is not None else base

    @property
    def cache(self) -> Path:
        """``out/cache``: the units' context collections (their records verify themselves)."""
        return self.out / "cache"

    def sample(self, n: int) -> TextSet:
        """A seeded sample of ``n`` of the texts (the report's seed)."""
        return subset(self.texts, n, self.settings["seed"])


__all__ = ["TextReportContext", "FOLDERS", "texts_digest", "subset"]
