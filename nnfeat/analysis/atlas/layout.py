"""Atlas stages 2-3 and the first half of 4: whitening matrix, 2-D layout, layout normalization.

* :func:`whitening` computes ``S = inv(AᵀA / N)`` (uncentred, as in Carter et al. 2019) chunk by chunk, so the
  activations can stay memory-mapped. Near-singular directions (dead channels) are clamped, see below.
* :func:`layout_2d` embeds the activation vectors in 2-D with UMAP (cosine metric), t-SNE (cosine
  metric) or PCA (of the L2-normalized vectors, to match the cosine geometry); :func:`layout_fit` fits it on
  a seeded sample of at most :data:`LAYOUT_SAMPLE` rows and places the others with ``transform``.
* :func:`normalize_layout` clips each axis to its 1st..99th percentile widened by 10 % on each side and
  scales it to [0, 1] (Carter et al. 2019).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from nnfeat.device import one_thread
from nnfeat.errors import NnfeatError
from nnfeat.seeds import generator

LAYOUTS = ("umap", "tsne", "pca")


def second_moment(acts: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """(N, C) activations -> (C, C) float64 ``AᵀA / N``, accumulated in chunks on one thread (torch, so no BLAS
    thread pool of its own): the bits do not depend on the process's thread setting."""
    n, c = acts.shape
    total = torch.zeros((c, c), dtype=torch.float64)
    with one_thread():
        for start in range(0, n, chunk):
            block = torch.from_numpy(np.asarray(acts[start:start + chunk], dtype=np.float64))
            total += block.T @ block
    return (total / max(n, 1)).numpy()


def whitening(acts: np.ndarray, rel_floor: float = 1e-6, chunk: int = 65536) -> np.ndarray:
    """(N, C) activations -> (C, C) float32 whitening matrix ``S = inv(AᵀA / N)``.

    Eigenvalues below ``rel_floor`` times the largest are raised to that floor before inverting, so a
    dead channel (all zeros) gives a large but finite weight instead of an error. It does not change
    the icon objective for cell vectors, whose dead-channel component is zero anyway.
    """
    moment = torch.from_numpy(second_moment(acts, chunk))
    with one_thread():  # same bits whatever the process's thread setting
        values, vectors = torch.linalg.eigh(moment)
        floor = max(float(values.max()), 1e-12) * rel_floor
        inverse = (vectors / values.clamp_min(floor)) @ vectors.T
    return ((inverse + inverse.T) / 2).numpy().astype(np.float32)


def pca_fit(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) -> (mean (C,), axes (C, 2)) float64: the two leading principal axes, largest variance first,
    signs fixed so that each axis's largest loading is positive."""
    data = torch.from_numpy(np.asarray(x, dtype=np.float64))
    with one_thread():  # same bits whatever the process's thread setting
        mean = data.mean(0)
        centred = data - mean
        _, vectors = torch.linalg.eigh(centred.T @ centred)
    axes = vectors[:, -2:].flip(1)  # (C, 2), largest variance first
    signs = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    return mean, axes * signs


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(N, C) -> (N, 2) projections on the two leading principal axes (signs fixed: largest loading positive)."""
    mean, axes = pca_fit(x)
    return _pca_project(x, mean, axes)


def _pca_project(x: np.ndarray, mean: torch.Tensor, axes: torch.Tensor) -> np.ndarray:
    centred = torch.from_numpy(np.asarray(x, dtype=np.float64)) - mean
    with one_thread():
        return (centred @ axes).numpy().astype(np.float32)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


#: Default of ``fit_rows``: above this many samples a layout is fitted on a seeded sample of this size and the
#: other rows are placed with the fitted model's ``transform`` (see :func:`layout_fit`).
LAYOUT_SAMPLE = 100_000

#: Rows per ``transform`` call when the remaining rows are placed (fixed, so the result is too: umap's
#: transform picks its epoch count from the call's row count).
TRANSFORM_CHUNK = 65536


def layout_2d(acts: np.ndarray, method: str = "umap", *, seed: int = 0, n_neighbors: int = 20,
              min_dist: float = 0.01, verbose: bool = False) -> np.ndarray:
    """(N, C) activation vectors -> (N, 2) float32 layout positions, fitted on every row.

    Args:
        method: ``umap`` (umap-learn, cosine metric), ``tsne`` (scikit-learn, cosine metric, PCA init)
            or ``pca`` (first two principal components of the L2-normalized vectors).
        seed: random state of UMAP / t-SNE (makes them deterministic).
        n_neighbors, min_dist: UMAP settings (Lucid's simple notebook used 20 and 0.01; production 50, 0.05).
    """
    x = _checked(acts, method)
    if method == "pca":
        return pca_2d(_unit_rows(x))
    if method == "tsne":
        return _tsne(x, seed, verbose)
    return _umap(x, seed, n_neighbors, min_dist, verbose).embedding_.astype(np.float32)


def _checked(acts: np.ndarray, method: str) -> np.ndarray:
    if method not in LAYOUTS:
        raise NnfeatError(f"unknown layout '{method}': use one of {', '.join(LAYOUTS)}")
    x = np.asarray(acts, dtype=np.float32)
    if len(x) < 3:
        raise NnfeatError(f"only {len(x)} activation samples: a layout needs at least 3 (raise --n or give more images)")
    return x


def _tsne(x: np.ndarray, seed: int, verbose: bool) -> np.ndarray:
    from sklearn.manifold import TSNE  # lazy: only the t-SNE layout needs it

    n = len(x)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    tsne = TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity, random_state=seed,
                verbose=int(verbose))
    return tsne.fit_transform(x).astype(np.float32)


def _umap(x: np.ndarray, seed: int, n_neighbors: int, min_dist: float, verbose: bool, low_memory: bool = False):
    """A fitted ``umap.UMAP`` (cosine metric, 2-D) of (N, C) ``x``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # umap: random_state forces one thread
        warnings.filterwarnings("ignore", category=FutureWarning)
        import umap

        reducer = umap.UMAP(n_components=2, metric="cosine", n_neighbors=min(n_neighbors, len(x) - 1),
                            min_dist=min_dist, random_state=seed, verbose=verbose, low_memory=low_memory)
        return reducer.fit(x)


def fit_rows_of(count: int, fit_rows: int | None, seed: int) -> np.ndarray | None:
    """The sorted rows a layout of ``count`` samples is fitted on: None (all of them) when ``count`` is at
    most ``fit_rows`` (or ``fit_rows`` is None), else ``fit_rows`` rows drawn from ``(seed, "layout-sample")``."""
    if fit_rows is None or count <= fit_rows:
        return None
    return np.sort(torch.randperm(count, generator=generator(seed, "layout-sample"))[:fit_rows].numpy())


def layout_fit(acts: np.ndarray, method: str = "umap", *, seed: int = 0, n_neighbors: int = 20,
               min_dist: float = 0.01, fit_rows: int | None = LAYOUT_SAMPLE, chunk: int = TRANSFORM_CHUNK,
               verbose: bool = False) -> tuple[np.ndarray, dict]:
    """:func:`layout_2d` that scales: (N, C) activations (memory-mapped is fine) -> ((N, 2) float32, info).

    Up to ``fit_rows`` samples it is :func:`layout_2d` (the same bytes). Above, the layout is fitted on
    ``fit_rows`` rows drawn from ``seed`` (:func:`fit_rows_of`) and every other row is placed by the fitted
    model, ``chunk`` rows at a time: UMAP's ``transform`` (the row's neighbours among the fitted samples,
    then a few epochs of the same optimisation with the fitted points fixed; McInnes et al. 2018), or for PCA
    the projection on the sample's axes. t-SNE has no transform and is refused above ``fit_rows``.
    UMAP is fitted with ``low_memory=True`` then (its nearest-neighbour descent keeps less in memory).

    ``info``: ``{"method", "fit": "all" | "sample", "fit_samples", "samples"}``.
    """
    if method not in LAYOUTS:
        raise NnfeatError(f"unknown layout '{method}': use one of {', '.join(LAYOUTS)}")
    count = len(acts)
    rows = fit_rows_of(count, fit_rows, seed)
    if rows is None:
        info = {"method": method, "fit": "all", "fit_samples": count, "samples": count}
        return layout_2d(acts, method, seed=seed, n_neighbors=n_neighbors, min_dist=min_dist, verbose=verbose), info
    if method == "tsne":
        raise NnfeatError(f"t-SNE cannot place samples it was not fitted on, and {count} samples are more than the "
                          f"{fit_rows} it is fitted on: use --layout umap or pca, or at most {fit_rows} samples")
    info = {"method": method, "fit": "sample", "fit_samples": int(len(rows)), "samples": count}
    sample = _checked(acts[rows], method)
    if method == "pca":
        mean, axes = pca_fit(_unit_rows(sample))
        place = (lambda block: _pca_project(_unit_rows(block), mean, axes))
        fitted = place(sample)
    else:
        reducer = _umap(sample, seed, n_neighbors, min_dist, verbose, low_memory=True)
        fitted = reducer.embedding_.astype(np.float32)
        place = (lambda block: _umap_transform(reducer, block))
    positions = np.zeros((count, 2), dtype=np.float32)
    positions[rows] = fitted
    rest = np.ones(count, dtype=bool)
    rest[rows] = False
    rest_rows = np.flatnonzero(rest)
    for start in range(0, len(rest_rows), chunk):
        picked = rest_rows[start:start + chunk]  # sorted, so the memory map is read front to back
        positions[picked] = place(np.asarray(acts[picked], dtype=np.float32))
    return positions, info


def _umap_transform(reducer, block: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        return reducer.transform(block).astype(np.float32)


def normalize_layout(positions: np.ndarray, low: float = 1.0, high: float = 99.0, widen: float = 0.1) -> np.ndarray:
    """(N, 2) layout -> (N, 2) in [0, 1]: per axis clip to the [low, high] percentiles widened by ``widen``
    of their range on each side, then scale to [0, 1] (Carter et al. 2019)."""
    positions = np.asarray(positions, dtype=np.float64)
    lo, hi = np.percentile(positions, [low, high], axis=0)
    span = hi - lo
    lo, hi = lo - widen * span, hi + widen * span
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return ((np.clip(positions, lo, hi) - lo) / span).astype(np.float32)


__all__ = ["LAYOUTS", "LAYOUT_SAMPLE", "second_moment", "whitening", "pca_fit", "pca_2d", "layout_2d",
           "layout_fit", "fit_rows_of", "normalize_layout"]
