"""``dates-seq2seq``: a small encoder-decoder transformer that nnfeat trains itself to translate written dates
("25th of June, 2009", "6/25/2009", "25.06.09") into ISO dates ("2009-06-25"), offline and deterministically.

Data: :mod:`nnfeat.models.dates_data` (dates 1950-2049 in 24 formats; a tenth of the dates held out, never seen
in training; two-digit years 00-49 are 2000-2049, 50-99 are 1950-1999). Characters are tokens: the source
lower-cased over :data:`SOURCE_ALPHABET`, the target over "0123456789-"; both wrapped in bos ... eos.

Network (module names are the layer names; D = 64, 4 heads of 16, MLP 128)::

    src_embed (nn.Embedding) + sinusoidal positions   (B, S, D)
    encoder.layers.i (i < 2): self_attn, mlp          (B, S, D)   pre-norm; self_attn.probs (B, 4, S, S)
    tgt_embed (nn.Embedding) + sinusoidal positions   (B, T, D)   the target shifted right (bos first)
    decoder.layers.i (i < 2): self_attn (causal),     (B, T, D)   self_attn.probs (B, 4, T, T),
                              cross_attn, mlp                     cross_attn.probs (B, 4, T, S)
    out (nn.Linear D -> 14)                           (B, T, 14)  logits of the next target character

Training: AdamW with a one-cycle schedule, 800 batches of 64 from a fixed seeded list of 40,000 written dates
(batches grouped by source length, :func:`length_batches`), on one CPU thread; weights and batch order from one
seeded ``torch.Generator``; about 40 s. The trained state dict is cached in
``$NNFEAT_HOME/weights/dates-seq2seq-v1.pt``. With seed 0: 98.8 % exact match on 500 held-out dates; the best
cross-attention head (layer 0, head 2) puts its peak inside the source span of the field being written for
92.1 % of output field characters on 200 held-out dates (year 98 %, month 75 %, day 97 %; a random-weights
copy's best head: 29 %) (:func:`alignment_scores`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnfeat.device import one_thread
from nnfeat.models import dates_data
from nnfeat.models.digits import cached_checkpoint
from nnfeat.models.text_blocks import Decoder, Encoder, SinusoidalPositions, init_weights
from nnfeat.models.tokenizers import CharTokenizer
from nnfeat.models.weights import weights_dir

CACHE_FILE = "dates-seq2seq-v1.pt"
SOURCE_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ,./-'"
TARGET_ALPHABET = "0123456789-"
MAX_SOURCE = 48  # tokens, bos and eos included (the longest generated date is 33)
MAX_TARGET = 12  # bos + "YYYY-MM-DD" + eos
DIM = 64
HEADS = 4
ENCODER_DEPTH = 2
DECODER_DEPTH = 2
HIDDEN = 128
SEED = 0
STEPS = 800
BATCH_SIZE = 64
BUCKET = 16  # batches sorted by length together
TRAIN_EXAMPLES = 40_000
LEARNING_RATE = 5e-3
WEIGHT_DECAY = 0.01
HELDOUT_EXAMPLES = 500


def source_tokenizer() -> CharTokenizer:
    """Lower-cased characters of :data:`SOURCE_ALPHABET`, wrapped in bos ... eos (ids: pad 0, bos 1, eos 2, unk 3)."""
    return CharTokenizer(SOURCE_ALPHABET, ("pad", "bos", "eos", "unk"), lower=True,
                         description=f"characters of {len(SOURCE_ALPHABET)}, lower-cased (dates-seq2seq)")


def target_tokenizer() -> CharTokenizer:
    """The ISO date's characters "0123456789-", wrapped in bos ... eos (ids: pad 0, bos 1, eos 2)."""
    return CharTokenizer(TARGET_ALPHABET, ("pad", "bos", "eos"),
                         description="ISO date characters (dates-seq2seq target)")


class DatesSeq2Seq(nn.Module):
    """``forward(src (B, S) long, tgt (B, T) long, src_mask (B, S) bool | None) -> (B, T, V) logits``: teacher
    forcing, ``tgt`` starts with bos; ``src_mask`` True marks real source tokens (None: all are)."""

    def __init__(self, src_vocab: int = 4 + len(SOURCE_ALPHABET), tgt_vocab: int = 3 + len(TARGET_ALPHABET),
                 dim: int = DIM, heads: int = HEADS, hidden: int = HIDDEN, encoder_depth: int = ENCODER_DEPTH,
                 decoder_depth: int = DECODER_DEPTH, max_len: int = MAX_SOURCE) -> None:
        super().__init__()
        self.bos_id, self.eos_id, self.pad_id = 1, 2, 0
        self.src_embed = nn.Embedding(src_vocab, dim)
        self.tgt_embed = nn.Embedding(tgt_vocab, dim)
        self.positions = SinusoidalPositions(dim, max_len)
        self.encoder = Encoder(dim, heads, hidden, encoder_depth)
        self.decoder = Decoder(dim, heads, hidden, decoder_depth)
        self.out = nn.Linear(dim, tgt_vocab)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) ids -> (B, S, D) memory."""
        return self.encoder(self.positions(self.src_embed(src)), src_mask)

    def decode(self, memory: torch.Tensor, tgt: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """memory (B, S, D), target so far (B, T) -> (B, T, V) logits."""
        return self.out(self.decoder(self.positions(self.tgt_embed(tgt)), memory, src_mask))

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(src, src_mask), tgt, src_mask)


@torch.no_grad()
def greedy(net: DatesSeq2Seq, src: torch.Tensor, src_mask: torch.Tensor | None = None,
           max_len: int = MAX_TARGET - 1) -> torch.Tensor:
    """Greedy decoding: (B, S) source ids -> (B, 1 + max_len) target ids, bos first; after a row's eos, pad.

    The encoder runs once; each step re-runs the decoder on the prefix (targets are short).
    """
    memory = net.encode(src, src_mask)
    out = torch.full((src.shape[0], 1), net.bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        step = net.decode(memory, out, src_mask)[:, -1].argmax(-1)
        step = step.masked_fill(done, net.pad_id)
        out = torch.cat([out, step[:, None]], 1)
        done |= step == net.eos_id
        if bool(done.all()):
            break
    return out


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids -> ids (B, T) long right-padded with ``pad_id``, mask (B, T) bool (True: real token)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):  # building the batch, once per data set
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    mask = torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]
    return ids, mask


def encode_examples(examples: Sequence[dates_data.DateExample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Examples -> source ids (N, S), source mask (N, S) bool, target ids (N, 12) (bos ... eos)."""
    src_tok, tgt_tok = source_tokenizer(), target_tokenizer()
    src, mask = pad_batch([src_tok.encode(e.source) for e in examples])
    tgt, _ = pad_batch([tgt_tok.encode(e.target) for e in examples])
    return src, mask, tgt


@torch.no_grad()
def exact_match(net: DatesSeq2Seq, examples: Sequence[dates_data.DateExample]) -> float:
    """The share of ``examples`` whose greedy translation equals the target exactly."""
    src, mask, tgt = encode_examples(examples)
    was_training = net.training
    net.eval()
    try:
        out = greedy(net, src, mask, tgt.shape[1] - 1)
    finally:
        net.train(was_training)
    width = min(out.shape[1], tgt.shape[1])
    return float(((out[:, :width] == tgt[:, :width]).all(1) & (out.shape[1] >= tgt.shape[1])).float().mean())


@torch.no_grad()
def cross_attention(net: DatesSeq2Seq, src: torch.Tensor, src_mask: torch.Tensor,
                    tgt: torch.Tensor) -> torch.Tensor:
    """The decoder's cross-attention weights under teacher forcing: (layers, B, heads, T, S), hooked at
    ``decoder.layers.i.cross_attn.probs``."""
    seen: list[torch.Tensor] = []
    hooks = [layer.cross_attn.probs.register_forward_hook(lambda _m, _i, out: seen.append(out))
             for layer in net.decoder.layers]
    was_training = net.training
    net.eval()
    try:
        net(src, tgt, src_mask)
    finally:
        net.train(was_training)
        for hook in hooks:
            hook.remove()
    return torch.stack(seen)


def alignment_scores(net: DatesSeq2Seq, examples: Sequence[dates_data.DateExample]) -> torch.Tensor:
    """(layers, heads) share of output field characters (8 per date: YYYY, MM, DD) whose cross-attention row
    (teacher-forced, the row of the position that predicts the character) peaks inside the source token span
    the generator says wrote that field."""
    src, mask, tgt = encode_examples(examples)
    attn = cross_attention(net, src, mask, tgt[:, :-1])  # (L, B, H, T, S)
    queries, _, starts, ends = dates_data.field_span_table(examples, source_tokenizer(), target_tokenizer())
    peak = attn[:, :, :, queries].argmax(-1)  # (L, B, H, 8)
    inside = (peak >= starts[None, :, None]) & (peak < ends[None, :, None])
    return inside.float().mean((1, 3))


def train_dates_seq2seq(seed: int = SEED, steps: int = STEPS) -> dict:
    """Train :class:`DatesSeq2Seq` from scratch, deterministically for ``seed``, on one CPU thread (the previous
    thread count is restored afterwards).

    Returns a checkpoint dict: ``state_dict``, ``heldout_accuracy`` (exact match on 500 held-out dates),
    ``alignment`` (the best cross-attention head's :func:`alignment_scores` on 200 held-out dates), ``seed``,
    ``steps``, ``seconds``.
    """
    with one_thread():
        return _train(seed, steps)


def length_batches(lengths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One epoch of batches of similar source lengths (less padding): (N,) lengths -> (N // BATCH_SIZE,
    BATCH_SIZE) example indices. Examples are shuffled, sorted by length within runs of ``BUCKET`` batches,
    cut into batches, and the batches shuffled."""
    group = BATCH_SIZE * BUCKET
    count = len(lengths) // group * group
    order = torch.randperm(len(lengths), generator=generator)[:count].view(-1, group)
    by_length = lengths[order].argsort(dim=1, stable=True)
    batches = order.gather(1, by_length).view(-1, BATCH_SIZE)
    return batches[torch.randperm(len(batches), generator=generator)]


def _train(seed: int, steps: int) -> dict:
    start, cpu_start = time.perf_counter(), time.process_time()
    generator = torch.Generator().manual_seed(seed)
    net = init_weights(DatesSeq2Seq(), generator)
    src, mask, tgt = encode_examples(dates_data.make_examples(TRAIN_EXAMPLES, seed, "train"))
    decay = [p for p in net.parameters() if p.dim() > 1]
    rest = [p for p in net.parameters() if p.dim() <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": rest, "weight_decay": 0.0}], lr=LEARNING_RATE, fused=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=steps, pct_start=0.15)
    lengths = mask.sum(1)
    batches = length_batches(lengths, generator)
    net.train()
    for step in range(steps):
        if step and step % len(batches) == 0:
            batches = length_batches(lengths, generator)
        index = batches[step % len(batches)]
        width = int(lengths[index].max())
        logits = net(src[index, :width], tgt[index, :-1], mask[index, :width])
        loss = F.cross_entropy(logits.flatten(0, 1), tgt[index, 1:].flatten(), ignore_index=net.pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()
    heldout = dates_data.make_examples(HELDOUT_EXAMPLES, seed, "heldout")
    return {"state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
            "heldout_accuracy": exact_match(net, heldout),
            "alignment": float(alignment_scores(net, heldout[:200]).max()), "seed": seed, "steps": steps,
            "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
            "final_loss": float(loss.detach())}


def cache_path() -> Path:
    """Where the trained checkpoint lives: ``$NNFEAT_HOME/weights/dates-seq2seq-v1.pt``."""
    return weights_dir() / CACHE_FILE


def load_checkpoint(path: Path | None = None, *, train_if_missing: bool = True) -> dict:
    """The checkpoint cached at ``path`` (default :func:`cache_path`), training (and caching) it first if there
    is none or it is unreadable."""
    return cached_checkpoint(cache_path() if path is None else path, "dates-seq2seq", DatesSeq2Seq,
                             train_dates_seq2seq, train_if_missing=train_if_missing)


def build_random() -> DatesSeq2Seq:
    """An untrained :class:`DatesSeq2Seq`, initialised from ``SEED`` (the registry's builder for ``dates-seq2seq``)."""
    return init_weights(DatesSeq2Seq(), torch.Generator().manual_seed(SEED))


def load_trained(net: DatesSeq2Seq, path: Path) -> DatesSeq2Seq:
    """Put the trained weights cached at ``path`` into ``net``, training them first on first use."""
    net.load_state_dict(load_checkpoint(path)["state_dict"])
    return net


__all__ = ["CACHE_FILE", "DatesSeq2Seq", "MAX_SOURCE", "MAX_TARGET", "SOURCE_ALPHABET", "TARGET_ALPHABET",
           "alignment_scores", "build_random", "cache_path", "cross_attention", "encode_examples", "exact_match",
           "greedy", "length_batches", "load_checkpoint", "load_trained", "pad_batch", "source_tokenizer",
           "target_tokenizer", "train_dates_seq2seq"]
