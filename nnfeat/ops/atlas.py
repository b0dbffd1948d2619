"""The activation-atlas pipeline: every stage of Carter et al., "Activation Atlas" (Distill 2019), each cached in the output folder.

``build_atlas(model, layer, images, out, settings)`` runs

1. collect   -> ``collect/`` (memory-mapped activations, attributions, sample index; resumable by batch)
2. whitening -> ``whitening.npy``
3. layout    -> ``layout.npy`` (UMAP / t-SNE / PCA of the selected samples)
4. grid      -> ``grid.npz`` (normalized layout, kept cells, their vectors and summaries)
5. icons     -> ``icons/*.png`` + ``icons/batch-*.json`` (resumable by batch)
6. stitch    -> ``atlas.png`` (a class legend under the mosaic when the cells have a top class),
                ``cells.json``, ``atlas.html`` (when the viewer is installed)

Every stage records a key made of the settings it depends on (and its inputs' keys) and the sha256 digest
of its file. A re-run reuses a stage whose key matches and whose file loads with the right shape and digest
(a truncated or corrupt file is computed again, not trusted because it exists), and recomputes it, and
everything after it, otherwise; so changing ``--grid`` keeps the collection and the layout, and an
interrupted (even SIGKILLed) run resumes where it stopped.

Under a process group (``torchrun -m nnfeat atlas ...`` or :func:`nnfeat.distributed.spawn`) collection batch
``b`` and icon batch ``b`` run on rank ``b % world``; whitening, layout, grid and the stitch run on rank 0 while
the others wait at a barrier and then read rank 0's files. Randomness comes from ``(seed, batch)`` only, so
every output file is byte-identical for any rank count, also when a run is resumed with another one.

Scale: activations and attributions stay memory-mapped, the whitening moment and the cell sums are
accumulated in blocks, and above ``layout_sample`` samples (default 100 000) the layout is fitted on a seeded
sample and the other rows are placed with the fitted model's ``transform``
(:func:`nnfeat.analysis.atlas.layout.layout_fit`; the choice is in ``layout.json`` and ``layout_fit`` of ``cells.json``).

A class atlas (``settings.class_``) keeps only the samples whose attribution favours the class: its top
attribution is the class, or it is among the class's ``class_top`` largest attributions (Carter et al. 2019, class atlases).

The settings are :mod:`nnfeat.analysis.atlas.settings`, the stage files and ``cells.json`` entries
:mod:`nnfeat.analysis.atlas.stages`, the class selection :mod:`nnfeat.analysis.atlas.classes` (their names are
re-exported here).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
from PIL import Image

from nnfeat.analysis.atlas.classes import class_selection, resolve_class
from nnfeat.analysis.atlas.grid import make_grid
from nnfeat.analysis.atlas.icons import icon_name, render_icons
from nnfeat.analysis.atlas.layout import layout_fit, normalize_layout, whitening
from nnfeat.analysis.atlas.settings import CLASS_GRID, CLASS_MIN_COUNT, AtlasSettings  # noqa: F401 - see __all__
from nnfeat.analysis.atlas.stages import (MAX_ATTRIBUTION_CLASSES, cell_entries, class_name,  # noqa: F401
                                          layout_info, load_stage_grid, load_stage_npy, read_grid, save_npy,
                                          stage_key)
from nnfeat.analysis.atlas.stitch import stitch
from nnfeat.analysis.collect import Collected, collect, file_digest, model_logit_count, save_npz
from nnfeat.data import ImageSet
from nnfeat.device import autocast_for, precision_used
from nnfeat.distributed import Ranks, current
from nnfeat.errors import NnfeatError
from nnfeat.io import read_json, save_image, write_json
from nnfeat.models.base import Model, as_model
from nnfeat.ops.results import Result, check_out_dir, cli_command, weights_flag
from nnfeat.views.atlas_viewer import with_class_legend, write_atlas_html
from nnfeat.views.sheets import labelled_sheet

@dataclass(repr=False)
class AtlasResult(Result):
    """What :func:`build_atlas` returns (the :class:`~nnfeat.ops.results.Result` protocol).

    Attributes:
        out: the output folder (every stage is cached there).
        mosaic: ``atlas.png``; cells_json: ``cells.json``; html: ``atlas.html``.
        header: the top-level entries of ``cells.json``; cells: its per-cell entries.
        timings: seconds per stage (``cached`` stages report the time to load them).
        cached: the stages that were reused from an earlier run.
        images: (M, 3, s, s) the icons of the kept cells, in ``cells`` order.
    """

    out: Path
    mosaic: Path
    cells_json: Path
    html: Path | None
    header: dict
    cells: list[dict]
    timings: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    command: str | None = None
    kind: ClassVar[str] = "atlas"
    run_fields: ClassVar[tuple[str, ...]] = ("timings", "cached")

    @property
    def mean_cosine(self) -> float:
        return float(np.mean([c["cosine"] for c in self.cells])) if self.cells else float("nan")

    @property
    def images(self) -> torch.Tensor:
        return torch.stack([_read_png(self.out / cell["icon"]) for cell in self.cells]) if self.cells else \
            torch.zeros(0, 3, self.header["icon_size"], self.header["icon_size"])

    def title(self) -> str:
        target = "" if self.header.get("class") is None else f"  class {self.header['class']['name']}"
        return (f"{self.header['model']}  {self.header['layer']}{target}  atlas: {len(self.cells)} cells, "
                f"mean cosine {self.mean_cosine:.3f}")

    def sheet_images(self) -> torch.Tensor:
        return _read_png(self.mosaic).unsqueeze(0)

    def captions(self) -> list[str]:
        return [f"{self.header['grid']}x{self.header['grid']} grid, {self.header['samples']} samples"]

    def sheet(self) -> np.ndarray:
        return labelled_sheet(self.sheet_images(), self.captions(), title=self.title(), min_tile=480)

    def record(self) -> dict:
        return {"model": self.header["model"], "layer": self.header["layer"], "seed": self.header["settings"]["seed"],
                "device": self.header.get("device"), "precision": self.header.get("precision"),
                "settings": self.header["settings"], "layout_fit": self.header.get("layout_fit"),
                "cells": len(self.cells), "mean_cosine": self.mean_cosine,
                "timings": self.timings, "cached": self.cached}

    def save(self, out: str | Path, *, timing: bool = True) -> Path:
        """Write ``atlas.png`` (the mosaic), ``cells.json``, ``atlas.html``, ``icons/`` and the record ``atlas.json``
        into ``out`` (copies when ``out`` is not the folder the atlas was built in); ``timing`` as in
        :meth:`Result.save`."""
        out = check_out_dir(out)
        if not current().writer:  # under a process group only rank 0 writes the shared files
            return out / "atlas.json"
        files = ["atlas.png", "cells.json", *(["atlas.html"] if self.html else []), "icons/"]
        if out.resolve() != self.out.resolve():
            out.mkdir(parents=True, exist_ok=True)
            for name in files[:-1]:
                shutil.copyfile(self.out / name, out / name)
            shutil.copytree(self.out / "icons", out / "icons", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.json", ".*"))
        return write_json(out / "atlas.json", self.full_record(files, timing=timing))


def _read_png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255


def build_atlas(model: Model, layer: str, images: ImageSet, out: str | Path, settings: AtlasSettings, *,
                progress: bool = True, on_icon_batch: Callable[[int, int], None] | None = None,
                log: Callable[[str], None] | None = None) -> AtlasResult:
    """Build (or resume) the activation atlas of ``layer`` over ``images`` in the folder ``out``.

    Args:
        model: the model (its device is used).
        layer: a layer name of the model.
        images: the image source.
        out: output folder (created).
        settings: see :class:`AtlasSettings`.
        progress: tqdm bars on the long stages.
        on_icon_batch: called after each saved icon batch as ``(batch_index, batch_count)``; may raise to stop.
        log: called with one line per finished stage (e.g. ``print``).
    Returns:
        :class:`AtlasResult`.
    """
    started = time.perf_counter()
    model = as_model(model)
    settings.check()
    model.check_layer(layer)
    s = settings.resolved(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ranks = current()
    say = log if log is not None and ranks.writer else (lambda _line: None)
    timings: dict[str, float] = {}
    cached: list[str] = []
    class_names = list(model.classes) if model.classes is not None else None

    class_index = None
    if s.class_ is not None:  # check the class before any work
        logits = model_logit_count(model)
        if logits is None:
            raise NnfeatError("--class needs class attributions, but the model's output is not a logit vector (B, K)")
        class_index = resolve_class(s.class_, class_names, logits)

    # 1. collect (collective: batch b on rank b % world, then rank 0 merges) ------------------------------
    start = time.perf_counter()
    collect_key = stage_key("collect", model.name, layer, images.name, len(images), s.samples, s.per_image, s.seed,
                            s.collect_batch)
    data: Collected = collect(model, layer, images, out / "collect", n=s.samples, per_image=s.per_image, seed=s.seed,
                              batch_size=s.collect_batch, key=collect_key, progress=progress, ranks=ranks)
    _finish("collect", start, data.reused, timings, cached, say, f"{len(data)} samples of {layer} {data.layer_shape}")
    if class_names is None and data.attr is not None:
        class_names = [str(i) for i in range(data.attr.shape[1])]
    channels = int(data.acts.shape[1])

    # 2. whitening (rank 0; the others wait and read its file) ---------------------------------------------
    start = time.perf_counter()
    white_meta, white_path = out / "whitening.json", out / "whitening.npy"
    matrix, reuse = None, True
    if ranks.writer:
        matrix = load_stage_npy(white_path, white_meta, collect_key, (channels, channels))
        reuse = matrix is not None
        if not reuse:
            matrix = whitening(data.acts)
            write_json(white_meta, {"key": collect_key, "digest": save_npy(white_path, matrix)})
    ranks.barrier()
    if matrix is None:
        matrix = np.load(white_path)
    _finish("whitening", start, reuse, timings, cached, say, f"S {matrix.shape}")

    # selection (class atlas) --------------------------------------------------------------------
    if class_index is not None:
        rows = class_selection(data.attr, class_index, s.class_top)
        if len(rows) < 3:
            raise NnfeatError(f"only {len(rows)} samples favour class {class_index}: raise --samples")
        acts = np.asarray(data.acts[rows])
        attr = np.asarray(data.attr[rows])
        image_index = np.asarray(data.samples[rows, 0])
    else:
        acts, attr, image_index = data.acts, data.attr, np.asarray(data.samples[:, 0])
    count = len(acts)

    # 3. layout (rank 0): fitted on every sample, or on s.layout_sample of them and the rest transformed ----
    start = time.perf_counter()
    sampled = count > s.layout_sample
    layout_key = stage_key("layout", collect_key, s.layout, s.seed, s.n_neighbors, s.min_dist, class_index,
                           s.class_top, *([("fit", s.layout_sample)] if sampled else []))  # small layouts keep their old key
    layout_meta, layout_path = out / "layout.json", out / "layout.npy"
    positions, reuse = None, True
    if ranks.writer:
        positions = load_stage_npy(layout_path, layout_meta, layout_key, (count, 2))
        reuse = positions is not None
        if not reuse:
            positions, fit = layout_fit(acts, s.layout, seed=s.seed, n_neighbors=s.n_neighbors, min_dist=s.min_dist,
                                        fit_rows=s.layout_sample, verbose=False)
            digest = save_npy(layout_path, positions)
            write_json(layout_meta, {"key": layout_key, "method": s.layout, "samples": len(positions),
                                     "fit": fit["fit"], "fit_samples": fit["fit_samples"],
                                     "layout_sample": s.layout_sample, "digest": digest})
    ranks.barrier()
    if positions is None:
        positions = np.load(layout_path)
    fit_info = layout_info(read_json(layout_meta), count, s.layout_sample)
    fit_text = "fitted on all" if fit_info["fit"] == "all" else \
        f"fitted on a sample of {fit_info['fit_samples']}, the rest placed by transform"
    _finish("layout", start, reuse, timings, cached, say, f"{s.layout} of {len(positions)} samples, {fit_text}")

    # 4. normalize + grid (rank 0) ------------------------------------------------------------------------
    start = time.perf_counter()
    grid_key = stage_key("grid", layout_key, s.grid, s.min_count, s.members)
    grid_meta, grid_path = out / "grid.json", out / "grid.npz"
    grid, reuse = None, True
    if ranks.writer:
        grid = load_stage_grid(grid_path, grid_meta, grid_key, count, channels)
        reuse = grid is not None
        if not reuse:
            normalized = normalize_layout(positions)
            label_width = len(images.classes) if images.classes is not None else None
            grid = make_grid(normalized, acts, size=s.grid, min_count=s.min_count, attr=attr, image_index=image_index,
                             labels=images.labels, num_labels=label_width, members=s.members)
            save_npz(grid_path, {**grid.arrays(), "normalized": normalized})
            write_json(grid_meta, {"key": grid_key, "cells": len(grid), "digest": file_digest(grid_path)})
    ranks.barrier()
    if grid is None:
        grid = read_grid(grid_path)
    if len(grid) == 0:
        raise NnfeatError(f"no grid cell holds {s.min_count} samples: lower --min-count or --grid, or raise --samples")
    _finish("grid", start, reuse, timings, cached, say, f"{len(grid)} of {s.grid}x{s.grid} cells kept")

    # 5. icons: batch b on rank b % world; rank 0 then gathers every batch's record -------------------------
    start = time.perf_counter()
    autocast = autocast_for(s.precision)
    precision = precision_used(model.device, autocast, model)
    icons_key = stage_key("icons", grid_key, s.whiten, s.icon_size, s.steps, s.cossim_pow, s.transforms, s.seed,
                          s.spatial_weight, *([precision] if precision != "fp32" else []))
    icon_dir = out / "icons"
    icon_args = dict(whitening=matrix if s.whiten else None, icon_size=s.icon_size, steps=s.steps, batch=s.batch,
                     seed=s.seed, cossim_pow=s.cossim_pow, transforms=s.transforms, spatial_weight=s.spatial_weight,
                     autocast=autocast, key=icons_key)
    cosines, rendered = render_icons(model, layer, grid.vectors, grid.rows, grid.cols, icon_dir, **icon_args,
                                     progress=progress, on_batch=on_icon_batch, ranks=ranks)
    ranks.barrier()
    reuse = ranks.all_true(rendered == 0)
    if ranks.sharded and ranks.writer:  # every record is there now: read them all (a damaged one is redone)
        cosines, again = render_icons(model, layer, grid.vectors, grid.rows, grid.cols, icon_dir, **icon_args,
                                      progress=False, ranks=Ranks())
        reuse = reuse and again == 0
    _finish("icons", start, reuse, timings, cached, say, f"{len(grid)} icons, mean cosine {cosines.mean():.3f}")

    # 6. stitch, cells.json, html (rank 0) ------------------------------------------------------------------
    start = time.perf_counter()
    settings_dict = asdict(s)
    settings_dict["class"] = settings_dict.pop("class_")
    mosaic = out / "atlas.png"
    if ranks.writer:
        icon_paths = [icon_dir / icon_name(int(r), int(c)) for r, c in zip(grid.rows, grid.cols)]
        cells = cell_entries(grid, cosines, class_names, images)
        canvas = stitch(icon_paths, grid.rows, grid.cols, s.grid, s.icon_size)
        picture, legend = with_class_legend(canvas, cells, s.grid)  # a class legend under it when cells have classes
        mosaic = save_image(mosaic, picture)
        header = {
            "model": model.name, "layer": layer, "layer_shape": list(data.layer_shape), "source": images.name,
            "grid": s.grid, "icon_size": s.icon_size, "samples": int(count), "classes": class_names,
            "label_classes": images.classes if images.labels is not None else None,
            "class": None if class_index is None else {"index": class_index,
                                                       "name": class_name(class_names, class_index)},
            "mean_cosine": float(cosines.mean()), "settings": settings_dict, "layout_fit": fit_info,
            "mosaic": "atlas.png", "device": str(model.device), "precision": precision,
            **({"legend": {"by": "top_class", "mosaic_height": int(canvas.shape[0]), "classes": legend}}
               if legend else {}),
        }
        cells_json = write_json(out / "cells.json", {**header, "cells": cells})
        target = "" if class_index is None else f" — class {class_name(class_names, class_index)}"
        title = f"{model.name} {layer}{target}"
        html = _write_html(out, canvas, cells, class_names if class_names is not None else images.classes, s.grid,
                           title, images, model.input_size)
    ranks.barrier()
    if not ranks.writer:  # the other ranks return what rank 0 wrote
        cells_json = out / "cells.json"
        record = read_json(cells_json)
        cells = record.pop("cells")
        header = record
        html = out / "atlas.html" if (out / "atlas.html").is_file() else None
    _finish("stitch", start, False, timings, cached, say, f"wrote {mosaic}")
    if ranks.writer:
        write_json(out / "timings.json", {"timings": timings, "cached": cached})
    command = cli_command("atlas", model.name, layer, images=images.name, n=(images.drawn or (None,))[0],
                          samples=s.samples,
                          per_image=s.per_image,
                          layout=s.layout, grid=s.grid, min_count=s.min_count,
                          icon_size=s.icon_size, steps=s.steps, batch=s.batch, seed=s.seed, class_=s.class_,
                          cossim_pow=s.cossim_pow, spatial_weight=s.spatial_weight, transforms=s.transforms,
                          precision=s.precision if s.precision != "auto" else None,
                          weights=weights_flag(model), out=out)
    if not s.whiten:
        command += " --no-whiten"
    return AtlasResult(out=out, mosaic=mosaic, cells_json=cells_json, html=html, header=header, cells=cells,
                       timings=timings, cached=cached, elapsed=time.perf_counter() - started, command=command)


def _write_html(out: Path, mosaic: np.ndarray, cells: list[dict], classes: list[str] | None, grid: int,
                title: str, images: ImageSet, size: tuple[int, int]) -> Path:
    """``atlas.html``: the interactive viewer (:mod:`nnfeat.views.atlas_viewer`), member images embedded."""
    members = sorted({m for cell in cells for m in cell["members"]})
    pictures = images.read(members, None if images.array is not None else size) if members else []
    thumbnails = dict(zip(members, pictures))
    path = out / "atlas.html"
    write_atlas_html(path, mosaic, cells, classes=classes, grid=grid, title=title, member_thumbnails=thumbnails)
    return path


def _finish(stage: str, start: float, reused: bool, timings: dict, cached: list, say, detail: str) -> None:
    timings[stage] = round(time.perf_counter() - start, 3)
    if reused:
        cached.append(stage)
    say(f"{stage:<9} {'cached' if reused else f'{timings[stage]:.1f}s'}  {detail}")


__all__ = ["AtlasSettings", "AtlasResult", "build_atlas", "class_selection", "resolve_class", "cell_entries",
           "CLASS_GRID", "CLASS_MIN_COUNT"]
