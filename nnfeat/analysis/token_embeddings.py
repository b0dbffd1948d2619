"""Token embeddings (tensors in, tensors out): the rows of an input embedding matrix, token vectors of any layer
over texts, and cosine nearest neighbours.

* :func:`input_embedding` -- a token model's (V, D) input embedding matrix (its ``nn.Embedding`` weight);
* :func:`token_counts` / :func:`word_counts` / :func:`most_frequent` -- how often each vocabulary entry occurs in
  texts, and the rows of the most frequent ones;
* :func:`lookup` -- token strings -> vocabulary ids (a one-line error naming the nearest tokens for one that is
  missing);
* :func:`contextual_vectors` -- (P, D) vectors of one layer, one per token occurrence of the texts, with each
  occurrence's text and position;
* :func:`type_means` -- the mean vector of each distinct token over its occurrences;
* :func:`cosine_neighbours` -- the k rows of highest cosine similarity to each query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nnfeat.errors import NnfeatError, nearest, shorten
from nnfeat.models.text import TokenBatch, TokenModel

_WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def input_embedding(model: TokenModel) -> tuple[str, torch.Tensor]:
    """(name, (V, D) float32 CPU weight) of ``model``'s input embedding: the module ``model.embedding`` names, else
    the first ``nn.Embedding`` with one row per vocabulary entry (else the first ``nn.Embedding``)."""
    name = model.embedding
    if name is None:
        found = [(n, m) for n, m in model.net.named_modules() if isinstance(m, nn.Embedding)]
        size = model.tokenizer.vocab_size
        fitting = [(n, m) for n, m in found if size is None or m.num_embeddings == size]
        if not (fitting or found):
            raise NnfeatError(f"{model.name} has no nn.Embedding module: project its token vectors of a LAYER "
                              "over --text/--text-file instead of --embeddings")
        name = (fitting or found)[0][0]
    weight = getattr(model.module(name), "weight", None)
    if not torch.is_tensor(weight) or weight.dim() != 2:
        raise NnfeatError(f"{model.name}'s input embedding '{name}' has no (V, D) weight")
    return name, weight.detach().float().cpu()


def token_counts(texts: Sequence[str], encode, vocab_size: int, skip: Sequence[int] = ()) -> torch.Tensor:
    """(V,) long: how often each id occurs in ``encode(text)`` over ``texts``, ids in ``skip`` (special tokens)
    counted as 0."""
    ids = [i for text in texts for i in encode(text)]  # tokenizing: one call per text
    counts = torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=vocab_size)[:vocab_size]
    if len(skip):
        counts[torch.tensor(list(skip), dtype=torch.long)] = 0
    return counts


def word_counts(texts: Sequence[str], index: Mapping[str, int], vocab_size: int) -> tuple[torch.Tensor, int]:
    """((V,) long counts, words not found) of the words and punctuation marks (``\\w+|[^\\w\\s]``) of ``texts``
    looked up in ``index`` (token -> row; a word not found as it is is looked up lower-cased)."""
    words = [w for text in texts for w in _WORDS.findall(text)]
    ids = [index.get(w, index.get(w.lower(), -1)) for w in words]
    found = torch.tensor([i for i in ids if i >= 0], dtype=torch.long)
    return torch.bincount(found, minlength=vocab_size)[:vocab_size], len(ids) - len(found)


def most_frequent(counts: torch.Tensor, n: int) -> torch.Tensor:
    """(n',) long ids of the ``n`` most frequent entries of (V,) ``counts`` that occur at all, most frequent first,
    ties in id order (n' <= n)."""
    order = torch.sort(-counts, stable=True).indices
    return order[:min(n, int((counts > 0).sum()))]


def lookup(words: Sequence[str], index: Mapping[str, int], what: str, vocab_size: int | None = None) -> list[int]:
    """The vocabulary ids of ``words`` (exact, else lower-cased); ``what`` names the option in the error.

    Raises:
        NnfeatError: one line for the first word not in the vocabulary, naming its nearest tokens.
    """
    ids = []
    for word in words:
        i = index.get(word, index.get(word.lower()))
        if i is None:
            near = nearest(word, [t for t in index if t[:1].lower() == word[:1].lower()][:50000])
            hint = f"; nearest: {', '.join(repr(t) for t in near)}" if near else ""
            size = f" of {vocab_size:,} tokens" if vocab_size else ""
            raise NnfeatError(f"{what} '{shorten(word, 40)}' is not in the vocabulary{size}{hint}")
        ids.append(i)
    return ids


@dataclass
class TokenVectors:
    """Token vectors of one layer over texts, one row per token occurrence.

    Attributes:
        vectors: (P, D) float32.
        ids: (P,) long token ids (of the side the layer sees: the decoder's for a decoder layer of a seq2seq model).
        tokens: P token strings, as the tokenizer spells them.
        text: (P,) long index of each occurrence's text.
        position: (P,) long position of each occurrence in its text's tokens.
        side: ``"input"`` or ``"decoder"`` (seq2seq: which tokens the layer's positions are).
    """

    vectors: torch.Tensor
    ids: torch.Tensor
    tokens: list[str]
    text: torch.Tensor
    position: torch.Tensor
    side: str = "input"


def _first_tensor(output) -> torch.Tensor | None:
    if torch.is_tensor(output):
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return next((o for o in output if torch.is_tensor(o)), None)
    return None


def _groups(lengths: torch.Tensor, batch_size: int, by_length: bool) -> list[torch.Tensor]:
    """Row indices per forward pass: ``batch_size`` texts at a time, of one length each when ``by_length``."""
    if not by_length:
        return list(torch.arange(len(lengths)).split(batch_size))
    out = []
    for length in sorted(set(lengths.tolist())):  # one group per distinct length
        out.extend((lengths == length).nonzero()[:, 0].split(batch_size))
    return out


@torch.no_grad()
def contextual_vectors(model: TokenModel, layer: str, batch: TokenBatch, *, batch_size: int = 64,
                       max_new: int = 32) -> TokenVectors:
    """The output of ``layer`` at every real token of ``batch`` (its first tensor when the layer returns several).

    A network called without a mask gets texts of one length per pass (padding never changes what it computes);
    a seq2seq model decodes each batch greedily first and ``layer`` may be on either side: its output's length
    says which (the decoder input is given one extra padded step when both sides are as long; decoding is
    causal, so that changes nothing before it).

    Args:
        batch: the encoded texts (:meth:`TokenModel.encode`): ids (B, T), mask (B, T).

    Raises:
        NnfeatError: one line when the layer's output is not (B, T, D) token vectors (nor (T, B, D)).
    """
    module = model.module(layer)
    seen: list = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(_first_tensor(out)))
    lengths = batch.mask.sum(1).cpu()
    by_length = model.kind != "seq2seq" and model.call == "ids"
    parts: dict[str, list] = {"vectors": [], "ids": [], "text": [], "position": [], "tokens": []}
    side = "input"
    try:
        for rows in _groups(lengths, batch_size, by_length):  # forward passes over batches of texts
            width = int(lengths[rows].max())
            ids, mask = batch.ids[rows.to(batch.ids.device), :width], batch.mask[rows.to(batch.ids.device), :width]
            spelled = [batch.tokens[int(r)] for r in rows]
            seen.clear()
            if model.kind == "seq2seq":
                out = model.generate(TokenBatch(ids, mask, spelled, [batch.texts[int(r)] for r in rows]), max_new)
                dec, dec_mask = out.ids, out.mask
                if dec.shape[1] == width:
                    dec = torch.cat([dec, dec.new_full((len(dec), 1), model.tokenizer.id_of("pad") or 0)], 1)
                    dec_mask = torch.cat([dec_mask, torch.zeros_like(dec_mask[:, :1])], 1)
                seen.clear()
                model(ids, mask, dec)
            else:
                model(ids, mask)
            if len(seen) != 1 or seen[0] is None:
                raise NnfeatError(f"layer '{layer}' of {model.name} ran {len(seen)} times in one forward pass (or "
                                  "gave no tensor): pick a layer that runs once and returns token vectors")
            act = seen[0]
            decoder_shapes = ((len(rows), dec.shape[1]), (dec.shape[1], len(rows))) if model.kind == "seq2seq" else ()
            if tuple(act.shape[:2]) in decoder_shapes:
                ids, mask, spelled, side = dec, dec_mask, out.tokens, "decoder"
            act = _batch_first(act, len(rows), ids.shape[1], layer)
            m = mask.to(act.device)
            parts["vectors"].append(act[m].float().cpu())
            where = m.nonzero().cpu()
            parts["ids"].append(ids[m].cpu())
            parts["text"].append(rows[where[:, 0]])
            parts["position"].append(where[:, 1])
            parts["tokens"].extend(t for row in spelled for t in row)
    finally:
        handle.remove()
    text, position = torch.cat(parts["text"]), torch.cat(parts["position"])
    order = torch.sort(text * (int(position.max()) + 1) + position).indices  # back to text order
    return TokenVectors(torch.cat(parts["vectors"])[order], torch.cat(parts["ids"])[order],
                        [parts["tokens"][i] for i in order.tolist()], text[order], position[order], side)


def _batch_first(act: torch.Tensor, b: int, t: int, layer: str) -> torch.Tensor:
    """(B, T, D) from a (B, T, D) or sequence-first (T, B, D) output; else a one-line error."""
    shape = tuple(act.shape)
    if act.dim() == 3 and shape[:2] == (b, t):
        return act
    if act.dim() == 3 and shape[:2] == (t, b):
        return act.transpose(0, 1)
    raise NnfeatError(f"layer '{layer}' gives shape {shape} for {b} texts of {t} tokens; expected (B, T, D) token "
                      "vectors (pick a layer that outputs one vector per token)")


def type_means(vectors: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, D) occurrence vectors with their (P,) token ids -> ((U,) distinct ids in increasing order, (U, D) the
    mean vector of each over its occurrences)."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    sums = torch.zeros(len(unique), vectors.shape[1], dtype=torch.float64).index_add_(0, inverse, vectors.double())
    counts = torch.bincount(inverse, minlength=len(unique)).double()
    return unique, (sums / counts[:, None]).float()


def cosine_neighbours(vectors: torch.Tensor, queries: torch.Tensor, k: int, *,
                      exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` rows of (V, D) ``vectors`` most cosine-similar to each row of ``vectors[queries]``.

    Args:
        queries: (Q,) long row indices; a query is never its own neighbour.
        exclude: (V,) bool rows never returned (special tokens), or None.

    Returns:
        ((Q, k) long row indices, (Q, k) float cosine similarities), most similar first; ties in row order.
    """
    vectors = vectors.float()
    norms = vectors.norm(dim=1).clamp_min(1e-12)  # (V,): no normalized copy of a large matrix
    sims = (vectors[queries] @ vectors.T) / (norms[queries, None] * norms)  # (Q, V)
    sims[torch.arange(len(queries)), queries] = float("-inf")
    if exclude is not None:
        sims[:, exclude] = float("-inf")
    k = min(k, int(torch.isfinite(sims).sum(1).min()))
    # stable order: sort by similarity (descending), equal values keep row order
    order = torch.sort(-sims, dim=1, stable=True).indices[:, :k]
    return order, sims.gather(1, order).float()


def vocab_index(vocab: Sequence[str]) -> dict[str, int]:
    """token -> its first id in ``vocab``."""
    return {t: i for i, t in reversed(list(enumerate(vocab)))}


def neighbour_table(words: Sequence[str], queries: Sequence[int], vectors: torch.Tensor, vocab: Sequence[str],
                    k: int, exclude: torch.Tensor | None = None, rows: Sequence[int] | None = None) -> list[dict]:
    """Per query word: ``{"query", "token", "neighbours": [[token, cosine], ...]}``, its ``k`` nearest rows of
    (R, D) ``vectors`` by cosine (:func:`cosine_neighbours`). ``queries``: row indices; ``rows``: the vocabulary
    id of each row (None: row i is id i)."""
    if not words:
        return []
    near, cos = cosine_neighbours(vectors, torch.tensor(list(queries), dtype=torch.long), k, exclude=exclude)
    spell = (lambda r: vocab[int(r)]) if rows is None else (lambda r: vocab[int(rows[r])])
    return [{"query": w, "token": spell(q), "neighbours": [[spell(r), round(float(c), 6)] for r, c in zip(nr, cr)]}
            for w, q, nr, cr in zip(words, queries, near.tolist(), cos.tolist())]


def group_labels(groups: Sequence[str] | None) -> tuple[np.ndarray | None, list[str]]:
    """N group names (``""``: none, shown as ``-``) -> ((N,) int labels, the sorted names); None -> (None, [])."""
    if groups is None:
        return None, []
    shown = [g or "-" for g in groups]
    names = sorted(set(shown))
    lookup = {g: i for i, g in enumerate(names)}
    return np.asarray([lookup[g] for g in shown], dtype=np.int64), names


def frequent_labels(codes: torch.Tensor, tokens: Sequence[str], top: int) -> tuple[np.ndarray, list[str]]:
    """(N,) token codes (0..U-1) of N occurrences and their token strings -> ((N,) labels, names): the ``top``
    most frequent tokens are labels 0..top-1 (most frequent first, ties by code), the rest ``other``."""
    counts = torch.bincount(codes)
    ranked = torch.sort(-counts, stable=True).indices[:top]
    first = torch.full((len(counts),), len(codes), dtype=torch.long).scatter_reduce(
        0, codes, torch.arange(len(codes)), reduce="amin")  # each code's first occurrence
    names = [tokens[int(first[c])] for c in ranked] + (["other"] if len(counts) > len(ranked) else [])
    label_of = torch.full((len(counts),), len(ranked), dtype=torch.long)
    label_of[ranked] = torch.arange(len(ranked))
    return label_of[codes].numpy(), names


__all__ = ["TokenVectors", "contextual_vectors", "cosine_neighbours", "frequent_labels", "group_labels",
           "input_embedding", "lookup", "most_frequent", "neighbour_table", "token_counts", "type_means", "vocab_index",
           "word_counts"]
