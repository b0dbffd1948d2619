"""Top- and bottom-activating token contexts of units, as data (tensors in, tensors out), and their cached,
resumable, sharded collection stage.

A unit of a token layer is one channel of its (B, T, D) output. Over a corpus cut into chunks of texts,
:func:`chunk_candidates` keeps per channel the ``k`` tokens of one chunk with the highest activation (``top``)
and the ``k`` with the lowest (``bottom``): one sort over the chunk's (B * T) tokens per channel, no loop over
texts. Each candidate carries its text index, its position and the channel's values on the ``2W + 1`` tokens
around it (its context window; NaN past the text's ends), so no second pass is needed to draw it.
:func:`merge_candidates` folds the chunks' candidates into the corpus's, in chunk order.

Ties are broken by corpus order (the earlier text, then the earlier token, first): every sort is stable over
candidates kept in corpus order, so the result does not depend on how the corpus is cut into chunks.

:func:`collect_token_candidates` is the stage: chunk ``i``'s candidates are one atomic record
``chunks/c-00012.npz`` in the cache folder holding its settings key (:func:`nnfeat.analysis.collect_files.save_npz`);
a re-run reads every record that loads with the same key and shapes and computes only the others (a damaged or
truncated record is redone), chunk ``i`` on rank ``i % world`` (:func:`nnfeat.distributed.shard_map`), so
torchrun writes and returns the same bytes as one process.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from nnfeat.analysis.collect_files import read_batch, save_npz
from nnfeat.distributed import Ranks, shard_map

__all__ = ["SIDES", "Candidates", "chunk_candidates", "merge_candidates", "collect_token_candidates", "corpus_key",
           "record_path"]

SIDES = ("top", "bottom")
RECORD_DIR = "chunks"


@dataclass
class Candidates:
    """Per channel the ``k`` best tokens of one side, best first (top: highest value; bottom: lowest).

    Attributes:
        value: (C, k) float32 the channel's activation at the token (NaN: no candidate, fewer tokens than k).
        text: (C, k) int64 the text's index in the corpus (-1: no candidate).
        position: (C, k) int64 the token's position in its text.
        context: (C, k, 2W + 1) float32 the channel's activation on the window around the token (NaN outside
            the text).
    """

    value: np.ndarray
    text: np.ndarray
    position: np.ndarray
    context: np.ndarray

    def arrays(self, side: str) -> dict[str, np.ndarray]:
        return {f"{side}_{name}": getattr(self, name) for name in ("value", "text", "position", "context")}

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray], side: str) -> "Candidates":
        return cls(*(np.asarray(arrays[f"{side}_{name}"]) for name in ("value", "text", "position", "context")))


def _windows(act: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, channels: torch.Tensor,
             window: int) -> torch.Tensor:
    """(B, T, D) act, (B, T) mask, (C, k) text rows and positions, (C,) channels -> (C, k, 2W+1) values around
    each candidate (NaN outside the text)."""
    offsets = torch.arange(-window, window + 1)
    at = cols[..., None] + offsets  # (C, k, 2W+1)
    inside = (at >= 0) & (at < act.shape[1])
    at = at.clamp(0, act.shape[1] - 1)
    r = rows[..., None].expand_as(at)
    inside &= mask[r, at]
    values = act[r, at, channels[:, None, None].expand_as(at)]
    return torch.where(inside, values, torch.full_like(values, float("nan")))


def chunk_candidates(act: torch.Tensor, mask: torch.Tensor, channels: Sequence[int], k: int, window: int,
                     offset: int = 0, allowed: torch.Tensor | None = None) -> dict[str, Candidates]:
    """One chunk's candidates per side.

    Args:
        act: (B, T, D) activations of the chunk's B texts (any value at masked tokens).
        mask: (B, T) bool, True at real tokens (windows stop at the text's ends).
        channels: the C channels to rank.
        k: candidates per channel and side.
        window: W, tokens kept on each side of a candidate.
        offset: the corpus index of the chunk's first text.
        allowed: (B, T) bool, the tokens that may be candidates (default ``mask``; e.g. special tokens left out).

    Returns:
        ``{"top": Candidates, "bottom": Candidates}`` with (C, k) arrays; ties: the earlier token first.
    """
    act = act.detach().float().cpu()
    mask = mask.cpu().bool()
    b, t, _ = act.shape
    chan = torch.as_tensor(list(channels), dtype=torch.long)
    flat = act[:, :, chan].reshape(b * t, len(chan)).T  # (C, B*T), corpus order along the last axis
    valid = (mask if allowed is None else allowed.cpu().bool() & mask).reshape(-1)
    out = {}
    for side in SIDES:  # two sides
        score = flat if side == "top" else -flat
        score = torch.where(valid, score, torch.full_like(score, float("-inf")))
        order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]  # (C, <=k)
        if order.shape[1] < k:  # a chunk of fewer than k tokens: pad with non-candidates
            order = torch.cat([order, order[:, :1].expand(-1, k - order.shape[1])], 1)
            filler = torch.arange(k) >= b * t
        else:
            filler = torch.zeros(k, dtype=torch.bool)
        keep = valid[order] & ~filler  # (C, k)
        rows, cols = order // t, order % t
        value = torch.gather(flat, 1, order)
        context = _windows(act, mask, rows, cols, chan, window)
        nan = torch.tensor(float("nan"))
        out[side] = Candidates(value=torch.where(keep, value, nan).numpy().astype(np.float32),
                               text=torch.where(keep, rows + offset, -1).numpy().astype(np.int64),
                               position=torch.where(keep, cols, -1).numpy().astype(np.int64),
                               context=torch.where(keep[..., None], context, nan).numpy().astype(np.float32))
    return out


def merge_candidates(parts: Sequence[Candidates], side: str, k: int) -> Candidates:
    """Candidates of chunks, in corpus order -> the corpus's best ``k`` per channel (stable: on equal values
    the earlier text and token first, whatever the chunking)."""
    value = np.concatenate([p.value for p in parts], 1)  # (C, n*k)
    text = np.concatenate([p.text for p in parts], 1)
    position = np.concatenate([p.position for p in parts], 1)
    context = np.concatenate([p.context for p in parts], 1)
    v = torch.from_numpy(value.astype(np.float64))
    score = v if side == "top" else -v
    score = torch.where(torch.from_numpy(text) < 0, torch.full_like(score, float("-inf")), score)
    # candidates of one chunk come sorted; sort by (text, position) first so equal values keep corpus order
    rank = torch.from_numpy(text * (1 << 32) + np.maximum(position, 0))
    rank = torch.where(torch.from_numpy(text) < 0, torch.full_like(rank, 1 << 62), rank)
    first = torch.sort(rank, dim=1, stable=True).indices
    second = torch.sort(torch.gather(score, 1, first), dim=1, descending=True, stable=True).indices
    order = torch.gather(first, 1, second)[:, :k].numpy()
    take = np.take_along_axis
    return Candidates(take(value, order, 1), take(text, order, 1), take(position, order, 1),
                      take(context, order[..., None], 1))


def corpus_key(*parts) -> str:
    """A short digest of what determines the candidates (model, weights, layer, corpus, settings)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def record_path(directory: Path, index: int) -> Path:
    return Path(directory) / RECORD_DIR / f"c-{index:05d}.npz"


def collect_token_candidates(compute: Callable[[int], dict[str, Candidates]], chunks: int,
                             directory: str | Path | None,
                             key: str, shapes: dict[str, tuple[int, ...]], k: int,
                             ranks: Ranks | None = None) -> tuple[dict[str, Candidates], list[dict], int]:
    """The stage: every chunk's candidates from its record in ``directory`` or from ``compute(i)`` (then
    saved, atomically), merged per side.

    Args:
        compute: chunk index -> :func:`chunk_candidates`'s output for that chunk (a forward pass), with any
            further arrays of the chunk under their own names (recorded and returned as they are).
        chunks: how many chunks.
        directory: the cache folder (``chunks/c-*.npz`` inside); None: nothing read or written.
        key: the settings key (a record of another key is redone).
        shapes: array name (``top_value``, ``top_context``..., and the further arrays' names) -> its shape.
        k: candidates per channel and side.
        ranks: default :func:`nnfeat.distributed.current` (a collective call when sharded).

    Returns:
        (``{"top": Candidates, "bottom": Candidates}``, per chunk its record (every array by name), how many
        chunks were computed, on any rank).
    """
    def one(i: int) -> tuple[dict[str, np.ndarray], bool]:
        path = None if directory is None else record_path(Path(directory), i)
        arrays = None if path is None else read_batch(path, f"{key}/{i}", shapes)
        fresh = arrays is None
        if fresh:
            found = compute(i)
            arrays = {name: array for side in SIDES for name, array in found[side].arrays(side).items()}
            arrays.update({name: np.asarray(value) for name, value in found.items() if name not in SIDES})
            if path is not None:
                save_npz(path, {"key": np.array(f"{key}/{i}"), **arrays})
        return arrays, fresh

    results = shard_map(one, chunks, ranks)
    records = [r for r, _ in results]
    merged = {side: merge_candidates([Candidates.of(r, side) for r in records], side, k) for side in SIDES}
    return merged, records, sum(fresh for _, fresh in results)
