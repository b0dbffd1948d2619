"""Known-answer probe passes that score attention heads (tensors in, tensors out).

* :func:`induction_probe` -- the model's self-attention on sequences ``[bos] x x`` of random tokens (Olsson et
  al. 2022): an induction head attends from the second copy to the token after the previous occurrence, a
  previous-token head one back (scored by :mod:`nnfeat.analysis.head_scores`);
* :func:`dates_alignment_probe` -- ``dates-seq2seq``'s cross attention on held-out written dates whose generator
  knows which source characters wrote each output field (:mod:`nnfeat.models.dates_data`).
"""

from __future__ import annotations

import torch

from nnfeat.analysis.head_scores import Span, repeated_random_tokens
from nnfeat.analysis.token_attention import attention_kind
from nnfeat.analysis.token_capture import capture_token_attention
from nnfeat.models import dates_data
from nnfeat.models.text import TokenBatch, TokenModel

#: sequences and segment length of the induction probe
INDUCTION_TEXTS, INDUCTION_PERIOD = 8, 20


def input_side(kind: str, side: str) -> bool:
    """Whether a layer of (kind, side) is self-attention over the model's input tokens (not a decoder's own)."""
    return kind == "self" and side in ("encoder", "decoder-only")


@torch.no_grad()
def induction_probe(model: TokenModel, seed: int = 0, n: int = INDUCTION_TEXTS, period: int = INDUCTION_PERIOD
                    ) -> tuple[dict[str, torch.Tensor], int, int]:
    """The input side's self-attention on ``n`` sequences of ``period`` random tokens repeated twice, wrapped in
    the tokenizer's specials (special tokens never drawn).

    Returns:
        ``({layer: (n, H, T, T)}, period, start)`` with ``start`` the position of the first copy (1 after a bos /
        cls), as :func:`~nnfeat.analysis.head_scores.induction_score` takes them.
    """
    tok = model.tokenizer
    special = set(tok.specials.values())
    vocab = tok.vocab_size or 0
    room = (model.max_length - 2) // 2
    period = max(2, min(period, room, max(vocab - len(special), 2)))
    x = repeated_random_tokens(vocab, period, n, seed=seed, exclude=sorted(special))
    before, after = (tok.specials.get(r) if r else None for r in tok.wrap)
    parts = ([torch.full((n, 1), before)] if before is not None else []) + [x] + \
        ([torch.full((n, 1), after)] if after is not None else [])
    ids = torch.cat(parts, 1).to(model.device)
    batch = TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool), [tok.spell(r) for r in ids.tolist()],
                       ["" for _ in range(n)], [0] * n)
    decoder = None
    if model.kind == "seq2seq":
        target = model.target_tokenizer or tok
        decoder = torch.full((n, 1), target.id_of("bos") or 0, dtype=torch.long, device=ids.device)
    captured = capture_token_attention(model, batch, decoder)
    kept = {name: w for name, w in captured.items() if input_side(*attention_kind(name))}
    return kept, period, 1 if before is not None else 0


@torch.no_grad()
def dates_alignment_probe(model: TokenModel, n: int = 200, seed: int = 0
                          ) -> tuple[dict[str, torch.Tensor], list[Span], list[str]]:
    """``dates-seq2seq``'s cross attention on ``n`` held-out dates, fed their true ISO form (teacher forcing).

    Returns:
        ``({cross layer: (n, H, T', S)}, spans, fields)``: one span ``(example, decoder position, source start,
        source end)`` per output character of a field (8 per date), and that character's field name.
    """
    examples = dates_data.make_examples(n, seed=seed, split="heldout")
    target_tok = model.target_tokenizer or model.tokenizer
    batch = model.encode([e.source for e in examples])
    decoder = model.encode([e.target for e in examples], tokenizer=target_tok).ids[:, :-1]
    captured = capture_token_attention(model, batch, decoder)
    cross = {name: w for name, w in captured.items() if attention_kind(name)[0] == "cross"}
    spans, fields = [], []
    for i, example in enumerate(examples):  # building the answer key: 8 spans per date
        for query, field, (start, end) in dates_data.field_positions(example, model.tokenizer, target_tok):
            spans.append((i, query, start, end))
            fields.append(field)
    return cross, spans, fields


__all__ = ["INDUCTION_PERIOD", "INDUCTION_TEXTS", "dates_alignment_probe", "induction_probe", "input_side"]
