"""Atlas at scale: wall time and peak memory of every stage at 100 k and 1 M activation samples.

Runs, each in its own subprocess (so ``ru_maxrss`` is that run's own peak), the equivalent of

    nnfeat atlas cifar10-resnet20 layer2 --images /work/shared/data/cifar10_test.npz --per-image 10  --samples 100000
    nnfeat atlas cifar10-resnet20 layer2 --images /work/shared/data/cifar10_test.npz --per-image 100 --samples 1000000

(``build_atlas`` called directly, so the peak resident memory can be read after each stage), from a fresh
output folder, and writes ``out/bench-atlas-scale/results.json`` and a markdown table. The peak after a stage
is the process's peak so far (``ru_maxrss`` never goes down): a stage's own peak is its row where the value rose.

    OMP_NUM_THREADS=1 NNFEAT_WEIGHTS_PATH=/work/shared/models .venv/bin/python experiments/bench_atlas_scale.py
    ... --steps 128   (fewer icon render steps, when the machine is too loaded for 512)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATA = "/work/shared/data/cifar10_test.npz"
RUNS = {"100k": (10, 100_000), "1M": (100, 1_000_000)}
STAGES = ("collect", "whitening", "layout", "grid", "icons", "stitch")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(name: str, out: Path, steps: int, images: str) -> dict:
    """One atlas in this process; returns per-stage seconds and peak MiB so far."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from nnfeat.ops.atlas import AtlasSettings, build_atlas
    from nnfeat.data import load_images
    from nnfeat.models.zoo import load_model

    per_image, samples = RUNS[name]
    started = time.perf_counter()
    model = load_model("cifar10-resnet20", device=torch.device("cpu"))
    source = load_images(images, size=model.input_size)
    peaks: dict[str, float] = {}
    lines: list[str] = []

    def log(line: str) -> None:
        peaks[line.split()[0]] = round(_peak_mib(), 1)
        lines.append(line)
        print(f"[{name}] {line}", flush=True)

    settings = AtlasSettings(samples=samples, per_image=per_image, steps=steps)
    result = build_atlas(model, "layer2", source, out, settings, progress=False, log=log)
    return {"run": name, "samples": samples, "per_image": per_image, "steps": steps,
            "timings": result.timings, "peak_mib_after": peaks, "peak_mib": round(_peak_mib(), 1),
            "wall_s": round(time.perf_counter() - started, 1), "cells": len(result.cells),
            "layout_fit": result.header.get("layout_fit"), "log": lines}


def table(results: list[dict]) -> str:
    rows = ["| run | stage | wall s | peak RSS so far (MiB) |", "|---|---|---:|---:|"]
    for r in results:
        for stage in STAGES:
            rows.append(f"| {r['run']} ({r['samples']:,} samples, per-image {r['per_image']}, steps {r['steps']}) "
                        f"| {stage} | {r['timings'].get(stage, float('nan')):.1f} | {r['peak_mib_after'].get(stage, float('nan')):.0f} |")
        rows.append(f"| {r['run']} | **total** (process) | {r['wall_s']:.1f} | **{r['peak_mib']:.0f}** |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--steps", type=int, default=512, help="icon render steps (default 512, the CLI's)")
    parser.add_argument("--images", default=DATA)
    parser.add_argument("--out", default="out/bench-atlas-scale")
    parser.add_argument("--parallel", action="store_true",
                        help="run the sizes at the same time (each still its own process; times then share the CPUs)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: run one atlas
    args = parser.parse_args()
    out = Path(args.out)
    if args.one:
        record = run_one(args.one, out / f"run-{args.one}", args.steps, args.images)
        (out / f"result-{args.one}.json").write_text(json.dumps(record, indent=2) + "\n")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    children = []
    for name in args.runs:
        shutil.rmtree(out / f"run-{name}", ignore_errors=True)
        command = [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--images", args.images,
                   "--out", str(out)]
        children.append(subprocess.Popen(command))
        if not args.parallel:
            children[-1].wait()
    for child in children:
        if child.wait() != 0:
            raise SystemExit(f"a benchmark run failed: {child.args}")
    results = [json.loads((out / f"result-{name}.json").read_text()) for name in args.runs]
    record = {"parallel": args.parallel, "results": results, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS")}
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    print(table(results))
    print(f"load average before {load_before}, after {record['loadavg_after']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
