"""How far the CIFAR atlas's cells let class agreement go, under other layout and cell settings (no rendering).

The ceiling of a cell: ``cifar10-resnet20``'s own head (the linear layer after the global pool of ``layer3``)
applied to the cell vector names the cell's majority dataset label. A faithful icon shows the cell vector, so
the share of cells where this holds bounds the icons' class agreement (measured by ``atlas_cifar.py``) from
above in practice. Each variant re-runs only the layout (cached per layout setting) and the grid of an
existing atlas folder's collection, so a variant costs one UMAP fit (about a minute) or nothing.

Usage (from the repository root; build the base first, icons are not needed)::

    NNFEAT_WEIGHTS_PATH=../shared/models python -m nnfeat atlas cifar10-resnet20 layer3 \\
        --images ../shared/data/cifar10_test.npz --samples 50000 --per-image 5 --grid 20 --icon-size 32 \\
        --steps 1 --out out/screen-base
    NNFEAT_WEIGHTS_PATH=../shared/models python experiments/atlas_ceiling.py --base out/screen-base

Variants (``--variants``, comma-separated ``name`` from :data:`VARIANTS`). Prints one row per variant and writes
``BASE/ceiling.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from nnfeat.analysis.atlas.grid import make_grid  # noqa: E402
from nnfeat.analysis.atlas.layout import layout_2d, normalize_layout  # noqa: E402
from nnfeat.analysis.collect import load_collected  # noqa: E402
from nnfeat.io import write_json  # noqa: E402

#: name -> (layout features, UMAP n_neighbors, UMAP min_dist, grid, min_count[, UMAP seed])
VARIANTS = {
    "base+seed=1": ("raw", 20, 0.01, 20, 5, 1),
    "base+seed=2": ("raw", 20, 0.01, 20, 5, 2),
    "umap=50/0.05+seed=1": ("raw", 50, 0.05, 20, 5, 1),
    "umap=50/0.05+seed=2": ("raw", 50, 0.05, 20, 5, 2),
    "base": ("raw", 20, 0.01, 20, 5),
    "min_count=20": ("raw", 20, 0.01, 20, 20),
    "min_count=50": ("raw", 20, 0.01, 20, 50),
    "min_count=100": ("raw", 20, 0.01, 20, 100),
    "grid=15": ("raw", 20, 0.01, 15, 5),
    "umap=50/0.05": ("raw", 50, 0.05, 20, 5),
    "umap=50/0.05+grid=15": ("raw", 50, 0.05, 15, 5),
    "umap=10/0.01": ("raw", 10, 0.01, 20, 5),
    "whitened": ("whitened", 20, 0.01, 20, 5),
    "whitened+grid=15": ("whitened", 20, 0.01, 15, 5),
}


def features(kind: str, acts: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """The rows the layout sees: the activations (``raw``) or the whitened activations ``A S^(1/2)``."""
    if kind == "raw":
        return np.asarray(acts, dtype=np.float32)
    values, vectors = np.linalg.eigh(whitening.astype(np.float64))
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    return (np.asarray(acts, dtype=np.float64) @ root).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=str(ROOT / "out" / "screen-base"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--images", default=str(SHARED / "data" / "cifar10_test.npz"))
    args = parser.parse_args()
    if not os.environ.get("NNFEAT_WEIGHTS_PATH") and (SHARED / "models").is_dir():
        os.environ["NNFEAT_WEIGHTS_PATH"] = str(SHARED / "models")
    torch.set_num_threads(1)
    base = Path(args.base)
    data = load_collected(base / "collect")
    whitening = np.load(base / "whitening.npy")
    labels = np.load(args.images)["labels"].astype(np.int64)
    from nnfeat.models.zoo import load_model

    head = dict(load_model("cifar10-resnet20", device="cpu").named_modules())["net.linear"]
    rows = []
    for name in args.variants.split(","):
        kind, neighbors, min_dist, grid_size, min_count, seed = (*VARIANTS[name], 0)[:6]
        cache = base / f"screen-layout-{kind}-{neighbors}-{min_dist}{f'-seed{seed}' if seed else ''}.npy"
        started = time.perf_counter()
        if cache.is_file():
            layout = np.load(cache)
        else:
            layout = layout_2d(features(kind, data.acts, whitening), "umap", seed=seed, n_neighbors=neighbors,
                               min_dist=min_dist)
            np.save(cache, layout)
        grid = make_grid(normalize_layout(layout), data.acts, size=grid_size, min_count=min_count,
                         image_index=data.image_index, labels=labels, num_labels=10)
        with torch.no_grad():
            named = head(torch.from_numpy(grid.vectors)).argmax(1).numpy()
        majority = grid.label_counts.argmax(1)
        share = grid.label_counts.max(1) / np.maximum(grid.label_counts.sum(1), 1)
        row = {"variant": name, "cells": len(grid), "samples_kept": int((grid.sample_cell >= 0).sum()),
               "ceiling": round(float((named == majority).mean()), 4),
               "majority_share": round(float(share.mean()), 4), "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(f"{name:24s} cells {row['cells']:4d}  kept {row['samples_kept']:6d}  ceiling {row['ceiling']:.1%}  "
              f"majority share {row['majority_share']:.1%}  ({row['seconds']} s)", flush=True)
    write_json(base / "ceiling.json", {"variants": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
