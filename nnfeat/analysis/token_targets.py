"""What a token saliency method explains: one differentiable score per row (tensors in, tensors out).

:func:`make_target` turns a target request into a :class:`TokenTarget` whose :meth:`TokenTarget.score` maps
(M, T) ids (their embedding possibly replaced through a hook, see :mod:`nnfeat.analysis.token_saliency`), their
(M, T) mask and (M,) row numbers into (M,) scores. A *row* is one (text, step) pair: classifiers and encoders
have one step per text; seq2seq and lm models one per explained output token, so the batch is repeated per step
and every step's score is differentiated in the same backward pass.

* ``classifier`` -- the logit of a class: an index, a class name, or ``pred`` (each text's argmax);
* ``encoder`` -- the cosine similarity of the text's mean-pooled token vectors (over its real tokens) with the
  fixed vector of a second text (``pair``), as sentence encoders such as all-MiniLM-L6-v2 compare sentences;
* ``lm`` -- the log-probability of each next token: the model's own greedy continuation (``steps`` tokens after
  the text) or the tokens of ``target`` text; step k is predicted at position length - 1 + k;
* ``seq2seq`` -- the log-probability of each decoder token (greedy, or the given target texts) given the source
  and the earlier decoder tokens (teacher forcing; decoder position k predicts token k + 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
import torch.nn.functional as F

from nnfeat.errors import NnfeatError, shorten
from nnfeat.models.text import TokenBatch, TokenModel

#: the most output tokens explained per text when an lm or seq2seq model decodes greedily
MAX_STEPS = 32


@dataclass
class TokenTarget:
    """A resolved target.

    Attributes:
        kind: ``class`` | ``pair`` | ``next`` (lm) | ``decoder`` (seq2seq).
        ids, mask: (N, T) inputs of the N rows (the batch repeated per step for ``next``/``decoder``).
        text: (N,) long, which text each row explains; ``step`` (N,) long, its step (0 for one-step kinds).
        classes: ``class``: (N,) long class per row.
        pair: ``pair``: (D,) unit vector of the second text.
        decoder_ids: ``decoder``: (N, T') decoder inputs; ``position``: (N,) long, the output position scored;
            ``token``: (N,) long, the token whose log-probability is scored.
        steps: steps per text; ``step_tokens``: per text the explained output tokens, spelled.
        prompt: lm: per text the length of its own text (before the continuation).
        source_width: seq2seq explained over the source and the earlier decoder tokens: ``ids`` / ``mask`` are
            joint (N, T + T'), the first ``source_width`` columns the source, the rest the decoder input (``mask``
            True at the inputs the row's step sees); None: ``ids`` are the source alone.
        decoder_tokens: joint rows: per text its decoder input tokens, spelled (``<bos>`` and the tokens before
            the last).
        describe: one line for pages and records.
    """

    kind: str
    ids: torch.Tensor
    mask: torch.Tensor
    text: torch.Tensor
    step: torch.Tensor
    describe: str
    classes: torch.Tensor | None = None
    pair: torch.Tensor | None = None
    decoder_ids: torch.Tensor | None = None
    position: torch.Tensor | None = None
    token: torch.Tensor | None = None
    steps: list[int] = field(default_factory=list)
    step_tokens: list[list[str]] | None = None
    prompt: list[int] | None = None
    record: dict = field(default_factory=dict)
    source_width: int | None = None
    decoder_tokens: list[list[str]] | None = None

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def multi_step(self) -> bool:
        return self.kind in ("next", "decoder")

    def score(self, model: TokenModel, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(M, T) ids, (M, T) mask, (M,) row numbers -> (M,) differentiable scores (see the module docstring).
        Joint rows: the decoder columns of ``ids`` are not read (the embedding hook supplies their embedding)."""
        if self.source_width is not None:
            ids, mask = ids[:, :self.source_width], mask[:, :self.source_width]
        if self.kind == "decoder":
            out = model(ids, mask, self.decoder_ids[rows])
        else:
            out = model(ids, mask)
        if self.kind == "class":
            return out[torch.arange(len(rows), device=out.device), self.classes[rows]]
        if self.kind == "pair":
            return F.cosine_similarity(mean_pool(out, mask), self.pair[None].to(out.dtype), dim=-1)
        logp = out[torch.arange(len(rows), device=out.device), self.position[rows]].log_softmax(-1)
        return logp.gather(1, self.token[rows, None])[:, 0]


    def source_part(self) -> "TokenTarget":
        """The same target with ``ids`` / ``mask`` the source alone (joint rows cut at ``source_width``)."""
        if self.source_width is None:
            return self
        w = self.source_width
        return replace(self, ids=self.ids[:, :w], mask=self.mask[:, :w], source_width=None, decoder_tokens=None)

    @torch.no_grad()
    def probability(self, model: TokenModel, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor
                    ) -> torch.Tensor:
        """(M, T) ids, mask, (M,) row numbers -> (M,) what deletion / insertion track: the softmax probability of
        the class (``class``), the cosine similarity (``pair``), the probability of the explained token (``next``,
        ``decoder``)."""
        if self.kind == "class":
            out = model(ids, mask)
            return out.float().softmax(-1)[torch.arange(len(rows), device=out.device), self.classes[rows]]
        score = self.score(model, ids, mask, rows).float()
        return score if self.kind == "pair" else score.exp()


def mean_pool(vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) token vectors, (B, T) bool mask -> (B, D) mean over the real tokens."""
    m = mask.to(vectors.dtype)[..., None]
    return (vectors * m).sum(1) / m.sum(1).clamp_min(1)


def _class_index(model: TokenModel, target) -> int | None:
    """A class index (int, digits or a class name), None for ``pred``; one-line errors otherwise."""
    if target in (None, "pred"):
        return None
    classes = model.classes
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if classes and target in classes:
            return classes.index(target)
        raise NnfeatError(f"unknown class '{shorten(target)}' of {model.name}: give a class index, one of its class "
                          f"names{' (' + ', '.join(classes[:5]) + ', ...)' if classes else ''}, or pred")
    return int(target)


def make_target(model: TokenModel, batch: TokenBatch, target: str | int | None = "pred", *,
                pair: str | None = None, target_texts: Sequence[str] | None = None,
                steps: int = MAX_STEPS) -> TokenTarget:
    """Resolve ``target`` for ``model`` on ``batch`` (see the module docstring).

    Raises:
        NnfeatError: one line for ``pair`` on a model that is not a sentence encoder, an encoder without
            ``pair``, a class out of range or unknown, ``target_texts`` on a model that decodes nothing, or a
            target the model kind does not take.
    """
    n = len(batch)
    dev = batch.ids.device
    text, zero = torch.arange(n, device=dev), torch.zeros(n, dtype=torch.long, device=dev)
    if pair is not None and model.kind != "encoder":
        raise NnfeatError(f"--pair is for sentence encoders (cosine similarity of two texts); {model.name} is a "
                          f"{model.kind} model")
    if target_texts is not None and model.kind not in ("seq2seq", "lm"):
        raise NnfeatError(f"target texts are for lm and seq2seq models; {model.name} is a {model.kind} model")
    if model.kind == "encoder":
        if pair is None:
            raise NnfeatError(f"{model.name} is a sentence encoder: give a second text with --pair \"...\" (the "
                              "score explained is the cosine similarity of the two texts)")
        if target not in (None, "pred", "pair"):
            raise NnfeatError(f"a sentence encoder's target is the similarity with --pair; drop --target {target}")
        other = model.encode([pair])
        with torch.no_grad():
            vec = mean_pool(model(other.ids, other.mask), other.mask)[0]
        return TokenTarget("pair", batch.ids, batch.mask, text, zero, f"cosine similarity with '{shorten(pair)}'",
                           pair=F.normalize(vec.float(), dim=0), steps=[1] * n,
                           record={"kind": "pair", "pair": pair, "pooling": "mean over real tokens"})
    if model.kind == "classifier":
        index = _class_index(model, target)
        with torch.no_grad():
            logits = model(batch.ids, batch.mask)
        k = logits.shape[-1]
        if index is not None and not -k <= index < k:
            raise NnfeatError(f"class {index} is out of range: {model.name} has {k} classes (0 to {k - 1})")
        classes = logits.argmax(-1) if index is None else torch.full((n,), index % k, dtype=torch.long, device=dev)
        names = [model.classes[c] if model.classes and c < len(model.classes) else str(c) for c in classes.tolist()]
        what = "each text's predicted class" if index is None else f"class {names[0]}"
        return TokenTarget("class", batch.ids, batch.mask, text, zero, f"logit of {what}", classes=classes,
                           steps=[1] * n, record={"kind": "class", "request": str(target or "pred"),
                                                  "classes": classes.tolist(), "names": names})
    if target not in (None, "pred"):
        raise NnfeatError(f"{model.name} is a {model.kind} model: its target is each generated token (or "
                          "--target-text); drop --target")
    if model.kind == "seq2seq":
        return _decoder_target(model, batch, target_texts, steps)
    return _next_target(model, batch, target_texts, steps)


def _decoder_target(model, batch, target_texts, steps) -> TokenTarget:
    tok = model.target_tokenizer or model.tokenizer
    full = (model.encode(list(target_texts), tokenizer=tok) if target_texts is not None
            else model.generate(batch, steps))
    counts = (full.mask.sum(1) - 1).clamp_min(0)
    if int(counts.min()) < 1:
        raise NnfeatError("a target text has no tokens after its start token: give each --target-text a character")
    k = int(counts.max())
    rows, step = _rows(counts)
    dec = full.ids[:, :k]
    pad = tok.id_of("pad") or 0
    dec = torch.where(torch.arange(k, device=dec.device)[None] < counts[:, None], dec, torch.full_like(dec, pad))
    spelled = [t[1:1 + int(c)] for t, c in zip(full.tokens, counts)]
    ids, mask, width, inputs = batch.ids[rows], batch.mask[rows], None, None
    if model.target_embedding:  # joint rows: the source, then the decoder inputs each step sees
        width, inputs = ids.shape[1], [t[:int(c)] for t, c in zip(full.tokens, counts)]
        seen = torch.arange(k, device=dec.device)[None] <= step[:, None]
        ids, mask = torch.cat([ids, dec[rows]], 1), torch.cat([mask, seen], 1)
    return TokenTarget("decoder", ids, mask, rows, step,
                       "log-probability of each decoder token (" + ("given target text" if target_texts is not None
                                                                 else "greedy decoding") + ")",
                       decoder_ids=dec[rows], position=step, token=full.ids[rows, step + 1],
                       steps=counts.tolist(), step_tokens=spelled, source_width=width, decoder_tokens=inputs,
                       record={"kind": "decoder", "source": "target text" if target_texts is not None else "greedy",
                               "decoded": full.texts, "score": "log-probability",
                               "attributed": "the source" + (" and the earlier decoder tokens" if width else "")})


def _next_target(model, batch, target_texts, steps) -> TokenTarget:
    lengths = batch.mask.sum(1)
    if target_texts is not None:
        if len(target_texts) != len(batch):
            raise NnfeatError(f"{len(target_texts)} target texts for {len(batch)} texts: give one per text")
        joined = [model.tokenizer.join([t, c]) if hasattr(model.tokenizer, "join") else t + c
                  for t, c in zip(batch.texts, target_texts)]
        full = model.encode(joined)
    else:
        full = model.generate(batch, steps)
    counts = full.mask.sum(1) - lengths
    if int(counts.min()) < 1:
        raise NnfeatError(f"a text already fills {model.name}'s {model.max_length} tokens: nothing is left to predict")
    rows, step = _rows(counts)
    position = lengths[rows] - 1 + step
    spelled = [t[int(n):] for t, n in zip(full.tokens, lengths)]
    return TokenTarget("next", full.ids[rows], full.mask[rows], rows, step,
                       "log-probability of each next token (" + ("given target text" if target_texts is not None
                                                              else "greedy continuation") + ")",
                       position=position, token=full.ids[rows, position + 1], steps=counts.tolist(),
                       step_tokens=spelled, prompt=lengths.tolist(),
                       record={"kind": "next", "source": "target text" if target_texts is not None else "greedy",
                               "continued": full.texts, "score": "log-probability"})


def _rows(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) steps per text -> (N,) text index and (N,) step of every (text, step) row."""
    text = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts
    step = torch.arange(len(text), device=counts.device) - first[text]
    return text, step


def target_score(model: TokenModel, batch: TokenBatch, target: TokenTarget | str | None = "pred", **options
                 ) -> torch.Tensor:
    """(N,) scores of ``target`` (resolved by :func:`make_target` with ``options`` when not a TokenTarget) on its
    own inputs; differentiable where the model is."""
    target = target if isinstance(target, TokenTarget) else make_target(model, batch, target, **options)
    return target.score(model, target.ids, target.mask, torch.arange(target.rows, device=target.ids.device))


__all__ = ["MAX_STEPS", "TokenTarget", "make_target", "mean_pool", "target_score"]
