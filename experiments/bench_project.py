"""Projection benchmark: `nnfeat project` stage by stage on the CIFAR-10 test set.

1. ``layer3`` of cifar10-resnet20 over N test images (default all 10,000), ``--method pca`` then ``--method umap``
   into one cache folder: the second call reuses the cached activations (measured: its collect stage time and the
   ``cached`` flag). Per call: collect, layout and score times, and the process's peak memory (ru_maxrss) after it.
2. k-NN (k = 10) label accuracy in the 2-D UMAP map of ``layer1`` and ``layer3`` (classes separate with depth),
   with trustworthiness, the same k-NN accuracy in the layer's own space and chance.

    NNFEAT_WEIGHTS_PATH=../shared/models .venv/bin/python experiments/bench_project.py
    .venv/bin/python experiments/bench_project.py --quick --weights random --data digits --model digits-cnn --layers relu1,bn2

Writes ``--out`` (default ``out/bench_project.json``) and prints a table. One torch thread (``--threads``).
UMAP's first call in a process includes numba's compilation (a few seconds to ~30 s); it is reported as it is,
since a user's first ``nnfeat project`` pays it too.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nnfeat.data import load_images  # noqa: E402
from nnfeat.errors import NnfeatError  # noqa: E402
from nnfeat.io import write_json  # noqa: E402
from nnfeat.models import load_model  # noqa: E402
from nnfeat.ops.project import project  # noqa: E402


def peak_mb() -> float:
    """The process's peak resident memory so far (ru_maxrss, Linux: KiB) in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cifar10-resnet20")
    p.add_argument("--weights", default="pretrained")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10_test.npz"))
    p.add_argument("--n", type=int, default=None, help="images (default all)")
    p.add_argument("--layers", default="layer1,layer3", help="first: the shallow layer, last: the deep one")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="300 images: a smoke run")
    p.add_argument("--out", default=str(ROOT / "out" / "bench_project.json"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    cache = Path(tempfile.mkdtemp(prefix="bench-project-"))
    try:
        model = load_model(args.model, weights=args.weights, device="cpu")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _sample import stratified  # the one seeded, stratified way a benchmark draws images
        images = stratified(load_images(args.data, size=model.input_size), 300 if args.quick else args.n, 0)
        layers = [name.strip() for name in args.layers.split(",")]
        deep, shallow = layers[-1], layers[0]
        base = peak_mb()
        calls = []
        for method in ("pca", "umap"):  # one layer, one cache: the second call reads the activations back
            start = time.perf_counter()
            result = project(model, deep, images, method=method, cache=cache, progress=False)
            calls.append({"method": method, "layer": deep, "seconds": round(time.perf_counter() - start, 2),
                          "stages": result.timings[deep], "cached": result.cached[deep],
                          "peak_mb": round(peak_mb(), 1), "scores": result.scores[deep]})
        start = time.perf_counter()
        both = project(model, layers, images, method="umap", cache=cache, progress=False)
        depth = {"seconds": round(time.perf_counter() - start, 2), "scores": both.scores, "timings": both.timings,
                 "cached": both.cached}
    except NnfeatError as err:
        print(f"bench_project: error: {err}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(cache, ignore_errors=True)
    report = {"model": args.model, "weights": args.weights, "data": args.data, "images": len(images),
              "threads": args.threads, "baseline_peak_mb": round(base, 1), "calls": calls, "depth": depth}
    out = write_json(Path(args.out), report)
    print(f"{args.model} {deep}, {len(images)} images of {args.data}, {args.threads} thread(s)")
    print("| call | total s | collect s | layout s | scores s | activations cached | peak MB |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for c in calls:
        s = c["stages"]
        print(f"| --method {c['method']} | {c['seconds']} | {s['collect']} | {s['layout']} | {s['scores']} | "
              f"{c['cached']['collect']} | {c['peak_mb']} |")
    print("\n| layer | trustworthiness | k-NN acc. in 2-D (UMAP) | k-NN acc. in the layer | chance |")
    print("|---|---:|---:|---:|---:|")
    for name in layers:
        s = depth["scores"][name]
        print(f"| {name} | {s['trustworthiness']:.3f} | {s.get('knn_accuracy_2d', float('nan')):.3f} | "
              f"{s.get('knn_accuracy_layer', float('nan')):.3f} | {s.get('chance', float('nan')):.3f} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
