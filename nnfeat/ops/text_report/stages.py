"""The stages of :func:`nnfeat.ops.text_report.text_report`: each calls one token operation and saves its result
with ``timing=False`` into its own sub-folder (so a resumed run writes the same bytes).

Every stage takes the :class:`~nnfeat.ops.text_report.context.TextReportContext` (and, for units, the layer) and
returns nothing; a one-line :class:`~nnfeat.errors.NnfeatError` means the view does not apply to this model (the
stage's note, shown on the index page instead of its picture).
"""

from __future__ import annotations

from nnfeat.analysis import token_embeddings as te
from nnfeat.errors import NnfeatError
from nnfeat.ops.graph import graph
from nnfeat.ops.logit_lens import logit_lens
from nnfeat.ops.project_tokens import project_tokens
from nnfeat.ops.report.context import slug
from nnfeat.ops.text_report.context import FOLDERS, TextReportContext, subset
from nnfeat.ops.token_attention import token_attention
from nnfeat.ops.token_examples import token_examples, token_units
from nnfeat.ops.token_saliency import token_saliency
from nnfeat.texts import TextSet
from nnfeat.units import Units


def graph_stage(ctx: TextReportContext) -> None:
    """The architecture page (``graph/``), traced on the first text; each units layer's node links to its page."""
    links = {layer: f"../{FOLDERS['units']}/{slug(layer)}/examples.html" for layer in ctx.settings["layers"]}
    graph(ctx.model, links=links, text=ctx.texts.texts[0]).save(ctx.folder("graph"), timing=False)


def attention_stage(ctx: TextReportContext) -> None:
    """The attention model view of a sample of the texts, with each head's scores and the rollout
    (``attention/``)."""
    texts = ctx.sample(ctx.settings["attention_n"])
    token_attention(ctx.model, texts, rollout=True, seed=ctx.settings["seed"]).save(ctx.folder("attention"),
                                                                                    timing=False)


def query_words(ctx: TextReportContext) -> list[str]:
    """The neighbours' query tokens: the texts' most frequent tokens that hold a letter or a digit (``neighbours``
    of them; none with 0)."""
    n = ctx.settings["neighbours"]
    if n < 1:
        return []
    model = ctx.model
    _, matrix = te.input_embedding(model)
    specials = sorted({int(v) for v in model.tokenizer.specials.values() if v is not None and 0 <= v < len(matrix)})
    counts = te.token_counts(ctx.texts.texts, model.tokenizer.encode, len(matrix), specials)
    words = []
    for i in te.most_frequent(counts, 20 * n).tolist():
        word = model.tokenizer.spell([i])[0]
        if any(ch.isalnum() for ch in word) and word not in words:
            words.append(word)
        if len(words) == n:
            break
    return words


def embeddings_stage(ctx: TextReportContext) -> None:
    """The input embeddings of the texts' most frequent tokens laid out in 2-D, with the cosine neighbours of the
    most frequent ones (``embeddings/``)."""
    s = ctx.settings
    if not ctx.model.embedding:
        raise NnfeatError(f"{ctx.model.name} names no input embedding module: no embeddings projection")
    project_tokens(ctx.model, texts=ctx.texts, top=s["embeddings_top"], neighbours=query_words(ctx) or None,
                   method=s["projection_method"], seed=s["seed"]).save(ctx.folder("embeddings"), timing=False)


def units_stage(ctx: TextReportContext, layer: str) -> None:
    """Units ``0..units_per_layer-1`` of ``layer``: their top and bottom contexts over every text (collected in
    ``cache/``, resumable); an encoder-decoder model, whose contexts are not collected: each unit's activation
    over a sample of the texts (``units/<layer>/``)."""
    s = ctx.settings
    units = Units(layer, tuple(range(s["channels"][layer])))
    if ctx.model.kind == "seq2seq":
        result = token_units(ctx.model, units, ctx.sample(s["attention_n"]), batch_size=s["batch"])
    else:
        result = token_examples(ctx.model, units, ctx.texts, k=s["examples_k"], window=s["window"],
                                batch_size=s["batch"], cache=ctx.cache)
    result.save(ctx.folder("units", layer), timing=False)


def saliency_texts(ctx: TextReportContext) -> tuple[TextSet, str | None]:
    """(texts, pair) of the saliency stage: a sample of the texts; a sentence encoder explains each one's cosine
    similarity with ``pair`` (the setting, else the first text, left out of the sample)."""
    s = ctx.settings
    if ctx.model.kind != "encoder":
        return ctx.sample(s["saliency_n"]), None
    pair = s["pair"] if s["pair"] is not None else ctx.texts.texts[0]
    rest = ctx.texts
    if s["pair"] is None and len(ctx.texts) > 1:
        rest = TextSet(ctx.texts.texts[1:], ctx.texts.source, ctx.texts.indices[1:])
    return subset(rest, s["saliency_n"], s["seed"]), pair


def saliency_stage(ctx: TextReportContext) -> None:
    """Token saliency of a sample of the texts with its numbers (deletion / insertion AUC beside a random ranking,
    verdicts): ``saliency/``."""
    s = ctx.settings
    texts, pair = saliency_texts(ctx)
    token_saliency(ctx.model, texts, s["methods"], pair=pair, steps=s["ig_steps"], seed=s["seed"],
                   numbers=True).save(ctx.folder("saliency"), timing=False)


def logit_lens_stage(ctx: TextReportContext) -> None:
    """The logit lens of a sample of the texts (decoder models, or a model whose unembedding is named):
    ``logit-lens/``."""
    s = ctx.settings
    logit_lens(ctx.model, ctx.sample(s["attention_n"]), unembed=s["unembed"]).save(ctx.folder("logit-lens"),
                                                                                    timing=False)


__all__ = ["graph_stage", "attention_stage", "embeddings_stage", "units_stage", "saliency_stage",
           "logit_lens_stage", "query_words", "saliency_texts"]
