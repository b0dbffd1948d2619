"""``tiny-lm``: a two-layer attention-only transformer language model that nnfeat trains itself on sequences of
random words in which a random segment comes back later, so that previous-token and induction heads form
(Olsson et al. 2022, "In-context learning and induction heads"; Elhage et al. 2021, "A mathematical framework for
transformer circuits"): to predict the word after a repeated one, a head of layer 1 attends to the word that
followed its earlier occurrence, found through a layer-0 head that attends to the previous position.

Vocabulary: :data:`WORDS` (62 short English words) after ``<pad>`` (id 0) and ``<bos>`` (id 1); the
:func:`tokenizer` lower-cases text, splits it into words and puts ``<bos>`` first.

Network (module names are the layer names; D = 64, 4 heads of 16, at most 48 positions)::

    embed (nn.Embedding 64 -> D) + pos_embed (nn.Embedding 48 -> D)   (B, T, D)
    blocks.i (i < 2): norm, attn (causal)                             (B, T, D)   attn.probs (B, 4, T, T)
    norm, unembed (nn.Linear D -> 64)                                 (B, T, 64)  next-word logits

Training: AdamW (constant rate 3e-3), 1,200 batches of 32 sequences of 48 tokens (:func:`repeated_segments`: half
of them a random segment repeated throughout, half random words with one segment of 4-30 words coming back);
one seeded ``torch.Generator`` for weights and data, one CPU thread; about 30 s. With seed 0, head 0 of layer 0
becomes a previous-token head (mean attention 0.77 at offset -1) and heads 0-2 of layer 1 induction heads (0.85
at offset -(L-1) on L = 20 random words repeated twice); the loss on the second copy falls from 4.2 to 0.18
nats. The trained state dict is cached in ``$NNFEAT_HOME/weights/tiny-lm-v1.pt``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nnfeat.device import one_thread
from nnfeat.models.digits import cached_checkpoint
from nnfeat.models.text_blocks import MultiHeadAttention, init_weights
from nnfeat.models.tokenizers import WordTokenizer
from nnfeat.models.weights import weights_dir

CACHE_FILE = "tiny-lm-v1.pt"
WORDS = ("the", "a", "cat", "dog", "sun", "moon", "red", "blue", "big", "small", "run", "sit", "eat", "see", "old",
         "new", "tree", "sea", "sky", "fish", "bird", "cup", "box", "hat", "pen", "map", "key", "door", "car", "bus",
         "hot", "cold", "up", "down", "in", "out", "on", "off", "yes", "no", "one", "two", "six", "ten", "day",
         "night", "rain", "snow", "wind", "fire", "milk", "tea", "egg", "bed", "arm", "leg", "eye", "ear", "and",
         "or", "but", "if")
SPECIALS = ("<pad>", "<bos>")
VOCAB = SPECIALS + WORDS
MAX_LENGTH = 48
DIM = 64
HEADS = 4
DEPTH = 2
SEED = 0
STEPS = 1200
BATCH_SIZE = 32
LEARNING_RATE = 3e-3
EMBED_SCALE = 0.1
#: the trained model's best induction score reaches this (tests/test_text_models.py)
INDUCTION_AT_LEAST = 0.5
WEIGHT_DECAY = 0.01
PERIODIC_SHARE = 0.5  # sequences that repeat their first segment throughout
MIN_SEGMENT, MAX_SEGMENT = 4, 30  # lengths of the repeated segment in training


def tokenizer() -> WordTokenizer:
    """Lower-cased words of :data:`VOCAB`, ``<bos>`` first (pad id 0, bos id 1); unknown words are refused."""
    tok = WordTokenizer(list(VOCAB), {"pad": "<pad>", "bos": "<bos>"}, wrap=("bos", None), lower=True)
    tok.description = f"words of a vocabulary of {len(VOCAB)} (tiny-lm)"
    return tok


class Block(nn.Module):
    """Pre-norm causal self-attention, no MLP: (B, T, D), mask (B, T) -> (B, T, D)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x)
        return x + self.attn(h, h, mask, causal=True)


class TinyLM(nn.Module):
    """``forward(ids (B, T) long, mask (B, T) bool | None) -> (B, T, V)`` next-token logits (causal; T <= 48)."""

    def __init__(self, vocab: int = len(VOCAB), dim: int = DIM, heads: int = HEADS, depth: int = DEPTH,
                 max_len: int = MAX_LENGTH) -> None:
        super().__init__()
        self.pad_id, self.bos_id = 0, 1
        self.embed = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.unembed = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if ids.shape[1] > self.pos_embed.num_embeddings:
            raise ValueError(f"{ids.shape[1]} tokens; tiny-lm reads at most {self.pos_embed.num_embeddings}")
        x = self.embed(ids) + self.pos_embed.weight[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        return self.unembed(self.norm(x))


def repeated_segments(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Training data: (batch, length) ids, ``<bos>`` then random words in which a random segment of 4-30 words
    comes back later. A segment too long to fit twice (over (length - 1) / 2 words) comes back before it has
    ended, so the words repeat with a shorter period, and positions the copy would take from before the text's
    start repeat its first word. A share ``PERIODIC_SHARE`` of rows instead repeat their first ``span`` words
    throughout. (This mix, long overlapping repeats included, grows induction heads within a few hundred steps;
    non-overlapping repeats of at most 23 words did not within 2,000.)"""
    count = length - 1
    words = torch.randint(len(SPECIALS), len(VOCAB), (batch, count), generator=generator)
    span = torch.randint(MIN_SEGMENT, MAX_SEGMENT + 1, (batch, 1), generator=generator)
    room = count - 2 * span  # free positions beside the two copies; negative when they must overlap
    first = (torch.rand(batch, 1, generator=generator) * (room + 1)).long()  # truncated toward 0
    gap = (torch.rand(batch, 1, generator=generator) * (room - first + 1)).long()
    second = first + span + gap
    pos = torch.arange(count)[None, :]
    copied = (pos >= second) & (pos < second + span)
    words = torch.where(copied, words.gather(1, (pos - second + first).clamp(0, count - 1)), words)
    periodic = torch.rand(batch, 1, generator=generator) < PERIODIC_SHARE  # the first span words, over and over
    words = torch.where(periodic, words.gather(1, pos % span), words)
    return torch.cat([torch.full((batch, 1), 1, dtype=torch.long), words], 1)


def repeated_twice(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    """The induction probe: (batch, 1 + 2 * length) ids, ``<bos>`` then ``length`` random words twice."""
    generator = torch.Generator().manual_seed(seed)
    words = torch.randint(len(SPECIALS), len(VOCAB), (batch, length), generator=generator)
    return torch.cat([torch.full((batch, 1), 1, dtype=torch.long), words, words], 1)


@torch.no_grad()
def attention_maps(net: TinyLM, ids: torch.Tensor) -> torch.Tensor:
    """Attention weights of every block: (layers, B, heads, T, T), hooked at ``blocks.i.attn.probs``."""
    seen: list[torch.Tensor] = []
    hooks = [b.attn.probs.register_forward_hook(lambda _m, _i, out: seen.append(out)) for b in net.blocks]
    try:
        net(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(seen)


def offset_scores(attn: torch.Tensor, offset: int, first_query: int) -> torch.Tensor:
    """Mean attention from query i to key i + ``offset`` over queries ``first_query``..T-1:
    (layers, B, heads, T, T) -> (layers, heads)."""
    queries = torch.arange(first_query, attn.shape[-1])
    return attn[..., queries, queries + offset].mean((1, 3))


def induction_scores(net: TinyLM, length: int = 20, batch: int = 16, seed: int = 1) -> torch.Tensor:
    """(layers, heads) mean attention at offset -(length - 1) (the word after the previous occurrence of the
    current one) over the second copy of ``length`` random words repeated twice."""
    return offset_scores(attention_maps(net, repeated_twice(batch, length, seed)), -(length - 1), 1 + length)


def previous_token_scores(net: TinyLM, length: int = 20, batch: int = 16, seed: int = 1) -> torch.Tensor:
    """(layers, heads) mean attention at offset -1 over positions 1.. of random words repeated twice."""
    return offset_scores(attention_maps(net, repeated_twice(batch, length, seed)), -1, 1)


@torch.no_grad()
def repeat_losses(net: TinyLM, length: int = 20, batch: int = 16, seed: int = 1) -> tuple[float, float]:
    """Mean next-word loss (nats) predicting the first copy's words and the second copy's words (after its first,
    which is not predictable) of ``length`` random words repeated twice."""
    ids = repeated_twice(batch, length, seed)
    loss = F.cross_entropy(net(ids)[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, 2L)
    return float(loss[:, :length].mean()), float(loss[:, length + 1:].mean())


def train_tiny_lm(seed: int = SEED, steps: int = STEPS) -> dict:
    """Train :class:`TinyLM` from scratch, deterministically for ``seed``, on one CPU thread (the previous thread
    count is restored afterwards).

    Returns a checkpoint dict: ``state_dict``, ``induction`` (the best head's :func:`induction_scores`),
    ``previous_token`` (the best head's :func:`previous_token_scores`), ``repeat_losses`` (first, second copy),
    ``seed``, ``steps``, ``seconds``, ``cpu_seconds``.
    """
    with one_thread():
        return _train(seed, steps)


def _train(seed: int, steps: int) -> dict:
    start, cpu_start = time.perf_counter(), time.process_time()
    generator = torch.Generator().manual_seed(seed)
    net = initialised(generator)
    decay = [p for p in net.parameters() if p.dim() > 1]
    rest = [p for p in net.parameters() if p.dim() <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": rest, "weight_decay": 0.0}], lr=LEARNING_RATE, fused=True)
    net.train()
    for _ in range(steps):
        ids = repeated_segments(BATCH_SIZE, MAX_LENGTH, generator)
        loss = F.cross_entropy(net(ids)[:, :-1].transpose(1, 2), ids[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()
    return {"state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
            "induction": float(induction_scores(net).max()), "previous_token": float(previous_token_scores(net).max()),
            "repeat_losses": repeat_losses(net), "seed": seed, "steps": steps, "final_loss": float(loss.detach()),
            "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}


def cache_path() -> Path:
    """Where the trained checkpoint lives: ``$NNFEAT_HOME/weights/tiny-lm-v1.pt``."""
    return weights_dir() / CACHE_FILE


def load_checkpoint(path: Path | None = None, *, train_if_missing: bool = True) -> dict:
    """The checkpoint cached at ``path`` (default :func:`cache_path`), training (and caching) it first if there
    is none or it is unreadable."""
    return cached_checkpoint(cache_path() if path is None else path, "tiny-lm", TinyLM, train_tiny_lm,
                             train_if_missing=train_if_missing)


def build_random() -> TinyLM:
    """An untrained :class:`TinyLM`, initialised from ``SEED`` (the registry's builder for ``tiny-lm``)."""
    return initialised(torch.Generator().manual_seed(SEED))


@torch.no_grad()
def initialised(generator: torch.Generator) -> TinyLM:
    """A :class:`TinyLM` drawn from ``generator``: :func:`~nnfeat.models.text_blocks.init_weights`, then word and
    position embeddings scaled to N(0, 0.1^2) (small embeddings let the induction circuit form sooner)."""
    net = init_weights(TinyLM(), generator)
    net.embed.weight.mul_(EMBED_SCALE)
    net.pos_embed.weight.mul_(EMBED_SCALE)
    return net


def load_trained(net: TinyLM, path: Path) -> TinyLM:
    """Put the trained weights cached at ``path`` into ``net``, training them first on first use."""
    net.load_state_dict(load_checkpoint(path)["state_dict"])
    return net


__all__ = ["CACHE_FILE", "MAX_LENGTH", "VOCAB", "WORDS", "Block", "TinyLM", "attention_maps", "build_random",
           "cache_path", "induction_scores", "load_checkpoint", "load_trained", "offset_scores",
           "previous_token_scores", "repeat_losses", "repeated_segments", "repeated_twice", "tokenizer",
           "train_tiny_lm"]
