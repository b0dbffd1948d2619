"""Atlas stage 6-7: render one icon per kept cell, in batches that survive interruption.

Each icon maximizes ``direction_neuron_cossim(layer, v')`` at the centre position of the layer, with
``v' = v·S`` the whitened cell vector (or ``v`` without whitening), Carter et al. 2019. An optional
``spatial_weight`` w adds ``w * mean over positions of (h · v') / C``, which asks every position, not
only the centre, to show the direction (0.5 by default; 0 gives the paper's objective; measured in
``experiments/atlas_cifar.py``). Cells are rendered in
fixed batches (cell order is the grid's row-major order); batch ``i`` is seeded from ``(seed, i)`` and
not from a running RNG, so rendering batch 3 alone gives the same pixels as rendering batches 0-3.

After a batch, its icons are written as PNGs (atomically) and then ``icons/batch-00003.json`` (also
atomically) records the batch's key and each icon's cosine. A batch whose record parses, has the same key
and whose PNGs decode at the icon size is skipped, so an interrupted stage (Ctrl-C, kill) resumes at the batch
it reached and a damaged file is rendered again. Under a process group batch ``i`` is rendered by rank
``i % world`` (:mod:`nnfeat.distributed`).

The icon's cosine is measured on the final icon, without transforms: the cosine between the layer's
activation at the centre position and the raw cell vector ``v``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nnfeat.distributed import Ranks
from nnfeat.seeds import stage_seed
from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.io import read_json, save_image, write_json
from nnfeat.models.base import Model
from nnfeat.progress import progress_bar
from nnfeat.layouts import at_position
from nnfeat.engine.loop import RenderOutput, render_images
from nnfeat.engine.objectives import direction, direction_neuron_cossim
from nnfeat.engine.settings import RenderOptions


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


def render_best_of(model: Model, layer: str, directions: torch.Tensor, tries: int, *, cossim_pow: float,
                   spatial_weight: float = 0.0, cosine_to: torch.Tensor | None = None, **render_args) -> RenderOutput:
    """Render ``tries`` candidates per direction and keep, per icon, the one with the highest final objective.

    The production atlas kept the best of several tries per icon (Carter et al., Distill 2019). The tries are
    extra batch items of ONE render (item ``t * B + i`` is try ``t`` of icon ``i``; the items do not interact:
    the loss is a sum and Adam is element-wise), so ``tries=1`` is exactly ``render(model, icon_objective(...))``.
    The choice uses only the atlas's own measures: by default the objective (``icon_objective``, evaluated by
    the render on the final, untransformed images: ``final_values``); with ``cosine_to`` the atlas's fidelity,
    :func:`centre_cosine` of the final candidate to those vectors. Ties keep the earliest try (deterministic).

    Args:
        directions: (B, C) objective directions (whitened cell vectors).
        tries: candidates per icon (at least 1).
        cosine_to: (B, C) raw cell vectors: choose by centre cosine to them instead of by the objective.
        render_args: the render's settings, as :func:`nnfeat.render` takes them (size, steps, seed, transforms,
            autocast, ...; :class:`~nnfeat.engine.settings.RenderOptions`).
    Returns:
        a :class:`~nnfeat.engine.loop.RenderOutput` whose ``images`` (B, 3, s, s) and ``final_values`` (B,) are
        the kept candidates; ``values`` (steps, tries * B) and ``settings`` are the whole render's, and
        ``settings["chosen_try"]`` (B,) says which try each icon kept, ``settings["chosen_score"]`` (B,) its score.
    """
    if tries < 1:
        raise NnfeatError(f"tries must be at least 1, got {tries}")
    count = directions.shape[0]
    objective = icon_objective(layer, directions.repeat(tries, 1), cossim_pow, spatial_weight)
    result = render_images(model, objective, RenderOptions(batch=count * tries, **render_args))
    scores = result.final_values if cosine_to is None else \
        centre_cosine(model, layer, result.images, cosine_to.repeat(tries, 1))
    scores = scores.view(tries, count)
    chosen = scores.argmax(0)  # the first maximum on ties
    items = chosen * count + torch.arange(count)
    history = {step: images[items] for step, images in result.history.items()}
    return replace(result, history=history, final_values=result.final_values[items],
                   settings={**result.settings, "tries": tries, "chosen_try": chosen.tolist(),
                             "chosen_score": scores.max(0).values.tolist()})


def _valid_record(path: Path, key: str, names: list[str], icon_size: int) -> dict | None:
    """A batch record that can be reused (see :func:`render_icons`), else None."""
    try:
        record = read_json(path)
        if record.get("key") != key or record.get("icons") != names or len(record.get("cosines", ())) != len(names):
            return None
        for name in names:
            with Image.open(path.parent / name) as image:
                image.load()  # decodes every chunk: a truncated or corrupt PNG raises
                if image.size != (icon_size, icon_size):
                    return None
    except Exception:  # missing, unparsable, truncated: all mean "render the batch again"
        return None
    return record


def render_icons(model: Model, layer: str, vectors: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                 directory: Path, *, whitening: np.ndarray | None, icon_size: int, steps: int, batch: int,
                 seed: int, cossim_pow: float, transforms: str = "auto", spatial_weight: float = 0.0,
                 autocast: bool | None = None, key: str = "",
                 progress: bool = True, on_batch: Callable[[int, int], None] | None = None,
                 ranks: Ranks | None = None) -> tuple[np.ndarray, int]:
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
        ranks: only the batches ``b`` with ``b % world == rank`` (:meth:`Ranks.mine`); the cosines of the
            others stay 0 (None: every batch).

    A batch is reused only when its record parses, has the key and icon names and every icon PNG decodes at
    ``icon_size`` (a truncated or corrupt file means the batch is rendered again).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    count = len(vectors)
    batches = math.ceil(count / batch) if count else 0
    raw = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    directions = raw @ torch.from_numpy(np.asarray(whitening, dtype=np.float32)) if whitening is not None else raw
    batch_key = f"{key}/{vectors_digest(vectors)}/{batch}"
    cosines = np.zeros(count, dtype=np.float32)
    rendered = 0
    mine = ranks.mine(batches) if ranks is not None else list(range(batches))
    bar = progress_bar(len(mine), f"icons {layer}", enabled=progress, unit="batch")
    for b in mine:
        cells = slice(b * batch, min((b + 1) * batch, count))
        record_path = directory / f"batch-{b:05d}.json"
        names = [icon_name(int(r), int(c)) for r, c in zip(rows[cells], cols[cells])]
        record = _valid_record(record_path, batch_key, names, icon_size)
        if record is not None:
            cosines[cells] = record["cosines"]
        else:
            objective = icon_objective(layer, directions[cells], cossim_pow, spatial_weight)
            options = RenderOptions(size=icon_size, batch=len(names), steps=steps, transforms=transforms,
                                    seed=stage_seed(seed, "icons", b), autocast=autocast, progress=False)
            result = render_images(model, objective, options)
            icons = result.images
            cos = centre_cosine(model, layer, icons, raw[cells])
            for name, icon in zip(names, icons):
                save_image(directory / name, icon)
            cosines[cells] = cos.numpy()
            rendered += 1
            write_json(record_path, {"key": batch_key, "icons": names, "cosines": [float(c) for c in cos],
                                     "objective": result.final_values.tolist()})  # no timing: same work, same bytes
        bar.update(1)
        if progress:
            bar.set_postfix_str(f"mean cosine {cosines[:cells.stop].mean():.3f}")
        if on_batch is not None:
            on_batch(b, batches)
    bar.close()
    return cosines, rendered


__all__ = ["render_icons", "icon_objective", "render_best_of", "centre_cosine", "icon_name", "vectors_digest"]
