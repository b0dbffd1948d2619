"""nnfeat side by side with captum and pytorch-grad-cam: seconds and map agreement, in one run (issue 25 §3).

On ``--model`` (cifar10-resnet20) over ``--n`` (64) shared CIFAR-10 test images -- a seeded stratified sample in
mixed order (``experiments/_sample.py``) -- each image explaining its predicted class (the classes are found once,
untimed, and given to every side), at ``--threads`` (1) thread(s), restored after:

* **gradient** -- :func:`nnfeat.analysis.saliency.saliency_maps` ``"gradient"`` on
  :func:`nnfeat.analysis.fast_path.fast_network` (BatchNorm folded, channels-last; cached on the model), as the
  saliency command calls it, every nnfeat saliency row alike (d logit / d pixel summed over the colour channels,
  signed) vs captum ``Saliency(abs=False)`` summed over the channels; captum has no internal
  batch, so it is fed the images in batches of every size of ``--input-batches``;
* **integrated gradients** -- nnfeat ``"integrated-gradients"`` (32 alphas, black baseline, midpoint rule) vs
  captum ``IntegratedGradients`` (``n_steps`` 32, ``baselines`` zeros, ``method="riemann_middle"``: the same
  alphas (k + 1/2) / 32), ``internal_batch_size`` in ``--ig-batches`` (nnfeat's ``batch_size`` in
  ``--nnfeat-ig-batches``);
* **occlusion** -- nnfeat ``"occlusion"`` at its defaults (window min(H, W) // 8 = 4 px, stride 2 px, black fill,
  the drop averaged over the windows covering a pixel) vs captum ``Occlusion`` with the same window over all three
  channels (``sliding_window_shapes=(3, 4, 4)``, ``strides=(3, 2, 2)``, ``baselines=0``; its windows also end at
  the edge for 32 px), ``perturbations_per_eval`` in ``--occlusion-ppe`` (each pass: n * ppe images; nnfeat's
  ``batch_size`` in ``--occlusion-batches``);
* **Grad-CAM** at ``--cam-layer`` (layer3) -- nnfeat ``"gradcam"`` vs captum ``LayerGradCam``
  (``relu_attributions=True``, then ``LayerAttribution.interpolate`` bilinear to 32x32, as nnfeat upsamples) and
  pytorch-grad-cam ``GradCAM(model, target_layers=[layer3])`` with ``ClassifierOutputTarget`` (a context manager
  per call, so its hooks never outlive it), both fed batches of ``--input-batches``. pytorch-grad-cam returns maps
  min-max normalized per image and resized by cv2 at input resolution only: its maps are compared with nnfeat's
  after the same per-image min-max normalization, at input resolution (Pearson r does not change under it);
* **heatmap** -- :func:`nnfeat.ops.heatmap.heatmap` on the image tensor (``--heatmap-layer``, layer2, batch 64 as
  the command; no files) vs the bare forward stopped at the layer (:class:`nnfeat.hooks.ActivationCapture`, as
  ``experiments/bench_heatmap.py`` row b) and the full bare forward (row a); its maps are compared with the
  captured activations of the same channels.

nnfeat runs at its defaults (``batch_size`` 256 for the saliency methods, 64 for heatmaps) and also over the
same sweep, so both its default and its best are reported. The first setting of every (method, side) runs once untimed
(warm-up), then ``--rounds`` interleaved rounds, the order rotated each round;
each figure is the median over rounds of wall seconds (``time.perf_counter``) and CPU seconds
(``time.process_time``). A reference's best setting is its fastest median wall time; ratio = nnfeat's default
median / the reference's best median. Maps (each setting's first run): Pearson r of each image's flattened map
against nnfeat's, median and minimum over images, and the largest absolute difference.

Run::

    OMP_NUM_THREADS=1 NNFEAT_WEIGHTS_PATH=../shared/models .venv/bin/python experiments/bench_libraries.py \
        --n 64 --rounds 3 --threads 1 --json out/bench_libraries.json
    NNFEAT_WEIGHTS_PATH=../shared/models .venv/bin/python experiments/bench_libraries.py --quick   # 16 images
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sample import describe, stratified  # noqa: E402
from nnfeat.analysis.attribution import BATCH_SIZE, predicted_classes  # noqa: E402
from nnfeat.analysis.fast_path import fast_network  # noqa: E402
from nnfeat.analysis.saliency import saliency_maps  # noqa: E402
from nnfeat.data import load_images  # noqa: E402
from nnfeat.errors import NnfeatError  # noqa: E402
from nnfeat.hooks import ActivationCapture  # noqa: E402
from nnfeat.models import load_model  # noqa: E402
from nnfeat.ops.heatmap import heatmap  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10_test.npz"
HEATMAP_BATCH = 64  # the heatmap command's default
#: issue 25's goals: nnfeat's seconds / the reference's best (None: no goal stated)
GOALS = {"gradient": 0.8, "integrated-gradients": 0.8, "occlusion": 0.8, "gradcam": None, "heatmap": 1.1}
ALPHAS = 32


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise NnfeatError(f"a sweep must be comma-separated whole numbers such as 64,256; got '{text}'") from None
    if not values or min(values) < 1:
        raise NnfeatError(f"a sweep needs whole numbers >= 1 such as 64,256; got '{text}'")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cifar10-resnet20")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--n", type=int, default=64, help="images (a seeded stratified sample of --data; default 64)")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3; medians)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cam-layer", default="layer3")
    p.add_argument("--heatmap-layer", default="layer2")
    p.add_argument("--input-batches", default="8,16,32,64",
                   help="images per call for the references without an internal batch (default 8,16,32,64)")
    p.add_argument("--ig-batches", default="64,256",
                   help="captum IG internal_batch_size sweep (default 64,256; larger ones were slower at 1 thread)")
    p.add_argument("--nnfeat-ig-batches", default="64,256",
                   help="nnfeat IG batch_size sweep, its default 256 always in (default 64,256)")
    p.add_argument("--occlusion-ppe", default="4,16",
                   help="captum Occlusion perturbations_per_eval sweep (default 4,16; 1 and 64 were slower)")
    p.add_argument("--occlusion-batches", default="64,256",
                   help="nnfeat occlusion batch_size sweep, its default 256 always in (default 64,256)")
    p.add_argument("--quick", action="store_true", help="16 images, 1 round, two settings per sweep")
    p.add_argument("--json", default=str(REPO / "out" / "bench_libraries.json"), help="the JSON file to write")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.rounds = min(args.n, 16), 1
        args.input_batches, args.ig_batches, args.nnfeat_ig_batches, args.occlusion_ppe, args.occlusion_batches = \
            "8,16", "64", "64", "4", "64"
    for name in ("n", "rounds", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be at least 1; got {getattr(args, name)}")
    return args


def _batched(fn, images: torch.Tensor, targets: torch.Tensor, size: int) -> torch.Tensor:
    """fn(images[s], targets[s]) over slices of ``size`` images, concatenated (a reference without a batch)."""
    return torch.cat([fn(images[s:s + size], targets[s:s + size]) for s in range(0, len(images), size)])


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, ...) and (B, ...) -> (B,) Pearson r of each image's flattened maps in float64 (1.0 where both are
    constant and equal, 0.0 where only one is constant)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(1) / den.clamp_min(1e-300)
    flat = (a.norm(dim=1) < 1e-12) | (b.norm(dim=1) < 1e-12)
    both = (a.norm(dim=1) < 1e-12) & (b.norm(dim=1) < 1e-12)
    return torch.where(flat, both.double(), r)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> each map min-max scaled to [0, 1] as pytorch-grad-cam scales its maps (x - min) / (1e-7 + max)."""
    flat = maps.flatten(1)
    flat = flat - flat.amin(1, keepdim=True)
    return (flat / (1e-7 + flat.amax(1, keepdim=True))).view_as(maps)


def _sides(model, images: torch.Tensor, targets: torch.Tensor, args) -> list[dict]:
    """Every (row, side, setting) to time: {row, side, setting, default, fn} with fn() -> (B, H, W) maps."""
    n, size = len(images), tuple(images.shape[-2:])
    cam_module = model.module(args.cam_layer)
    window = max(1, min(size) // 8)
    stride = max(1, window // 2)
    inputs = sorted(set(min(b, n) for b in _ints(args.input_batches)))
    out = []

    def add(row, side, setting, fn, default=False):
        out.append({"row": row, "side": side, "setting": setting, "default": default, "fn": fn})

    def nn_method(method, bs, **kw):  # as ``nnfeat saliency`` makes its maps: on the fast network (cached)
        keep = [kw["layer"]] if "layer" in kw else []
        return lambda: saliency_maps(fast_network(model, keep=keep).network, images, targets, method, batch_size=bs,
                                     **kw)

    # gradient
    add("gradient", "nnfeat", f"batch_size {BATCH_SIZE}", nn_method("gradient", BATCH_SIZE), True)
    sal = Saliency(model)
    for b in inputs:
        add("gradient", "captum", f"batch {b}",
            lambda b=b: _batched(lambda x, t: sal.attribute(x, target=t, abs=False).sum(1), images, targets, b))
    # integrated gradients
    ig = IntegratedGradients(model)
    for b in sorted(set(_ints(args.nnfeat_ig_batches)) | {BATCH_SIZE}):
        add("integrated-gradients", "nnfeat", f"batch_size {b}",
            nn_method("integrated-gradients", b, alphas=ALPHAS, baseline="black"), b == BATCH_SIZE)
    for b in _ints(args.ig_batches):
        add("integrated-gradients", "captum", f"internal_batch_size {b}",
            lambda b=b: ig.attribute(images, baselines=torch.zeros_like(images), target=targets, n_steps=ALPHAS,
                                     method="riemann_middle", internal_batch_size=b).sum(1))
    # occlusion
    occ = Occlusion(model)
    for b in sorted(set(_ints(args.occlusion_batches)) | {BATCH_SIZE}):
        add("occlusion", "nnfeat", f"batch_size {b}", nn_method("occlusion", b), b == BATCH_SIZE)
    for p in _ints(args.occlusion_ppe):
        add("occlusion", "captum", f"perturbations_per_eval {p}",
            lambda p=p: occ.attribute(images, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                      baselines=0, target=targets, perturbations_per_eval=p)[:, 0])
    # Grad-CAM
    add("gradcam", "nnfeat", f"batch_size {BATCH_SIZE}", nn_method("gradcam", BATCH_SIZE, layer=args.cam_layer), True)
    lgc = LayerGradCam(model, cam_module)

    def captum_cam(x, t):
        a = lgc.attribute(x, target=t, relu_attributions=True)
        return LayerAttribution.interpolate(a, size, interpolate_mode="bilinear")[:, 0]

    def pgc_cam(x, t):
        x = x.detach().clone().requires_grad_(True)  # nnfeat's model has frozen weights: the graph starts here
        with GradCAM(model=model, target_layers=[cam_module]) as cam:  # its hooks are removed on leaving
            return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t]))

    for b in inputs:
        add("gradcam", "captum", f"batch {b}", lambda b=b: _batched(captum_cam, images, targets, b))
    for b in inputs:
        add("gradcam", "pytorch-grad-cam", f"batch {b}", lambda b=b: _batched(pgc_cam, images, targets, b))
    # heatmap
    layer = args.heatmap_layer
    batches = list(images.split(HEATMAP_BATCH))

    def nn_heatmap():
        return heatmap(model, layer, images, batch_size=HEATMAP_BATCH)

    @torch.no_grad()
    def bare_to_layer():
        with ActivationCapture(model, [layer]) as capture:
            for b in batches:
                capture(b)

    @torch.no_grad()
    def bare_forward():
        for b in batches:
            model(b)

    add("heatmap", "nnfeat", f"batch_size {HEATMAP_BATCH}", nn_heatmap, True)
    add("heatmap", f"bare forward to {layer}", f"batch {HEATMAP_BATCH}", bare_to_layer)
    add("heatmap", "bare forward (full)", f"batch {HEATMAP_BATCH}", bare_forward)
    return out


def _clock(fn, min_seconds: float = 1.0):
    """(wall s, CPU s, result) of one call of ``fn``: calls shorter than ``min_seconds`` are repeated until
    that much time has passed and the time is divided (a 0.2 s row is otherwise timer and scheduler noise)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result, calls = fn(), 1
    while time.perf_counter() - wall < min_seconds:
        fn()
        calls += 1
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls, result


@torch.no_grad()
def _layer_acts(model, layer: str, images: torch.Tensor) -> torch.Tensor:
    with ActivationCapture(model, [layer]) as capture:
        return torch.cat([capture(b)[layer] for b in images.split(HEATMAP_BATCH)])


def _agreement(ref: torch.Tensor, mine: torch.Tensor) -> dict:
    ref, mine = ref.detach(), mine.detach()
    r = pearson(ref, mine)
    return {"r_median": float(r.median()), "r_min": float(r.min()), "max_abs_diff": float((ref - mine).abs().max()),
            "scale": float(mine.abs().max())}


def run(args) -> dict:
    model = load_model(args.model, device="cpu")
    source = stratified(load_images(args.data), args.n, args.seed)
    if len(source) < args.n:
        raise NnfeatError(f"--n {args.n} is more than the {len(source)} images of '{args.data}'")
    images = torch.cat(list(source.iter_batches(HEATMAP_BATCH, model.input_size)))  # (N, 3, H, W) in [0, 1]
    targets = predicted_classes(model, images)
    sides = _sides(model, images, targets, args)
    maps = {}
    warmed = set()
    for s in sides:  # warm-up: the first setting of each (row, side); its maps are kept for the comparison
        if (s["row"], s["side"]) not in warmed:
            warmed.add((s["row"], s["side"]))
            w, _, maps[(s["row"], s["side"], s["setting"])] = _clock(s["fn"])
            print(f"  warm-up {s['row']} / {s['side']} / {s['setting']}: {w:.2f} s", file=sys.stderr, flush=True)
    wall = {i: [] for i in range(len(sides))}
    cpu = {i: [] for i in range(len(sides))}
    order = list(range(len(sides)))
    for r in range(args.rounds):
        shift = (r * len(order)) // max(1, args.rounds)
        for i in order[shift:] + order[:shift]:
            w, c, result = _clock(sides[i]["fn"])
            maps.setdefault((sides[i]["row"], sides[i]["side"], sides[i]["setting"]), result)
            wall[i].append(w)
            cpu[i].append(c)
    timed = [dict({k: v for k, v in s.items() if k != "fn"}, wall_s=statistics.median(wall[i]),
                  cpu_s=statistics.median(cpu[i]), runs_wall_s=wall[i], runs_cpu_s=cpu[i])
             for i, s in enumerate(sides)]
    rows = []
    for row in GOALS:
        mine = [t for t in timed if t["row"] == row and t["side"] == "nnfeat"]
        default = next(t for t in mine if t["default"])
        best_mine = min(mine, key=lambda t: t["wall_s"])
        mine_maps = maps[(row, "nnfeat", default["setting"])]
        for ref_side in dict.fromkeys(t["side"] for t in timed if t["row"] == row and t["side"] != "nnfeat"):
            refs = [t for t in timed if t["row"] == row and t["side"] == ref_side]
            best = min(refs, key=lambda t: t["wall_s"])
            if row == "heatmap":
                res = mine_maps
                ref, ours = _layer_acts(model, args.heatmap_layer, images)[:, res.channels], res.maps
                compared = f"the raw maps of its {len(res.channels)} channels vs the captured activations"
            elif ref_side == "pytorch-grad-cam":
                ref, ours = maps[(row, ref_side, best["setting"])].float(), minmax(mine_maps.float())
                compared = "per-image min-max normalized maps at input resolution (pytorch-grad-cam's own scaling)"
            else:
                ref, ours = maps[(row, ref_side, best["setting"])].float(), mine_maps.float()
                compared = "raw maps at input resolution"
            goal = GOALS[row] if (row != "heatmap" or ref_side.startswith("bare forward to")) else None
            ratio = default["wall_s"] / best["wall_s"]
            rows.append({"row": row, "reference": ref_side, "nnfeat_setting": default["setting"],
                         "nnfeat_wall_s": default["wall_s"], "nnfeat_cpu_s": default["cpu_s"],
                         "nnfeat_best_setting": best_mine["setting"], "nnfeat_best_wall_s": best_mine["wall_s"],
                         "reference_setting": best["setting"], "reference_wall_s": best["wall_s"],
                         "reference_cpu_s": best["cpu_s"], "ratio": ratio,
                         "ratio_best": best_mine["wall_s"] / best["wall_s"], "goal": goal,
                         "met": None if goal is None else ratio <= goal, "maps_compared": compared,
                         **_agreement(ref, ours)})
    return {"model": model.name, "data": str(args.data), "sample": describe(source, args.n, args.seed),
            "n": len(images), "input_size": list(images.shape[-2:]), "threads": args.threads, "rounds": args.rounds,
            "cam_layer": args.cam_layer, "heatmap_layer": args.heatmap_layer, "alphas": ALPHAS,
            "torch": torch.__version__, "captum": _version("captum"), "grad_cam": _version("grad-cam"),
            "machine": platform.machine(), "rows": rows, "timings": timed,
            "command": "experiments/bench_libraries.py " + " ".join(sys.argv[1:])}


def _version(dist: str) -> str:
    return version(dist)


def table(report: dict) -> str:
    lines = [f"{report['model']}, {report['n']} images ({report['sample']}), each explaining its predicted class; "
             f"{report['threads']} thread(s), median of {report['rounds']} interleaved round(s); captum "
             f"{report['captum']}, grad-cam {report['grad_cam']}, torch {report['torch']}", "",
             "| method | reference (best setting) | nnfeat s (default) | nnfeat best | reference s | ratio | "
             "ratio, nnfeat best | goal | met | r median (min) | max abs diff |",
             "|---|---|---:|---|---:|---:|---:|---:|---|---|---:|"]
    for r in report["rows"]:
        goal = "-" if r["goal"] is None else f"<= {r['goal']}x"
        met = "-" if r["met"] is None else ("met" if r["met"] else "not met")
        lines.append(f"| {r['row']} | {r['reference']} ({r['reference_setting']}) | {r['nnfeat_wall_s']:.3f} "
                     f"({r['nnfeat_setting']}) | {r['nnfeat_best_wall_s']:.3f} ({r['nnfeat_best_setting']}) | "
                     f"{r['reference_wall_s']:.3f} | {r['ratio']:.2f}x | {r['ratio_best']:.2f}x | {goal} | {met} | "
                     f"{r['r_median']:.6f} ({r['r_min']:.6f}) | {r['max_abs_diff']:.2e} |")
    lines += ["", "ratio: nnfeat's default median wall seconds / the reference's best (the goal is read on it); "
              "ratio, nnfeat best: nnfeat's best setting / the reference's best; r: Pearson r per image "
              "(flattened maps); pytorch-grad-cam compared after its own per-image min-max normalization; heatmap "
              "maps vs the captured activations of the same channels."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        report = run(args)
    except NnfeatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    report["total_s"], report["total_cpu_s"] = time.perf_counter() - started, time.process_time() - cpu_started
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"total {report['total_s']:.0f} s wall, {report['total_cpu_s']:.0f} s CPU; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
