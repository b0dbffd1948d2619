"""The numbers beside a token attribution, on the rows of a resolved target (tensors in, tensors out).

:func:`causal_check` -- deletion and insertion AUC over each row's tokens, most salient first, replaced by the
baseline token, beside a seeded random ranking (:func:`nnfeat.analysis.token_sanity.compare_with_random`); what
is tracked is :meth:`nnfeat.analysis.token_targets.TokenTarget.probability` (the class's softmax probability,
the cosine similarity of a pair, the probability of an explained output token). Special tokens and padding are
never replaced. A ``zero`` baseline has no token: pad stands in (said in the record).

:func:`randomization_check` -- the cascading randomization test (Adebayo et al. 2018) of one method on the same
rows, the target fixed from the trained model (its classes, its explained tokens).

:func:`attention_check` -- how far attention agrees with the attribution (Jain & Wallace 2019, "Attention is
not explanation"): per row Kendall's tau-b of |attribution| with the last attention layer's weights (heads
averaged) and with attention rollout (Abnar & Zuidema 2020), over the row's real, non-special tokens. The
query is the row's: the ``[CLS]`` token of a classifier or encoder that starts with one (else the mean over
its real tokens), the predicting position of an lm row, and for seq2seq the decoder step's row of the last
cross attention (rollout does not apply across encoder and decoder).
"""

from __future__ import annotations

import torch

from nnfeat.analysis.token_attention import layer_kinds, token_rollout
from nnfeat.analysis.token_capture import attention_source, capture_token_attention
from nnfeat.analysis.token_embedding import baseline_id, special_mask
from nnfeat.analysis.token_saliency import row_attributions
from nnfeat.analysis.token_sanity import (TokenRandomization, cascading_randomization, compare_with_random,
                                          kendall_tau)
from nnfeat.analysis.token_targets import TokenTarget
from nnfeat.errors import NnfeatError
from nnfeat.models.text import TokenBatch, TokenModel


def deletion_token(model: TokenModel, baseline: str) -> tuple[int, str]:
    """(token id, its name) that deleted tokens become: the baseline's, or pad for the ``zero`` baseline."""
    i = baseline_id(model, baseline)
    if i is not None:
        return i, baseline
    pad = model.tokenizer.id_of("pad")
    if pad is None:
        raise NnfeatError(f"{model.name}'s tokenizer has no pad token to delete tokens with: use --baseline mask")
    return pad, "pad (the zero baseline has no token)"


def causal_check(model: TokenModel, target: TokenTarget, attributions: torch.Tensor, *, baseline: str = "pad",
                 seed: int = 0, steps: int | None = 16, batch_size: int = 256) -> dict:
    """Deletion / insertion of (N, T) row ``attributions`` (most positive first) and of a seeded random ranking.

    Returns:
        ``method`` and ``random``: ``deletion``, ``insertion`` (N,) AUCs per row; ``replaced_by`` the token name;
        ``steps`` (each row's tokens in ``steps`` equal fractions, or one token a step for None); ``calls``.
    """
    target = target.source_part()  # tokens are deleted from the source (joint rows: its columns)
    attributions = attributions[:, :target.ids.shape[1]]
    token, name = deletion_token(model, baseline)
    keep = special_mask(model, target.ids, target.mask)
    both = compare_with_random(
        lambda ids, mask, rows: target.probability(model, ids, mask, rows), target.ids, target.mask,
        attributions.to(target.ids.device), token, keep=keep, steps=steps, seed=seed, batch_size=batch_size,
        with_rows=True)
    return {**both, "replaced_by": name}


def randomization_check(model: TokenModel, target: TokenTarget, method: str, attributions: torch.Tensor, *,
                        seed: int = 0, ks=None, **options) -> TokenRandomization:
    """The cascading randomization test of ``method`` on ``target``'s rows; ``attributions`` (N, T) are the
    trained model's; ``options`` go to :func:`row_attributions` (baseline, steps, ...)."""
    source = target.source_part()  # compared over the source columns
    width = source.ids.shape[1]
    keep = special_mask(model, source.ids, source.mask)

    def attribute(randomized: TokenModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return row_attributions(randomized, target, method, **options)[:, :width]

    return cascading_randomization(model, source.ids, source.mask, attribute, attributions=attributions[:, :width],
                                   keep=keep, ks=ks, seed=seed, decoder_ids=target.decoder_ids)


@torch.no_grad()
def attention_check(model: TokenModel, target: TokenTarget, attributions: torch.Tensor) -> dict | None:
    """Kendall's tau-b per row of |``attributions``| (N, T) with attention (module docstring).

    Returns:
        ``last`` (N,) tau with the last attention layer, ``rollout`` (N,) or None (seq2seq), ``layer`` the last
        layer's name, ``query`` how each row's query was chosen; None for a model without readable attention.
    """
    try:
        attention_source(model)
    except NnfeatError:
        return None
    target = target.source_part()  # attention runs over the source (joint rows: its columns)
    attributions = attributions[:, :target.ids.shape[1]]
    n_texts = int(target.text.max()) + 1
    first = torch.full((n_texts,), target.rows, dtype=torch.long).scatter_reduce(
        0, target.text.cpu(), torch.arange(target.rows), "amin")  # each text's first row
    first = first.to(target.ids.device)
    batch = TokenBatch(target.ids[first], target.mask[first], [[] for _ in first], ["" for _ in first])
    decoder = target.kind == "decoder"
    captured = capture_token_attention(model, batch, target.decoder_ids[first] if decoder else None)
    kinds = layer_kinds(captured)
    wanted = ("cross",) if decoder else ("self",)
    layers = [name for name, (kind, side) in kinds.items() if kind in wanted and (decoder or side != "decoder")]
    if not layers:
        return None
    rows = target.text
    keep = special_mask(model, target.ids, target.mask)
    last = captured[layers[-1]].float().mean(1)  # (B, T_query, T_key)
    rollout = None if decoder else token_rollout([captured[name] for name in layers], batch.mask)
    if target.kind in ("decoder", "next"):
        query, how = target.position, "the decoder step" if decoder else "the predicting position"
        pick = lambda m: m[rows, query]  # noqa: E731
    elif bool((keep[:, 0] & target.mask[:, 0]).all()):
        how = "the first (special) token"
        pick = lambda m: m[rows, 0]  # noqa: E731
    else:
        how = "the mean over real tokens"
        weights = batch.mask.float()[..., None] / batch.mask.sum(1).clamp_min(1)[:, None, None]
        pick = lambda m: (m * weights).sum(1)[rows]  # noqa: E731
    eligible = target.mask & ~keep
    score = attributions.abs().to(last.device)
    return {"last": kendall_tau(score, pick(last)[:, :score.shape[1]], eligible).float(), "layer": layers[-1],
            "rollout": None if rollout is None else kendall_tau(score, pick(rollout), eligible).float(),
            "query": how}


__all__ = ["attention_check", "causal_check", "deletion_token", "randomization_check"]
