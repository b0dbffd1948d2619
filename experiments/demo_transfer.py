"""Do the demo's class renders look like digits? Measured by transfer to other model families.

The demo (``make demo``) renders one image per class logit of ``digits-cnn``. A render "looks like its
digit" here when classifiers of *another* family, trained on scikit-learn's 8x8 digits (the first 1,500,
the same images the CNN trained on, before upscaling), read it as that digit. A render is fed to them as
its grey mean (B, 1, H, W), adaptive-average-pooled to 8x8 and scaled to the digits' 0..16 range: the
inverse of how ``digits-cnn`` sees the data (8x8 upscaled bilinearly to 32x32).

Classifiers: an RBF SVC (gamma=0.001, C=10), a multinomial logistic regression and a 5-nearest-neighbour
vote; each reports its own held-out accuracy on the last 297 digits first, so a low transfer rate cannot
come from a broken classifier. The transfer rate is the fraction of the 10 class renders read as their
digit, per render seed, and the mean over the seeds.

Settings: :func:`class_render_settings` (``nnfeat.ops.demo.class_render_settings`` when the demo defines it, so
this script measures exactly what the demo renders; else this module's copy of the recommended settings).
``--baseline`` measures the demo's previous call instead (Fourier 32 px, "auto" transforms, plain logits).

Usage::

    python experiments/demo_transfer.py            # seeds 0-4, 256 steps
    python experiments/demo_transfer.py --quick    # seed 0 only
    python experiments/demo_transfer.py --out out  # also OUT/figures/demo_transfer.png + .json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
try:  # run from a checkout without `pip install -e .`
    import nnfeat  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the repo is installed
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import nnfeat  # noqa: E402
from nnfeat.engine.objectives import Objective, l1, logit, total_variation  # noqa: E402
from nnfeat.engine.transforms import Jitter, Pad, RandomAffine, RandomRotate, RandomScale  # noqa: E402

CLASSES = list(range(10))
TRAIN = 1500  # the first 1,500 digits train the classifiers (digits-cnn's training split)
SEEDS = (0, 1, 2, 3, 4)

# The recommended class-render settings (see class_render_settings)
RENDER_SIZE = 12  # the Fourier parameterization's size; upsampled to the model's 32 px by the transforms
L1_WEIGHT = 20.0  # dark-background prior: mean |x - 0| (the digits are white strokes on black)
TV_WEIGHT = 10.0  # smoothness prior: total variation


def class_transforms(size: int = RENDER_SIZE, out_size: int = 32) -> RandomAffine:
    """Mild jitter (±1/30 of the side), scale (±5 %) and rotation (±5°) on a BLACK fill, resized to ``out_size``.

    A grey fill (the presets' 0.5) would paint a frame no digit has; the render is jittered in its own pixels.
    """
    shift = size / 30.0
    return RandomAffine([Pad(shift), Jitter(2 * shift), RandomScale([0.95, 1.0, 1.05]), RandomRotate([-5.0, 0.0, 5.0])],
                        out_size, fill=0.0)


def recommended_settings(steps: int = 256, seed: int = 0) -> tuple[Objective, dict]:
    """This module's copy of the demo's class-render call: ``render(model, objective, **kwargs)``."""
    objective = logit(CLASSES) - L1_WEIGHT * l1(0.0) - TV_WEIGHT * total_variation()
    return objective, dict(size=RENDER_SIZE, model_input_size=32, param="fft", transforms=class_transforms(),
                           steps=steps, seed=seed)


def baseline_settings(steps: int = 256, seed: int = 0) -> tuple[Objective, dict]:
    """The demo's call before this change: plain logits, Fourier 32 px, the "auto" transforms."""
    return logit(CLASSES), dict(size=32, steps=steps, seed=seed)


def class_render_settings(steps: int = 256, seed: int = 0) -> tuple[Objective, dict]:
    """The demo's settings when ``nnfeat.ops.demo`` exposes them, else :func:`recommended_settings`."""
    try:
        from nnfeat.ops.demo import class_render_settings as demo_settings
    except ImportError:
        return recommended_settings(steps, seed)
    return demo_settings(steps=steps, seed=seed)


def transfer_features(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) renders in [0, 1] -> (B, 64) features in the 8x8 digits' 0..16 range."""
    grey = images.float().mean(1, keepdim=True)
    return (F.adaptive_avg_pool2d(grey, 8).flatten(1) * 16.0).numpy()


def fit_classifiers() -> tuple[dict, dict]:
    """``({name: fitted classifier}, {name: held-out accuracy})`` on scikit-learn's 8x8 digits."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    digits = load_digits()
    x, y = digits.data, digits.target
    made = {"svc": SVC(gamma=0.001, C=10), "logreg": LogisticRegression(max_iter=5000),
            "knn": KNeighborsClassifier(n_neighbors=5)}
    fitted = {name: clf.fit(x[:TRAIN], y[:TRAIN]) for name, clf in made.items()}
    held_out = {name: float(clf.score(x[TRAIN:], y[TRAIN:])) for name, clf in fitted.items()}
    return fitted, held_out


def transfer(images: torch.Tensor, classifiers: dict) -> dict:
    """``{name: {"predictions": [10 ints], "rate": float}}`` for the 10 class renders (B=10, item i = class i)."""
    features = transfer_features(images)
    out = {}
    for name, clf in classifiers.items():
        predictions = clf.predict(features)
        out[name] = {"predictions": [int(p) for p in predictions],
                     "rate": float((predictions == np.arange(len(predictions))).mean())}
    return out


def measure(model, seeds=SEEDS, steps: int = 256, baseline: bool = False, classifiers: dict | None = None,
            progress: bool = False) -> dict:
    """Render the 10 classes once per seed and score every classifier. Returns per-seed results, means and
    the renders ``images`` {seed: (10, 3, H, W)}."""
    classifiers = classifiers or fit_classifiers()[0]
    settings = baseline_settings if baseline else class_render_settings
    per_seed, images = {}, {}
    for seed in seeds:
        objective, kwargs = settings(steps=steps, seed=seed)
        started = time.perf_counter()
        result = nnfeat.render(model, objective, progress=progress, **kwargs)
        images[seed] = result.images
        per_seed[seed] = {"seconds": round(time.perf_counter() - started, 1), **transfer(result.images, classifiers)}
    means = {name: float(np.mean([per_seed[s][name]["rate"] for s in seeds])) for name in classifiers}
    return {"per_seed": per_seed, "mean": means, "images": images}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seed 0 only")
    parser.add_argument("--seeds", default=None, help="comma-separated render seeds (default 0-4)")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--baseline", action="store_true", help="measure the demo's previous settings")
    parser.add_argument("--out", type=Path, default=None, help="write OUT/figures/demo_transfer.{png,json}")
    args = parser.parse_args(argv)
    seeds = (0,) if args.quick else tuple(int(s) for s in args.seeds.split(",")) if args.seeds else SEEDS

    torch.set_num_threads(1)
    model = nnfeat.load_model("digits-cnn", device="cpu")
    classifiers, held_out = fit_classifiers()
    print("classifiers' held-out accuracy on the last 297 8x8 digits: "
          + ", ".join(f"{name} {acc:.1%}" for name, acc in held_out.items()))
    objective, kwargs = (baseline_settings if args.baseline else class_render_settings)(args.steps, seeds[0])
    shown = {k: (type(v).__name__ if isinstance(v, torch.nn.Module) else v) for k, v in kwargs.items()}
    print(f"render(digits-cnn, {objective}, {shown})")
    report = measure(model, seeds, args.steps, args.baseline, classifiers)
    for seed, row in report["per_seed"].items():
        for name in classifiers:
            print(f"seed {seed}  {name:6s} {row[name]['rate']:4.0%}  predicted {row[name]['predictions']}")
        print(f"seed {seed}  render {row['seconds']} s")
    print("mean transfer over seeds " + ",".join(map(str, seeds)) + ": "
          + ", ".join(f"{name} {rate:.0%}" for name, rate in report["mean"].items()))
    if args.out is not None:
        from nnfeat.io import save_image, write_json
        from nnfeat.views.sheets import labelled_sheet

        figures = args.out / "figures"
        rows = torch.cat([F.interpolate(report["images"][s], size=32, mode="bilinear", align_corners=False)
                          for s in seeds])
        save_image(figures / "demo_transfer.png", labelled_sheet(rows, ncol=10))
        write_json(figures / "demo_transfer.json", {"objective": str(objective), "settings": shown,
                                                    "held_out": held_out, "per_seed": report["per_seed"],
                                                    "mean": report["mean"], "baseline": args.baseline})
        print(f"wrote {figures / 'demo_transfer.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
