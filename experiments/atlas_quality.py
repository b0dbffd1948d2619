"""Icon-quality levers of the CIFAR activation atlas: re-render only the icons of an existing atlas, per lever.

The expensive, shared stages (collect, whitening, UMAP, grid) do not depend on the icon settings, so this
script reads them from an atlas folder built once by ``experiments/atlas_cifar.py`` and, for each lever,
renders the icons of the same cells again (into ``OUT/<lever>/``) and scores them exactly as
``atlas_cifar.py`` does (its ``fidelity``: mean cosine, and class agreement = ``cifar10-resnet32`` on the
8-bit icon equals the cell's majority dataset label).

A lever is a ``+``-joined list of ``name=value`` overrides of the base icon settings (``BASE``), e.g.
``tries=4``, ``steps=512+transforms=atlas``; ``base`` is the atlas defaults. Levers:

* ``tries``: best of N candidates per icon (:func:`nnfeat.analysis.atlas.icons.render_best_of`; the kept candidate
  has the highest final value of the atlas's own objective; never chosen by the judge);
* ``choose=cosine``: pick the try by centre cosine to the cell vector (the atlas's fidelity) instead;
* ``param`` (``fft``, ``pixel``, ``maco`` = MACO's fixed CIFAR-10 test-set Fourier magnitude, Fel et al. 2023,
  ``maco-power`` = the same with a synthetic 1/f magnitude);
* ``steps``, ``transforms`` (``auto``, ``standard``, ``none``, ``atlas`` = the paper's set), ``spatial_weight``,
  ``cossim_pow``, ``lr``, ``decorrelate``, ``precision`` (``auto``/``bf16``/``fp32``).

Usage (from the repository root)::

    NNFEAT_WEIGHTS_PATH=../shared/models python experiments/atlas_cifar.py --out out/atlas-quality-base --fresh
    NNFEAT_WEIGHTS_PATH=../shared/models python experiments/atlas_quality.py --cells 64 \\
        --levers base,tries=4,steps=512,transforms=atlas,spatial_weight=1

Each lever writes ``OUT/<lever>/quality.json`` (reused on a re-run unless ``--fresh``); the summary table
goes to ``OUT/quality-<cells>.json`` and stdout. The icon seconds of a lever and its ratio to ``base`` are
side-by-side only within one invocation (list ``base`` first).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from atlas_cifar import fidelity, load, read_icons  # noqa: E402
from nnfeat.analysis.atlas.icons import centre_cosine, icon_name, render_best_of  # noqa: E402
from nnfeat.device import autocast_for  # noqa: E402
from nnfeat.io import read_json, save_image, write_json  # noqa: E402
from nnfeat.seeds import stage_seed  # noqa: E402


@dataclass(frozen=True)
class IconSettings:
    """The icon settings a lever changes (the defaults are the atlas's, as ``atlas_cifar.py`` runs it)."""

    steps: int = 256
    tries: int = 1
    transforms: str = "auto"
    spatial_weight: float = 0.5
    cossim_pow: float = 3.0
    lr: float | None = None
    decorrelate: bool = True
    precision: str = "auto"
    icon_size: int = 32
    choose: str = "objective"
    param: str = "fft"
    batch: int = 32
    seed: int = 0


BASE = IconSettings()


def parse_lever(text: str, base: IconSettings = BASE) -> IconSettings:
    """``"steps=512+tries=4"`` -> the base settings with those overrides (``"base"``: none)."""
    if text == "base":
        return base
    values = {}
    fields = asdict(base)
    for part in text.split("+"):
        name, _, value = part.partition("=")
        if name not in fields or not value:
            raise SystemExit(f"bad lever part '{part}': use name=value with name one of {', '.join(fields)}")
        kind = type(fields[name]) if fields[name] is not None else float
        values[name] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return replace(base, **values)


def render_cells(model, layer: str, vectors: np.ndarray, whitening: np.ndarray, rows, cols, folder: Path,
                 s: IconSettings, spectrum: torch.Tensor | None = None) -> tuple[np.ndarray, float, list[float]]:
    """Render the icons of M cells like ``render_icons`` does (batch i seeded from ``(seed, "icons", i)``) ->
    (cosines (M,), render seconds, final objective values (M,))."""
    raw = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    directions = raw @ torch.from_numpy(np.asarray(whitening, dtype=np.float32))
    cosines = np.zeros(len(vectors), dtype=np.float32)
    values: list[float] = []
    seconds = 0.0
    for b, start in enumerate(range(0, len(vectors), s.batch)):
        cells = slice(start, min(start + s.batch, len(vectors)))
        began = time.perf_counter()
        result = render_best_of(model, layer, directions[cells], s.tries, cossim_pow=s.cossim_pow,
                                spatial_weight=s.spatial_weight, size=s.icon_size, steps=s.steps,
                                cosine_to=raw[cells] if s.choose == "cosine" else None,
                                param="maco" if spectrum is not None else s.param, spectrum=spectrum,
                                transforms=s.transforms, seed=stage_seed(s.seed, "icons", b),
                                autocast=autocast_for(s.precision), lr=s.lr, decorrelate=s.decorrelate,
                                progress=False)
        cos = centre_cosine(model, layer, result.images, raw[cells])
        seconds += time.perf_counter() - began
        for r, c, icon in zip(rows[cells], cols[cells], result.images):
            save_image(folder / icon_name(int(r), int(c)), icon)
        cosines[cells] = cos.numpy()
        values += result.final_values.tolist()
    return cosines, seconds, values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=str(ROOT / "out" / "atlas-quality-base"),
                        help="an atlas folder from atlas_cifar.py (its grid, whitening and cells.json are used)")
    parser.add_argument("--out", default=str(ROOT / "out" / "atlas-quality"))
    parser.add_argument("--cells", type=int, default=64, help="score this many cells, evenly spread (0 = all)")
    parser.add_argument("--levers", default="base,tries=4,steps=512,transforms=atlas")
    parser.add_argument("--fresh", action="store_true", help="render levers again even where a result exists")
    args = parser.parse_args()
    if not os.environ.get("NNFEAT_WEIGHTS_PATH") and (SHARED / "models").is_dir():
        os.environ["NNFEAT_WEIGHTS_PATH"] = str(SHARED / "models")
    base_dir, out = Path(args.base), Path(args.out)
    cells_all = read_json(base_dir / "cells.json")["cells"]
    with np.load(base_dir / "grid.npz") as arrays:
        vectors, rows, cols = arrays["vectors"], arrays["rows"], arrays["cols"]
    whitening = np.load(base_dir / "whitening.npy")
    assert [(c["row"], c["col"]) for c in cells_all] == list(zip(rows.tolist(), cols.tolist()))
    count = len(cells_all)
    pick = np.unique(np.linspace(0, count - 1, args.cells).round().astype(int)) if 0 < args.cells < count \
        else np.arange(count)
    cells = [cells_all[i] for i in pick]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, judge = load("cifar10-resnet20", device), load("cifar10-resnet32", device)

    # the ceiling a faithful icon can reach: resnet20's own head (linear after the global average pool of
    # layer3) applied to each cell vector itself, i.e. to a map that is v at every position
    head = dict(model.named_modules())["net.linear"]
    with torch.no_grad():
        head_class = head(torch.from_numpy(np.asarray(vectors[pick], dtype=np.float32)).to(model.device)).argmax(1)
    majority = np.array([c["majority_label"]["index"] for c in cells])
    ceiling = float((head_class.cpu().numpy() == majority).mean())
    print(f"ceiling: resnet20's head on the cell vectors = majority label for {ceiling:.1%} of {len(pick)} cells")

    table = []
    for lever in args.levers.split(","):
        s = parse_lever(lever)
        folder = out / f"{len(pick)}cells" / lever.replace("=", "-").replace("+", "_")
        record_path = folder / "quality.json"
        if record_path.is_file() and not args.fresh and {**asdict(BASE), **read_json(record_path)["settings"]} == asdict(s):
            record = read_json(record_path)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            load_before = os.getloadavg()[0]
            spectrum = None
            if s.param == "maco":
                from nnfeat.engine.spectrum import dataset_spectrum

                spectrum = dataset_spectrum(SHARED / "data" / "cifar10_test.npz", s.icon_size)
            elif s.param == "maco-power":
                from nnfeat.engine.spectrum import power_law_spectrum

                spectrum = power_law_spectrum(s.icon_size)
            cosines, seconds, values = render_cells(model, "layer3", vectors[pick], whitening, rows[pick], cols[pick],
                                                    folder, s, spectrum)
            icons = read_icons([folder / icon_name(c["row"], c["col"]) for c in cells])
            record = {"lever": lever, "settings": asdict(s), "cells": len(pick), **fidelity(icons, cells, cosines,
                      model, judge), "mean_objective": round(float(np.mean(values)), 4),
                      "icon_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
                      "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
            write_json(record_path, record)
        table.append(record)
        print(f"{lever:<40} cells {record['cells']:>3}  cosine {record['mean_cosine']:.3f}  agreement "
              f"{record['class_agreement_majority_label']:.1%}  objective {record['mean_objective']:.3g}  "
              f"{record['icon_seconds']:.0f}s", flush=True)
    base_seconds = next((r["icon_seconds"] for r in table if r["lever"] == "base"), None)
    for record in table:
        record["ratio_to_base"] = round(record["icon_seconds"] / base_seconds, 2) if base_seconds else None
    write_json(out / f"quality-{len(pick)}.json", {"base": str(base_dir), "head_on_cell_vector_agreement":
                                                   round(ceiling, 4), "levers": table})
    print("| lever | cells | mean cosine | class agreement | icon seconds | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in table:
        print(f"| {r['lever']} | {r['cells']} | {r['mean_cosine']:.3f} | {r['class_agreement_majority_label']:.1%} | "
              f"{r['icon_seconds']:.0f} | {r['ratio_to_base'] if r['ratio_to_base'] is not None else '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
