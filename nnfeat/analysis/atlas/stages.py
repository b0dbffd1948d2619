"""The atlas pipeline's cached stage files: the key of a stage (a digest of the settings it depends on and of its
inputs' keys), its record (``<stage>.json``: the key and the sha256 digest of its file) and the checks that decide
whether a stage file from an earlier run can be reused (right key, right digest, loads with the right shape and
finite values); and the ``cells.json`` entries of the kept cells. The pipeline is :func:`nnfeat.ops.atlas.build_atlas`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from nnfeat.analysis.atlas.cells import cell_entry
from nnfeat.analysis.atlas.grid import Grid
from nnfeat.analysis.atlas.icons import icon_name
from nnfeat.analysis.collect import file_digest
from nnfeat.data import ImageSet
from nnfeat.io import atomic_path, read_json

#: Cells list their mean attribution per class only up to this many classes (keeps cells.json small).
MAX_ATTRIBUTION_CLASSES = 100


def stage_key(*parts) -> str:
    """A short digest of ``parts`` (the settings a stage depends on, and its inputs' keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def read_json_or_none(path: Path):
    """A JSON file's content, or None when it is missing or damaged."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def meta_matches(meta_path: Path, key: str, path: Path) -> bool:
    """Whether the stage record ``meta_path`` has ``key`` and, when it recorded one, ``path``'s digest."""
    meta = read_json_or_none(meta_path)
    if not isinstance(meta, dict) or meta.get("key") != key or not path.is_file():
        return False
    return "digest" not in meta or file_digest(path) == meta["digest"]


def load_stage_npy(path: Path, meta_path: Path, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """A stage's ``.npy`` when its record has ``key``, the file's digest matches and it loads with ``shape``
    and finite values; else None (missing, stale, truncated or corrupt: the stage is computed again)."""
    if not meta_matches(meta_path, key, path):
        return None
    try:
        array = np.load(path)
    except (OSError, ValueError, EOFError):
        return None
    return array if array.shape == shape and np.isfinite(array).all() else None


def read_grid(path: Path) -> Grid:
    with np.load(path) as arrays:
        return Grid.from_arrays({k: arrays[k] for k in arrays.files})


def load_stage_grid(path: Path, meta_path: Path, key: str, count: int, channels: int) -> Grid | None:
    """``grid.npz`` when valid as in :func:`load_stage_npy` (every array loads; one cell per sample, cell
    vectors of ``channels``), else None."""
    if not meta_matches(meta_path, key, path):
        return None
    try:
        grid = read_grid(path)
    except Exception:  # a damaged zip raises many kinds of errors: all mean "compute the grid again"
        return None
    ok = grid.sample_cell.shape == (count,) and grid.vectors.shape == (len(grid), channels)
    return grid if ok else None


def layout_info(meta: dict, count: int, layout_sample: int) -> dict:
    """How the layout was made, for ``cells.json`` / ``atlas.json``: method, ``fit`` ("all" or "sample"),
    ``fit_samples``, ``samples`` and the ``layout_sample`` threshold."""
    return {"method": meta.get("method"), "fit": meta.get("fit", "all"), "fit_samples": meta.get("fit_samples", count),
            "samples": count, "layout_sample": layout_sample}


def save_npy(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as ``.npy`` (atomically); returns the file's digest."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
        digest = file_digest(tmp)
    return digest


def class_name(names: list[str] | None, index: int) -> str:
    return str(names[index]) if names is not None and 0 <= index < len(names) else str(index)


def cell_entries(grid: Grid, cosines: np.ndarray, class_names: list[str] | None, images: ImageSet) -> list[dict]:
    """One ``cells.json`` entry per kept cell; the fields are :data:`nnfeat.analysis.atlas.cells.CELL_FIELDS`."""
    entries = []
    for i in range(len(grid)):
        row, col = int(grid.rows[i]), int(grid.cols[i])
        top_class = attribution = labels = majority = None
        if grid.attr is not None:
            top = int(np.argmax(grid.attr[i]))
            top_class = (top, class_name(class_names, top))
            if grid.attr.shape[1] <= MAX_ATTRIBUTION_CLASSES:
                attribution = grid.attr[i]
        if grid.label_counts is not None:
            hist = grid.label_counts[i]
            order = np.argsort(-hist, kind="stable")
            labels = {images.label_name(int(k)): int(hist[k]) for k in order if hist[k] > 0}
            if hist.sum() > 0:
                top = int(order[0])
                majority = (top, images.label_name(top), hist[top] / hist.sum())
        entries.append(cell_entry(
            row, col, count=grid.counts[i], icon=f"icons/{icon_name(row, col)}", position=grid.positions[i],
            cosine=cosines[i], members=[m for m in grid.members[i] if m >= 0], top_class=top_class,
            attribution=attribution, labels=labels, majority_label=majority))
    return entries


__all__ = ["MAX_ATTRIBUTION_CLASSES", "stage_key", "read_json_or_none", "meta_matches", "load_stage_npy", "read_grid",
           "load_stage_grid", "layout_info", "save_npy", "class_name", "cell_entries"]
