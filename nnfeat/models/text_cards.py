"""How nnfeat's embedded text models become :class:`~nnfeat.models.text.TokenModel`\\ s: the ``token_model``
functions of their registry cards (``dates-seq2seq``, ``tiny-lm``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from nnfeat.models import dates_seq2seq as ds
from nnfeat.models import tiny_lm
from nnfeat.models.text import TokenModel

_SOURCES = {"tokenizer": "card", "max_length": "card", "kind": "card"}


def dates_model(net: nn.Module, weights: str | None, card: Any) -> TokenModel:
    """``dates-seq2seq``: lower-cased characters in, ISO date characters out; decoded greedily."""
    return TokenModel(net, name=card.name, tokenizer=ds.source_tokenizer(), target_tokenizer=ds.target_tokenizer(),
                      kind="seq2seq", call="seq2seq", max_length=ds.MAX_SOURCE, target_max_length=ds.MAX_TARGET,
                      embedding="src_embed", target_embedding="tgt_embed",
                      weights=weights, card=card, sources=dict(_SOURCES))


def tiny_lm_model(net: nn.Module, weights: str | None, card: Any) -> TokenModel:
    """``tiny-lm``: words of its 62-word vocabulary in, next-word logits out (causal)."""
    return TokenModel(net, name=card.name, tokenizer=tiny_lm.tokenizer(), kind="lm", call="ids_mask",
                      max_length=tiny_lm.MAX_LENGTH, embedding="embed", unembed="unembed", weights=weights,
                      card=card, sources=dict(_SOURCES))


__all__ = ["dates_model", "tiny_lm_model"]
