"""Would ``torch.compile`` pay in the render loop? The lever the speed issue lists, measured side by side.

On cifar10-resnet20 (BatchNorm folded, as render runs it), 64 px, batch 16, channels-last input, one
forward to ``layer3`` plus backward to the input per step, fp32 and bf16 autocast:

* *eager*: the network as render runs it, through nnfeat's hooks (``ActivationCapture``, early exit);
* *compiled under hooks*: ``torch.compile`` of the same network, with the same hooks;
* *compiled trunk*: ``torch.compile`` of a hand-written hook-free module that runs conv1 .. layer3
  (what a compile-friendly truncation would give; render has no such truncation for arbitrary models).

Prints ms per step (median of interleaved repeats) and the one-off compile time.

    NNFEAT_WEIGHTS_PATH=../shared/models python experiments/bench_compile.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if not os.environ.get("NNFEAT_WEIGHTS_PATH") and (ROOT.parent / "shared" / "models").is_dir():
    os.environ["NNFEAT_WEIGHTS_PATH"] = str(ROOT.parent / "shared" / "models")

from nnfeat.hooks import ActivationCapture  # noqa: E402
from nnfeat.models.fold import folded_copy  # noqa: E402
from nnfeat.models.zoo import load_model  # noqa: E402


class Trunk(nn.Module):
    """conv1 .. layer3 of a (folded) CIFAR ResNet, no hooks: (B, 3, H, W) normalized -> (B, 64, H/4, W/4)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.relu(n.bn1(n.conv1(x)))
        return n.layer3(n.layer2(n.layer1(x)))


def main() -> int:
    torch.set_num_threads(1)
    model = load_model("cifar10-resnet20")
    folded = folded_copy(model, keep=["layer3"])
    trunk = Trunk(folded.net).eval().requires_grad_(False)
    images = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    images = images.contiguous(memory_format=torch.channels_last)

    def step_hooked(capture, network, bf16: bool) -> None:
        capture.model = network  # the hooks sit on the modules, which the compiled wrapper shares
        x = images.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            act = capture(x)["layer3"]
        act[:, 0].float().mean().backward()

    def step_trunk(fn, bf16: bool) -> None:
        x = images.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            act = fn(folded.preprocess(x))
        act[:, 0].float().mean().backward()

    results = {}
    with ActivationCapture(folded, ["layer3"]) as capture:
        compiled_model = torch.compile(folded)
        compiled_trunk = torch.compile(trunk)
        for bf16 in (False, True):
            variants = {
                "eager (render's network and hooks)": lambda: step_hooked(capture, folded, bf16),
                "compiled under hooks": lambda: step_hooked(capture, compiled_model, bf16),
                "compiled trunk (no hooks)": lambda: step_trunk(compiled_trunk, bf16),
            }
            for name, fn in variants.items():  # warm up, and time the first call (compilation)
                start = time.perf_counter()
                fn()
                results.setdefault((name, bf16), {"first_s": time.perf_counter() - start, "ms": []})
                for _ in range(2):
                    fn()
            for _ in range(5):  # interleaved repeats
                for name, fn in variants.items():
                    start = time.perf_counter()
                    for _ in range(5):
                        fn()
                    results[(name, bf16)]["ms"].append((time.perf_counter() - start) / 5 * 1000)
    print("| variant | dtype | ms/step | vs eager | first call s |")
    print("|---|---|---:|---:|---:|")
    for (name, bf16), r in results.items():
        eager = statistics.median(results[("eager (render's network and hooks)", bf16)]["ms"])
        ms = statistics.median(r["ms"])
        print(f"| {name} | {'bf16' if bf16 else 'fp32'} | {ms:.1f} | {ms / eager:.2f}× | {r['first_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
