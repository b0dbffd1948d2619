"""Scores of attention heads over tokens (tensors in, tensors out): how much of each head's attention follows a
known pattern, one number per head in [0, 1].

The idea is that of a head detector in the style of TransformerLens: a head is described by the mean attention
it puts where a pattern says it should, averaged over the batch and over the query positions where the pattern
is defined. The patterns:

* :func:`offset_score` -- attention on the key at a fixed offset from the query (``key = query + offset``):
  :func:`previous_token_score` (offset -1), :func:`diagonal_score` (offset 0, the token itself);
* :func:`first_token_score` -- attention on the first real token from every later query (an "attention
  sink");
* :func:`induction_score` -- on a random token sequence repeated twice (:func:`repeated_random_tokens`), the
  attention of each second-half position on the token *after* the previous occurrence of its own token: the
  induction heads of Olsson et al. 2022, "In-context Learning and Induction Heads"; :func:`duplicate_score`, on
  the previous occurrence itself;
* :func:`alignment_share` -- for cross attention, the share of query rows (output positions) whose attention
  peak falls in a known source span (the date-translation task's fields), per head.

:func:`head_score_table` gathers them per layer into plain JSON-ready numbers.

Shapes: attention weights are (B, H, Tq, Tk) with rows (queries) summing to 1 over keys; a mask is (B, T) bool,
True for a real token and False for padding. No Python loop runs over batch items; loops run over layers only.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from nnfeat.errors import NnfeatError

#: the self-attention scores :func:`head_score_table` computes for every layer, in this order
SELF_SCORES = ("previous_token", "diagonal", "first_token")


def _check_weights(weights: torch.Tensor, what: str = "attention weights", square: bool = True) -> torch.Tensor:
    if not torch.is_tensor(weights) or weights.dim() != 4:
        shape = tuple(weights.shape) if torch.is_tensor(weights) else type(weights).__name__
        raise NnfeatError(f"{what} must be a (B, heads, T_query, T_key) tensor; got {shape}")
    if square and weights.shape[-2] != weights.shape[-1]:
        raise NnfeatError(f"{what} must be self-attention with T_query == T_key; got "
                          f"{weights.shape[-2]} queries x {weights.shape[-1]} keys")
    return weights.float()


def _check_mask(mask: torch.Tensor | None, batch: int, length: int, device: torch.device | None = None
                ) -> torch.Tensor:
    """(B, T) bool mask on ``device``, all True when ``mask`` is None."""
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if not torch.is_tensor(mask) or tuple(mask.shape) != (batch, length):
        shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
        raise NnfeatError(f"the token mask must be (B, T) = ({batch}, {length}) bool; got {shape}")
    return mask.to(device=device, dtype=torch.bool)


def _stripe_mean(weights: torch.Tensor, offset: int, valid: torch.Tensor, what: str) -> torch.Tensor:
    """Mean over (batch, query) of ``weights[b, h, q, q + offset]`` where ``valid[b, q]`` and the key is in
    range: (B, H, T, T) float, (B, T) bool -> (H,)."""
    t = weights.shape[-1]
    if abs(offset) >= t:
        raise NnfeatError(f"{what}: offset {offset} leaves no key inside {t} tokens; use |offset| < {t}")
    stripe = weights.diagonal(offset, dim1=-2, dim2=-1)           # (B, H, n): q = first + i, key = q + offset
    first = max(0, -offset)
    keep = valid[:, first:first + stripe.shape[-1]]                 # (B, n)
    count = int(keep.sum())
    if count == 0:
        raise NnfeatError(f"{what}: no query position qualifies (all padded or out of range); "
                          f"give longer or unpadded sequences")
    return (stripe * keep[:, None, :]).sum((0, 2)) / count


def offset_score(weights: torch.Tensor, offset: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean attention on ``key = query + offset``: (B, H, T, T) weights, (B, T) bool mask or None -> (H,).

    Averaged over the batch and over the queries that are real tokens and whose key ``query + offset`` is a
    real token inside the sequence (for offset -1, query 0 has no previous token and is left out). Offset -1
    scores previous-token heads, 0 the diagonal (a token attending to itself), +1 the next token (0 under a
    causal mask)."""
    weights = _check_weights(weights)
    valid = _check_mask(mask, weights.shape[0], weights.shape[-1], weights.device)
    t = weights.shape[-1]
    shifted = torch.zeros_like(valid)                               # shifted[b, q] = valid[b, q + offset]
    if offset >= 0:
        shifted[:, :t - offset] = valid[:, offset:]
    else:
        shifted[:, -offset:] = valid[:, :t + offset]
    return _stripe_mean(weights, int(offset), valid & shifted, f"offset score at {offset}")


def previous_token_score(weights: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean attention on the previous token (offset -1): (B, H, T, T), (B, T) | None -> (H,)."""
    return offset_score(weights, -1, mask)


def diagonal_score(weights: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean attention of each token on itself (offset 0): (B, H, T, T), (B, T) | None -> (H,)."""
    return offset_score(weights, 0, mask)


def first_token_score(weights: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean attention on the first real token (the "attention sink", usually bos or cls) from every later real
    query: (B, H, T, T), (B, T) | None -> (H,).

    The first real token is position 0 without a mask, else each row's first True position (so left padding
    is handled); the first token's own query is left out (it can only attend to itself under a causal mask)."""
    weights = _check_weights(weights)
    b, _, t, _ = weights.shape
    valid = _check_mask(mask, b, t, weights.device)
    if not bool(valid.any(1).all()):
        raise NnfeatError("first-token score: a sequence of the batch has no real token; drop empty sequences")
    first = valid.long().argmax(1)                                  # (B,) first real position
    sink = weights.gather(-1, first[:, None, None, None].expand(b, weights.shape[1], t, 1))  # (B, H, T, 1)
    positions = torch.arange(t, device=weights.device)
    keep = valid & (positions[None, :] > first[:, None])            # (B, T)
    count = int(keep.sum())
    if count == 0:
        raise NnfeatError("first-token score: no query comes after the first token; give sequences of 2+ tokens")
    return (sink[..., 0] * keep[:, None, :]).sum((0, 2)) / count


def _check_period(period: int, start: int, t: int, what: str) -> None:
    if int(period) < 2 or int(start) < 0 or start + 2 * period > t:
        raise NnfeatError(f"{what}: a repeated segment of period {period} starting at {start} needs period >= 2, "
                          f"start >= 0 and start + 2*period <= {t} tokens")


def _second_half(weights: torch.Tensor, period: int, start: int, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) bool: the real query positions of the second copy, ``start + period <= q < start + 2*period``."""
    valid = _check_mask(mask, weights.shape[0], weights.shape[-1], weights.device)
    positions = torch.arange(weights.shape[-1], device=weights.device)
    return valid & (positions >= start + period) & (positions < start + 2 * period)


def induction_score(weights: torch.Tensor, period: int, start: int = 0, mask: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Induction score (Olsson et al. 2022) on a sequence ``prefix + x + x`` with ``x`` ``period`` random tokens:
    (B, H, T, T) weights -> (H,).

    Index convention: the first copy of ``x`` occupies positions ``start .. start+period-1`` and the second
    ``start+period .. start+2*period-1`` (``start = 0`` for :func:`repeated_random_tokens` as it is,
    ``start = 1`` when a bos token is put in front; positions after the second copy, an eos say, are ignored).
    A query ``q`` in the second copy holds the token that last occurred at ``q - period``; an induction head
    attends to the token after that occurrence, the key ``q - period + 1``, i.e. offset ``-(period - 1)``. The
    score is the mean attention on that key over the batch and the real second-copy queries."""
    weights = _check_weights(weights)
    _check_period(period, start, weights.shape[-1], "induction score")
    keep = _second_half(weights, period, start, mask)
    return _stripe_mean(weights, -(int(period) - 1), keep, "induction score")


def duplicate_score(weights: torch.Tensor, period: int, start: int = 0, mask: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Duplicate-token score on ``prefix + x + x`` (conventions of :func:`induction_score`): the mean attention of
    second-copy queries ``q`` on the previous occurrence of their token, the key ``q - period``: (B, H, T, T) ->
    (H,)."""
    weights = _check_weights(weights)
    _check_period(period, start, weights.shape[-1], "duplicate score")
    keep = _second_half(weights, period, start, mask)
    return _stripe_mean(weights, -int(period), keep, "duplicate score")


def repeated_random_tokens(vocab_size: int, length: int, n: int, seed: int = 0, exclude: Sequence[int] = (),
                           distinct: bool = True) -> torch.Tensor:
    """``n`` sequences ``x + x`` of ``length`` random token ids each: (n, 2*length) long.

    Tokens are drawn from ``0 .. vocab_size-1`` less ``exclude`` (special tokens, say) with a seeded
    ``torch.Generator`` (the same ``seed`` gives the same ids on every machine). With ``distinct`` (the default)
    no token repeats inside one ``x``, so every second-copy token has exactly one previous occurrence and the
    induction target is unambiguous; this needs ``length`` <= the allowed token count."""
    if int(length) < 1 or int(n) < 1:
        raise NnfeatError(f"repeated random tokens need length >= 1 and n >= 1; got length {length}, n {n}")
    banned = torch.tensor(sorted({int(i) for i in exclude}), dtype=torch.long)
    allowed = torch.arange(int(vocab_size))
    if len(banned):
        allowed = allowed[~torch.isin(allowed, banned)]
    if len(allowed) == 0 or (distinct and len(allowed) < length):
        raise NnfeatError(f"repeated random tokens: {len(allowed)} allowed token(s) of {vocab_size} cannot fill "
                          f"{length} {'distinct ' if distinct else ''}positions; use a shorter length or "
                          f"exclude fewer ids")
    gen = torch.Generator().manual_seed(int(seed))
    if distinct:
        picks = torch.rand(int(n), len(allowed), generator=gen).argsort(1)[:, :int(length)]
    else:
        picks = torch.randint(len(allowed), (int(n), int(length)), generator=gen)
    x = allowed[picks]
    return torch.cat([x, x], 1)


Span = tuple[int, int, int, int]  # (batch index, query index, key start, key end): keys start <= k < end


def alignment_hits(cross: torch.Tensor, spans: Sequence[Span]) -> torch.Tensor:
    """Whether each span's query row peaks inside its key span, per head: (B, H, Tq, Tk) cross attention and N
    spans ``(batch index, query index, key start, key end)`` -> (N, H) bool (argmax key in ``[start, end)``).

    Rows are output positions (decoding steps), keys source tokens; ties go to the first key (``argmax``)."""
    cross = _check_weights(cross, "cross attention", square=False)
    if len(spans) == 0:
        raise NnfeatError("alignment needs at least one (batch, query, key start, key end) span")
    table = torch.as_tensor([tuple(int(v) for v in s) for s in spans], dtype=torch.long)
    if table.dim() != 2 or table.shape[1] != 4:
        raise NnfeatError("alignment spans must be (batch index, query index, key start, key end) tuples")
    b, q, lo, hi = table.unbind(1)
    batch, _, tq, tk = cross.shape
    bad = (b < 0) | (b >= batch) | (q < 0) | (q >= tq) | (lo < 0) | (hi > tk) | (lo >= hi)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise NnfeatError(f"alignment span {tuple(table[i].tolist())} is outside the ({batch}, heads, {tq}, {tk}) "
                          f"attention or empty; need 0 <= batch < {batch}, 0 <= query < {tq}, "
                          f"0 <= start < end <= {tk}")
    peak = cross[b.to(cross.device), :, q.to(cross.device)].argmax(-1).cpu()  # (N, H)
    return (peak >= lo[:, None]) & (peak < hi[:, None])


def alignment_share(cross: torch.Tensor, spans: Sequence[Span]) -> torch.Tensor:
    """Share of the spans whose query row peaks inside the span, per head: (B, H, Tq, Tk), N spans -> (H,)
    (see :func:`alignment_hits`)."""
    return alignment_hits(cross, spans).float().mean(0)


def alignment_by_field(cross: torch.Tensor, spans: Sequence[Span], fields: Sequence[str]
                       ) -> dict[str, torch.Tensor]:
    """:func:`alignment_share` per field label (``fields[i]`` names ``spans[i]``, e.g. "year", "month", "day"):
    ``{field: (H,)}`` in the order the fields first appear."""
    if len(fields) != len(spans):
        raise NnfeatError(f"alignment by field needs one field label per span; got {len(fields)} for "
                          f"{len(spans)} spans")
    hits = alignment_hits(cross, spans).float()
    labels = list(fields)
    return {f: hits[torch.tensor([i for i, g in enumerate(labels) if g == f])].mean(0)
            for f in dict.fromkeys(labels)}


def _floats(scores: torch.Tensor, digits: int) -> list[float]:
    return [round(float(v), digits) for v in scores.tolist()]


def head_score_table(weights_by_layer: Mapping[str, torch.Tensor], mask: torch.Tensor | None = None, *,
                     induction_by_layer: Mapping[str, torch.Tensor] | None = None, period: int | None = None,
                     start: int = 0, cross_by_layer: Mapping[str, torch.Tensor] | None = None,
                     spans: Sequence[Span] = (), digits: int = 4) -> dict[str, dict[str, list[float]]]:
    """Per layer and score, one float per head (rounded to ``digits``): ``{layer: {score: [H floats]}}``, layers
    in the order given.

    * ``weights_by_layer``: self-attention ``{layer: (B, H, T, T)}`` on the texts (``mask`` (B, T) or None):
      ``previous_token``, ``diagonal``, ``first_token`` (:data:`SELF_SCORES`). Cross attention does not belong
      here (a non-square layer is a one-line error);
    * ``induction_by_layer``: self-attention of the same layers on :func:`repeated_random_tokens` (with
      ``period`` and ``start`` as in :func:`induction_score`): ``induction`` and ``duplicate``;
    * ``cross_by_layer`` with ``spans``: cross attention ``{layer: (B, H, Tq, Tk)}``: ``alignment``
      (:func:`alignment_share`).
    """
    table: dict[str, dict[str, list[float]]] = {}
    for layer, w in weights_by_layer.items():
        w = _check_weights(w, f"attention of layer '{layer}'")
        row = table.setdefault(layer, {})
        row["previous_token"] = _floats(previous_token_score(w, mask), digits)
        row["diagonal"] = _floats(diagonal_score(w, mask), digits)
        row["first_token"] = _floats(first_token_score(w, mask), digits)
    if induction_by_layer:
        if period is None:
            raise NnfeatError("induction scores need the period of the repeated segment; pass period=L")
        for layer, w in induction_by_layer.items():
            row = table.setdefault(layer, {})
            row["induction"] = _floats(induction_score(w, period, start), digits)
            row["duplicate"] = _floats(duplicate_score(w, period, start), digits)
    if cross_by_layer:
        for layer, w in cross_by_layer.items():
            table.setdefault(layer, {})["alignment"] = _floats(alignment_share(w, spans), digits)
    return table


__all__ = ["SELF_SCORES", "Span", "offset_score", "previous_token_score", "diagonal_score", "first_token_score",
           "induction_score", "duplicate_score", "repeated_random_tokens", "alignment_hits", "alignment_share",
           "alignment_by_field", "head_score_table"]
