"""Projections of a layer's pooled activations to 2-D, and how much structure the picture keeps (tensors in, tensors out).

* :func:`project_2d` -- (N, D) vectors -> (N, 2) by a method registered in :data:`PROJECTIONS`: ``pca`` (the
  two leading principal axes of the centred vectors, Pearson 1901), ``tsne`` (van der Maaten & Hinton 2008,
  scikit-learn) or ``umap`` (McInnes et al. 2018, umap-learn); the last two on the cosine metric, like the atlas
  layout;
* :func:`trustworthiness` -- Venna & Kaski (2001): 1 means every 2-D neighbour was also a neighbour in D
  dimensions; computed exactly in row blocks (memory O(block * N), not O(N^2)), the same number as
  :func:`sklearn.manifold.trustworthiness` (tested against it);
* :func:`knn_accuracy` -- leave-one-out k-nearest-neighbour label accuracy (majority vote of the k nearest other
  points; ties go to the nearest of the tied labels' points), in the 2-D map or in D dimensions;
* :func:`chance_accuracy` -- the share of the most common label (what a constant guess scores);
* :func:`top_channels` -- each row's strongest channels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from nnfeat.analysis.atlas.layout import layout_2d, pca_2d
from nnfeat.analysis.registry import Registry
from nnfeat.errors import NnfeatError

#: the 2-D layouts by name: ``layout(x (N, D) float32, *, seed, n_neighbors, min_dist) -> (N, 2)``
PROJECTIONS = Registry("projection method")


@PROJECTIONS.register("pca")
def _pca(x: np.ndarray, **_) -> np.ndarray:
    return pca_2d(x)


def _neighbour_layout(method: str):
    def layout(x: np.ndarray, *, seed: int, n_neighbors: int, min_dist: float) -> np.ndarray:
        return layout_2d(x, method, seed=seed, n_neighbors=n_neighbors, min_dist=min_dist)
    return layout


PROJECTIONS.register("tsne", _neighbour_layout("tsne"))
PROJECTIONS.register("umap", _neighbour_layout("umap"))
METHODS = tuple(PROJECTIONS.names())


def project_2d(vectors: np.ndarray, method: str = "umap", *, seed: int = 0, n_neighbors: int = 15,
               min_dist: float = 0.1) -> np.ndarray:
    """(N, D) float vectors -> (N, 2) float32 positions by ``method`` (see the module docstring).

    PCA is of the centred vectors, axes ordered by variance, each axis's sign fixed so its largest loading is
    positive (deterministic); t-SNE and UMAP are seeded by ``seed``.
    """
    if method not in METHODS:
        raise NnfeatError(f"unknown method '{method}': use {', '.join(METHODS)}")
    x = np.asarray(vectors, dtype=np.float32)
    if len(x) < 3:
        raise NnfeatError(f"only {len(x)} images: a projection needs at least 3 (raise --n)")
    return PROJECTIONS[method](x, seed=seed, n_neighbors=n_neighbors, min_dist=min_dist)


def explained_variance(vectors: np.ndarray, components: int = 2) -> list[float]:
    """The share of the centred (N, D) vectors' variance along each of the ``components`` leading principal axes."""
    data = torch.from_numpy(np.asarray(vectors, dtype=np.float64))
    centred = data - data.mean(0)
    values = torch.linalg.eigvalsh(centred.T @ centred).flip(0).clamp_min(0)
    total = float(values.sum())
    return [float(v) / total if total > 0 else 0.0 for v in values[:components]]


def _block_distances(x: torch.Tensor, rows: slice) -> torch.Tensor:
    """Squared Euclidean distances from ``x[rows]`` to every row of (N, D) ``x`` -> (b, N), self at +inf."""
    block = x[rows]
    d = (block.square().sum(1, keepdim=True) - 2 * block @ x.T + x.square().sum(1)).clamp_min_(0)
    index = torch.arange(rows.start, rows.start + len(block))
    d[torch.arange(len(block)), index] = float("inf")
    return d


def _neighbours(x: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """(N, D) -> (N, k) indices of each row's k nearest other rows, nearest first."""
    out = []
    for start in range(0, len(x), block):
        d = _block_distances(x, slice(start, start + block))
        out.append(d.topk(k, dim=1, largest=False, sorted=True).indices)
    return torch.cat(out)


def trustworthiness(vectors: np.ndarray, positions: np.ndarray, k: int = 10, block: int = 512) -> float:
    """Trustworthiness (Venna & Kaski 2001) of (N, 2) ``positions`` as a map of (N, D) ``vectors`` at ``k``.

    ``T = 1 - 2 / (N k (2N - 3k - 1)) * sum_i sum_{j in U_k(i)} (r(i, j) - k)``, where U_k(i) are the points among
    i's k nearest in 2-D that are not among its k nearest in D dimensions and r(i, j) is j's rank among i's
    neighbours in D dimensions (1 = nearest). Euclidean distances in both spaces.
    """
    x = torch.from_numpy(np.asarray(vectors, dtype=np.float64))
    y = torch.from_numpy(np.asarray(positions, dtype=np.float64))
    n = len(x)
    if not 1 <= k < n / 2:
        raise NnfeatError(f"trustworthiness needs 1 <= k < N/2: k={k}, N={n} (raise --n or lower --k)")
    near_2d = _neighbours(y, k, block)  # (N, k)
    penalty = 0.0
    for start in range(0, n, block):
        rows = slice(start, start + block)
        d = _block_distances(x, rows).float()  # (b, N) distances in D dimensions (compared in float32: 2x faster)
        dj = d.gather(1, near_2d[rows])  # (b, k): distance to each 2-D neighbour
        # rank of j among i's neighbours in D dims: 1 + how many points are strictly closer (exact ties, which
        # float distances almost never have, count as not closer)
        rank = 1 + (d.unsqueeze(1) < dj.unsqueeze(2)).sum(2)
        penalty += float((rank - k).clamp_min(0).sum())
    return 1.0 - 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0)) * penalty


def knn_accuracy(points: np.ndarray, labels: Sequence[int] | np.ndarray, k: int = 10, block: int = 512) -> float:
    """Leave-one-out k-NN label accuracy of (N, P) ``points`` with (N,) integer ``labels`` (Euclidean; each point
    is classified by the majority label of its k nearest other points; a tie goes to the tied label whose point
    comes first in distance order)."""
    x = torch.from_numpy(np.asarray(points, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    n = len(x)
    if not 1 <= k < n:
        raise NnfeatError(f"k-NN accuracy needs 1 <= k < N: k={k}, N={n} (raise --n or lower --k)")
    classes = int(y.max()) + 1
    near = _neighbours(x, k, block)  # (N, k), nearest first
    votes = torch.zeros(n, classes, dtype=torch.float64)
    # each vote weighs 1, plus a tiny nearest-first bonus that only breaks ties
    weight = 1.0 + (k - torch.arange(k, dtype=torch.float64)) * 1e-6 / k
    votes.scatter_add_(1, y[near], weight.expand(n, k).contiguous())
    return float((votes.argmax(1) == y).double().mean())


def chance_accuracy(labels: Sequence[int] | np.ndarray) -> float:
    """The share of the most common label: the accuracy of always guessing it."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    return float(counts.max() / counts.sum())


def top_channels(vectors: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) -> ((N, k) channel indices, (N, k) values), strongest first."""
    values, index = torch.from_numpy(np.asarray(vectors, dtype=np.float32)).topk(min(k, vectors.shape[1]), dim=1)
    return index.numpy(), values.numpy()


__all__ = ["PROJECTIONS", "METHODS", "project_2d", "explained_variance", "trustworthiness", "knn_accuracy",
           "chance_accuracy", "top_channels"]
