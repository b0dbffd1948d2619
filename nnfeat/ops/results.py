"""The one result protocol: what every public operation returns.

A :class:`Result` has

* ``.images``: a (B, 3, H, W) tensor in [0, 1] (the pictures the operation made);
* ``.save(out)``: writes its images and one JSON record (``<kind>.json``: settings, seed, device, the
  equivalent CLI command, nnfeat / torch / Python versions, elapsed time, the files written) into the
  folder ``out``, atomically file by file, and returns the JSON's path;
* ``_repr_png_`` / ``_repr_html_``: a notebook cell that ends with a result shows its captioned sheet.

The CLI does nothing but call the operation and ``.save`` the result.
"""

from __future__ import annotations

import base64
import html
import io
import os
import platform
import shlex
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image

from nnfeat.errors import NnfeatError
from nnfeat.io import save_image, track_writes, write_json
from nnfeat.models.checkpoint import weights_option
from nnfeat.views.sheets import labelled_sheet


def versions() -> dict[str, str]:
    """nnfeat, torch and Python versions, for JSON records."""
    try:
        nnfeat_version = version("nnfeat")
    except PackageNotFoundError:  # running from a source tree that is not installed
        nnfeat_version = "unknown"
    return {"nnfeat": nnfeat_version, "torch": torch.__version__, "python": platform.python_version()}


def cli_command(command: str, *positional: Any, **options: Any) -> str:
    """``nnfeat COMMAND POS... --opt value ...`` quoted for a POSIX shell; options set to None or False are
    left out, True ones are plain flags, ``snake_case`` names become ``--kebab-case``."""
    words = ["nnfeat", command, *(str(p) for p in positional)]
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.rstrip("_").replace("_", "-")
        words.append(flag) if value is True else words.extend([flag, str(value)])
    return shlex.join(words)


def weights_flag(model: Any) -> str | None:
    """The ``--weights`` value of a result's equivalent command: ``random``, the weights file's path, or None
    (pretrained, the default). ``model`` is a :class:`~nnfeat.models.base.Model` or its ``weights`` text."""
    return weights_option(model if isinstance(model, str) or model is None else getattr(model, "weights", None))


def check_out_dir(out: str | os.PathLike) -> Path:
    """``out`` as a folder path; a one-line error when it exists as a file (checked before any work)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NnfeatError(f"output folder '{out}' is a file: choose another --out")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NnfeatError(f"output folder '{out}' is inside '{parent}', which is a file: choose another --out")
            if not os.access(parent, os.W_OK) or not _can_create_in(parent):
                raise NnfeatError(f"output folder '{out}' cannot be created: '{parent}' is not writable; "
                                  "choose another --out")
            break
    if out.is_dir() and not (os.access(out, os.W_OK) and _can_create_in(out)):
        raise NnfeatError(f"output folder '{out}' is not writable: choose another --out")
    return out


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be made in the existing ``folder`` (``os.access`` says yes to root on read-only mounts
    and on /proc): an empty hidden folder is made there and removed at once, so nothing is left behind."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".nnfeat-write-check-", dir=folder))
    except OSError:
        return False
    return True


def png_bytes(array: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class Result:
    """Base class of every result (see the module docstring). Subclasses define :attr:`kind`,
    :attr:`images`, :meth:`captions`, :meth:`title`, :meth:`record` and :meth:`write_files`, and set
    ``command`` (the equivalent CLI command, or None) and ``elapsed`` (seconds)."""

    kind: ClassVar[str] = "result"
    #: tiles per row of the sheet (None: about square)
    sheet_columns: ClassVar[int | None] = None
    #: keys of :meth:`record` that describe how this run went (times, what came from a cache), not the result;
    #: left out with ``timing=False``
    run_fields: ClassVar[tuple[str, ...]] = ()

    command: str | None = None
    elapsed: float = 0.0
    #: the model's input spec (:meth:`nnfeat.models.spec.InputSpec.record`), recorded as ``input`` when set:
    #: the CLI sets it for a model nnfeat does not know, or when input options were given
    input_spec: dict | None = None
    #: how images of another aspect ratio were fitted to the input (``{"policy", "fitted", "of", "size"}``),
    #: recorded as ``image_fit`` when set: the CLI sets it when any image needed fitting (``--fit``)
    image_fit: dict | None = None

    # -- what a subclass provides ----------------------------------------------------------------
    @property
    def images(self) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1]."""
        raise NotImplementedError

    def captions(self) -> list[str]:
        """One caption per image of the sheet."""
        return ["" for _ in range(len(self.images))]

    def title(self) -> str:
        return self.kind

    def record(self) -> dict:
        """The JSON-able part of the record that is specific to this kind (settings, values, ...)."""
        return {}

    def write_files(self, out: Path) -> list[str]:
        """Write this kind's own files into ``out`` (beside the sheet and the JSON); return their relative paths."""
        return []

    # -- the protocol -----------------------------------------------------------------------------
    def sheet_images(self) -> torch.Tensor:
        """The images shown on the sheet (default: :attr:`images`)."""
        return self.images

    def sheet(self) -> np.ndarray:
        """The captioned, upscaled contact sheet, (H, W, 3) uint8."""
        return labelled_sheet(self.sheet_images(), self.captions(), ncol=self.sheet_columns, title=self.title())

    def full_record(self, files: Sequence[str] = (), timing: bool = True) -> dict:
        """The whole JSON record: kind, this kind's :meth:`record`, command, versions, elapsed time, files;
        ``timing=False`` leaves out the elapsed time and the :attr:`run_fields`."""
        own = {k: v for k, v in self.record().items() if timing or k not in self.run_fields}
        record = {"kind": self.kind, **own, "command": self.command, "versions": versions()}
        if self.input_spec is not None:
            record["input"] = self.input_spec
        if self.image_fit is not None:
            record["image_fit"] = self.image_fit
        if timing:
            record["elapsed_seconds"] = round(float(self.elapsed), 3)
        return {**record, "files": list(files)}

    def save(self, out: str | os.PathLike, *, timing: bool = True) -> Path:
        """Write the sheet ``<kind>.png``, this kind's files and the record ``<kind>.json`` into ``out``.

        ``timing=False`` leaves the elapsed time out of the record, so the same work always writes the same
        bytes (what a resumed ``nnfeat report`` relies on). Returns the path of the JSON record.

        All or nothing: when a write fails part-way (a full disk), the files this call finished, the folder's
        earlier record ``<kind>.json`` (it no longer describes the folder) and the folders this call made are
        removed before the error is raised on, so no half set of outputs is left behind.
        """
        out = check_out_dir(out)
        made = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
        out.mkdir(parents=True, exist_ok=True)
        with track_writes() as written:
            try:
                files = self.write_files(out)
                sheet_name = f"{self.kind}.png"
                save_image(out / sheet_name, self.sheet())
                return write_json(out / f"{self.kind}.json", self.full_record([sheet_name, *files], timing=timing))
            except Exception:
                stale = [*written, out / f"{self.kind}.json"] if written else []
                for path in stale:
                    Path(path).unlink(missing_ok=True)
                subfolders = sorted({Path(p).parent for p in written} - {out}, key=lambda p: -len(p.parts))
                for folder in [*subfolders, *made]:  # deepest first; only empty ones go (rmdir)
                    try:
                        folder.rmdir()
                    except OSError:
                        pass
                raise

    def _repr_png_(self) -> bytes:
        return png_bytes(self.sheet())

    def _repr_html_(self) -> str:
        data = base64.b64encode(self._repr_png_()).decode("ascii")
        caption = html.escape(self.title())
        command = f"<br><code>{html.escape(self.command)}</code>" if self.command else ""
        return (f"<figure style='margin:0'><img src='data:image/png;base64,{data}' alt='{caption}' "
                f"style='image-rendering:pixelated;max-width:100%'><figcaption style='font-size:12px'>{caption}"
                f"{command}</figcaption></figure>")

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.images.shape)) if len(self.images) else "0"
        return f"<{type(self).__name__} {self.title()!r}: images {shape}>"


class FolderResult(Result):
    """A result that is the folder it was built in (a report): :attr:`images` are its ``key_images``
    ((B, 3, H, W) in [0, 1]) and :meth:`save` only checks that ``out`` is that folder. Subclasses are dataclasses
    with ``out`` and ``key_images`` fields."""

    out: Path
    key_images: torch.Tensor

    @property
    def images(self) -> torch.Tensor:
        return self.key_images

    def save(self, out=None, *, timing: bool = False) -> Path:
        """The report is its folder: ``out`` (default the folder it was built in) must be that folder.
        Returns its entry page, ``index.html``."""
        out = Path(out) if out is not None else self.out
        if out.resolve() != Path(self.out).resolve():
            raise NnfeatError(f"a report is saved where it was built ('{self.out}'), not '{out}'")
        return Path(self.out) / "index.html"


__all__ = ["Result", "FolderResult", "versions", "cli_command", "check_out_dir", "png_bytes", "weights_flag"]
