"""The files of the collection stage (:mod:`nnfeat.analysis.collect`): the per-batch records
``batches/b-00012.npz`` (each batch's rows and the settings key, written atomically), the checks that decide
whether a record or a whole collection can be reused (key, shapes, the sha256 digests recorded at the merge),
and the merge of the records into the memory-mapped ``acts.npy`` / ``attr.npy`` / ``samples.npy`` and
``collect.json`` (written last).
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np

from nnfeat.errors import NnfeatError
from nnfeat.io import atomic_path, file_digest, read_json, write_json  # file_digest: re-exported

META_FILE = "collect.json"
BATCH_DIR = "batches"


def read_meta(path: Path) -> dict | None:
    """``collect.json`` as a dict, or None when it is missing or damaged."""
    try:
        meta = read_json(path)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def complete_and_valid(directory: Path, meta: dict, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether ``directory`` holds a complete collection of ``meta``: ``collect.json`` says so with the same
    settings, and every array file loads with the right shape and the digest recorded at the merge."""
    old = read_meta(directory / META_FILE)
    if old is None or not old.get("complete") or any(old.get(k) != v for k, v in meta.items()):
        return False
    digests = old.get("digests") or {}
    for name, shape in shapes.items():
        path = directory / f"{name}.npy"
        try:
            array = np.load(path, mmap_mode="r")
            if array.shape != shape or (name in digests and file_digest(path) != digests[name]):
                return False
        except (OSError, ValueError, EOFError):
            return False
    return True


def batch_path(directory: Path, index: int) -> Path:
    return directory / BATCH_DIR / f"b-{index:05d}.npz"


def read_batch(path: Path, key: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray] | None:
    """The arrays of one batch record, or None when it is missing, damaged, of another key or shape."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as record:
            if str(record["key"]) != key:
                return None
            arrays = {name: record[name] for name in shapes}  # reads every member (zip CRCs checked)
    except Exception:  # a truncated or corrupt zip raises many kinds of errors: all mean "redo the batch"
        return None
    if any(arrays[name].shape != shape for name, shape in shapes.items()):
        return None
    return arrays


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays as an uncompressed ``.npz`` (atomically) whose bytes depend on the arrays only (numpy's
    ``savez`` stamps the current time into the zip entries)."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, value in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(info, "w", force_zip64=True) as handle:
                    np.lib.format.write_array(handle, np.asanyarray(value), allow_pickle=False)
    return path


def merge_batches(directory: Path, meta: dict, widths: dict[str, int], total: int, batches: int, rows_of,
                  batch_shapes, record_key: str) -> None:
    """Rank 0: stream the batch records into ``<name>.npy`` (each filled memory-mapped in a hidden temporary,
    then renamed), write ``collect.json`` and delete ``batches/``. A record found damaged here (nothing should
    damage it between the barrier and now, but a file system can) raises."""
    meta_path = directory / META_FILE
    if meta_path.exists():
        meta_path.unlink()  # a stale or partial manifest must not vouch for the files written next
    digests = {}
    for name, width in widths.items():
        dtype = np.int64 if name == "samples" else np.float32
        path = directory / f"{name}.npy"
        with atomic_path(path) as tmp:
            target = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(total, width))
            row = 0
            for b in range(batches):
                arrays = read_batch(batch_path(directory, b), f"{record_key}/{b}", batch_shapes(b))
                if arrays is None:
                    raise NnfeatError(f"the collection record of batch {b} in '{directory / BATCH_DIR}' went missing "
                                      "during the merge: run the command again")
                target[row:row + rows_of(b)] = arrays[name]
                row += rows_of(b)
            target.flush()
            del target
            digests[name] = file_digest(tmp)
    write_json(meta_path, {**meta, "batches_done": batches, "complete": True, "digests": digests})
    shutil.rmtree(directory / BATCH_DIR, ignore_errors=True)  # merged: the per-batch records are not needed


__all__ = ["META_FILE", "BATCH_DIR", "file_digest", "read_meta", "complete_and_valid", "batch_path", "read_batch",
           "save_npz", "merge_batches"]
