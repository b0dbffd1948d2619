"""Atlas stages 2-3 and the first half of 4: whitening matrix, 2-D layout, layout normalization.

* :func:`whitening` computes ``S = inv(AᵀA / N)`` (uncentred, as in Carter et al. 2019) chunk by chunk, so the
  activations can stay memory-mapped. Near-singular directions (dead channels) are clamped, see below.
* :func:`layout_2d` embeds the activation vectors in 2-D with UMAP (cosine metric), t-SNE (cosine
  metric) or PCA (of the L2-normalized vectors, to match the cosine geometry).
* :func:`normalize_layout` clips each axis to its 1st..99th percentile widened by 10 % on each side and
  scales it to [0, 1] (Carter et al. 2019).
"""

from __future__ import annotations

import numpy as np
import torch

from nnfeat.errors import NnfeatError

LAYOUTS = ("umap", "tsne", "pca")


def second_moment(acts: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """(N, C) activations -> (C, C) float64 ``AᵀA / N``, accumulated in chunks (torch, so it follows
    ``torch.set_num_threads`` instead of starting a BLAS thread pool of its own)."""
    n, c = acts.shape
    total = torch.zeros((c, c), dtype=torch.float64)
    for start in range(0, n, chunk):
        block = torch.from_numpy(np.asarray(acts[start:start + chunk], dtype=np.float64))
        total += block.T @ block
    return (total / max(n, 1)).numpy()


def whitening(acts: np.ndarray, rel_floor: float = 1e-6) -> np.ndarray:
    """(N, C) activations -> (C, C) float32 whitening matrix ``S = inv(AᵀA / N)``.

    Eigenvalues below ``rel_floor`` times the largest are raised to that floor before inverting, so a
    dead channel (all zeros) gives a large but finite weight instead of an error. It does not change
    the icon objective for cell vectors, whose dead-channel component is zero anyway.
    """
    moment = torch.from_numpy(second_moment(acts))
    values, vectors = torch.linalg.eigh(moment)
    floor = max(float(values.max()), 1e-12) * rel_floor
    inverse = (vectors / values.clamp_min(floor)) @ vectors.T
    return ((inverse + inverse.T) / 2).numpy().astype(np.float32)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(N, C) -> (N, 2) projections on the two leading principal axes (signs fixed: largest loading positive)."""
    data = torch.from_numpy(np.asarray(x, dtype=np.float64))
    centred = data - data.mean(0)
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    axes = vectors[:, -2:].flip(1)  # (C, 2), largest variance first
    signs = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    return (centred @ (axes * signs)).numpy().astype(np.float32)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def layout_2d(acts: np.ndarray, method: str = "umap", *, seed: int = 0, n_neighbors: int = 20,
              min_dist: float = 0.01, verbose: bool = False) -> np.ndarray:
    """(N, C) activation vectors -> (N, 2) float32 layout positions.

    Args:
        method: ``umap`` (umap-learn, cosine metric), ``tsne`` (scikit-learn, cosine metric, PCA init)
            or ``pca`` (first two principal components of the L2-normalized vectors).
        seed: random state of UMAP / t-SNE (makes them deterministic).
        n_neighbors, min_dist: UMAP settings (Lucid's simple notebook used 20 and 0.01; production 50, 0.05).
    """
    if method not in LAYOUTS:
        raise NnfeatError(f"unknown layout '{method}': use one of {', '.join(LAYOUTS)}")
    x = np.asarray(acts, dtype=np.float32)
    n = len(x)
    if n < 3:
        raise NnfeatError(f"only {n} activation samples: a layout needs at least 3 (raise --n or give more images)")
    if method == "pca":
        return pca_2d(_unit_rows(x))
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
        tsne = TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity, random_state=seed,
                    verbose=int(verbose))
        return tsne.fit_transform(x).astype(np.float32)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # umap: random_state forces one thread
        warnings.filterwarnings("ignore", category=FutureWarning)
        import umap

        reducer = umap.UMAP(n_components=2, metric="cosine", n_neighbors=min(n_neighbors, n - 1), min_dist=min_dist,
                            random_state=seed, verbose=verbose)
        return reducer.fit_transform(x).astype(np.float32)


def normalize_layout(positions: np.ndarray, low: float = 1.0, high: float = 99.0, widen: float = 0.1) -> np.ndarray:
    """(N, 2) layout -> (N, 2) in [0, 1]: per axis clip to the [low, high] percentiles widened by ``widen``
    of their range on each side, then scale to [0, 1] (Carter et al. 2019)."""
    positions = np.asarray(positions, dtype=np.float64)
    lo, hi = np.percentile(positions, [low, high], axis=0)
    span = hi - lo
    lo, hi = lo - widen * span, hi + widen * span
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return ((np.clip(positions, lo, hi) - lo) / span).astype(np.float32)


__all__ = ["LAYOUTS", "second_moment", "whitening", "pca_2d", "layout_2d", "normalize_layout"]
