"""Word pieces back to words: which tokens spell one word, and token values summed per word.

:func:`word_groups` reads the tokenizer's own spelling: WordPiece continues a word with ``##``; byte-level BPE
(GPT-2, RoBERTa) and SentencePiece start one with ``Ġ`` or ``▁`` (a token without it continues the word before);
a character tokenizer's characters form words between spaces (each space its own unit); every special token
(``[CLS]``, ``<bos>``, ...) and every whole-word token is its own unit. :func:`aggregate_words` sums token values
per word, so a word's value is the total its pieces carry (additive methods keep their completeness).
"""

from __future__ import annotations

from typing import Sequence

import torch

from nnfeat.models.tokenizers import CharTokenizer, Tokenizer

#: how token values become word values
AGGREGATION = "sum over each word's pieces"

_STARTS = ("\u0120", "\u2581")  # byte-level BPE's and SentencePiece's word-start marks


def word_groups(tokens: Sequence[str], tokenizer: Tokenizer) -> list[list[int]]:
    """The token positions of each word of one text, in order (every position in exactly one group)."""
    special = {tokenizer.spell([i])[0] for i in tokenizer.specials.values()}
    groups: list[list[int]] = []
    chars = isinstance(tokenizer, CharTokenizer)
    marked = any(t.startswith(_STARTS) for t in tokens)
    pieces = any(t.startswith("##") for t in tokens)
    previous_open = False  # the last group can take a continuation
    for i, tok in enumerate(tokens):  # one text's tokens: a scan over strings, once per text
        if tok in special:
            groups.append([i])
            previous_open = False
            continue
        if chars:
            joins = previous_open and not tok.isspace()
            groups[-1].append(i) if joins else groups.append([i])
            previous_open = not tok.isspace()
            continue
        if pieces:
            joins = previous_open and tok.startswith("##")
        elif marked:
            joins = previous_open and not tok.startswith(_STARTS)
        else:
            joins = False
        groups[-1].append(i) if joins else groups.append([i])
        previous_open = True
    return groups


def word_text(tokens: Sequence[str], group: Sequence[int], tokenizer: Tokenizer) -> str:
    """The word a group of tokens spells (``##`` and word-start marks removed)."""
    parts = [tokens[i] for i in group]
    if len(parts) == 1:
        return parts[0]
    if isinstance(tokenizer, CharTokenizer):
        return "".join(parts)
    return "".join(p[2:] if p.startswith("##") else p.lstrip("".join(_STARTS)) if j == 0 else p
                   for j, p in enumerate(parts))


def aggregate_words(values: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """(..., T) token values -> (..., W) word values, summed over each group's tokens."""
    index = torch.zeros(values.shape[-1], dtype=torch.long, device=values.device)
    for w, group in enumerate(groups):  # building the index: once per text
        index[list(group)] = w
    out = values.new_zeros((*values.shape[:-1], len(groups)))
    return out.index_add_(-1, index, values)


__all__ = ["AGGREGATION", "aggregate_words", "word_groups", "word_text"]
