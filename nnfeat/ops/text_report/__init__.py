"""``nnfeat report`` for token models: one offline folder over a model and its texts (open ``index.html``).

:func:`text_report` composes the token operations into stages, each saved with ``timing=False`` into its own
sub-folder of ``out``:

* ``graph/``: the architecture (:func:`nnfeat.ops.graph.graph`, traced on the first text), the units layers'
  nodes linked to their pages;
* ``attention/``: the attention model view of a seeded sample of the texts, every layer and head, with the head
  scores and the rollout (:func:`nnfeat.ops.token_attention.token_attention`);
* ``embeddings/``: the input embeddings of the texts' most frequent tokens in 2-D with the cosine neighbours of
  the most frequent ones (:func:`nnfeat.ops.project_tokens.project_tokens`);
* ``units/<layer>/``: a few units of one or two layers with their top and bottom contexts over every text,
  collected in ``cache/`` (resumable, sharded: :func:`nnfeat.ops.token_examples.token_examples`); an
  encoder-decoder model's units over a sample of the texts (:func:`~nnfeat.ops.token_examples.token_units`);
* ``saliency/``: token saliency of a sample with its numbers (:func:`nnfeat.ops.token_saliency.token_saliency`;
  a sentence encoder explains the similarity with a pair text);
* ``logit-lens/``: where it applies (decoder models, or a named unembedding: :func:`nnfeat.ops.logit_lens.logit_lens`);
  elsewhere the stage's one-line reason is shown instead;
* ``index.html``: one section per view, its picture linked to its page (:mod:`nnfeat.views.text_report_page`).

Resumable exactly as the image report (:mod:`nnfeat.ops.report`), with its pieces: a record per finished stage
(``stages/<stage>.json``, keyed by the settings, with the digest of every file it vouches for: a damaged file
redoes its stage), ``report.json``, the ``NNFEAT_REPORT_STOP_AFTER`` hook; no times in any file, so a killed and
resumed run gives the same bytes as an uninterrupted one.

The package: :mod:`~nnfeat.ops.text_report.context` (:class:`TextReportContext`), ``stages``, ``pages`` (the
index), ``result`` (:class:`TextReportResult`) and ``run`` (:func:`text_report`). No submodule imports this one.
"""

from __future__ import annotations

from nnfeat.ops.text_report.context import TextReportContext
from nnfeat.ops.text_report.result import TextReportResult
from nnfeat.ops.text_report.run import DEFAULT_METHODS, default_layers, plan, text_report

__all__ = ["text_report", "TextReportResult", "TextReportContext", "default_layers", "plan", "DEFAULT_METHODS"]
