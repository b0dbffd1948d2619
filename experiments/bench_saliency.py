"""Issue 11's saliency numbers: deletion / insertion AUC vs a random map, the randomization test, IG's cost.

On cifar10-resnet20 over ``--n`` (500) shared CIFAR-10 test images -- a seeded stratified sample in mixed order
(``experiments/_sample.py``; the file is sorted by class, so its first N would be N airplanes) -- each image
explaining its predicted class:

1. **deletion / insertion AUC** (:func:`nnfeat.analysis.sanity.deletion_insertion`: softmax probability of the
   target class, trapezoid AUC over the fraction of pixels, ``--steps`` steps; deletion replaces the most salient
   regions by a Gaussian blur of the image, sigma 4 px; insertion starts from that blurred copy) for Grad-CAM
   (``layer3``), Integrated Gradients (32 alphas, black and blur baselines) and a seeded uniform random map.
   Both granularities: 2x2 px regions (the default, region perturbation) and single pixels (``patch 1``). All
   maps of one granularity run as one stream of batched passes (:func:`nnfeat.analysis.sanity.causal_scores`).
2. **cascading randomization** (Adebayo et al. 2018; Spearman of |map| between the trained and the
   randomized model, re-initializing the top k parameter layers, k in ``--depths``, ``--repeats`` random
   networks pooled) for gradient, Grad-CAM and the model-independent edge control; a method fails at median
   >= 0.3 after full randomization.
3. **IG cost**: Integrated Gradients with 32 alphas on 64 images (the 2,048 path images in chunks of the default
   256, and in chunks of 64) against the same number of bare forward+backward passes (32 passes of 64 images:
   the logits' target entries, d/d input), interleaved rounds, medians; the target is <= 1.3x.

Run::

    NNFEAT_WEIGHTS_PATH=../shared/models .venv/bin/python experiments/bench_saliency.py
    NNFEAT_WEIGHTS_PATH=../shared/models .venv/bin/python experiments/bench_saliency.py --quick   # 64 images
    OMP_NUM_THREADS=1 NNFEAT_WEIGHTS_PATH=../shared/models .venv/bin/python experiments/bench_saliency.py --n 64 \
        --threads 1 --rounds 3   # what the README's table was measured with
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sample import describe, stratified  # noqa: E402
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10_test.npz"
IG_TARGET = 1.3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cifar10-resnet20")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--n", type=int, default=500, help="images (a seeded stratified sample of --data; default 500)")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    p.add_argument("--steps", type=int, default=16, help="deletion / insertion steps (default 16)")
    p.add_argument("--depths", default="1,2,4,8,16,24,32,39", help="cascade depths k (default 1,2,4,8,16,24,32,39)")
    p.add_argument("--repeats", type=int, default=3, help="random networks pooled (default 3)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved IG timing rounds (default 5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="64 images, 8 steps, depths 1,20,39, 1 repeat, 2 rounds")
    p.add_argument("--out", default=str(REPO / "out" / "bench_saliency.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.depths, args.repeats, args.rounds = 64, 8, "1,20,39", 1, 2
    return args


def causal(model, x, t, steps: int) -> dict:
    from nnfeat.analysis.saliency import saliency_maps
    from nnfeat.analysis.sanity import causal_scores, random_maps

    maps = {"gradcam": saliency_maps(model, x, t, "gradcam"),
            "integrated-gradients (black)": saliency_maps(model, x, t, "integrated-gradients", alphas=32),
            "integrated-gradients (blur)": saliency_maps(model, x, t, "integrated-gradients", alphas=32,
                                                         baseline="blur"),
            "random": random_maps((len(x), *x.shape[-2:]), 0)}
    rows = {}
    for patch in (2, 1):
        names = [name for name in maps if not (patch == 1 and "blur" in name)]
        for name, c in zip(names, causal_scores(model, x, [maps[k] for k in names], t, steps=steps, patch=patch)):
            rows[f"{name} @ patch {patch}"] = {"deletion": float(c.deletion.mean()),
                                               "insertion": float(c.insertion.mean()), "patch": patch,
                                               "method": name}
    return rows


def randomization(model, x, t, depths, repeats) -> dict:
    from nnfeat.analysis.sanity import randomization_test

    out = {}
    for method in ("gradient", "gradcam", "edge"):
        r = randomization_test(model, x, method, t, ks=depths, repeats=repeats)
        out[method] = r.summary()
    return out


def ig_timing(model, x, rounds: int) -> dict:
    from nnfeat.analysis.saliency import integrated_gradients, predicted_classes

    x = x[:64]
    t = predicted_classes(model, x)
    alphas = 32

    def bare():
        for _ in range(alphas):
            xi = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(model(xi).gather(1, t[:, None]).sum(), xi)

    runs = {"bare": bare, "ig (chunks of 256)": lambda: integrated_gradients(model, x, t, alphas=alphas),
            "ig (chunks of 64)": lambda: integrated_gradients(model, x, t, alphas=alphas, batch_size=64)}
    times = {k: [] for k in runs}
    bare()  # warm-up
    names = list(runs)
    for r in range(rounds):
        for k in names[r % 3:] + names[:r % 3]:
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: statistics.median(a / b for a, b in zip(times[k], times["bare"])) for k in names[1:]}
    return {"images": 64, "alphas": alphas, "rounds": rounds, "median_seconds": med, "ratio_vs_bare": ratios,
            "seconds_per_round": times, "ratio_of_medians": {k: med[k] / med["bare"] for k in names[1:]},
            "target": IG_TARGET, "meets_target": all(v <= IG_TARGET for v in ratios.values())}


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        from nnfeat.analysis.saliency import predicted_classes
        from nnfeat.data import load_images
        from nnfeat.models import load_model

        model = load_model(args.model)
        images = load_images(args.data, size=model.input_size)
        sample = stratified(images, args.n, args.seed)
        x = sample.tensors(range(len(sample)), model.input_size)
        t = predicted_classes(model, x)
        started = time.perf_counter()
        print(f"[1/3] deletion / insertion on {len(x)} images ...", file=sys.stderr, flush=True)
        rows = causal(model, x, t, args.steps)
        t_causal = time.perf_counter() - started
        print(f"[2/3] randomization ({t_causal:.0f} s so far) ...", file=sys.stderr, flush=True)
        depths = [int(k) for k in args.depths.split(",")]
        rand = randomization(model, x, t, depths, args.repeats)
        t_rand = time.perf_counter() - started - t_causal
        print(f"[3/3] IG timing ({t_causal + t_rand:.0f} s so far) ...", file=sys.stderr, flush=True)
        timing = ig_timing(model, x, args.rounds)
    finally:
        torch.set_num_threads(threads)
    drawn = describe(sample, len(x), args.seed)
    print(f"{args.model}, {len(x)} images from {Path(args.data).name} ({drawn}), predicted classes; "
          f"deletion to a blur (sigma 4 px), insertion from it, {args.steps} steps")
    print(f"{'map':38s} {'deletion AUC':>13s} {'insertion AUC':>14s}")
    for name, r in rows.items():
        print(f"{name:38s} {r['deletion']:13.3f} {r['insertion']:14.3f}")
    print(f"\nrandomization (depths {args.depths}, {args.repeats} random network(s), Spearman |map|; fail at >= 0.3)")
    for m, r in rand.items():
        meds = ", ".join("nan" if v is None else f"{v:.2f}" for v in r["median_spearman"])
        print(f"  {m:10s} medians by k: {meds}   -> {r['verdict']} ({r['final_median_spearman']})")
    print(f"\nIG 32 alphas x 64 images vs 32 bare fwd+bwd passes of 64 ({timing['rounds']} interleaved rounds)")
    for k, v in timing["median_seconds"].items():
        ratio = timing["ratio_vs_bare"].get(k)
        print(f"  {k:20s} {v:7.3f} s" + (f"   {ratio:.2f}x bare (median of per-round ratios)" if ratio else "")
              + "   rounds: " + ", ".join(f"{s:.2f}" for s in timing["seconds_per_round"][k]))
    record = {"model": args.model, "images": len(x), "data": str(args.data), "steps": args.steps, "sample": drawn,
              "source_indices": sample.source_indices.tolist(),
              "deletion_insertion": rows, "randomization": rand, "ig_timing": timing,
              "seconds": {"deletion_insertion": t_causal, "randomization": t_rand},
              "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
              "command": " ".join(["experiments/bench_saliency.py", *(argv if argv is not None else sys.argv[1:])])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
