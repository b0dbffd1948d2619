"""Atlas stage 4 (second half) and 5: bin the normalized layout into a G×G grid and summarize each cell.

A cell is kept when it holds at least ``min_count`` samples. Its vector is the plain mean of the raw
activations of its samples (Carter et al. 2019), its class is the top class of the mean attribution. All sums
run over chunks of the (memory-mapped) activations with ``index_add_``, so no copy of them is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Grid:
    """The kept cells of a G×G grid, in row-major order (M cells).

    Attributes:
        size: G.
        rows, cols: (M,) int64 cell coordinates (row = layout y, col = layout x).
        counts: (M,) int64 samples per cell.
        positions: (M, 2) float32 mean normalized layout position (x, y) of each cell's samples.
        vectors: (M, C) float32 mean activation of each cell.
        attr: (M, K) float32 mean class attribution, or None.
        label_counts: (M, L) int64 histogram of dataset labels, or None.
        members: (M, m) int64 dataset image indices of the samples closest (cosine) to the cell vector,
            padded with -1.
        sample_cell: (N,) int64 index into the kept cells for each sample, -1 when its cell was dropped.
    """

    size: int
    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    positions: np.ndarray
    vectors: np.ndarray
    attr: np.ndarray | None
    label_counts: np.ndarray | None
    members: np.ndarray
    sample_cell: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything as named arrays (for ``np.savez``); see :meth:`from_arrays`."""
        out = {k: getattr(self, k) for k in ("rows", "cols", "counts", "positions", "vectors", "members", "sample_cell")}
        out["size"] = np.array(self.size)
        if self.attr is not None:
            out["attr"] = self.attr
        if self.label_counts is not None:
            out["label_counts"] = self.label_counts
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "Grid":
        get = (lambda k: arrays[k] if k in arrays else None)
        return cls(size=int(arrays["size"]), rows=arrays["rows"], cols=arrays["cols"], counts=arrays["counts"],
                   positions=arrays["positions"], vectors=arrays["vectors"], attr=get("attr"),
                   label_counts=get("label_counts"), members=arrays["members"], sample_cell=arrays["sample_cell"])


def cell_of(normalized: np.ndarray, size: int) -> np.ndarray:
    """(N, 2) positions (x, y) in [0, 1] -> (N,) flat cell index ``row * size + col``."""
    bins = np.clip(np.floor(np.asarray(normalized) * size).astype(np.int64), 0, size - 1)
    return bins[:, 1] * size + bins[:, 0]


def make_grid(normalized: np.ndarray, acts: np.ndarray, *, size: int, min_count: int,
              attr: np.ndarray | None = None, image_index: np.ndarray | None = None,
              labels: np.ndarray | None = None, num_labels: int | None = None, members: int = 6,
              chunk: int = 65536) -> Grid:
    """Bin samples into a ``size``×``size`` grid and summarize the cells with at least ``min_count`` samples.

    Args:
        normalized: (N, 2) normalized layout positions in [0, 1].
        acts: (N, C) raw activations (memory-mapped is fine).
        attr: (N, K) class attributions, or None.
        image_index: (N,) dataset image index of each sample (for ``members`` and ``labels``).
        labels: dataset labels indexed by image index, or None.
        num_labels: histogram length (default ``labels.max() + 1``).
        members: how many member images to keep per cell.
    """
    n, channels = acts.shape
    flat = cell_of(normalized, size)
    total_cells = size * size
    counts_all = np.bincount(flat, minlength=total_cells)
    kept_flat = np.flatnonzero(counts_all >= max(min_count, 1))
    remap = np.full(total_cells, -1, dtype=np.int64)
    remap[kept_flat] = np.arange(len(kept_flat))
    sample_cell = remap[flat]
    m = len(kept_flat)

    sums = _chunked_sum(acts, sample_cell, m, chunk)
    counts = counts_all[kept_flat].astype(np.int64)
    vectors = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    mean_attr = None
    if attr is not None:
        mean_attr = (_chunked_sum(attr, sample_cell, m, chunk) / np.maximum(counts, 1)[:, None]).astype(np.float32)
    positions = np.zeros((m, 2), dtype=np.float64)
    keep = sample_cell >= 0
    np.add.at(positions, sample_cell[keep], np.asarray(normalized, dtype=np.float64)[keep])
    positions = (positions / np.maximum(counts, 1)[:, None]).astype(np.float32)

    label_counts = None
    if labels is not None and image_index is not None:
        sample_labels = np.asarray(labels)[np.asarray(image_index)]
        width = int(num_labels if num_labels is not None else sample_labels.max() + 1)
        valid = keep & (sample_labels >= 0) & (sample_labels < width)
        label_counts = np.bincount(sample_cell[valid] * width + sample_labels[valid],
                                   minlength=m * width).reshape(m, width).astype(np.int64)

    member_images = _closest_members(acts, sample_cell, vectors, members, chunk, image_index)
    return Grid(size=size, rows=kept_flat // size, cols=kept_flat % size, counts=counts, positions=positions,
                vectors=vectors, attr=mean_attr, label_counts=label_counts, members=member_images,
                sample_cell=sample_cell)


def _chunked_sum(values: np.ndarray, group: np.ndarray, groups: int, chunk: int) -> np.ndarray:
    """Per-group sums of (N, D) ``values`` for (N,) ``group`` ids (-1 = skip) -> (groups, D) float64."""
    out = torch.zeros(groups, values.shape[1], dtype=torch.float64)
    for start in range(0, len(values), chunk):
        g = torch.from_numpy(np.asarray(group[start:start + chunk]))
        block = torch.from_numpy(np.asarray(values[start:start + chunk], dtype=np.float64))
        keep = g >= 0
        out.index_add_(0, g[keep], block[keep])
    return out.numpy()


def _closest_members(acts: np.ndarray, sample_cell: np.ndarray, vectors: np.ndarray, members: int,
                     chunk: int, image_index: np.ndarray | None) -> np.ndarray:
    """(M, members) distinct images (sample rows when ``image_index`` is None) whose sampled activation has the
    highest cosine with their cell vector, best first, -1 padded."""
    m = len(vectors)
    out = np.full((m, members), -1, dtype=np.int64)
    if m == 0 or members <= 0:
        return out
    unit_vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    cosine = np.full(len(acts), -np.inf)
    for start in range(0, len(acts), chunk):
        block = np.asarray(acts[start:start + chunk], dtype=np.float32)
        cells = sample_cell[start:start + chunk]
        ok = cells >= 0
        norms = np.maximum(np.linalg.norm(block[ok], axis=1), 1e-12)
        cosine[start:start + chunk][ok] = np.einsum("nc,nc->n", block[ok], unit_vectors[cells[ok]]) / norms
    rows = np.flatnonzero(sample_cell >= 0)
    rows = rows[np.lexsort((-cosine[rows], sample_cell[rows]))]  # by cell, then best cosine first
    cells = sample_cell[rows]
    starts = np.searchsorted(cells, np.arange(m))
    ends = np.searchsorted(cells, np.arange(m), side="right")
    for cell in range(m):
        candidates = rows[starts[cell]:ends[cell]]
        if image_index is not None:
            images = np.asarray(image_index)[candidates]
            _, first = np.unique(images, return_index=True)  # best-cosine sample of each image
            picked = images[np.sort(first)[:members]]
        else:
            picked = candidates[:members]
        out[cell, :len(picked)] = picked
    return out


__all__ = ["Grid", "cell_of", "make_grid"]
