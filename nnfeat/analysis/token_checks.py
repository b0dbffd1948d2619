"""The numbers beside a token attribution, on the rows of a resolved target (tensors in, tensors out).

:func:`causal_check` -- deletion and insertion AUC over each row's tokens, most salient first, replaced by the
baseline token, beside a seeded random ranking (:func:`nnfeat.analysis.token_sanity.compare_with_random`); what
is tracked is :meth:`nnfeat.analysis.token_targets.TokenTarget.probability` (the class's softmax probability,
the cosine similarity of a pair, the probability of an explained output token). Special tokens and padding are
never replaced. A ``zero`` baseline has no token: pad stands in (said in the record).

:func:`randomization_check` -- the cascading randomization test (Adebayo et al. 2018) of one method on the same
rows, the target fixed from the trained model (its classes, its explained tokens).
"""

from __future__ import annotations

import torch

from nnfeat.analysis.token_saliency import baseline_id, row_attributions, special_mask
from nnfeat.analysis.token_sanity import TokenRandomization, cascading_randomization, compare_with_random
from nnfeat.analysis.token_targets import TokenTarget
from nnfeat.errors import NnfeatError
from nnfeat.models.text import TokenModel


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
    keep = special_mask(model, target.ids, target.mask)

    def attribute(randomized: TokenModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return row_attributions(randomized, target, method, **options)

    return cascading_randomization(model, target.ids, target.mask, attribute, attributions=attributions,
                                   keep=keep, ks=ks, seed=seed, decoder_ids=target.decoder_ids)


__all__ = ["causal_check", "deletion_token", "randomization_check"]
