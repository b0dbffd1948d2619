"""The lucent half of ``bench_render.py`` row 3: a worker that renders with torch-lucent.

Runs in the separate venv made by ``experiments/setup_lucent.sh`` (lucent needs kornia<=0.4.1, which
nnfeat does not use). ``bench_render.py`` starts it once and sends one JSON request per line on stdin;
the worker answers one JSON line per request on stdout, so nnfeat and lucent runs can alternate while
each side keeps its warm process::

    request:  {"model": "cifar10-resnet20", "weights": "pretrained", "layer": "layer3", "channels": [0, ..., 15],
               "size": 64, "steps": 256, "seed": 0, "device": "cpu", "threads": 1, "out": "/tmp/lucent.npy"}
    answer:   {"seconds": 41.2, "cpu_seconds": 40.9, "out": "/tmp/lucent.npy", "lucent": "0.1.8", "kornia": "0.4.1"}
              or {"error": "one line"}

What lucent gets, so that both tools do the same job:

* The same network object nnfeat loads (``nnfeat.models.zoo.load_model``, only for its weights and
  architecture), wrapped by :func:`make_normalized_input` so that lucent feeds it RGB in [0, 1] and the
  normalization happens inside the model, as in nnfeat's ``Model``. ``render_vis(preprocess=False)``.
* A fresh deep copy of the network for every request: lucent never removes its hooks, and reusing one
  network would make every later run slower (a known lucent fault, not what this benchmark measures).
* lucent's own defaults: ``param.image(size, batch=B, fft=True, decorrelate=True)``, Adam lr 0.05,
  ``transform.standard_transforms``, and ``fixed_image_size=size`` so the model sees ``size`` px as
  nnfeat's does (lucent would otherwise upsample to 224).
* One channel per batch item, lucent's way: ``sum_i objectives.channel(layer, c_i, batch=i)``.

The timed span is the ``render_vis`` call only (CUDA synchronized at both ends); ``cpu_seconds`` is the
worker's process CPU time over the same span. The final images are written to ``out`` as a float32
array (B, H, W, 3) in [0, 1]; ``bench_render.py`` scores them with the same evaluator as nnfeat's.
Where IPython is not installed, an empty stand-in is registered (lucent imports it only for notebooks).
"""

from __future__ import annotations

import copy
import json
import sys
import time
import traceback


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _Loaded:
    """Networks by (name, weights), loaded once per worker."""

    def __init__(self) -> None:
        self.models: dict = {}

    def get(self, name: str, weights: str):
        key = (name, weights)
        if key not in self.models:
            from nnfeat.models.zoo import load_model

            self.models[key] = load_model(name, weights=weights)
        return self.models[key]


def make_normalized_input(net, mean, std):
    """An ``nn.Module`` taking RGB (B, 3, H, W) in [0, 1] and calling ``net((x - mean) / std)``."""
    import torch
    from torch import nn

    class NormalizedInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, x):
            return self.net((x - self.mean) / self.std)

    return NormalizedInput()


def _stub_ipython() -> None:
    """lucent imports ``IPython.display`` at import time for its notebook ``show``; the worker never shows
    anything (``show_image=False``), so where IPython is not installed an empty stand-in is enough."""
    try:
        import IPython.display  # noqa: F401
    except ImportError:
        import types

        ipython, display = types.ModuleType("IPython"), types.ModuleType("IPython.display")
        ipython.display = display
        sys.modules.setdefault("IPython", ipython)
        sys.modules.setdefault("IPython.display", display)


def render_once(request: dict, loaded: _Loaded) -> dict:
    _stub_ipython()
    import numpy as np
    import torch
    import kornia
    import lucent
    from lucent.optvis import objectives, param, render, transform

    torch.set_num_threads(int(request.get("threads") or torch.get_num_threads()))
    device = request.get("device", "cpu")
    model = loaded.get(request["model"], request.get("weights", "pretrained"))
    net = copy.deepcopy(model.net)
    wrapped = make_normalized_input(net, model.mean.flatten().tolist(), model.std.flatten().tolist())
    wrapped = wrapped.to(device).eval()
    wrapped.requires_grad_(False)

    layer = "net_" + request["layer"].replace(".", "_")  # lucent joins module names with "_"
    channels = [int(c) for c in request["channels"]]
    objective = objectives.channel(layer, channels[0], batch=0)
    for i, c in enumerate(channels[1:], start=1):
        objective = objective + objectives.channel(layer, c, batch=i)
    size, steps, seed = int(request["size"]), int(request["steps"]), int(request.get("seed", 0))

    np.random.seed(seed)  # lucent draws its transforms from numpy and its init from torch
    torch.manual_seed(seed)
    param_f = lambda: param.image(size, batch=len(channels), fft=True, decorrelate=True)  # noqa: E731
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    images = render.render_vis(
        wrapped, objective, param_f=param_f, transforms=transform.standard_transforms, thresholds=(steps,),
        preprocess=False, progress=False, show_image=False, fixed_image_size=size,
    )
    _sync(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    np.save(request["out"], np.asarray(images[-1], dtype=np.float32))
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "out": request["out"], "lucent": lucent.__version__,
            "kornia": kornia.__version__,
            "torch": torch.__version__}


def main() -> int:
    loaded = _Loaded()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            answer = render_once(json.loads(line), loaded)
        except Exception as err:  # noqa: BLE001 - reported to the parent as one line
            detail = " ".join(str(err).split())[:300]
            answer = {"error": f"{type(err).__name__}: {detail}", "trace": traceback.format_exc()[-2000:]}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
