"""Whole-layer renders: one image per unit, many units per batch, resumable, shardable over ranks.

``microscope(model, "layer3:0..63", out=DIR)`` renders every unit of the units text (see :mod:`nnfeat.units`;
``"layer3"`` is every channel), ``batch`` units per render call, each batch seeded from (seed, its first
channel), so the images do not depend on how the work was split or resumed. With ``out``, each finished
batch is written at once: its ``channel-<c>.png`` files, then its resume record ``batches/batch-<first>.json``
(the settings key, the batch's channels, seed and final values). A re-run with the same settings renders
only the batches whose record is missing, damaged, of other settings, or whose PNGs do not decode, and first
removes the hidden temporaries a killed run left in ``out`` (:func:`nnfeat.io.remove_stale_temporaries`). With
``images``, each unit also gets its top dataset examples.

Under a process group (``torchrun -m nnfeat microscope ...``, see :mod:`nnfeat.distributed`) and with
``out``, batch ``i`` is rendered by rank ``i % world`` (:meth:`~nnfeat.distributed.Ranks.mine`); after a
barrier every rank reads the finished renders back from ``out`` and builds the same result, and only rank 0
writes the shared files (``.save`` is a no-op returning the record's path on the other ranks). Top examples
are found on every rank (the collection is a collective: :func:`nnfeat.analysis.collect.collect` shards its batches).
The bytes are those of one process with any rank count, and a run killed on any rank resumes with any rank
count. Without ``out`` every rank renders every batch in memory.

The returned :class:`MicroscopeResult` ``.save(out)`` writes ``microscope.png`` (the captioned sheet: each
unit's render, then its top examples), ``index.html`` (a page with every unit) and ``microscope.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from nnfeat import distributed
from nnfeat.analysis.examples import top_example_pictures
from nnfeat.data import ImageSet, load_images
from nnfeat.device import precision_used
from nnfeat.errors import NnfeatError
from nnfeat.engine.expr import units_objective
from nnfeat.io import read_json, remove_stale_temporaries, save_image, write_json
from nnfeat.models.base import Model, as_model
from nnfeat.progress import progress_bar
from nnfeat.ops.render import render
from nnfeat.ops.results import Result, check_out_dir, cli_command, weights_flag
from nnfeat.units import Units, format_units
from nnfeat.views.microscope_page import write_microscope_page

BATCHES_DIR = "batches"  #: per-batch resume records ``batches/batch-<first channel>.json``


def _json_value(value):
    """A settings value as JSON: tensors (a maco spectrum) become a short content digest."""
    if torch.is_tensor(value):
        data = value.detach().cpu().contiguous().float().numpy().tobytes()
        return {"tensor": list(value.shape), "sha256": hashlib.sha256(data).hexdigest()[:16]}
    return value


@dataclass(repr=False)
class MicroscopeResult(Result):
    """What :func:`microscope` returns.

    Attributes:
        model: the model's name; layer: the layer; units: the units text.
        channels: the rendered channels, in order.
        renders: (N, 3, H, W) one render per channel, in [0, 1].
        values: (N,) each render's final objective value.
        examples: (N, k, 3, H, W) each channel's top dataset examples at the render size, or None.
        settings: the render settings (JSON-able), seed, device and precision included.
        out: the working folder the renders were cached in, or None.
    """

    model: str
    layer: str
    units: str
    channels: list[int]
    renders: torch.Tensor
    values: torch.Tensor
    examples: torch.Tensor | None
    settings: dict
    elapsed: float = 0.0
    command: str | None = None
    out: Path | None = None
    position: tuple[int, ...] | None = None
    kind: ClassVar[str] = "microscope"

    @property
    def images(self) -> torch.Tensor:
        return self.renders

    @property
    def sheet_columns(self) -> int | None:  # type: ignore[override]
        return 1 + self.examples.shape[1] if self.examples is not None else None

    def unit_name(self, channel: int) -> str:
        return format_units(self.layer, [channel], self.position)

    def title(self) -> str:
        return f"{self.model}  {self.units}  ({len(self.channels)} units)"

    def sheet_images(self) -> torch.Tensor:
        if self.examples is None:
            return self.renders
        return torch.cat([self.renders.unsqueeze(1), self.examples], 1).flatten(0, 1)

    def captions(self) -> list[str]:
        names = [f"{self.unit_name(c)}\n{v:.3g}" for c, v in zip(self.channels, self.values.tolist())]
        if self.examples is None:
            return names
        k = self.examples.shape[1]
        return [text for name in names for text in (name, *(f"top {i + 1}\n" for i in range(k)))]

    def record(self) -> dict:
        return {"model": self.model, "layer": self.layer, "units": self.units, "seed": self.settings.get("seed"),
                "device": self.settings.get("device"), "precision": self.settings.get("precision"),
                "settings": self.settings,
                "channels": {str(c): {"value": v, "image": f"channel-{c}.png", "unit": self.unit_name(c)}
                             for c, v in zip(self.channels, self.values.tolist())},
                "page": "index.html"}

    def save(self, out, *, timing: bool = True) -> Path:
        """Write the sheet, page and record (see :meth:`Result.save`); on a rank other than 0 of a process
        group nothing is written (rank 0 writes the shared files) and the record's path is returned."""
        if not distributed.current().writer:
            return check_out_dir(out) / f"{self.kind}.json"
        return super().save(out, timing=timing)

    def write_files(self, out: Path) -> list[str]:
        same = self.out is not None and Path(self.out).resolve() == out.resolve()
        files, units = [], []
        for i, (c, value) in enumerate(zip(self.channels, self.values.tolist())):
            name = f"channel-{c}.png"
            if not (same and (out / name).is_file()):  # the working folder already holds the cached render
                save_image(out / name, self.renders[i])
            examples = []
            if self.examples is not None:
                for j, picture in enumerate(self.examples[i]):
                    examples.append(f"examples/channel-{c}-top{j + 1}.png")
                    save_image(out / examples[-1], picture)
            files.append(name)
            files.extend(examples)
            units.append({"name": self.unit_name(c), "image": name, "value": value, "examples": examples})
        write_microscope_page(out / "index.html", title=self.title(), sheet=f"{self.kind}.png", units=units)
        return [*files, "index.html"]


def microscope(model: Model, units: str | Units, *, out: str | Path | None = None, batch: int = 16,
               images=None, examples_k: int = 4, progress: bool = True, **render_kwargs) -> MicroscopeResult:
    """Render every unit of ``units`` (``"layer3"``, ``"layer3:0..15"``, ...; see :mod:`nnfeat.units`).

    Args:
        model: the model (its device is used).
        units: units text or :class:`~nnfeat.units.Units`; a position (``@Y,X``) renders neurons.
        out: working folder: renders are cached there batch by batch and a re-run resumes (None: in memory).
        batch: units rendered together.
        images: an image source (see :func:`nnfeat.data.load_images`): add each unit's top ``examples_k``
            dataset examples.
        progress: a progress bar over the batches.
        render_kwargs: passed to :func:`nnfeat.render` (size, steps, seed, param, transforms, autocast, ...).
    Returns:
        :class:`MicroscopeResult`; ``.save(out)`` writes the sheet, the page and the record.
    """
    started, began = time.perf_counter(), time.time()
    model = as_model(model)
    if batch < 1:
        raise NnfeatError(f"--batch must be at least 1; got {batch}")
    if examples_k < 1:
        raise NnfeatError(f"examples_k must be at least 1; got {examples_k}")
    size = render_kwargs.get("size") or model.input_size[0]
    render_kwargs["size"] = size
    parsed, channel_list = model.units(units, (size, size))
    image_set = _images(model, images)
    if out is not None:
        out = check_out_dir(out)
    dev = model.device
    settings = {"model": model.name, "layer": parsed.layer, "units": str(parsed), "batch": batch,
                **{k: _json_value(v) for k, v in render_kwargs.items() if k != "progress"}}
    settings.setdefault("seed", 0)
    settings["device"] = str(dev)
    settings["precision"] = precision_used(dev, render_kwargs.get("autocast"), model)

    # Chunks are fixed by the channel list, so a resumed run renders exactly the batches an uninterrupted one would.
    chunks = [channel_list[i:i + batch] for i in range(0, len(channel_list), batch)]
    ranks = distributed.current() if out is not None else distributed.Ranks()
    if out is not None and ranks.writer:  # the hidden temporaries a killed run left in the folders it writes
        for folder in (out, out / BATCHES_DIR, out / "examples"):
            remove_stale_temporaries(folder, older_than=began)
        remove_stale_temporaries(out / "cache", older_than=began, recursive=True)  # its examples' collection
    if ranks.sharded:
        ranks.barrier()  # no rank writes before rank 0 has cleaned
    key = settings_key(settings)
    values: dict[int, float] = {}
    rendered: dict[int, torch.Tensor] = {}
    mine = ranks.mine(len(chunks))
    todo = [i for i in mine if _finished_batch(out, key, chunks[i]) is None]
    bar = progress_bar(len(mine), f"microscope {parsed.layer}", enabled=progress and bool(todo) and ranks.writer,
                       unit="batch", initial=len(mine) - len(todo), leave=True)
    for i in todo:
        chunk = chunks[i]
        kwargs = dict(render_kwargs)
        kwargs["seed"] = batch_seed(render_kwargs.get("seed", 0), chunk[0])
        objective = units_objective(Units(parsed.layer, tuple(chunk), parsed.position))
        result = render(model, objective, batch=len(chunk), progress=False, **kwargs)
        chunk_values = result.final_values.tolist()
        if out is None:
            rendered.update(zip(chunk, result.images))
            values.update(zip(chunk, chunk_values))
        else:
            for c, image in zip(chunk, result.images):
                save_image(out / f"channel-{c}.png", image)
            write_json(batch_record_path(out, chunk[0]),  # last: the record says the batch's PNGs are complete
                       {"key": key, "channels": chunk, "seed": kwargs["seed"],
                        "values": {str(c): v for c, v in zip(chunk, chunk_values)}})
        bar.update(1)
    bar.close()
    if out is not None:
        ranks.barrier()  # every rank's batches are on disk
        for chunk in chunks:  # the same result on every rank, from the files (so a resumed run is identical)
            found = _finished_batch(out, key, chunk)
            if found is None:
                raise NnfeatError(f"microscope batch {chunk[0]} in '{out}' is missing or damaged after its rank "
                                  f"finished: re-run the same command to redo it")
            values.update(found[0])
            rendered.update(zip(chunk, found[1]))
    renders = torch.stack([rendered[c] for c in channel_list])
    examples = None
    if image_set is not None:
        examples = top_example_pictures(model, parsed.layer, channel_list, image_set, examples_k, renders.shape[-2:],
                                        cache=Path(out) / "cache" if out is not None else None)
    return MicroscopeResult(
        model=model.name, layer=parsed.layer, units=str(parsed), channels=channel_list, renders=renders,
        values=torch.tensor([values[c] for c in channel_list]), examples=examples, settings=settings,
        elapsed=time.perf_counter() - started, out=out, position=parsed.position,
        command=_command(model, parsed, batch, render_kwargs, images, examples_k))


def _images(model: Model, images):
    if images is None:
        return None
    return images if isinstance(images, ImageSet) else load_images(images, size=model.input_size)


def batch_seed(seed, first_channel: int) -> int:
    """The seed of the render batch that starts at ``first_channel`` (also :mod:`nnfeat.ops.report`'s)."""
    return int(seed or 0) * 100003 + first_channel


def settings_key(settings: dict) -> str:
    """A short digest of the settings, the device given by its kind (``cuda:3`` and ``cuda:0`` of one
    machine are the same work), so a resume with another rank count finds the batches again."""
    keyed = dict(settings)
    keyed["device"] = str(keyed.get("device", "")).split(":")[0]
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def batch_record_path(out: Path, first_channel: int) -> Path:
    return Path(out) / BATCHES_DIR / f"batch-{first_channel}.json"


def _finished_batch(out: Path | None, key: str, chunk: list[int]) -> tuple[dict[int, float], list[torch.Tensor]] | None:
    """The batch's (values, renders) when its record has ``key`` and this chunk and every PNG decodes, else
    None (missing, damaged, or other settings: the batch is rendered again)."""
    if out is None:
        return None
    try:
        record = read_json(batch_record_path(out, chunk[0]))
        if record.get("key") != key or record.get("channels") != list(chunk):
            return None
        values = {c: float(record["values"][str(c)]) for c in chunk}
        return values, [_read_png(out / f"channel-{c}.png") for c in chunk]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SyntaxError):
        return None  # PIL raises OSError / SyntaxError / ValueError for a truncated or foreign file


def _read_png(path: Path) -> torch.Tensor:
    """A PNG -> (3, H, W) float in [0, 1]; raises for a file that does not decode completely."""
    with Image.open(path) as image:
        image.load()
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255


def _command(model: Model, units: Units, batch: int, render_kwargs: dict, images, examples_k: int) -> str | None:
    if any(torch.is_tensor(v) or isinstance(v, torch.nn.Module) for v in render_kwargs.values()):
        return None
    n = None
    if isinstance(images, ImageSet):
        images, n = images.name, (images.drawn or (None,))[0]
    elif images is not None and not isinstance(images, (str, Path)):
        return None
    autocast = render_kwargs.get("autocast")
    return cli_command("microscope", model.name, str(units), batch=batch, size=render_kwargs.get("size"),
                       steps=render_kwargs.get("steps"), seed=render_kwargs.get("seed"), images=images, n=n,
                       param=render_kwargs.get("param"), lr=render_kwargs.get("lr"),
                       precision={None: None, False: "fp32", True: "bf16"}.get(autocast),
                       weights=weights_flag(model))


__all__ = ["MicroscopeResult", "microscope", "BATCHES_DIR", "batch_seed", "settings_key", "batch_record_path"]
