"""Atlas stage 6-7: render one icon per kept cell, in batches that survive interruption.

Each icon maximizes ``direction_neuron_cossim(layer, v')`` at the centre position of the layer, with
``v' = v·S`` the whitened cell vector (or ``v`` without whitening), Carter et al. 2019. An optional
``spatial_weight`` w adds ``w * mean over positions of (h · v') / C``, which asks every position, not
only the centre, to show the direction (0.5 by default; 0 gives the paper's objective; measured in
``experiments/atlas_cifar.py``). Cells are rendered in
fixed batches (cell order is the grid's row-major order); batch ``i`` is seeded from ``(seed, i)`` and
not from a running RNG, so rendering batch 3 alone gives the same pixels as rendering batches 0-3.

After a batch, its icons are written as PNGs (atomically) and then ``icons/batch-00003.json`` (also
atomically) records the batch's key and each icon's cosine. A batch whose record exists with the same
key is skipped, so an interrupted stage (Ctrl-C, kill) resumes at the batch it reached.

The icon's cosine is measured on the final icon, without transforms: the cosine between the layer's
activation at the centre position and the raw cell vector ``v``.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from nnfeat.seeds import stage_seed
from nnfeat.hooks import ActivationCapture
from nnfeat.io import read_json, save_image, write_json
from nnfeat.models.base import Model
from nnfeat.progress import progress_bar
from nnfeat.layouts import at_position
from nnfeat.objectives import direction, direction_neuron_cossim


def icon_name(row: int, col: int) -> str:
    """File name of the icon of cell (row, col), relative to the icons folder."""
    return f"r{row:03d}-c{col:03d}.png"


def vectors_digest(vectors: np.ndarray) -> str:
    """Short content hash of the cell vectors (part of each batch's key)."""
    return hashlib.sha256(np.ascontiguousarray(vectors, dtype=np.float32).tobytes()).hexdigest()[:16]


@torch.no_grad()
def centre_cosine(model: Model, layer: str, images: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Cosine between the ``layer`` activation of ``images`` (B,3,H,W) at the centre position and ``vectors`` (B,C)."""
    with ActivationCapture(model, [layer]) as capture:
        h = at_position(capture(model.fit(images.to(model.device)))[layer], None, None).float()
    return F.cosine_similarity(h, vectors.to(h.device).float(), dim=1, eps=1e-8).cpu()


def icon_objective(layer: str, directions: torch.Tensor, cossim_pow: float, spatial_weight: float = 0.0):
    """The icon objective for (B, C) directions: centre ``direction_neuron_cossim`` (+ the optional whole-map term)."""
    objective = direction_neuron_cossim(layer, directions, cossim_pow=cossim_pow)
    if spatial_weight:
        objective = objective + (spatial_weight / directions.shape[1]) * direction(layer, directions)
    return objective


def render_icons(model: Model, layer: str, vectors: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                 directory: Path, *, whitening: np.ndarray | None, icon_size: int, steps: int, batch: int,
                 seed: int, cossim_pow: float, transforms: str = "auto", spatial_weight: float = 0.0,
                 autocast: bool | None = None, key: str = "",
                 progress: bool = True, on_batch: Callable[[int, int], None] | None = None
                 ) -> tuple[np.ndarray, int]:
    """Render the icons of M cells into ``directory``; return their cosines (M,) float32 and the number of
    batches rendered now (the others were reused).

    Args:
        vectors: (M, C) raw cell vectors (mean activations).
        rows, cols: (M,) the cells' grid coordinates (for file names).
        whitening: (C, C) matrix S, or None for no whitening.
        icon_size: icon side in pixels (also the size the model sees).
        steps, batch: render steps, icons per render batch.
        seed: base seed; batch i renders with seed ``stage_seed(seed, "icons", i)``.
        cossim_pow: the exponent p of the objective.
        transforms: render transforms (``auto``, ``standard``, ``none``).
        autocast: the render's bf16 autocast (None: where the device has native bf16).
        spatial_weight: weight of the whole-map ``direction`` term (0 = the paper's objective).
        key: settings key; a batch record with another key is rendered again.
        on_batch: called as ``on_batch(batch_index, batch_count)`` after each batch is saved (it may raise,
            e.g. KeyboardInterrupt, to stop the stage; the saved batches stay).
    """
    from nnfeat.rendering import render

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    count = len(vectors)
    batches = math.ceil(count / batch) if count else 0
    raw = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    directions = raw @ torch.from_numpy(np.asarray(whitening, dtype=np.float32)) if whitening is not None else raw
    batch_key = f"{key}/{vectors_digest(vectors)}/{batch}"
    cosines = np.zeros(count, dtype=np.float32)
    rendered = 0
    bar = progress_bar(batches, f"icons {layer}", enabled=progress, unit="batch")
    for b in range(batches):
        cells = slice(b * batch, min((b + 1) * batch, count))
        record_path = directory / f"batch-{b:05d}.json"
        names = [icon_name(int(r), int(c)) for r, c in zip(rows[cells], cols[cells])]
        record = read_json(record_path) if record_path.is_file() else None
        if (record is not None and record.get("key") == batch_key and record.get("icons") == names
                and all((directory / name).is_file() for name in names)):
            cosines[cells] = record["cosines"]
        else:
            objective = icon_objective(layer, directions[cells], cossim_pow, spatial_weight)
            result = render(model, objective, size=icon_size, batch=len(names), steps=steps, transforms=transforms,
                            seed=stage_seed(seed, "icons", b), autocast=autocast, progress=False)
            icons = result.images
            cos = centre_cosine(model, layer, icons, raw[cells])
            for name, icon in zip(names, icons):
                save_image(directory / name, icon)
            cosines[cells] = cos.numpy()
            rendered += 1
            write_json(record_path, {"key": batch_key, "icons": names, "cosines": [float(c) for c in cos],
                                     "objective": result.final_values.tolist(), "seconds": result.elapsed})
        bar.update(1)
        if progress:
            bar.set_postfix_str(f"mean cosine {cosines[:cells.stop].mean():.3f}")
        if on_batch is not None:
            on_batch(b, batches)
    bar.close()
    return cosines, rendered


__all__ = ["render_icons", "icon_objective", "centre_cosine", "icon_name", "vectors_digest"]
