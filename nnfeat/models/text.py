"""Token models: networks that take (B, T) token ids, with the tokenizer that makes them from text.

A :class:`TokenModel` is to text what :class:`~nnfeat.models.base.Model` is to images: the network (in eval mode,
frozen), its name, weights and card, and its input spec (:class:`TextSpec`: the tokenizer, the maximum length,
the special tokens, and for an encoder-decoder model the decoder side). Kinds:

* ``classifier`` -- (B, T) ids -> (B, K) logits (``classes`` names them);
* ``encoder`` -- (B, T) ids -> (B, T, D) token vectors (a sentence encoder such as all-MiniLM-L6-v2);
* ``lm`` -- (B, T) ids -> (B, T, V) next-token logits (causal);
* ``seq2seq`` -- (B, S) source ids and (B, T) decoder ids -> (B, T, V) logits; :meth:`TokenModel.generate`
  decodes greedily.

How the network is called is the model's :attr:`TokenModel.call` (``"ids"``: ``net(ids)``; ``"ids_mask"``:
``net(ids, mask)``; ``"hf"``: ``net(input_ids=ids, attention_mask=mask)``; seq2seq ``net(src, tgt, src_mask)``).
A network that takes no mask gets texts of one length per call (:meth:`TokenModel.forward` groups them), so
padding never changes what it computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from nnfeat.errors import NnfeatError, nearest, shorten
from nnfeat.models.base import describe_modules
from nnfeat.models.tokenizers import Tokenizer

KINDS = ("classifier", "encoder", "lm", "seq2seq")
CALLS = ("ids", "ids_mask", "hf", "seq2seq")


@dataclass
class TokenBatch:
    """Texts as the network takes them.

    Attributes:
        ids: (B, T) long token ids, padded at the end with the pad id (0 when the tokenizer has none).
        mask: (B, T) bool, True at real tokens.
        tokens: per text its tokens as the tokenizer spells them (unpadded).
        texts: the texts.
        truncated: per text how many tokens were cut at the maximum length (0 for none).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    tokens: list[list[str]]
    texts: list[str]
    truncated: list[int] = field(default_factory=list)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]

    def __len__(self) -> int:
        return len(self.texts)

    def to(self, device) -> "TokenBatch":
        return TokenBatch(self.ids.to(device), self.mask.to(device), self.tokens, self.texts, self.truncated)

    def note(self, max_length: int) -> str | None:
        """One line when any text was truncated, else None."""
        cut = [i for i, n in enumerate(self.truncated) if n]
        if not cut:
            return None
        return (f"{len(cut)} of {len(self)} texts are longer than the model's maximum of {max_length} tokens: "
                f"truncated (text {cut[0]} lost {self.truncated[cut[0]]} tokens)")


@dataclass
class TextSpec:
    """What a token model takes: its tokenizer(s), maximum length and kind; ``sources``: fact -> where it came
    from (``card``, ``config``, ``model``, ``--FLAG``)."""

    tokenizer: Tokenizer
    max_length: int
    kind: str
    target_tokenizer: Tokenizer | None = None
    classes: tuple[str, ...] | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line, e.g. ``input: text, characters of an alphabet of 40, at most 64 tokens, seq2seq (decoder:
        characters of an alphabet of 11)``."""
        parts = [f"input: text, {self.tokenizer.description}", f"at most {self.max_length} tokens", self.kind]
        if self.target_tokenizer is not None:
            parts[-1] += f" (decoder: {self.target_tokenizer.description})"
        if self.classes:
            parts.append(f"{len(self.classes)} classes")
        return ", ".join(parts)

    def record(self) -> dict:
        """JSON-ready: modality, tokenizer(s), maximum length, kind, class names, sources."""
        return {"modality": "tokens", "tokenizer": self.tokenizer.record(), "max_length": self.max_length,
                "kind": self.kind,
                "target_tokenizer": None if self.target_tokenizer is None else self.target_tokenizer.record(),
                "classes": list(self.classes) if self.classes else None, "sources": dict(self.sources)}


class TokenModel(nn.Module):
    """A token network with its tokenizer and input spec.

    Args:
        net: the network; it is put in eval mode and its parameters frozen.
        name: what outputs call it.
        tokenizer: text -> ids of the (encoder) input.
        kind: one of :data:`KINDS`.
        max_length: the most tokens it takes (positions beyond are refused or truncated, with a note).
        call: how the network is called, one of :data:`CALLS`.
        embedding: the dotted name of its input embedding module (``nn.Embedding``), if known.
        target_tokenizer: seq2seq: the decoder side's tokenizer (its ``bos`` starts decoding, ``eos`` ends it).
        classes: classifier: the logits' names.
        weights, card: as for :class:`~nnfeat.models.base.Model`.
        unembed: lm: the dotted name of the module that maps the residual stream to vocabulary logits.
        target_max_length: seq2seq: the most decoder tokens (bos and eos included); greedy decoding stops there.
        target_embedding: seq2seq: the dotted name of the decoder's token embedding (the same as ``embedding``
            when the decoder shares it); token saliency then attributes each step to the earlier decoder tokens too.
    """

    def __init__(self, net: nn.Module, *, name: str, tokenizer: Tokenizer, kind: str, max_length: int,
                 call: str = "ids", embedding: str | None = None, target_tokenizer: Tokenizer | None = None,
                 classes: Sequence[str] | None = None, weights: str | None = None, card: Any = None,
                 unembed: str | None = None, sources: dict[str, str] | None = None,
                 target_max_length: int | None = None, target_embedding: str | None = None) -> None:
        super().__init__()
        if kind not in KINDS or call not in CALLS:
            raise ValueError(f"kind must be one of {KINDS} and call one of {CALLS}; got {kind!r}, {call!r}")
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.name, self.kind, self.call, self.weights, self.card = name, kind, call, weights, card
        self.tokenizer, self.target_tokenizer = tokenizer, target_tokenizer
        self.max_length, self.embedding, self.unembed = int(max_length), embedding, unembed
        self.target_max_length, self.target_embedding = target_max_length, target_embedding
        self.classes = list(classes) if classes is not None else None
        self.spec = TextSpec(tokenizer, self.max_length, kind, target_tokenizer,
                             tuple(classes) if classes is not None else None, dict(sources or {}))

    def train(self, mode: bool = True) -> "TokenModel":  # the wrapped net always stays in eval mode
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.net.parameters()), torch.device("cpu"))

    def layer_names(self) -> list[str]:
        """Dotted PyTorch names of every submodule of the network, in registration order."""
        return [n for n, _ in self.net.named_modules() if n]

    def module(self, name: str) -> nn.Module:
        """The submodule ``name``, or a one-line error naming the nearest ones."""
        try:
            return self.net.get_submodule(name)
        except AttributeError:
            close = nearest(name, self.layer_names())
            hint = f"; nearest: {', '.join(close)}" if close else ""
            raise NnfeatError(f"unknown layer '{shorten(name)}' of {self.name}{hint} (nnfeat layers "
                              f"{self.name} lists them)") from None

    def probe_text(self) -> str:
        """A short text the tokenizer can spell (for probe passes): the first non-special vocabulary tokens."""
        special = set(self.tokenizer.specials.values())
        vocab = self.tokenizer.vocab or []
        words = [t for i, t in enumerate(vocab) if i not in special and t.strip() and not t.startswith(("[", "<", "#"))]
        return self.tokenizer.join(words[:8]) if words else "hello world"

    @torch.no_grad()
    def describe_layers(self, text: str | None = None) -> list[tuple[str, tuple[int, ...] | None, int | None]]:
        """(name, output shape without batch, last-axis width) for every module that yields a tensor, from one
        forward pass on ``text`` (default :meth:`probe_text`; seq2seq: its decoder side starts with bos)."""
        batch = self.encode([text or self.probe_text()])
        decoder = None
        if self.kind == "seq2seq":
            tok = self.target_tokenizer or self.tokenizer
            decoder = torch.tensor([[tok.id_of("bos") or 0] * 4], device=batch.ids.device)
        return describe_modules(self.net, lambda: self.forward(batch.ids, batch.mask, decoder))

    # -- text -> ids --------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], *, truncate: bool = True, tokenizer: Tokenizer | None = None
               ) -> TokenBatch:
        """Texts -> a padded :class:`TokenBatch` on this model's device.

        Args:
            texts: the texts (non-empty strings).
            truncate: cut texts longer than :attr:`max_length` (their last special token kept) and say so in
                :meth:`TokenBatch.note`; False: a one-line error instead.
            tokenizer: another tokenizer (the decoder side's); default the input's.

        Raises:
            NnfeatError: one line for an empty text, a token the tokenizer cannot spell, or (``truncate=False``)
                a text longer than the maximum.
        """
        tok = tokenizer or self.tokenizer
        rows, cut = [], []
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise NnfeatError(f"text {i} is empty: give each text at least one word")
            ids = tok.encode(text)
            extra = len(ids) - self.max_length
            if extra > 0 and not truncate:
                raise NnfeatError(f"text {i} ('{shorten(text)}') has {len(ids)} tokens, more than the model's maximum "
                                  f"of {self.max_length}: shorten it")
            if extra > 0:
                last = ids[-1] if tok.wrap[1] else None
                ids = ids[:self.max_length - (last is not None)] + ([last] if last is not None else [])
            rows.append(ids)
            cut.append(max(extra, 0))
        pad = tok.id_of("pad") or 0
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):  # building the batch: one row per text, not a hot loop
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = True
        return TokenBatch(ids.to(self.device), mask.to(self.device), [tok.spell(r) for r in rows], list(texts), cut)

    # -- the network --------------------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
                decoder_ids: torch.Tensor | None = None) -> Any:
        """(B, T) ids [+ (B, T) bool mask] [+ seq2seq (B, T') decoder ids] -> the network's output
        (HF models: their output's first tensor, ``last_hidden_state`` or ``logits``)."""
        if self.kind == "seq2seq":
            if decoder_ids is None:
                raise NnfeatError(f"{self.name} is an encoder-decoder model: it needs decoder tokens (a target "
                                  "text, or greedy decoding)")
            return self.net(ids, decoder_ids, mask)
        if self.call == "ids_mask":
            return self.net(ids, mask)
        if self.call == "hf":
            out = self.net(input_ids=ids, attention_mask=None if mask is None else mask.long())
            return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        if mask is None or bool(mask.all()):
            return self.net(ids)
        return self._by_length(ids, mask)

    def _by_length(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A network that takes no mask, on texts of several lengths: one call per length, unpadded, its
        outputs padded back (with zeros) to (B, T, ...) or stacked (B, ...)."""
        lengths = mask.sum(1)
        outs: dict[int, torch.Tensor] = {}
        for length in sorted(set(lengths.tolist())):  # one call per distinct length, not per text
            rows = (lengths == length).nonzero()[:, 0]
            outs[length] = (rows, self.net(ids[rows, :length]))
        first = next(iter(outs.values()))[1]
        per_token = all(part.dim() >= 2 and part.shape[1] == length for length, (_rows, part) in outs.items())
        shape = (len(ids), ids.shape[1], *first.shape[2:]) if per_token else (len(ids), *first.shape[1:])
        out = first.new_zeros(shape)
        for length, (rows, part) in outs.items():
            if per_token:
                out[rows, :length] = part
            else:
                out[rows] = part
        return out

    @torch.no_grad()
    def generate(self, batch: TokenBatch, max_new: int = 32) -> TokenBatch:
        """Greedy decoding: seq2seq -> the decoder's tokens (bos first, up to eos, at most ``max_new`` and
        :attr:`target_max_length`); lm -> the batch continued by ``max_new`` tokens (at most to
        :attr:`max_length`). Returns the generated side as a :class:`TokenBatch` (texts decoded)."""
        if self.kind == "seq2seq":
            if self.target_max_length is not None:
                max_new = min(max_new, self.target_max_length - 1)
            tok = self.target_tokenizer or self.tokenizer
            bos, eos = tok.id_of("bos"), tok.id_of("eos")
            seq = torch.full((len(batch), 1), bos, dtype=torch.long, device=batch.ids.device)
            done = torch.zeros(len(batch), dtype=torch.bool, device=seq.device)
            for _ in range(max_new):  # decoding steps: each depends on the one before
                step = self.forward(batch.ids, batch.mask, seq)[:, -1].argmax(-1)
                step = torch.where(done, torch.full_like(step, tok.id_of("pad") or 0), step)
                seq = torch.cat([seq, step[:, None]], 1)
                done |= step == eos
                if bool(done.all()):
                    break
            return _as_batch(seq, tok, eos)
        if self.kind != "lm":
            raise NnfeatError(f"{self.name} is a {self.kind} model: only lm and seq2seq models generate text")
        seq, mask = batch.ids, batch.mask
        max_new = min(max_new, self.max_length - int(mask.sum(1).max()))
        for _ in range(max_new):
            nxt = self.forward(seq, mask)
            last = mask.sum(1) - 1
            step = nxt[torch.arange(len(seq), device=seq.device), last].argmax(-1)
            seq = torch.cat([seq, torch.zeros_like(step)[:, None]], 1)
            mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], 1)
            seq[torch.arange(len(seq)), last + 1] = step
            mask[torch.arange(len(seq)), last + 1] = True
        return TokenBatch(seq, mask, [self.tokenizer.spell(r[m].tolist()) for r, m in zip(seq, mask)],
                          [self.tokenizer.decode(r[m].tolist()) for r, m in zip(seq, mask)], [0] * len(seq))


def _as_batch(seq: torch.Tensor, tok: Tokenizer, eos: int | None) -> TokenBatch:
    """Generated (B, T) ids -> a TokenBatch ending at each row's first eos (kept)."""
    rows = []
    for row in seq.tolist():
        end = row.index(eos, 1) + 1 if eos is not None and eos in row[1:] else len(row)
        rows.append(row[:end])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.id_of("pad") or 0, dtype=torch.long, device=seq.device)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, device=seq.device)
        mask[i, :len(r)] = True
    return TokenBatch(ids, mask, [tok.spell(r) for r in rows], [tok.decode(r) for r in rows], [0] * len(rows))


def is_token_model(model: Any) -> bool:
    return isinstance(model, TokenModel)


__all__ = ["CALLS", "KINDS", "TextSpec", "TokenBatch", "TokenModel", "is_token_model"]
