"""Atomic file output: images, grids and JSON. A crash never leaves a half-written file behind.

Every file goes through :func:`atomic_path` (written to a hidden temporary ``.<name>.*`` beside it, then renamed).
A re-run that reuses files checks them with :func:`is_whole` (the recorded digest, else a read-back by kind) and
removes the temporaries a killed run left with :func:`remove_stale_temporaries`; :func:`track_writes` lists the
files a block of work finished (what a stage's record vouches for).
Fault tests use two environment hooks there: ``NNFEAT_KILL_AFTER_WRITES=k`` sends this process SIGKILL right
after its k-th finished file (``k:before``: just before the k-th rename, so a temporary is left behind), and
``NNFEAT_WRITE_LOG=FILE`` appends the path of every finished file to ``FILE`` (to count a run's write points).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import signal
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs are meant to be shared like any file
        _fault_point(path, before=True)
        os.replace(tmp, path)
        for sink in _tracked.get():
            sink.append(path)
        _fault_point(path, before=False)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_writes = 0
#: the lists of the :func:`track_writes` blocks open in this context (innermost last)
_tracked: ContextVar[tuple[list[Path], ...]] = ContextVar("nnfeat_tracked_writes", default=())
#: zlib level of every PNG: 3 encodes a 1440x1440 px sprite of CIFAR photos in 0.43 s against 0.78 s at PIL's
#: default 6, for a 2 % larger file (measured here); report and atlas folders write thousands of PNGs
PNG_COMPRESS_LEVEL = 3


def _fault_point(path: Path, *, before: bool) -> None:
    """The fault-test hooks of the module docstring (no-ops unless their environment variables are set)."""
    global _writes
    kill = os.environ.get("NNFEAT_KILL_AFTER_WRITES")
    log = os.environ.get("NNFEAT_WRITE_LOG")
    if not kill and not log:
        return
    if not before:
        _writes += 1
        if log:
            with open(log, "a") as handle:
                handle.write(f"{path}\n")
    if kill:
        count, _, when = kill.partition(":")
        target = _writes + 1 if before else _writes
        if target == int(count) and (when == "before") == before:
            os.kill(os.getpid(), signal.SIGKILL)


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3,H,W) or (1,H,W) float in [0,1] tensor, or (H,W,3)/(H,W) array -> (H,W,3) or (H,W) uint8 array."""
    if torch.is_tensor(image):
        image = image.detach().float().cpu()
        if image.dim() == 3 and image.shape[0] in (1, 3, 4):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return array


def save_image(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> Path:
    """Write one image as PNG (atomically). ``image``: (3,H,W) float [0,1] or (H,W,3) uint8."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return path


def make_grid(images: torch.Tensor, ncol: int | None = None, pad: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """(B,3,H,W) -> one (3, rows*(H+pad)+pad, ncol*(W+pad)+pad) contact sheet, row-major."""
    b, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(b))
    nrow = math.ceil(b / ncol)
    canvas = torch.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), pad_value, dtype=images.dtype)
    for i in range(b):  # assembling a picture once, not a hot path
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, y : y + h, x : x + w] = images[i].cpu()
    return canvas


def save_grid(path: str | os.PathLike, images: torch.Tensor, ncol: int | None = None, pad: int = 2) -> Path:
    """Write (B,3,H,W) images in [0,1] as one PNG grid."""
    return save_image(path, make_grid(images, ncol=ncol, pad=pad))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, with the same bytes for the same ``obj`` whatever the path: the
    archive is written in memory first (``torch.save`` to a file names the archive's inner folder after the file,
    here a random temporary name)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def is_existing_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file; a name no file system can hold (too long, a NUL byte) is simply not one."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


@contextmanager
def track_writes() -> Iterator[list[Path]]:
    """Yield a list that collects the path of every file finished through :func:`atomic_path` in this block
    (in this process and context; nested blocks each get every file)."""
    found: list[Path] = []
    token = _tracked.set((*_tracked.get(), found))
    try:
        yield found
    finally:
        _tracked.reset(token)


def file_digest(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """The first 16 hex digits of the sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


#: suffixes read back as UTF-8 text by :func:`is_whole`
TEXT_SUFFIXES = (".html", ".csv", ".tsv", ".txt", ".js", ".css", ".svg", ".md")


def is_whole(path: str | os.PathLike, digest: str | None = None) -> bool:
    """Whether ``path`` is a file that can be reused: with ``digest`` (as :func:`file_digest` gave it when the
    file was written) its bytes are those; without, it reads back whole by its kind (a PNG/JPEG decodes to the
    end, JSON parses, ``.npy`` / ``.npz`` arrays load, text decodes as UTF-8; other kinds: it exists)."""
    path = Path(path)
    if not is_existing_file(path):
        return False
    try:
        if digest is not None:
            return file_digest(path) == digest
        suffix = path.suffix.lower()
        if suffix in (".png", ".jpg", ".jpeg"):
            with Image.open(path) as image:
                image.load()  # decodes every chunk: a truncated or corrupt file raises
        elif suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".npy":
            np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                for name in arrays.files:
                    arrays[name]
        elif suffix in TEXT_SUFFIXES:
            path.read_text(encoding="utf-8")
    except Exception:  # noqa: BLE001 - readers raise many kinds of errors for a damaged file: all mean "not whole"
        return False
    return True


def _temporary_pattern() -> re.Pattern:
    """The names :func:`atomic_path` gives its temporaries: ``.<name>.<8 random characters><name's suffix>``."""
    return re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>(\.[^.]*)?)")


def remove_stale_temporaries(folder: str | os.PathLike, *, older_than: float, recursive: bool = False,
                             prefix: str = "") -> list[Path]:
    """Remove the temporaries of :func:`atomic_path` a killed run left in ``folder`` (and below it with
    ``recursive``): hidden files named ``.<name>.<random><suffix>`` whose modification time is before
    ``older_than`` (a ``time.time()``: the start of the run that cleans, so the temporary of a write in flight,
    e.g. another rank's, is never touched) and whose ``<name>`` starts with ``prefix``. Other files are left
    alone. Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern, removed = _temporary_pattern(), []
    for path in sorted(folder.rglob(".*") if recursive else folder.glob(".*")):
        match = pattern.fullmatch(path.name)
        if match is None or Path(match["name"]).suffix != match["suffix"] or not match["name"].startswith(prefix):
            continue
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime < older_than:
                path.unlink()
                removed.append(path)
        except OSError:  # gone already (another process cleaned it) or not ours to remove
            continue
    return removed


def _json_default(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def upscale_nearest(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,H*factor,W*factor), for showing small renders at a visible size."""
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def nnfeat_home() -> Path:
    """``$NNFEAT_HOME`` if set (and not empty), else ``~/.cache/nnfeat``."""
    home = os.environ.get("NNFEAT_HOME")
    return Path(home).expanduser() if home else Path("~/.cache/nnfeat").expanduser()


__all__: Sequence[str] = [
    "nnfeat_home", "save_torch", "atomic_path", "is_existing_file", "to_uint8", "save_image", "make_grid", "save_grid", "write_json", "write_text", "read_json",
    "upscale_nearest", "track_writes", "file_digest", "is_whole", "remove_stale_temporaries", "TEXT_SUFFIXES",
]
