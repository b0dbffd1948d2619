"""Your own model at its own size: the collection pass of a CIFAR ResNet given as ``FILE.py:FACTORY``.

Before nnfeat found a model's input spec, a plain ``nn.Module`` from a file was assumed to take 224 px, so 32 px
CIFAR images were upsampled to 224 px (about 49 times the work, at a scale the network never saw). This runs the
same ``nnfeat project FILE.py:make layer3 --images CIFAR --n N --method pca`` twice, side by side in one run:
once with ``--size 224`` (what was assumed before) and once as nnfeat does now (the images' own 32 px), each in a
fresh process with a fresh cache, and prints the times of the whole command and the ratio.

    NNFEAT_WEIGHTS_PATH=../shared/models .venv/bin/python experiments/bench_own_model.py
    .venv/bin/python experiments/bench_own_model.py --n 100 --repeats 1     # a quick look

The model file builds cifar10-resnet20's network (``nnfeat.models.cifar_resnet``); its weights are the zoo's
published ones, saved as a plain state_dict and given with ``--weights``. One torch thread per process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nnfeat.models import load_model  # noqa: E402

FACTORY = '''from nnfeat.models.cifar_resnet import CifarResNet


def make():
    return CifarResNet(depth=20)
'''


def run(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nnfeat", *argv], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"failed: nnfeat {' '.join(argv)}\n{proc.stderr.strip()}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="CIFAR-10 test images (a seeded sample; default 1000)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each command (median reported; default 2)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10_test.npz"))
    parser.add_argument("--out", default="out/bench_own_model.json")
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "net.py").write_text(FACTORY)
        zoo = load_model("cifar10-resnet20", device="cpu")  # the published weights (NNFEAT_WEIGHTS_PATH)
        torch.save(zoo.net.state_dict(), tmp / "resnet20.pt")
        common = ["project", f"{tmp}/net.py:make", "layer3", "--images", args.data, "--n", str(args.n),
                  "--method", "pca", "--weights", str(tmp / "resnet20.pt"), "--normalize", "imagenet",
                  "--device", "cpu", "--quiet"]
        rows = {"assumed 224 px (before)": ["--size", "224"], "the images' 32 px (now)": []}
        times: dict[str, list[float]] = {name: [] for name in rows}
        for repeat in range(args.repeats):
            for name, extra in rows.items():  # alternated, so load changes hit both alike
                times[name].append(run([*common, *extra, "--out", str(tmp / f"out-{repeat}-{len(times[name])}")], env))
    medians = {name: statistics.median(t) for name, t in times.items()}
    before, now = medians.values()
    print(f"nnfeat project FILE.py:make layer3 over {args.n} CIFAR-10 test images, pca, 1 thread, "
          f"median of {args.repeats}")
    print("| input | seconds (whole command) |\n| --- | --- |")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"ratio: {before / now:.1f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "times": times, "medians": medians, "ratio": before / now}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
