"""Ensemble uncertainty on the shared CIFAR-10 test set: accuracy, ECE and error-detection AUROC of each single
model beside the ensemble. Prints a table and writes it as JSON.

Issue 11's number: ``cifar10-resnet20,cifar10-resnet32`` on all 10,000 images of the shared
``cifar10_test.npz`` (loaded with :func:`nnfeat.data.load_images` at the model's input size), through
:func:`nnfeat.ops.uncertainty.uncertainty` -- the code path of ``nnfeat uncertainty`` -- with
``method="ensemble"``. Per row (each single model, then the ensemble: the mean of the members' softmax):

* accuracy; ECE (15 equal-width confidence bins, Σ (n_b/N)|acc_b - conf_b|); NLL;
* error-detection AUROC: how well the predictive entropy tells misclassified from correct images
  (rank-based; checked against ``sklearn.metrics.roc_auc_score`` when scikit-learn is there);
* mean entropy and, for the ensemble, mean mutual information.

With ``--tta-samples T`` each single model is also scored with T test-time augmentations (flips, shifts,
zooms; :func:`nnfeat.analysis.uncertainty.tta_probs`), the same metrics, one more row per model.

A paired bootstrap over images (``--bootstrap`` resamples, seeded) gives a 95 % interval for the ensemble minus
the better single model on each of accuracy, ECE and AUROC. torch runs on one thread (``--threads``; restored
at the end).

Run::

    NNFEAT_WEIGHTS_PATH=../shared/models .venv/bin/python experiments/bench_uncertainty.py
    .venv/bin/python experiments/bench_uncertainty.py --quick --weights random   # smoke run (256 images)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10_test.npz"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="cifar10-resnet20,cifar10-resnet32", help="comma-separated ensemble")
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="a labelled nnfeat image source (default: the shared CIFAR-10 test set)")
    p.add_argument("--n", type=int, default=None, help="images: a seeded stratified sample (default: all)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--bootstrap", type=int, default=500, help="paired bootstrap resamples (default 500; 0: none)")
    p.add_argument("--tta-samples", type=int, default=0,
                   help="also each single model with this many test-time augmentations (default 0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights", choices=("pretrained", "random"), default="pretrained")
    p.add_argument("--quick", action="store_true", help="smoke run: 256 images, 50 bootstrap resamples")
    p.add_argument("--out", default=str(REPO / "out" / "bench_uncertainty.json"), help="the JSON file to write")
    return p.parse_args(argv)


def bootstrap_deltas(singles: dict, combined_probs: torch.Tensor, combined_score: torch.Tensor,
                     labels: torch.Tensor, best: str, resamples: int, seed: int) -> dict:
    """95 % paired-bootstrap intervals of (ensemble - ``best`` single) for accuracy, ECE and AUROC."""
    from nnfeat.analysis.uncertainty import entropy, set_metrics

    if resamples <= 0:
        return {}
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    single = singles[best]
    single_score = entropy(single)
    deltas = {"accuracy": [], "ece": [], "error_auroc": []}
    for _ in range(resamples):  # a loop over resamples; each is vectorized over its images
        idx = torch.randint(n, (n,), generator=g)
        a = set_metrics(combined_probs[idx], labels[idx], combined_score[idx])
        b = set_metrics(single[idx], labels[idx], single_score[idx])
        for key in deltas:
            if a[key] is not None and b[key] is not None:
                deltas[key].append(a[key] - b[key])
    out = {}
    for key, values in deltas.items():
        v = torch.tensor(values, dtype=torch.float64)
        out[key] = {"median": float(v.median()), "ci95": [float(v.quantile(0.025)), float(v.quantile(0.975))]}
    return {"versus": best, "resamples": resamples, "deltas": out}


def table_row(name: str, m: dict, probs: torch.Tensor, scores: torch.Tensor, mi: torch.Tensor | None,
              labels: torch.Tensor) -> dict:
    """One table row from :func:`set_metrics`'s dict, with the AUROC recomputed by scikit-learn when present."""
    row = {"name": name, **{k: m[k] for k in ("n", "accuracy", "ece", "mce", "nll", "error_auroc", "errors")},
           "mean_entropy": float(scores.mean()), "mean_mutual_information": None if mi is None else float(mi.mean())}
    try:
        from sklearn.metrics import roc_auc_score

        row["error_auroc_sklearn"] = float(roc_auc_score((probs.argmax(1) != labels).numpy(), scores.numpy()))
    except ImportError:
        row["error_auroc_sklearn"] = None
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from nnfeat.data import load_images
    from nnfeat.models import load_model
    from nnfeat.ops.uncertainty import uncertainty

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        n = 256 if args.quick and args.n is None else args.n
        resamples = min(args.bootstrap, 50) if args.quick else args.bootstrap
        names = [m.strip() for m in args.models.split(",")]
        models = [load_model(name, weights=args.weights, device="cpu") for name in names]
        images = load_images(args.data, size=models[0].input_size)
        if n is not None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from _sample import stratified  # the one seeded, stratified way a benchmark draws images
            images = stratified(images, n, args.seed)
        started = time.perf_counter()
        result = uncertainty(models, images, "ensemble", top=8, seed=args.seed, batch_size=args.batch)
        elapsed = time.perf_counter() - started
        if result.labels is None:
            print(f"{args.data} has no labels: nothing to score", file=sys.stderr)
            return 2
        from nnfeat.analysis.uncertainty import entropy

        s = result.summary
        rows = [table_row(name, result.metrics[name], p, entropy(p), None, result.labels)
                for name, p in result.singles.items()]
        rows.append(table_row(result.combined_name, result.metrics[result.combined_name], s.mean, s.entropy,
                              s.mutual_information, result.labels))
        singles = rows[:-1]
        tta_seconds = {}
        for model in models if args.tta_samples else []:  # optional: each single model with test-time augmentation
            t0 = time.perf_counter()
            tta = uncertainty(model, images, "tta", samples=args.tta_samples, top=0, seed=args.seed,
                              batch_size=args.batch)
            tta_seconds[model.name] = time.perf_counter() - t0
            ts = tta.summary
            rows.append(table_row(f"{model.name} + tta {args.tta_samples}", tta.metrics[tta.combined_name],
                                  ts.mean, ts.entropy, ts.mutual_information, tta.labels))
        best = max(singles, key=lambda r: r["accuracy"])["name"]
        boot = bootstrap_deltas(result.singles, s.mean, s.entropy, result.labels, best, resamples, args.seed)

        print(f"{'+'.join(names)} on {images.name} ({len(images)} images, {args.weights} weights, "
              f"{args.threads} thread(s)); {elapsed:.1f} s")
        heads = ("accuracy", 9), ("ECE", 8), ("MCE", 8), ("NLL", 8), ("AUROC", 8), ("errors", 8), ("mean H", 8), \
            ("mean MI", 9)
        print(f"{'':<26}" + "".join(f"{h:>{w}}" for h, w in heads))
        for r in rows:
            mi = f"{r['mean_mutual_information']:.4f}" if r["mean_mutual_information"] is not None else "-"
            auc = f"{r['error_auroc']:.4f}" if r["error_auroc"] is not None else "n/a"
            print(f"{r['name']:<26}{r['accuracy']:>9.4f}{r['ece']:>8.4f}{r['mce']:>8.4f}{r['nll']:>8.4f}{auc:>8}"
                  f"{r['errors']:>8d}{r['mean_entropy']:>8.4f}{mi:>9}")
        if boot:
            print(f"ensemble - {best}, paired bootstrap ({boot['resamples']} resamples), median [95 % interval]:")
            for key, d in boot["deltas"].items():
                print(f"  {key:<12}{d['median']:+.4f}  [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]")
        report = {"benchmark": "uncertainty ensemble", "models": names, "data": str(args.data), "n": len(images),
                  "weights": args.weights, "threads": args.threads, "ece_bins": 15, "seconds": elapsed,
                  "tta_samples": args.tta_samples, "tta_seconds": tta_seconds,
                  "rows": rows, "bootstrap": boot,
                  "command": " ".join(["experiments/bench_uncertainty.py", *(sys.argv[1:] if argv is None else argv)]),
                  "torch": torch.__version__, "python": platform.python_version()}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
        return 0
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
