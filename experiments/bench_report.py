"""How long does ``nnfeat report`` take, how much of it is renders, and what does the report itself add?

Issue 12's numbers: ``nnfeat report cifar10-resnet20 --images <the shared CIFAR-10 test set>`` over every block
output of layer1-layer3 and the logits (the default layers), 16 units per layer, 128 steps: end-to-end time,
peak memory (the process's maximum resident set), and the run's seconds split by kind
(:meth:`nnfeat.ops.report.ReportResult.time_shares`, per-stage times kept in memory only):

* **render** -- unit renders (with their thresholds), diversity renders, class renders: the floor;
* **collect** -- the pooled activations of every image (one pass per layer, shared by examples and atlas);
* **views** -- the other commands' work: graph, dataset examples (their second pass), heatmaps, projections,
  filters, saliency with sanity checks, uncertainty (TTA);
* **report** -- the report's own work: sheets, pages, the manifest, everything between stages.

Targets: report / total <= 10 % (the report's own overhead beyond renders, collection and the views it
composes) -- the line also gives (views + report) / total, the overhead beyond renders and collection in the
broadest reading. A second, resumed run over the finished folder is timed too (it must do nothing).

Run::

    NNFEAT_WEIGHTS_PATH=../shared/models .venv/bin/python experiments/bench_report.py      # the issue's run
    .venv/bin/python experiments/bench_report.py --quick        # digits-cnn over 300 digits, 2 layers, 4 units, 32 steps
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_test.npz"


def _by_kind(timings: dict[str, float]) -> dict[str, float]:
    """Seconds per stage kind (``render``, ``diversity``, ``collect``, ``examples``, ...), largest first."""
    kinds: dict[str, float] = {}
    for stage, seconds in timings.items():
        kind = stage.split(":")[0] + (":sample" if stage.endswith(":sample") else "")
        kinds[kind] = kinds.get(kind, 0.0) + seconds
    return {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}


def run(model_name: str, images_src: str, out: Path, *, n: int | None, weights: str, **kwargs) -> dict:
    from nnfeat.data import load_images
    from nnfeat.models import load_model
    from nnfeat.ops.report import report

    t0 = time.perf_counter()
    model = load_model(model_name, weights=weights)
    images = load_images(images_src, size=model.input_size).sample(n, 0)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = report(model, images, out, **kwargs)
    total = time.perf_counter() - t1
    shares = result.time_shares()
    t2 = time.perf_counter()
    again = report(model, images, out, **{**kwargs, "progress": False})
    resumed = time.perf_counter() - t2
    return {"model": model_name, "images": images_src, "n": len(images), "layers": list(result.layers),
            "units": sum(map(len, result.layers.values())), "settings": {k: v for k, v in kwargs.items()
                                                                          if k != "progress"},
            "load_seconds": round(load_s, 2), "report_seconds": round(total, 2),
            "shares_seconds": {k: round(v, 2) for k, v in shares.items()},
            "stage_kind_seconds": _by_kind(result.timings),
            "render_share": round(shares["render"] / total, 3),
            "report_overhead_share": round(shares["report"] / total, 3),
            "beyond_render_and_collect_share": round((shares["views"] + shares["report"]) / total, 3),
            "stages": len(result.timings), "resumed_rerun_seconds": round(resumed, 2),
            "resumed_rerun_stages": len(again.timings),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "threads": torch.get_num_threads(),
            "slowest_stages": sorted(((k, round(v, 2)) for k, v in result.timings.items()),
                                     key=lambda kv: -kv[1])[:8]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits-cnn over 300 digits, 2 layers, 4 units, 32 steps")
    p.add_argument("--images", default=str(SHARED_CIFAR), help="the CIFAR-10 test set (.npz)")
    p.add_argument("--n", type=int, default=None, help="images (default all)")
    p.add_argument("--weights", default="pretrained")
    p.add_argument("--units-per-layer", type=int, default=16)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--out", default=None, help="report folder (default a temporary one)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nnfeat-bench-report-") as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "report"
        if args.quick:
            numbers = run("digits-cnn", "digits", out, n=300, weights=args.weights, layers="conv2,output",
                          units_per_layer=4, steps=32, batch=4, projection_n=300, uncertain_n=200)
        else:
            numbers = run("cifar10-resnet20", args.images, out, n=args.n, weights=args.weights,
                          units_per_layer=args.units_per_layer, steps=args.steps)
    text = json.dumps(numbers, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
