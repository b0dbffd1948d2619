"""Class atlases: the class a user names, and the samples whose attribution favours it (Carter et al.,
"Activation Atlas", Distill 2019, class atlases)."""

from __future__ import annotations

import numpy as np

from nnfeat.errors import NnfeatError, nearest


def resolve_class(value: int | str, names: list[str] | None, count: int) -> int:
    """A class given as index or name -> its index, or a one-line error naming valid choices."""
    text = str(value)
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < count:
            raise NnfeatError(f"class {index} out of range: the model has classes 0..{count - 1}")
        return index
    if names is not None and text in names:
        return names.index(text)
    near = nearest(text, names or [])
    hint = f"; nearest: {', '.join(near)}" if near else ""
    raise NnfeatError(f"unknown class '{text}'{hint} (give a class name or an index 0..{count - 1})")


def class_selection(attr: np.ndarray, cls: int, top: int) -> np.ndarray:
    """Sorted sample rows whose top attribution is ``cls`` or that are among ``cls``'s largest attributions.

    "Largest" means the ``min(top, N // K)`` highest values of ``attr[:, cls]`` (N samples, K classes): the
    paper's 2 000-3 000 of 1 M samples, but never more than a class's fair share on small collections,
    where ``top`` alone would keep every sample.
    """
    attr = np.asarray(attr)
    favoured = np.argmax(attr, axis=1) == cls
    column = attr[:, cls]
    top = min(top, len(column) // max(attr.shape[1], 1))
    if top > 0:
        favoured[np.argpartition(-column, top - 1)[:top]] = True
    return np.flatnonzero(favoured)


__all__ = ["resolve_class", "class_selection"]
