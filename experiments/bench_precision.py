"""Where does bf16 autocast pay on this CPU? Render step time in bf16 / fp32, per architecture, side by side.

For each network: a real ``nnfeat.render`` of 4 channels (one per item), the two precisions interleaved,
``--repeats`` times ``--steps`` steps each after a 2-step warm-up; the table gives the best ms/step of
each precision, their ratio, and what ``--precision auto`` picks (``nnfeat.device.default_autocast``).
Random weights for the torchvision networks (shapes decide the speed, not the values).

    NNFEAT_WEIGHTS_PATH=../shared/models python experiments/bench_precision.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if not os.environ.get("NNFEAT_WEIGHTS_PATH") and (ROOT.parent / "shared" / "models").is_dir():
    os.environ["NNFEAT_WEIGHTS_PATH"] = str(ROOT.parent / "shared" / "models")

from nnfeat import objectives as O  # noqa: E402
from nnfeat.models.zoo import load_model  # noqa: E402
from nnfeat.device import cpu_has_native_bf16, precision_used  # noqa: E402
from nnfeat.ops.render import render  # noqa: E402

CASES = [  # (model, weights, layer, size, batch)
    ("cifar10-resnet20", "pretrained", "layer3", 64, 16),
    ("torchvision:resnet50", "random", "layer3", 128, 4),
    ("torchvision:densenet121", "random", "features.denseblock3", 128, 4),
    ("torchvision:googlenet", "random", "inception4c", 128, 4),
    ("torchvision:convnext_tiny", "random", "features.5", 128, 4),
    ("torchvision:swin_t", "random", "features.5", 128, 4),
    ("torchvision:regnet_y_400mf", "random", "trunk_output.block3", 128, 4),
    ("torchvision:mobilenet_v3_small", "random", "features.6", 128, 4),
    ("torchvision:efficientnet_b0", "random", "features.4", 128, 4),
    ("torchvision:vit_b_16", "random", "encoder.layers.encoder_layer_3", 224, 4),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU native bf16: {cpu_has_native_bf16()}; torch {torch.__version__}; {args.threads} thread(s)")
    print("| model, layer, size, batch | fp32 ms/step | bf16 ms/step | bf16 / fp32 | auto picks |")
    print("|---|---:|---:|---:|---|")
    for name, weights, layer, size, batch in CASES:
        model = load_model(name, weights=weights)
        objective = O.channel(layer, list(range(batch)))
        best = {}
        for autocast in (False, True):  # warm-up: folding caches, oneDNN kernels
            render(model, objective, size=size, steps=2, progress=False, autocast=autocast)
        for _ in range(args.repeats):
            for autocast in (False, True):
                start = time.perf_counter()
                render(model, objective, size=size, steps=args.steps, progress=False, autocast=autocast)
                per_step = (time.perf_counter() - start) / args.steps * 1000
                best[autocast] = min(best.get(autocast, float("inf")), per_step)
        print(f"| {name} {layer} {size}px b{batch} | {best[False]:.0f} | {best[True]:.0f} | "
              f"{best[True] / best[False]:.2f} | {precision_used('cpu', None, model)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
