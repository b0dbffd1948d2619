"""The projection operation and its result: :func:`project` -> :class:`ProjectionResult` (kind ``projection``).

For each layer: the images' pooled activations (the shared, cached collection stage :mod:`nnfeat.analysis.collect`),
laid out in 2-D (:mod:`nnfeat.analysis.projection`), drawn (:mod:`nnfeat.views.projection_page`) as a PNG
scatter coloured by label (optionally with image thumbnails on a coarse grid), and scored: trustworthiness of the
layout and k-NN label accuracy in the 2-D map, beside the same k-NN accuracy in the layer's own space and the
chance level. Files:

* ``projection.png`` -- the panels side by side, scores in their captions; ``projection-<layer>.png`` each;
* ``projection.html`` + ``projection-sprite.png`` -- the interactive scatter (:mod:`nnfeat.views.scatter_page`);
* ``projection.npz`` -- ``xy_<i>`` (N, 2) per layer, ``indices`` (N,), ``labels`` (N,) when known;
* ``projection.json`` -- settings, scores, timings, which stages came from the cache;
* with ``tensorboard=DIR``: a TensorBoard Projector folder (:mod:`nnfeat.views.projector`).

The ``cache`` folder keeps each layout as ``layout-<layer>-<pool>-<method>.npy`` beside its record (``.json``: the
key and the file's digest); a layout whose record or file is missing, truncated or garbage is computed again
(:func:`nnfeat.io.is_whole`), and the hidden temporaries of layouts a killed run left are removed.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch

from nnfeat import distributed
from nnfeat.analysis.collect import POOLS, images_key, pooled
from nnfeat.analysis.projection import METHODS, chance_accuracy, explained_variance, knn_accuracy, project_2d, \
    trustworthiness
from nnfeat.data import ImageSet
from nnfeat.errors import NnfeatError
from nnfeat.io import atomic_path, file_digest, is_whole, read_json, remove_stale_temporaries, save_image, write_json
from nnfeat.models.base import as_model
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.views import projection_page as page
from nnfeat.views.projection_page import PALETTE
from nnfeat.views.projector import Embedding, sprite_layout, write_projector


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def parse_layers(text: str | Sequence[str]) -> list[str]:
    """``"layer1,layer3"`` (or a list) -> layer names; a one-line error for channel selectors or repeats."""
    names = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t) for t in text]
    if not names or any(not n for n in names):
        raise NnfeatError(f"layers '{text}': give LAYER or LAYER,LAYER2,... (no empty names)")
    for name in names:
        if ":" in name or "@" in name:
            raise NnfeatError(f"'{name}': a projection lays out whole layers; write LAYER or LAYER,LAYER2 "
                              "without :channels or @positions")
    if len(set(names)) < len(names):
        raise NnfeatError(f"layers '{text}' name a layer twice")
    return names


@dataclass(repr=False)
class ProjectionResult(Result):
    """What :func:`project` returns. ``xy[layer]`` (N, 2) positions, ``vectors[layer]`` (N, C) pooled activations,
    ``indices`` (N,) image indices in ``source``, ``labels`` (N,) int labels or None, ``scores[layer]`` the
    quality numbers, ``thumbs`` (N, 3, t, t) thumbnails in [0, 1] or None."""

    model: str
    layers: list[str]
    method: str
    pool: str
    source: str
    xy: dict[str, np.ndarray]
    vectors: dict[str, np.ndarray]
    indices: np.ndarray
    labels: np.ndarray | None
    label_names: list[str]
    scores: dict[str, dict]
    k: int
    seed: int
    thumbs: torch.Tensor | None = None
    #: the URL (relative to ``projection.html``) of an identical sprite another page wrote; None: write our own
    shared_sprite: str | None = None
    thumbnails_on_plot: bool = False
    timings: dict = field(default_factory=dict)
    cached: dict = field(default_factory=dict)
    device: str = "cpu"
    elapsed: float = 0.0
    command: str | None = None
    tensorboard: str | None = None
    kind: ClassVar[str] = "projection"
    run_fields: ClassVar[tuple[str, ...]] = ("timings_seconds", "cached")

    @property
    def sheet_columns(self) -> int:  # type: ignore[override]
        return len(self.layers)

    @property
    def images(self) -> torch.Tensor:
        plots = [torch.from_numpy(self.plot(layer).copy()).permute(2, 0, 1).float() / 255 for layer in self.layers]
        return torch.stack(plots)

    def caption(self, layer: str) -> str:
        s = self.scores[layer]
        line = f"{layer}: trust {s['trustworthiness']:.3f}"
        if s.get("knn_accuracy_2d") is not None:
            line += f"\nkNN {s['knn_accuracy_2d']:.3f} (layer {s['knn_accuracy_layer']:.3f}, chance {s['chance']:.3f})"
        return line

    def captions(self) -> list[str]:
        return [self.caption(layer) for layer in self.layers]

    def title(self) -> str:
        return f"{self.model}  {self.method} of {self.pool}-pooled {','.join(self.layers)}  ({len(self.indices)} images of {self.source})"

    def plot(self, layer: str) -> np.ndarray:
        """(H, W, 3) uint8: the layer's scatter, points coloured by label, a legend below."""
        thumbs = self.thumbs if self.thumbnails_on_plot else None
        return page.plot(self.xy[layer], self.labels, self.label_names, self.seed, thumbs)

    def record(self) -> dict:
        return {"model": self.model, "layers": self.layers, "method": self.method, "pool": self.pool,
                "source": self.source, "images": len(self.indices), "k": self.k, "seed": self.seed,
                "device": self.device, "scores": self.scores, "timings_seconds": self.timings,
                "cached": self.cached, "tensorboard": self.tensorboard,
                "labels": self.label_names if self.labels is not None else None}

    def write_files(self, out: Path) -> list[str]:
        files = []
        for i, layer in enumerate(self.layers):
            files.append(save_image(out / f"projection-{_safe(layer)}.png", self.plot(layer)).name)
        arrays = {f"xy_{i}": self.xy[layer] for i, layer in enumerate(self.layers)}
        arrays["indices"] = np.asarray(self.indices)
        if self.labels is not None:
            arrays["labels"] = np.asarray(self.labels)
        with atomic_path(out / "projection.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, layers=np.array(self.layers), **arrays)
        files.append("projection.npz")
        files.extend(page.write_page(out / "projection.html", title=self.title(), layers=self.layers, xy=self.xy,
                                     vectors=self.vectors, scores=self.scores, indices=self.indices,
                                     labels=self.labels, label_names=self.label_names, method=self.method,
                                     pool=self.pool, k=self.k, thumbs=self.thumbs, shared_sprite=self.shared_sprite))
        return files


def _thumbnails(images: ImageSet, size: int, batch: int = 512) -> torch.Tensor:
    """(N, 3, size, size) thumbnails in [0, 1] of every image, in order."""
    return torch.cat(list(images.iter_batches(batch, (size, size))))


def _cached_layout(cache: Path, name: str, key: str, n: int, compute) -> tuple[np.ndarray, bool]:
    """The layout ``<name>.npy`` (n, 2) from the cache when its record ``<name>.json`` has ``key`` and the file's
    digest and it loads finite with that shape; else ``compute()``, saved with its record (a truncated or
    garbage file, or record, is computed again, never a traceback)."""
    path, meta = cache / f"{name}.npy", cache / f"{name}.json"
    try:
        record = read_json(meta)
    except (OSError, ValueError):  # missing, truncated or not text: no record
        record = None
    if isinstance(record, dict) and record.get("key") == key and is_whole(path, record.get("digest")):
        value = np.load(path, allow_pickle=False)
        if value.shape == (n, 2) and np.isfinite(value).all():
            return value, True
    value = compute()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, value)
        digest = file_digest(tmp)
    write_json(meta, {"key": key, "digest": digest})
    return value, False


def project(model, layers: str | Sequence[str], images: ImageSet, *, method: str = "umap", pool: str = "mean",
            k: int = 10, seed: int = 0, batch_size: int = 128, cache: str | Path | None = None,
            thumbnails: bool = False, thumb_size: int = 32, tensorboard: str | Path | None = None,
            activations: dict[str, np.ndarray] | None = None, progress: bool = True) -> ProjectionResult:
    """Lay out ``images``' pooled activations of each of ``layers`` in 2-D by ``method`` and score the layouts.

    Args:
        layers: ``"layer3"``, ``"layer1,layer3"`` or a list of names.
        method: ``pca``, ``tsne`` or ``umap``; pool: ``mean``, ``max`` or ``center`` (token layers: see
            :mod:`nnfeat.analysis.collect`).
        k: neighbours for trustworthiness and k-NN accuracy.
        cache: a folder for the collection and layout stages (a second call with another ``method`` reuses the
            activations); None: a temporary folder.
        thumbnails: paste image thumbnails on the PNG scatter (the HTML page always shows them on hover).
        tensorboard: also write a TensorBoard Projector folder there.
        activations: {layer: (N, C) pooled rows of ``images``, in their order} that the caller already has (e.g.
            taken from the collection of a larger set): those layers skip the collection.
    """
    started, began = time.perf_counter(), time.time()
    model = as_model(model)
    names = parse_layers(layers)
    if method not in METHODS:
        raise NnfeatError(f"unknown method '{method}': use {', '.join(METHODS)}")
    if pool not in POOLS:
        raise NnfeatError(f"unknown pooling '{pool}': use {', '.join(POOLS)}")
    for name in names:
        model.units(name)  # one-line error for an unknown layer, before any work
    n = len(images)
    if n < 3:
        raise NnfeatError(f"only {n} images: a projection needs at least 3 (raise --n)")
    if not 1 <= k < n / 2:
        raise NnfeatError(f"--k {k} is out of range for {n} images: use 1 <= k < {max(1, (n + 1) // 2)}")
    if tensorboard is not None:
        sprite_layout(n, thumb_size)  # a sprite that cannot fit is an error before any work
    temp = tempfile.TemporaryDirectory(prefix="nnfeat-project-") if cache is None else None
    root = Path(temp.name if temp else cache)
    if temp is None and distributed.current().writer:  # the layout temporaries a killed run left in the cache
        remove_stale_temporaries(root, older_than=began, prefix="layout-")
    weights = getattr(model, "weights", None)
    xy, vectors, scores, timings, cached = {}, {}, {}, {}, {}
    labels = np.asarray(images.labels) if images.labels is not None else None
    label_names = [images.label_name(i) for i in range(int(labels.max()) + 1)] if labels is not None else []
    chance = chance_accuracy(labels) if labels is not None else None
    try:
        for name in names:
            t0 = time.perf_counter()
            if activations is not None and name in activations:
                acts, was = np.asarray(activations[name], dtype=np.float32), True
                if acts.shape[0] != n:
                    raise NnfeatError(f"activations of '{name}' have {acts.shape[0]} rows for {n} images")
            else:
                data, was = pooled(model, name, images, root, pool=pool, batch_size=batch_size, progress=progress)
                acts = np.array(data.acts)  # (N, C) in memory: one row per image
            vectors[name] = acts
            t1 = time.perf_counter()
            layout_key = _digest(model.name, weights, name, pool, images_key(images), method, seed)
            positions, was_layout = _cached_layout(root, f"layout-{_safe(name)}-{pool}-{method}", layout_key, n,
                                                   lambda: project_2d(acts, method, seed=seed))
            xy[name] = positions
            t2 = time.perf_counter()
            entry = {"method": method, "pool": pool, "channels": int(acts.shape[1]), "k": k,
                     "trustworthiness": trustworthiness(acts, positions, k)}
            if labels is not None:
                entry.update(knn_accuracy_2d=knn_accuracy(positions, labels, k),
                             knn_accuracy_layer=knn_accuracy(acts, labels, k), chance=chance)
            if method == "pca":
                entry["explained_variance"] = explained_variance(acts)
            scores[name] = entry
            t3 = time.perf_counter()
            timings[name] = {"collect": round(t1 - t0, 3), "layout": round(t2 - t1, 3), "scores": round(t3 - t2, 3)}
            cached[name] = {"collect": bool(was), "layout": bool(was_layout)}
    finally:
        if temp is not None:
            temp.cleanup()
    thumbs = _thumbnails(images, thumb_size)
    command = cli_command("project", model.name, ",".join(names), images=images.name, n=n, method=method,
                          pool=None if pool == "mean" else pool, k=None if k == 10 else k,
                          seed=None if seed == 0 else seed, thumbnails=thumbnails,
                          weights=weights_flag(weights))
    result = ProjectionResult(model=model.name, layers=names, method=method, pool=pool, source=images.name, xy=xy,
                              vectors=vectors, indices=images.source_indices, labels=labels, label_names=label_names,
                              scores=scores, k=k, seed=seed, thumbs=thumbs, thumbnails_on_plot=thumbnails,
                              timings=timings, cached=cached, device=str(model.device), command=command)
    if tensorboard is not None:
        result.tensorboard = str(write_tensorboard(result, tensorboard, thumb_size))
    result.elapsed = time.perf_counter() - started
    return result


def write_tensorboard(result: ProjectionResult, directory: str | Path, thumb_size: int = 32) -> Path:
    """Write ``result``'s pooled activations as a TensorBoard Projector folder: one embedding per layer, the
    label and image index as metadata, the thumbnails as the sprite. Returns the folder."""
    directory = Path(directory)
    metadata = {"index": [str(i) for i in result.indices]}
    if result.labels is not None:
        metadata = {"label": [result.label_names[int(l)] for l in result.labels], **metadata}
    embeddings = [Embedding(name=f"{layer} ({result.pool} pool)", vectors=result.vectors[layer], metadata=metadata,
                            thumbnails=result.thumbs) for layer in result.layers]
    write_projector(directory, embeddings, thumb_size=thumb_size)
    return directory


__all__ = ["ProjectionResult", "project", "parse_layers", "write_tensorboard", "PALETTE"]
