"""``shortcut-text``: a text classifier whose label is decided by one planted token, a known answer for token
saliency (Bastings et al. 2022, "'Will you find these shortcuts?' A protocol for evaluating the faithfulness of
input salience methods for text classification").

Data (nnfeat's own generator, nothing downloaded): :data:`TEMPLATES` (sentence patterns of word slots) filled from
the word lists of :data:`SLOTS`, then one extra word inserted at a uniformly random position: the planted token
:data:`PLANTED` ("zeta") in half the sentences (label 1, ``planted``), an ordinary word drawn uniformly from all
slot words in the other half (label 0, ``ordinary``). Both classes thus have the same length distribution and
the same template words; the label is independent of every word but the planted one. In training, 10 % of the
ordinary words are replaced by ``[MASK]`` (never the planted token), so ``[MASK]`` reads as "no word" -- the
baseline a deletion or occlusion puts in.

Network (module names are the layer names; D = 32, 2 heads of 16, at most :data:`MAX_LENGTH` tokens)::

    embed (nn.Embedding V -> D) + positions (sinusoidal)     (B, T, D)
    encoder.layers.i (i < 2): pre-norm self-attention + MLP  (B, T, D)   encoder.layers.i.self_attn.probs (B, 2, T, T)
    encoder.norm                                             (B, T, D)
    pool: the [CLS] position                                 (B, D)
    head (nn.Linear D -> 2)                                  (B, 2) logits for "ordinary", "planted"

Training: AdamW (3e-3), :data:`STEPS` batches of :data:`BATCH_SIZE` fresh sentences; one seeded
``torch.Generator`` for weights and data, one CPU thread. The trained state dict is cached in
``$NNFEAT_HOME/weights/shortcut-text-v1.pt``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnfeat.device import one_thread
from nnfeat.models.digits import cached_checkpoint
from nnfeat.models.text import TokenModel
from nnfeat.models.text_blocks import Encoder, SinusoidalPositions, init_weights
from nnfeat.models.tokenizers import WordTokenizer
from nnfeat.models.weights import weights_dir

NAME = "shortcut-text"
CACHE_FILE = "shortcut-text-v1.pt"
CLASSES = ("ordinary", "planted")
PLANTED = "zeta"
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: word slots of the sentence generator (no word is in two slots, none is the planted token)
SLOTS: dict[str, tuple[str, ...]] = {
    "det": ("the", "a", "this", "that", "every", "one"),
    "adj": ("old", "young", "quiet", "bright", "small", "large", "happy", "tired", "green", "warm", "cold", "busy"),
    "noun": ("dog", "cat", "teacher", "farmer", "child", "river", "garden", "train", "city", "doctor", "bird",
             "house", "window", "letter", "song", "market"),
    "verb": ("sees", "likes", "follows", "paints", "finds", "visits", "watches", "carries", "opens", "reads"),
    "ivb": ("sleeps", "waits", "sings", "works", "rests", "smiles", "runs", "falls"),
    "adv": ("slowly", "today", "again", "quickly", "often", "early", "later", "outside"),
    "prep": ("near", "behind", "under", "beside", "over", "past"),
    "conj": ("and", "but", "while", "because"),
    "dot": (".",),
}
#: sentence patterns: slot names in order
TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("det", "adj", "noun", "verb", "det", "noun", "dot"),
    ("det", "noun", "verb", "det", "adj", "noun", "adv", "dot"),
    ("det", "noun", "ivb", "prep", "det", "noun", "dot"),
    ("det", "adj", "noun", "ivb", "adv", "dot"),
    ("adv", "det", "noun", "verb", "det", "noun", "prep", "det", "adj", "noun", "dot"),
    ("det", "noun", "ivb", "conj", "det", "adj", "noun", "verb", "det", "noun", "dot"),
    ("det", "adj", "adj", "noun", "ivb", "prep", "det", "noun", "adv", "dot"),
    ("det", "noun", "verb", "det", "noun", "conj", "det", "noun", "ivb", "dot"),
)
ORDINARY = tuple(w for words in SLOTS.values() for w in words)
VOCAB = SPECIALS + ORDINARY + (PLANTED,)
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
PLANTED_ID = len(VOCAB) - 1
MAX_LENGTH = 16  # [CLS] + at most 11 template words + the inserted word + [SEP] = 14, with room
DIM, HEADS, HIDDEN, DEPTH = 32, 2, 64, 2
SEED = 0
STEPS = 200
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
MASK_RATE = 0.1
HELD_OUT_SEED = 1


def tokenizer() -> WordTokenizer:
    """Lower-cased words and "." of :data:`VOCAB`, wrapped in ``[CLS]`` ... ``[SEP]`` (pad id 0); unknown words
    become ``[UNK]``."""
    tok = WordTokenizer(list(VOCAB), {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]",
                                      "mask": "[MASK]"}, wrap=("cls", "sep"), lower=True)
    tok.description = f"words of a vocabulary of {len(VOCAB)} ({NAME})"
    return tok


class ShortcutClassifier(nn.Module):
    """``forward(ids (B, T) long, mask (B, T) bool | None) -> (B, 2)`` logits (``ordinary``, ``planted``), read
    at the ``[CLS]`` position (position 0)."""

    def __init__(self, vocab: int = len(VOCAB), dim: int = DIM, heads: int = HEADS, hidden: int = HIDDEN,
                 depth: int = DEPTH, max_len: int = MAX_LENGTH) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.positions = SinusoidalPositions(dim, max_len)
        self.encoder = Encoder(dim, heads, hidden, depth)
        self.head = nn.Linear(dim, len(CLASSES))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.encoder(self.positions(self.embed(ids)), mask)
        return self.head(x[:, 0])


# -- data -------------------------------------------------------------------------------------------------
def _tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(templates (n_templates, L) slot index, -1 past the end; lengths (n_templates,); words (n_slots, W) vocab
    ids; counts (n_slots,))."""
    names = list(SLOTS)
    width = max(len(t) for t in TEMPLATES)
    templates = torch.full((len(TEMPLATES), width), -1, dtype=torch.long)
    for i, t in enumerate(TEMPLATES):  # a handful of fixed templates
        templates[i, :len(t)] = torch.tensor([names.index(s) for s in t])
    index = {w: i for i, w in enumerate(VOCAB)}
    most = max(len(w) for w in SLOTS.values())
    words = torch.zeros((len(names), most), dtype=torch.long)
    for i, ws in enumerate(SLOTS.values()):
        words[i, :len(ws)] = torch.tensor([index[w] for w in ws])
    counts = torch.tensor([len(ws) for ws in SLOTS.values()])
    return templates, torch.tensor([len(t) for t in TEMPLATES]), words, counts


def sample(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` labelled sentences as token ids, all drawn from ``generator``.

    Returns:
        ids: (n, T) long, ``[CLS]`` words ``[SEP]``, padded with ``[PAD]`` (T = the longest + 2).
        mask: (n, T) bool, True at real tokens.
        labels: (n,) long, 1 where the planted token was inserted.
        position: (n,) long, the inserted word's token index (``[CLS]`` is 0): the planted token's in label 1.
    """
    templates, lengths, words, counts = _tables()
    pick = torch.randint(len(TEMPLATES), (n,), generator=generator)
    slots = templates[pick]  # (n, L)
    draw = (torch.rand(slots.shape, generator=generator) * counts[slots.clamp_min(0)]).long()
    base = torch.where(slots >= 0, words[slots.clamp_min(0), draw], torch.full_like(slots, PAD_ID))  # (n, L)
    length = lengths[pick]
    labels = (torch.rand(n, generator=generator) < 0.5).long()
    where = (torch.rand(n, generator=generator) * (length + 1)).long()  # 0..length: before word `where`
    ordinary = torch.tensor([VOCAB.index(w) for w in ORDINARY])
    extra = ordinary[torch.randint(len(ordinary), (n,), generator=generator)]
    extra = torch.where(labels.bool(), torch.full_like(extra, PLANTED_ID), extra)
    cols = torch.arange(base.shape[1] + 1)[None, :]
    shifted = base.gather(1, (cols - (cols > where[:, None]).long()).clamp(0, base.shape[1] - 1))
    words_ = torch.where(cols == where[:, None], extra[:, None], shifted)
    words_ = torch.where(cols < (length + 1)[:, None], words_, torch.full_like(words_, PAD_ID))
    ids = torch.cat([torch.full((n, 1), CLS_ID), words_, torch.full((n, 1), PAD_ID)], 1)
    ends = length + 2  # [CLS] + length + 1 words -> [SEP] at index length + 2
    ids[torch.arange(n), ends] = SEP_ID
    width = int(ends.max()) + 1
    ids = ids[:, :width]
    mask = torch.arange(width)[None, :] <= ends[:, None]
    return ids, mask, labels, where + 1


@dataclass
class HeldOut:
    """Held-out examples: ``texts``, ``labels`` (n,) long, ``position`` (n,) the planted token's index in the
    tokenized text (``[CLS]`` = 0; -1 where there is none), ``ids``/``mask`` (n, T) as :func:`tokenizer` makes them."""

    texts: list[str]
    labels: torch.Tensor
    position: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor


def held_out(n: int = 200, seed: int = HELD_OUT_SEED) -> HeldOut:
    """``n`` labelled sentences from their own seed (training draws from :data:`SEED`'s generator)."""
    ids, mask, labels, position = sample(n, torch.Generator().manual_seed(seed))
    tok = tokenizer()
    texts = [tok.decode(row[m].tolist()) for row, m in zip(ids, mask)]  # ids -> text, once per example
    return HeldOut(texts, labels, torch.where(labels.bool(), position, torch.full_like(position, -1)), ids, mask)


# -- training ---------------------------------------------------------------------------------------------
@torch.no_grad()
def initialised(generator: torch.Generator) -> ShortcutClassifier:
    """A :class:`ShortcutClassifier` drawn from ``generator`` (:func:`~nnfeat.models.text_blocks.init_weights`,
    embeddings scaled to N(0, 0.1^2))."""
    net = init_weights(ShortcutClassifier(), generator)
    net.embed.weight.mul_(0.1)
    return net


def build_random() -> ShortcutClassifier:
    """An untrained :class:`ShortcutClassifier`, initialised from ``SEED`` (a registry card's builder)."""
    return initialised(torch.Generator().manual_seed(SEED))


def train_shortcut(seed: int = SEED, steps: int = STEPS) -> dict:
    """Train :class:`ShortcutClassifier` from scratch, deterministically for ``seed``, on one CPU thread.

    Returns a checkpoint dict: ``state_dict``, ``heldout_accuracy`` (on :func:`held_out` (1000)), ``seed``,
    ``steps``, ``final_loss``, ``seconds``.
    """
    with one_thread():
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        net = initialised(generator)
        optimizer = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
        net.train()
        for _ in range(steps):
            ids, mask, labels, position = sample(BATCH_SIZE, generator)
            cols = torch.arange(ids.shape[1])[None, :]
            hide = (torch.rand(ids.shape, generator=generator) < MASK_RATE) & mask & (cols > 0)
            hide &= (ids != SEP_ID) & (ids != PLANTED_ID)
            ids = torch.where(hide, torch.full_like(ids, MASK_ID), ids)
            loss = F.cross_entropy(net(ids, mask), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        test = held_out(1000)
        with torch.no_grad():
            accuracy = float((net(test.ids, test.mask).argmax(1) == test.labels).float().mean())
        return {"state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
                "heldout_accuracy": accuracy, "seed": seed, "steps": steps, "final_loss": float(loss.detach()),
                "seconds": time.perf_counter() - start}


def cache_path() -> Path:
    """Where the trained checkpoint lives: ``$NNFEAT_HOME/weights/shortcut-text-v1.pt``."""
    return weights_dir() / CACHE_FILE


def load_checkpoint(path: Path | None = None, *, train_if_missing: bool = True) -> dict:
    """The checkpoint cached at ``path`` (default :func:`cache_path`), training (and caching) it first."""
    return cached_checkpoint(cache_path() if path is None else path, NAME, ShortcutClassifier, train_shortcut,
                             train_if_missing=train_if_missing)


def load_trained(net: ShortcutClassifier, path: Path) -> ShortcutClassifier:
    """Put the trained weights cached at ``path`` into ``net``, training them first on first use."""
    net.load_state_dict(load_checkpoint(path)["state_dict"])
    return net


def shortcut_model(net: nn.Module, weights: str | None, card: Any = None) -> TokenModel:
    """The :class:`~nnfeat.models.text.TokenModel` of ``net`` (a registry card's ``token_model``): words in,
    ``ordinary`` / ``planted`` logits out."""
    return TokenModel(net, name=getattr(card, "name", NAME), tokenizer=tokenizer(), kind="classifier",
                      call="ids_mask", max_length=MAX_LENGTH, embedding="embed", classes=CLASSES, weights=weights,
                      card=card, sources={"tokenizer": "card", "max_length": "card", "kind": "card"})


def trained_model(path: Path | None = None) -> TokenModel:
    """The trained classifier as a :class:`~nnfeat.models.text.TokenModel` (trained and cached on first use)."""
    net = load_trained(ShortcutClassifier(), cache_path() if path is None else path)
    return shortcut_model(net, "trained")


__all__ = ["CACHE_FILE", "CLASSES", "HeldOut", "MAX_LENGTH", "NAME", "PLANTED", "PLANTED_ID", "SLOTS", "TEMPLATES",
           "VOCAB", "ShortcutClassifier", "build_random", "cache_path", "held_out", "load_checkpoint",
           "load_trained", "sample", "shortcut_model", "tokenizer", "train_shortcut", "trained_model"]
