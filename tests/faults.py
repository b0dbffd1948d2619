"""What the fault-injection tests share: running the CLI in a folder (with the :mod:`nnfeat.io` fault hooks in its
environment), the files a folder shows under final names, the hidden temporaries a kill left, and the files that
do not read back whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = (".html", ".csv", ".txt", ".js", ".css")


def nnfeat(folder: Path, args: list[str], **env) -> subprocess.CompletedProcess:
    """The CLI run in ``folder`` (so ``--out out`` and the recorded command are the same in every run)."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "nnfeat", *args], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env})


def _visible(folder: Path, path: Path) -> bool:
    return path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)


def visible_files(folder: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under a final name (hidden ``.name.*`` temporaries left out)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if _visible(folder, p)}


def hidden_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.is_file()]


def broken_files(folder: Path) -> list[str]:
    """Files under a final name that do not read back whole (PNG decodes, JSON parses, .npy / .npz load)."""
    bad = []
    for path in folder.rglob("*"):
        if not _visible(folder, path):
            continue
        try:
            if path.suffix == ".png":
                with Image.open(path) as image:
                    image.load()
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".npy":
                np.load(path, mmap_mode="r")[...].sum()
            elif path.suffix == ".npz":
                with np.load(path) as arrays:
                    [arrays[k] for k in arrays.files]
            elif path.suffix in TEXT_SUFFIXES:
                path.read_text(encoding="utf-8")
        except Exception as err:  # noqa: BLE001 - any failure to read is a broken file
            bad.append(f"{path.relative_to(folder)}: {type(err).__name__}: {err}")
    return bad
