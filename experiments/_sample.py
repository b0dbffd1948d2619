"""The one way a benchmark draws images: a seeded sample stratified over the labels, in a seeded mixed order.

``../shared/data/cifar10_test.npz`` is sorted by class, so its first N images are N airplanes; every benchmark in
``experiments/`` that draws images calls :func:`stratified` instead of taking ``range(n)``.

Per class, ``n`` images are shared out in proportion to the class's size (largest remainders first, ties to the
lower class id), drawn without replacement from ``seed``; the sample is then put in a seeded random order, so any
prefix of it (``x[:64]``) is mixed too. A source without labels gets a plain seeded sample.
"""

from __future__ import annotations

import numpy as np


def stratified(images, n: int | None, seed: int = 0):
    """``n`` images of an :class:`nnfeat.data.ImageSet` (all of them when ``n`` is None or at least its size),
    stratified over its labels and shuffled, both from ``seed``. Returns an ImageSet (labels and classes kept)."""
    total = len(images)
    if n is None or n >= total:
        n = total
    if n < 1:
        raise ValueError(f"a sample needs n >= 1; got {n}")
    rng = np.random.default_rng(int(seed))
    if images.labels is None:
        chosen = rng.choice(total, size=n, replace=False)
        return images.subset(chosen)
    labels = np.asarray(images.labels).astype(np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * n / total
    take = np.floor(share).astype(np.int64)
    order = np.lexsort((classes, -(share - take)))  # largest remainder first, then the lower class id
    take[order[:n - int(take.sum())]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False)
              for c, k in zip(classes, take) if k]
    picked = np.concatenate(chosen)
    return images.subset(picked[rng.permutation(len(picked))])


def describe(images, n: int, seed: int = 0) -> str:
    """One line for a benchmark's printout: how the sample was drawn."""
    return f"a seeded stratified sample of {n} (seed {seed}, mixed classes)" if images.labels is not None else \
        f"a seeded random sample of {n} (seed {seed}; no labels to stratify by)"


__all__ = ["stratified", "describe"]
