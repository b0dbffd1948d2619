"""TensorBoard Projector export: a folder that TensorBoard's Embedding Projector opens as it is.

The Embedding Projector (Smilkov et al., 2016, "Embedding Projector: Interactive Visualization and
Interpretation of Embeddings", arXiv:1611.05469) reads a ``projector_config.pbtxt`` (a text-format
``ProjectorConfig``) whose embeddings point, by paths relative to the config's folder, at

* a tensor file: one row of tab-separated floats per point (N rows of D values);
* a metadata TSV: one line per point. The first line is a header *iff* it contains a tab, so a
  single-column file has no header line and a file with several columns starts with their names;
* a sprite: one PNG of thumbnails, ``ceil(sqrt(N))`` per row, row-major, at most 8192x8192 px.

``write_projector(directory, embeddings)`` writes all of that for one or more embeddings (say, the
pooled activations of several layers over the same images). Embeddings whose metadata or thumbnails
are equal share one metadata file or sprite. Only numpy, PIL and torch are used: nnfeat does not need
tensorboard at run time (the tests read the folder back through tensorboard's own projector plugin).

Choices worth knowing:

* Tensors are written as TSV with 9 significant digits, which round-trips float32 exactly. The raw
  float32 ``.bytes`` format is smaller, but tensorboard's plugin (2.21) first reads every tensor file
  as UTF-8 text and falls back to raw floats only on a decode error, so a raw file that happens to be
  valid UTF-8 (e.g. values such as 0.5 and 2.0 only, whose bytes are all below 0x80) fails to load.
* Vectors need D >= 2 (the Projector rejects one-dimensional vectors) and finite values; anything
  else is a one-line :class:`NnfeatError` rather than silent padding.
* The Projector skips blank metadata lines, which would shift every later row by one, so a row whose
  cells are all blank gets ``-`` in its first cell. Tabs and line breaks inside values become spaces.
* The sprite is square: ``per_row x per_row`` cells with unused cells black. Thumbnails keep their
  aspect ratio with their longer side ``thumb_px = min(thumb_size, 8192 // per_row)``; below
  ``MIN_THUMB_PX`` the request cannot fit and :func:`sprite_layout` says how many images would.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nnfeat.errors import NnfeatError
from nnfeat.io import atomic_path

#: The largest sprite side, in pixels, that the Projector accepts.
MAX_SPRITE_PX = 8192
#: The smallest thumbnail side, in pixels, worth drawing; a sprite that needs smaller ones is refused.
MIN_THUMB_PX = 2
#: The config file name the projector plugin looks for.
CONFIG_NAME = "projector_config.pbtxt"

_CHUNK_PX = 1 << 24  # float values resized per interpolate call (64 MiB)


@dataclass
class Embedding:
    """One embedding for the Projector.

    Attributes:
        name: the tensor name shown in the Projector, e.g. ``"layer3 (mean pool)"``.
        vectors: (N, D) float array (torch tensors are accepted too), D >= 2.
        metadata: column name -> N values (shown, searchable and colourable in the Projector); may be empty.
        thumbnails: (N, 3, h, w) or (N, 1, h, w) float images in [0, 1] for the sprite, or None: no sprite.
    """

    name: str
    vectors: np.ndarray
    metadata: Mapping[str, Sequence[str]]
    thumbnails: torch.Tensor | None = None


# ------------------------------------------------------------------------------------------------
def sprite_layout(n: int, thumb: int, max_px: int = MAX_SPRITE_PX, min_px: int = MIN_THUMB_PX) -> tuple[int, int]:
    """(per_row, thumb_px) for a square sprite of ``n`` thumbnails of at most ``thumb`` px within ``max_px``.

    ``per_row = ceil(sqrt(n))`` and ``thumb_px = min(thumb, max_px // per_row)``, so the sprite is
    ``per_row * thumb_px <= max_px`` px on each side. Raises :class:`NnfeatError` when ``thumb_px``
    would fall below ``min_px``, naming the largest ``n`` that fits.
    """
    if n < 1:
        raise NnfeatError(f"a sprite needs at least one image, got {n}")
    if thumb < min_px:
        raise NnfeatError(f"thumbnail size {thumb} px is too small: use at least {min_px} px")
    per_row = math.isqrt(n - 1) + 1  # ceil(sqrt(n)) without float rounding
    thumb_px = min(thumb, max_px // per_row)
    if thumb_px < min_px:
        largest = (max_px // min_px) ** 2
        raise NnfeatError(
            f"a sprite of {n} thumbnails cannot fit in {max_px}x{max_px} px (they would be {thumb_px} px, "
            f"below {min_px} px); at most {largest} images fit: use a smaller --n or no sprite"
        )
    return per_row, thumb_px


def slugify(name: str, max_len: int = 64) -> str:
    """A file-name-safe, lower-case form of ``name``: runs of other characters than ``[a-z0-9.-]`` become ``_``."""
    slug = re.sub(r"[^a-z0-9.-]+", "_", name.lower()).strip("._-")[:max_len].strip("._-")
    return slug or "embedding"


# ------------------------------------------------------------------------------------------------
def write_projector(directory: str | os.PathLike, embeddings: Sequence[Embedding], *,
                    thumb_size: int = 32) -> list[str]:
    """Write ``embeddings`` as a TensorBoard Projector folder; return the file names written, relative to it.

    Opens with ``tensorboard --logdir DIRECTORY`` (Projector tab). Every input is checked before
    anything is written, so bad input (a sprite that cannot fit, mismatched lengths, D < 2, NaN)
    raises a one-line :class:`NnfeatError` and leaves the folder untouched. Each file is written
    atomically; ``projector_config.pbtxt`` comes last.

    Args:
        directory: the folder to write (created if missing); existing files of the same names are replaced.
        embeddings: one or more :class:`Embedding` with distinct names.
        thumb_size: the requested thumbnail side in px; shrunk to fit the 8192 px sprite limit.
    """
    if not embeddings:
        raise NnfeatError("nothing to export to the TensorBoard Projector: no embeddings given")
    names = [e.name for e in embeddings]
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise NnfeatError("every embedding needs a non-empty name (the Projector lists tensors by name)")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise NnfeatError(f"embedding names must be distinct for the Projector; repeated: {', '.join(duplicates)}")

    counts = [_check_shape(e) for e in embeddings]  # cheap checks first: no copy of a large input yet
    layouts = [None if e.thumbnails is None else _check_thumbnails(e, n, thumb_size)
               for e, n in zip(embeddings, counts)]
    tables = [_metadata_text(e, n) for e, n in zip(embeddings, counts)]
    vectors = [_finite_vectors(e) for e in embeddings]

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    slugs = _unique_slugs(names)
    metadata_files: dict[str, str] = {}        # TSV text -> file name
    sprite_files: list[tuple[torch.Tensor, int, str, tuple[int, int]]] = []  # (thumbnails, thumb px, file, dim)
    entries = []
    for emb, vec, table, layout, slug in zip(embeddings, vectors, tables, layouts, slugs):
        tensor_file = f"{slug}.tensor.tsv"
        _write_tensor(directory / tensor_file, vec)
        written.append(tensor_file)
        entry = {"tensor_name": emb.name, "tensor_path": tensor_file, "tensor_shape": list(vec.shape)}
        if table is not None:
            if table not in metadata_files:
                metadata_files[table] = _numbered("metadata", ".tsv", len(metadata_files))
                _write_utf8(directory / metadata_files[table], table)
                written.append(metadata_files[table])
            entry["metadata_path"] = metadata_files[table]
        if layout is not None:
            per_row, thumb_px = layout
            found = next((s for s in sprite_files if s[1] == thumb_px and _same_images(s[0], emb.thumbnails)), None)
            if found is None:
                sprite_file = _numbered("sprite", ".png", len(sprite_files))
                dim = _write_sprite(directory / sprite_file, emb.thumbnails, per_row, thumb_px)
                found = (emb.thumbnails, thumb_px, sprite_file, dim)
                sprite_files.append(found)
                written.append(sprite_file)
            entry["sprite"] = {"image_path": found[2], "single_image_dim": list(found[3])}
        entries.append(entry)
    _write_utf8(directory / CONFIG_NAME, config_text(entries))
    written.append(CONFIG_NAME)
    return written


def config_text(entries: Sequence[Mapping]) -> str:
    """The text-format ``ProjectorConfig`` for ``entries`` (dicts of embedding fields; lists are repeated fields)."""
    lines: list[str] = []

    def emit(fields: Mapping, indent: str) -> None:
        for key, value in fields.items():
            if isinstance(value, Mapping):
                lines.append(f"{indent}{key} {{")
                emit(value, indent + "  ")
                lines.append(f"{indent}}}")
            else:
                for item in value if isinstance(value, (list, tuple)) else [value]:
                    lines.append(f"{indent}{key}: {_quote(item) if isinstance(item, str) else int(item)}")

    for entry in entries:
        emit({"embeddings": entry}, "")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
def _as_array(vectors) -> np.ndarray:
    return vectors.detach().cpu().numpy() if torch.is_tensor(vectors) else np.asarray(vectors)


def _check_shape(emb: Embedding) -> int:
    """N of ``emb.vectors`` after checking that it is (N, D) with N >= 1 and D >= 2."""
    shape = tuple(_as_array(emb.vectors).shape)
    if len(shape) != 2 or shape[0] < 1:
        raise NnfeatError(f"embedding '{emb.name}' needs an (N, D) array of vectors, got shape {shape}")
    if shape[1] < 2:
        raise NnfeatError(f"embedding '{emb.name}' has D={shape[1]}: the Projector needs vectors of at "
                          "least 2 dimensions (pick a layer with more channels)")
    return shape[0]


def _finite_vectors(emb: Embedding) -> np.ndarray:
    """(N, D) float32 C-contiguous ``emb.vectors``, or a one-line error for NaN/inf."""
    vec = np.ascontiguousarray(_as_array(emb.vectors), dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(vec)))
    if bad:
        raise NnfeatError(f"embedding '{emb.name}' has {bad} non-finite values (NaN/inf); the Projector needs finite numbers")
    return vec


def _clean(value: object) -> str:
    """A metadata cell: ``str(value)`` with tabs and line breaks as spaces."""
    return re.sub(r"[\t\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]", " ", str(value))


def _metadata_text(emb: Embedding, n: int) -> str | None:
    """The metadata TSV of ``emb`` (a header line only when there are >= 2 columns), or None without columns."""
    columns = {str(k): list(v) for k, v in emb.metadata.items()}
    if not columns:
        return None
    wrong = [f"{k} ({len(v)})" for k, v in columns.items() if len(v) != n]
    if wrong:
        raise NnfeatError(f"embedding '{emb.name}' has {n} vectors but metadata columns of other lengths: {', '.join(wrong)}")
    rows = [list(cells) for cells in zip(*([_clean(c) for c in col] for col in columns.values()))]
    for cells in rows:
        if not "".join(cells).strip():
            cells[0] = "-"  # the Projector drops blank lines, which would shift every later row
    lines = ["\t".join(cells) for cells in rows]
    if len(columns) > 1:
        header = [_clean(k).strip() or f"column{i}" for i, k in enumerate(columns)]
        lines.insert(0, "\t".join(header))
    return "\n".join(lines) + "\n"


def _check_thumbnails(emb: Embedding, n: int, thumb_size: int) -> tuple[int, int]:
    thumbs = emb.thumbnails
    if not torch.is_tensor(thumbs) or thumbs.dim() != 4 or thumbs.shape[1] not in (1, 3) or len(thumbs) != n:
        shape = tuple(thumbs.shape) if hasattr(thumbs, "shape") else type(thumbs).__name__
        raise NnfeatError(f"embedding '{emb.name}' needs ({n}, 3, h, w) thumbnails for its {n} vectors, got {shape}")
    return sprite_layout(n, thumb_size)


def _thumb_dims(h: int, w: int, thumb_px: int) -> tuple[int, int]:
    """(th, tw): ``h`` x ``w`` scaled so that the longer side is ``thumb_px``."""
    scale = thumb_px / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _write_sprite(path: Path, thumbnails: torch.Tensor, per_row: int, thumb_px: int) -> tuple[int, int]:
    """Write (N, C, h, w) thumbnails as a per_row x per_row grid PNG, row-major; return single_image_dim (tw, th)."""
    n, _, h, w = thumbnails.shape
    th, tw = _thumb_dims(h, w, thumb_px)
    grid = np.zeros((per_row * th, per_row * tw, 3), dtype=np.uint8)
    cells = grid.reshape(per_row, th, per_row, tw, 3)  # a view: cells[r, :, c] is the cell of image r * per_row + c
    rows = max(1, _CHUNK_PX // (max(h * w, th * tw) * 3 * per_row))  # grid rows per step: bounds float memory
    for r0 in range(0, math.ceil(n / per_row), rows):  # a loop over chunks of grid rows, not over images
        batch = thumbnails[r0 * per_row : (r0 + rows) * per_row].detach().cpu().float()
        if th < h or tw < w:  # shrink smoothly, then quantize the small result
            batch = F.interpolate(batch, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
        batch = batch.clamp(0, 1).mul_(255).round_().to(torch.uint8)
        if (th, tw) != tuple(batch.shape[-2:]):  # enlarge as crisp pixel blocks, on uint8
            batch = F.interpolate(batch, size=(th, tw), mode="nearest")
        k = len(batch)
        full = math.ceil(k / per_row) * per_row
        pixels = torch.zeros(full, th, tw, 3, dtype=torch.uint8)  # a partial last row stays black
        pixels[:k] = batch.expand(-1, 3, -1, -1).permute(0, 2, 3, 1)
        block = pixels.numpy().reshape(full // per_row, per_row, th, tw, 3).transpose(0, 2, 1, 3, 4)
        cells[r0 : r0 + full // per_row] = block
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return tw, th


def _write_tensor(path: Path, vectors: np.ndarray) -> None:
    """(N, D) float32 -> TSV, 9 significant digits (an exact float32 round trip)."""
    with atomic_path(path) as tmp:
        np.savetxt(tmp, vectors, fmt="%.9g", delimiter="\t")


def _write_utf8(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")


def _same_images(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and torch.equal(a.detach().cpu(), b.detach().cpu()))


def _numbered(stem: str, suffix: str, index: int) -> str:
    return f"{stem}{suffix}" if index == 0 else f"{stem}-{index + 1}{suffix}"


def _unique_slugs(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for name in names:
        base = slug = slugify(name)
        k = 2
        while slug in seen:
            slug, k = f"{base}-{k}", k + 1
        seen.add(slug)
        out.append(slug)
    return out


def _quote(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept as is)."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    escaped = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\{ord(m.group()):03o}", escaped)
    return f'"{escaped}"'


__all__ = ["Embedding", "sprite_layout", "write_projector", "config_text", "slugify", "MAX_SPRITE_PX",
           "MIN_THUMB_PX", "CONFIG_NAME"]
