"""How good are the renders? Activation ratio and transferability, per parameterization and transform preset.

Measures:

* **Activation ratio.** For a set of units (channels), the channel activation (spatial mean, the
  ``channel`` objective) of the rendered image, evaluated without transforms, divided by the unit's
  maximum over a dataset. Above 1: the render excites the unit more than any dataset image. Units whose
  dataset maximum is not positive are skipped. The same ratio for the class logits of the class renders
  is reported as the *logit ratio*.
* **Transferability** (MACO, Fel et al. 2023). Class logits are rendered on one model (default
  ``cifar10-resnet20``), ``--restarts`` independent random starts per class; the share of those renders
  that held-out models (default ``cifar10-resnet32``) classify as the target class. The share the
  render model itself assigns to the target (*self*) is reported as a sanity check.

Every configuration renders all its images (classes x restarts, then the units) in ONE batched
render, one objective per batch item; the restarts are independent random initializations drawn from
``--seed``. Configurations: the parameterizations fft (the default), fft without colour decorrelation,
pixel, cppn, maco (the magnitude fixed to the dataset's mean spectrum, see :mod:`nnfeat.engine.spectrum`) and
rgba (transparency, random backgrounds each step), all with the default ``auto`` transforms; and fft
with the ``standard`` (Lucid's pixel numbers) and ``none`` transform presets. Everything else is
:func:`nnfeat.render`'s default (256 steps, Adam lr 0.05 (cppn 0.005), size = the model's input size,
bf16 autocast where the device has native bf16; ``--precision fp32`` for float32).

Writes ``OUT/quality/quality.json``, ``quality.md`` (the table) and one picture of the class renders
per configuration. A re-run with the same settings reuses the configurations already measured.

    python experiments/quality.py                  # 10 classes x 4 restarts, 20 units, 256 steps
    python experiments/quality.py --quick          # a few steps, 1 restart (CI)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _figures as F
import torch

import nnfeat
from nnfeat import objectives as O
from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.layouts import OUTPUT, channels_first
from nnfeat.device import PRECISIONS, autocast_for, precision_used

#: id -> (description, render settings). ``param`` "maco" is built here from the dataset spectrum.
CONFIGS: dict[str, tuple[str, dict]] = {
    "fft": ("fft + decorrelation, auto transforms (default)", dict(param="fft", decorrelate=True, transforms="auto")),
    "fft-nodecorr": ("fft, no decorrelation, auto transforms", dict(param="fft", decorrelate=False, transforms="auto")),
    "pixel": ("pixel + decorrelation, auto transforms", dict(param="pixel", decorrelate=True, transforms="auto")),
    "cppn": ("cppn, auto transforms", dict(param="cppn", transforms="auto")),
    "maco": ("maco (dataset spectrum), auto transforms", dict(param="maco", transforms="auto")),
    "rgba": ("rgba (fft + alpha), auto transforms", dict(param="rgba", decorrelate=True, transforms="auto")),
    "fft-standard": ("fft + decorrelation, standard transforms", dict(param="fft", decorrelate=True,
                                                                      transforms="standard")),
    "fft-none": ("fft + decorrelation, no transforms", dict(param="fft", decorrelate=True, transforms="none")),
}


# ---------------------------------------------------------------------------------------------------
# Measures (also used by fig10)


@torch.no_grad()
def dataset_maxima(model, layers, images, batch_size: int = 250) -> dict[str, torch.Tensor]:
    """Per layer, each channel's maximum over ``images`` of its spatial mean -> {layer: (C,)}.

    ``layers`` may include ``"output"`` (the logits). ``images``: an :class:`nnfeat.data.ImageSet`.
    """
    layers = list(dict.fromkeys(layers))
    best: dict[str, torch.Tensor] = {}
    with ActivationCapture(model, layers) as capture:
        for batch in images.iter_batches(batch_size, model.input_size, device=model.device):
            acts = capture(batch)
            for layer in layers:
                values = channels_first(acts[layer]).float().mean(-1).amax(0).cpu()
                best[layer] = values if layer not in best else torch.maximum(best[layer], values)
    return best


def pick_units(maxima: dict[str, torch.Tensor], layers, per_layer: int) -> list[tuple[str, int]]:
    """The first ``per_layer`` channels of each layer whose dataset maximum is positive."""
    units = []
    for layer in layers:
        alive = torch.nonzero(maxima[layer] > 0).flatten().tolist()
        units.extend((layer, int(c)) for c in alive[:per_layer])
    return units


@torch.no_grad()
def judge(models, images: torch.Tensor, targets) -> dict[str, dict[str, float]]:
    """For each judge model: the share of ``images`` (B,3,H,W) it classifies as ``targets`` (B,), and its mean
    probability of the target."""
    targets = torch.as_tensor(list(targets))
    out = {}
    for model in models:
        logits = model(images.to(model.device)).float().cpu()
        probs = logits.softmax(1)
        out[model.name] = {
            "share": float((logits.argmax(1) == targets).float().mean()),
            "target_probability": float(probs.gather(1, targets.view(-1, 1)).mean()),
        }
    return out


def make_param(kind: str, size: int, batch: int, *, decorrelate: bool, spectrum, seed: int, device):
    """The parameterization for ``kind``; "maco" uses ``spectrum`` (3, H, W//2+1)."""
    from nnfeat.engine.param import image_param

    generator = torch.Generator(device=device).manual_seed(seed)
    if kind == "maco":
        return image_param("maco", size, batch, magnitude=spectrum, generator=generator)
    return image_param(kind, size, batch, decorrelate=decorrelate, generator=generator)


def measure_config(model, judges, settings: dict, *, classes, restarts: int, units, maxima, steps: int,
                   lr: float | None, size: int, seed: int, spectrum, progress: bool, autocast: bool | None = None) -> tuple[dict, torch.Tensor]:
    """Render classes x restarts logits and the units in one batch; return the row and the class renders."""
    targets = [c for _ in range(restarts) for c in classes]
    objectives = [O.logit(c) for c in targets] + [O.channel(layer, ch) for layer, ch in units]
    batch = len(objectives)
    param = make_param(settings["param"], size, batch, decorrelate=settings.get("decorrelate", True),
                       spectrum=spectrum, seed=seed, device=model.device)
    start = time.perf_counter()
    result = nnfeat.render(model, O.per_item(objectives), param=param, transforms=settings["transforms"],
                           steps=steps, lr=lr, seed=seed, size=size, progress=progress, autocast=autocast)
    seconds = time.perf_counter() - start
    values = result.final_values
    n = len(targets)
    renders = result.images[:n]
    logit_max = maxima[OUTPUT]
    logit_ratio = torch.stack([values[i] / logit_max[c] for i, c in enumerate(targets)])
    unit_ratio = torch.stack([values[n + k] / maxima[layer][ch] for k, (layer, ch) in enumerate(units)]) \
        if units else torch.zeros(0)
    row = {
        "activation_ratio": float(unit_ratio.mean()) if units else None,
        "activation_ratio_min": float(unit_ratio.min()) if units else None,
        "units_above_dataset_max": float((unit_ratio > 1).float().mean()) if units else None,
        "logit_ratio": float(logit_ratio.mean()),
        "self": judge([model], renders, targets)[model.name],
        "judges": judge(judges, renders, targets),
        "seconds": round(seconds, 1),
        "renders": n,
    }
    return row, renders


# ---------------------------------------------------------------------------------------------------


def table_markdown(record: dict) -> str:
    """The quality table as markdown."""
    judges = record["judges"]
    head = ["setting", "activation ratio", "logit ratio", "self-classified"] + \
        [f"transfer to {j}" for j in judges] + ["seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in record["rows"].items():
        ratio = "n/a" if row["activation_ratio"] is None else f"{row['activation_ratio']:.2f}"
        cells = [f"{key}: {CONFIGS[key][0]}" if key in CONFIGS else key, ratio, f"{row['logit_ratio']:.2f}",
                 f"{100 * row['self']['share']:.0f} %"]
        cells += [f"{100 * row['judges'][j]['share']:.0f} % (p={row['judges'][j]['target_probability']:.2f})"
                  for j in judges]
        cells.append(f"{row['seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    s = record["settings"]
    lines.append("")
    lr = "render's default (0.05; cppn 0.005)" if s["lr"] is None else s["lr"]
    lines.append(f"{s['model']} renders at {s['size']} px, {s['steps']} steps, Adam lr {lr}, "
                 f"{s.get('precision', 'fp32')}, seed {s['seed']}; "
                 f"{len(s['classes'])} classes x {s['restarts']} restarts = {len(s['classes']) * s['restarts']} class "
                 f"renders per setting; activation ratio over {len(record['units'])} units "
                 f"({', '.join(sorted({u.split(':')[0] for u in record['units']}))}), dataset maxima over "
                 f"{record['dataset_images']} images of {record['dataset']}.")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description="Activation ratio and transferability per parameterization and preset.")
    p.add_argument("--model", default=F.QUICK_MODEL, help=f"render model (default {F.QUICK_MODEL})")
    p.add_argument("--judge", default="cifar10-resnet32", help="comma list of held-out judge models")
    p.add_argument("--images", default=None, help="dataset for the maxima and the MACO spectrum "
                   "(default: ../shared CIFAR-10 test set)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--steps", type=int, default=None, help="render steps (default 256; quick 4)")
    p.add_argument("--lr", type=float, default=None, help="Adam lr (default: render's, 0.05; cppn 0.005)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="render arithmetic (default auto: bf16 where the device has native bf16)")
    p.add_argument("--restarts", type=int, default=None, help="random starts per class (default 4; quick 1)")
    p.add_argument("--units-per-layer", type=int, default=None, help="units per layer (default 10; quick 2)")
    p.add_argument("--size", type=int, default=None, help="render size (default: the model's input size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--quick", action="store_true", help="a few steps and few images (CI)")
    p.add_argument("--out", default="out", help="writes OUT/quality/ (default out)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return F.main_wrapper(_main, argv)


def _main(argv) -> int:
    from nnfeat.data import load_images
    from nnfeat.io import read_json, save_grid, write_json, write_text
    from nnfeat.engine.spectrum import dataset_spectrum

    args = parse_args(argv)
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        raise NnfeatError(f"unknown config '{unknown[0]}': use a comma list of {', '.join(CONFIGS)}")
    configs = args.configs.split(",")
    steps = args.steps or (4 if args.quick else 256)
    restarts = args.restarts or (1 if args.quick else 4)
    per_layer = args.units_per_layer or (2 if args.quick else 10)
    F.setup_weights_path(args.model)
    device = F.pick_device(args.device)
    model = nnfeat.load_model(args.model, device=device)
    judges = [nnfeat.load_model(name, device=device) for name in args.judge.split(",") if name]
    source = args.images or (F.CIFAR_NPZ if F.CIFAR_NPZ.is_file() else None)
    if source is None:
        raise NnfeatError("no dataset: pass --images (folder or .npz) for the dataset maxima and the MACO spectrum")
    images = load_images(source, limit=400 if args.quick else None)
    size = args.size or max(model.input_size)
    classes = list(range(model.layer_shapes([OUTPUT])[OUTPUT][1]))[:10]
    unit_layers = ["layer2", "layer3"] if model.name.startswith("cifar10-") else \
        sorted({layer for layer, _ in (F.PAPER_UNITS.get(model.name) or F.auto_units(model))["maco"]})

    out = Path(args.out) / "quality"
    settings = {"model": model.name, "judges": [j.name for j in judges], "steps": steps, "lr": args.lr,
                "precision": precision_used(model.device, autocast_for(args.precision), model),
                "restarts": restarts, "size": size, "seed": args.seed, "classes": classes,
                "units_per_layer": per_layer, "dataset": str(source), "dataset_images": len(images)}
    previous = {}
    if (out / "quality.json").is_file():
        old = read_json(out / "quality.json")
        if old.get("settings") == settings:
            previous = old.get("rows", {})

    print(f"[quality] dataset maxima over {len(images)} images", flush=True)
    maxima = dataset_maxima(model, [*unit_layers, OUTPUT], images)
    units = pick_units(maxima, unit_layers, per_layer)
    spectrum = dataset_spectrum(images, size) if "maco" in configs else None
    record = {"settings": settings, "judges": settings["judges"], "units": [f"{l}:{c}" for l, c in units],
              "dataset": str(source), "dataset_images": len(images), "rows": {}}
    for key in configs:
        if key in previous:
            record["rows"][key] = previous[key]
            print(f"[quality] {key}: reused", flush=True)
            continue
        description, config = CONFIGS[key]
        row, renders = measure_config(model, judges, config, classes=classes, restarts=restarts, units=units,
                                      maxima=maxima, steps=steps, lr=args.lr, size=size, seed=args.seed,
                                      spectrum=spectrum, progress=not args.quick,
                                      autocast=autocast_for(args.precision))
        row["description"] = description
        row["settings"] = config
        record["rows"][key] = row
        save_grid(out / f"renders-{key}.png", F.upscale(renders, size), ncol=len(classes))
        transfer = ", ".join(f"{j} {100 * v['share']:.0f} %" for j, v in row["judges"].items())
        ratio = "n/a" if row["activation_ratio"] is None else f"{row['activation_ratio']:.2f}"
        print(f"[quality] {key}: activation ratio {ratio}, logit ratio {row['logit_ratio']:.2f}, "
              f"self {100 * row['self']['share']:.0f} %, transfer {transfer} ({row['seconds']:.0f} s)", flush=True)
        write_json(out / "quality.json", record)  # after every configuration: a long run can resume
    write_json(out / "quality.json", record)
    markdown = table_markdown(record)
    write_text(out / "quality.md", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
