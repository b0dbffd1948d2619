"""The embedding side of token saliency: what the methods read and replace (tensors in, tensors out).

Every token saliency method works on the output of the model's input embedding (``model.embedding``). For a
seq2seq target explained over the source *and* the decoder's earlier tokens (inseq's view), the rows are
*joint*: (M, T + T') ids whose first ``width`` = T columns are the source and the rest the decoder input, and
the joint embedding (M, T + T', D) is the source embedding's output followed by the decoder embedding's
(``model.target_embedding``; when the decoder shares the source's module, its second call). ``width=None``
means the source alone.

* :func:`embedding_hook` -- while open, the embedding output(s) of one forward pass are a given tensor (split
  at ``width``);
* :func:`embed` -- (M, T [+ T']) ids -> their embedding output, no grad;
* :func:`special_mask` -- special tokens (of each side's tokenizer) and padding, which keep their embedding;
* :func:`make_baseline` -- the baseline embedding: pad, [MASK] (each side's own token; a side without it takes
  a zero embedding) or zero.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from nnfeat.errors import NnfeatError
from nnfeat.models.text import TokenModel

#: what deleted / occluded / path-start tokens become
TOKEN_BASELINES = ("pad", "mask", "zero")


@dataclass
class Baseline:
    """The baseline of some rows: ``emb`` (M, T, D) (special tokens' own embedding kept), ``keep`` (M, T) bool:
    positions that keep their embedding (special tokens and padding), ``name``."""

    emb: torch.Tensor
    keep: torch.Tensor
    name: str


def _check(model: TokenModel, width: int | None) -> None:
    if not model.embedding:
        raise NnfeatError(f"{model.name} names no input embedding: token saliency needs one (a TokenModel's "
                          "embedding=MODULE)")
    if width is not None and not model.target_embedding:
        raise NnfeatError(f"{model.name} names no decoder embedding (target_embedding=MODULE): its decoder tokens "
                          "cannot be attributed")


@contextmanager
def embedding_hook(model: TokenModel, emb: torch.Tensor, width: int | None = None):
    """While open, the first output of ``model``'s input embedding is ``emb`` (M, T, D); with ``width``, ``emb``
    is (M, T + T', D): its first ``width`` positions replace the source embedding's output, the rest the decoder
    embedding's (its first call, or the shared module's second). Open it once per forward pass: later calls
    pass through unchanged."""
    _check(model, width)
    source = model.module(model.embedding)
    shared = width is not None and model.target_embedding == model.embedding
    parts = [emb] if width is None else [emb[:, :width], emb[:, width:]] if shared else [emb[:, :width]]
    pending = {source: parts}  # per module, the outputs its next calls become
    if width is not None and not shared:
        pending[model.module(model.target_embedding)] = [emb[:, width:]]

    def hook(module, _inputs, out):
        waiting = pending[module]
        return waiting.pop(0) if waiting else out

    handles = [module.register_forward_hook(hook) for module in pending]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _sides(model: TokenModel, ids: torch.Tensor, width: int | None):
    """[(ids part, embedding module name, tokenizer)] of the source and, with ``width``, the decoder."""
    if width is None:
        return [(ids, model.embedding, model.tokenizer)]
    return [(ids[:, :width], model.embedding, model.tokenizer),
            (ids[:, width:], model.target_embedding, model.target_tokenizer or model.tokenizer)]


def embed(model: TokenModel, ids: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """(M, T) ids (joint (M, T + T') with ``width``) -> (M, T, D) the embedding output (no grad)."""
    _check(model, width)
    with torch.no_grad():
        return torch.cat([model.module(name)(part) for part, name, _ in _sides(model, ids, width)], 1)


def special_mask(model: TokenModel, ids: torch.Tensor, mask: torch.Tensor, width: int | None = None
                 ) -> torch.Tensor:
    """(M, T) bool: each side's special tokens (by its own tokenizer), and padding."""
    parts = []
    for part, _name, tokenizer in _sides(model, ids, width):
        specials = torch.tensor(sorted(set(tokenizer.specials.values())), dtype=part.dtype, device=part.device)
        parts.append(torch.isin(part, specials))
    return torch.cat(parts, 1) | ~mask


def baseline_id(model: TokenModel, baseline: str) -> int | None:
    """The source tokenizer's id of ``baseline`` (None for ``zero``), or a one-line error."""
    if baseline not in TOKEN_BASELINES:
        raise NnfeatError(f"unknown token baseline '{baseline}': choose one of {', '.join(TOKEN_BASELINES)}")
    if baseline == "zero":
        return None
    i = model.tokenizer.id_of(baseline)
    if i is None:
        other = "pad or zero" if baseline == "mask" else "zero"
        raise NnfeatError(f"--baseline {baseline}: {model.name}'s tokenizer has no {baseline} token; use {other}")
    return i


def make_baseline(model: TokenModel, ids: torch.Tensor, mask: torch.Tensor, emb: torch.Tensor, baseline: str,
                  width: int | None = None) -> Baseline:
    """The baseline of (M, T) rows whose embedding is ``emb`` (M, T, D): each position's baseline embedding,
    special tokens and padding keeping their own (the decoder side takes its own tokenizer's token of the same
    role, or a zero embedding when it has none)."""
    keep = special_mask(model, ids, mask, width)
    baseline_id(model, baseline)
    bases = []
    for part, name, tokenizer in _sides(model, ids, width):
        i = None if baseline == "zero" else tokenizer.id_of(baseline)
        with torch.no_grad():
            bases.append(model.module(name)(torch.full_like(part, i)) if i is not None else
                         torch.zeros((*part.shape, emb.shape[-1]), dtype=emb.dtype, device=emb.device))
    return Baseline(torch.where(keep[..., None], emb, torch.cat(bases, 1)), keep, baseline)


__all__ = ["Baseline", "TOKEN_BASELINES", "baseline_id", "embed", "embedding_hook", "make_baseline",
           "special_mask"]
