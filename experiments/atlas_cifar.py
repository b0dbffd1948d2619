"""Activation atlas of CIFAR-10 ResNet-20 ``layer3`` over the CIFAR-10 test set, with its cost and fidelity.

Measures, for the README:

* wall time of each pipeline stage and peak resident memory (``ru_maxrss``);
* mean ``cosine`` over cells (rendered icon's centre activation vs. cell vector);
* class agreement: the share of cells whose icon ``cifar10-resnet32`` (a model that did not make the
  icons) classifies as the cell's majority dataset label; also against the cell's top attribution class.

Usage (from the repository root; the weights and data are read from ../shared)::

    NNFEAT_WEIGHTS_PATH=../shared/models python experiments/atlas_cifar.py --fresh

It prints a summary and writes ``OUT/atlas_cifar.json`` (default OUT: ``out/atlas-cifar``), next to the
atlas itself (``atlas.png``, ``cells.json``, ``atlas.html``). Without ``--fresh`` an existing OUT is
resumed, and the stages it reuses report their (short) load times.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from nnfeat.ops.atlas import AtlasSettings, build_atlas  # noqa: E402
from nnfeat.data import load_images  # noqa: E402
from nnfeat.io import write_json  # noqa: E402
from nnfeat.device import PRECISIONS  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "out" / "atlas-cifar"))
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--per-image", type=int, default=5)
    parser.add_argument("--grid", type=int, default=20)
    parser.add_argument("--min-count", type=int, default=5)
    parser.add_argument("--layout", default="umap", choices=("umap", "tsne", "pca"))
    parser.add_argument("--icon-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cossim-pow", type=float, default=3.0)
    parser.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--spatial-weight", type=float, default=0.5,
                        help="whole-map direction term of the icon objective (0 = the paper's objective)")
    parser.add_argument("--transforms", default="auto", choices=("auto", "standard", "none"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-neighbors", type=int, default=AtlasSettings.n_neighbors, help="UMAP n_neighbors")
    parser.add_argument("--min-dist", type=float, default=AtlasSettings.min_dist, help="UMAP min_dist")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="icon render arithmetic (default auto: bf16 where the device has native bf16)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--fresh", action="store_true", help="delete OUT first, so every stage is timed")
    return parser.parse_args()


def load(name: str, device: str):
    from nnfeat.models.zoo import load_model

    return load_model(name, device=device)


def read_icons(paths: list[Path]) -> torch.Tensor:
    """The saved icons (as written, 8-bit PNGs) -> (M, 3, s, s) float in [0, 1]."""
    return torch.stack([torch.from_numpy(np.array(Image.open(path).convert("RGB")))
                        for path in paths]).permute(0, 3, 1, 2).float().div(255)


def fidelity(icons: torch.Tensor, cells: list[dict], cosines: np.ndarray, model, judge) -> dict:
    """The atlas's fidelity numbers for M icons (M, 3, s, s) of ``cells`` (``cells.json`` entries, same order)
    with cosines (M,): mean / min cosine and the share of icons that ``judge`` (and the atlas's own ``model``)
    classifies as the cell's majority dataset label (and as its top attribution class)."""
    with torch.no_grad():
        judged = judge(icons.to(judge.device)).argmax(1).cpu().numpy()
        own = model(icons.to(model.device)).argmax(1).cpu().numpy()
    majority = np.array([c["majority_label"]["index"] for c in cells])
    top_class = np.array([c["top_class"]["index"] for c in cells])
    cosines = np.asarray(cosines, dtype=np.float64)
    return {
        "mean_cosine": round(float(cosines.mean()), 4),
        "min_cosine": round(float(cosines.min()), 4),
        "class_agreement_majority_label": round(float((judged == majority).mean()), 4),
        "class_agreement_top_attribution": round(float((judged == top_class).mean()), 4),
        "own_model_agreement_majority_label": round(float((own == majority).mean()), 4),
    }


def main() -> int:
    args = parse_args()
    data_path = SHARED / "data" / "cifar10_test.npz"
    if not data_path.is_file():
        print(f"CIFAR-10 test set not found at {data_path}", file=sys.stderr)
        return 2
    if not os.environ.get("NNFEAT_WEIGHTS_PATH") and (SHARED / "models").is_dir():
        os.environ["NNFEAT_WEIGHTS_PATH"] = str(SHARED / "models")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    if args.fresh and out.exists():
        if not (out / "collect").is_dir() and any(out.iterdir()):
            print(f"refusing to delete {out}: it does not look like an atlas folder", file=sys.stderr)
            return 2
        shutil.rmtree(out)

    load_before = os.getloadavg()
    start = time.perf_counter()
    model = load("cifar10-resnet20", device)
    images = load_images(data_path, size=model.input_size)
    settings = AtlasSettings(samples=args.samples, per_image=args.per_image, layout=args.layout, grid=args.grid,
                             min_count=args.min_count, whiten=args.whiten, icon_size=args.icon_size, steps=args.steps,
                             batch=args.batch, seed=args.seed, cossim_pow=args.cossim_pow, transforms=args.transforms,
                             spatial_weight=args.spatial_weight, precision=args.precision,
                             n_neighbors=args.n_neighbors, min_dist=args.min_dist)
    result = build_atlas(model, "layer3", images, out, settings, progress=sys.stderr.isatty(),
                         log=lambda line: print(line, flush=True))
    total = time.perf_counter() - start

    # fidelity: classify the saved icons (as written, 8-bit) with a held-out model
    judge = load("cifar10-resnet32", device)
    scores = fidelity(read_icons([out / c["icon"] for c in result.cells]), result.cells,
                      np.array([c["cosine"] for c in result.cells]), model, judge)
    purity = np.array([c["majority_label"]["share"] for c in result.cells])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "model": "cifar10-resnet20", "layer": "layer3", "judge": "cifar10-resnet32",
        "samples": result.header["samples"], "grid": args.grid, "cells": len(result.cells),
        "settings": result.header["settings"],
        "stage_seconds": result.timings, "cached_stages": result.cached, "total_seconds": round(total, 1),
        "peak_rss_mb": round(peak_mb, 1),
        **scores,
        "mean_majority_label_share": round(float(purity.mean()), 4),
        "machine": {"device": str(device), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
    }
    write_json(out / "atlas_cifar.json", report)
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
          + f" (total {total:.0f}s{', cached: ' + ', '.join(result.cached) if result.cached else ''})")
    print(f"peak memory {peak_mb:.0f} MB; {len(result.cells)} cells of {args.grid}x{args.grid} from "
          f"{result.header['samples']} samples")
    print(f"mean cosine {report['mean_cosine']:.3f} (target >= 0.6); class agreement (resnet32 on icons vs. majority "
          f"label) {report['class_agreement_majority_label']:.1%} (target >= 50%); vs. top attribution "
          f"{report['class_agreement_top_attribution']:.1%}; mean majority-label share {purity.mean():.1%}")
    print(f"wrote {out / 'atlas_cifar.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
