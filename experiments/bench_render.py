"""How fast is a render step, and where does the time go? Prints a table and writes it as JSON.

A render step is at best one forward and one backward pass of the model up to the deepest layer the
objective needs, on the transformed batch. Everything else (parameterization, transforms, objective,
optimizer, hooks, Python) is overhead. Rows:

1. **Overhead** -- nnfeat's time per step divided by a *bare* forward+backward on a batch of the shape
   the model receives after the transforms. cifar10-resnet20 at 32 and 64 px, torchvision googlenet and
   resnet50 (random weights) at 128 px; batch 1, 16, 64.
2. **Early exit** -- step time of a shallow objective divided by that of a logit objective, same model.
3. **Against lucent** -- torch-lucent (in its own venv, see ``setup_lucent.sh``) and nnfeat render the
   same channels (one per item) with the same model, size, batch, steps and Fourier + decorrelated
   parameterization, each with its own standard transforms, the model seeing the same input size.
   Wall-time ratio and each tool's final mean activation, both scored by the same evaluator.
4. **Whole layer** -- every channel of a layer, 256 steps: total time and peak memory per batch size.
5. **Scaling** -- step time against batch size and image size, split into model / param / transforms.
L. **Levers** -- step time with each engine option toggled, on the row-3 configuration.

What is measured, exactly:

* *nnfeat step time* is measured inside a real :func:`nnfeat.render` call: the optimizer passed to it
  stamps the clock after every step, so an interval is one whole loop iteration (param, transforms,
  hooks, forward, objective, backward, Adam, bookkeeping). On CPU the median interval after ``warmup``
  steps is used; on CUDA the mean over a window, with a synchronize only at its two ends. Rows 1, 2, 5
  and L time the steady state (``redirected_relu_steps=0``: what 240 of a default render's 256 steps
  do); row L also times the redirected-ReLU steps, rows 3 and 4 time whole default renders.
* *bare* is the plain network as a user has it (``model.net``: eval, weights frozen, the render's
  default dtype (bf16 autocast where the device has native bf16, else float32), unfolded BatchNorm, contiguous NCHW) on a random input leaf of
  the transformed batch's shape that requires grad, stopped at the same layer by a forward hook that
  raises, then ``act.sum().backward()``. No input normalization, no parameterization, no optimizer.
* *same-net* is the bare loop on exactly the network nnfeat runs (BatchNorm folded, same memory
  format and dtype), so ``nnfeat / same-net`` is the loop's own overhead and ``nnfeat / bare`` is what
  a user gains or loses against writing the loop by hand.
* Ratios are computed per repeat from measurements taken side by side (interleaved) and reported as
  the median over repeats; times are medians too.

Threads: ``--threads`` (default 1). On a small shared machine, OpenMP with as many threads as cores is
catastrophically slow whenever other processes compete for the cores (spinning barriers); one thread
per process gives stable ratios. Every side (nnfeat, bare, lucent) uses the same setting.

    python experiments/bench_render.py                    # full CPU benchmark (about 15 min on 2 cores)
    python experiments/bench_render.py --quick            # seconds: the code path only (CI smoke test)
    python experiments/bench_render.py --device cuda --preset gpu --rows 1,3,4   # see bench_gpu.sh

Writes ``OUT/bench/bench_render.json`` and ``OUT/bench/bench_render.md`` (``--out``, default ``out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
try:  # run from a checkout without `pip install -e .`
    import nnfeat  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the repo is set up
    sys.path.insert(0, str(REPO_ROOT))

from nnfeat import objectives as O  # noqa: E402
from nnfeat.errors import NnfeatError  # noqa: E402
from nnfeat.io import write_json, write_text  # noqa: E402
from nnfeat.layouts import OUTPUT, channel_count  # noqa: E402
from nnfeat.models.base import Model  # noqa: E402
from nnfeat.models.fold import folded_copy  # noqa: E402
from nnfeat.models.zoo import load_model  # noqa: E402
from nnfeat.engine.param import image_param  # noqa: E402
from nnfeat.device import resolve_device  # noqa: E402
from nnfeat.ops.render import evaluate, render  # noqa: E402
from nnfeat.engine.transforms import make_transforms  # noqa: E402

LUCENT_PYTHON = REPO_ROOT / ".venv-lucent" / "bin" / "python"
LUCENT_SIDE = Path(__file__).resolve().parent / "lucent_side.py"
RSS_SCALE = 1024 if sys.platform.startswith("linux") else 1  # ru_maxrss: KiB on Linux, bytes on macOS


# ---------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Case:
    """One model/layer/size/batch cell."""

    model: str
    layer: str
    size: int
    batch: int
    weights: str = "pretrained"

    @property
    def label(self) -> str:
        return f"{self.model.replace('torchvision:', '')} {self.layer} {self.size}px b{self.batch}"


@dataclass
class Plan:
    """Everything a run measures; built from the command line by :func:`make_plan`."""

    device: torch.device
    threads: int
    repeats: int
    warmup: int
    timed_steps: int
    overhead: list[Case]
    early_exit: list[tuple[Case, str]]  # (case with the shallow layer, class count for logit objectives)
    lucent: Case | None
    lucent_steps: int
    lucent_repeats: int
    whole_layer: Case | None  # batch is ignored; the batch sizes are whole_layer_batches
    whole_layer_channels: int
    whole_layer_batches: list[int]
    whole_layer_steps: int
    scaling_batches: list[int]
    scaling_sizes: list[int]
    scaling_case: Case | None
    levers: Case | None
    budget_s: float = 4.0  # seconds one step-time measurement should take (slow cells time fewer steps)


def make_plan(args: argparse.Namespace) -> Plan:
    device = resolve_device(args.device)
    cifar_w = args.cifar_weights
    r20 = "cifar10-resnet20"
    if args.quick:
        return Plan(
            device=device, threads=args.threads, repeats=args.repeats or 1, warmup=1, timed_steps=2,
            overhead=[Case(r20, "layer3", 32, b, cifar_w) for b in (1, 2)],
            early_exit=[(Case(r20, "layer1", 32, 2, cifar_w), "10")],
            lucent=Case(r20, "layer3", 32, 2, cifar_w), lucent_steps=2, lucent_repeats=1,
            whole_layer=Case(r20, "layer3", 32, 0, cifar_w), whole_layer_channels=4, whole_layer_batches=[2, 4],
            whole_layer_steps=2,
            scaling_batches=[1, 2], scaling_sizes=[32, 48], scaling_case=Case(r20, "layer3", 32, 2, cifar_w),
            levers=Case(r20, "layer3", 32, 2, cifar_w),
        )
    if args.preset == "gpu":
        g = "torchvision:googlenet"
        return Plan(
            device=device, threads=args.threads, repeats=args.repeats or 3, warmup=5, timed_steps=20,
            overhead=[Case(g, "inception4c", 224, 64, "random"), Case(g, "inception4c", 224, 16, "random")],
            early_exit=[(Case(g, "inception3a", 224, 64, "random"), "1000")],
            lucent=Case(g, "inception4c", 224, 64, "random"), lucent_steps=256, lucent_repeats=args.repeats or 2,
            whole_layer=Case(g, "inception4c", 224, 0, "random"), whole_layer_channels=256,
            whole_layer_batches=args.whole_layer_batches or [64, 128], whole_layer_steps=256,
            scaling_batches=[1, 16, 64, 128], scaling_sizes=[128, 224, 320],
            scaling_case=Case(g, "inception4c", 224, 64, "random"),
            levers=Case(g, "inception4c", 224, 64, "random"),
        )
    overhead = []
    for model, layer, size, weights in (
        (r20, "layer3", 32, cifar_w), (r20, "layer3", 64, cifar_w),
        ("torchvision:googlenet", "inception4c", 128, "random"), ("torchvision:resnet50", "layer3", 128, "random"),
    ):
        overhead += [Case(model, layer, size, b, weights) for b in (1, 16, 64)]
    return Plan(
        device=device, threads=args.threads, repeats=args.repeats or 3, warmup=1, timed_steps=5,
        overhead=overhead,
        early_exit=[(Case(r20, "layer1", 32, 16, cifar_w), "10"),
                    (Case("torchvision:googlenet", "inception3a", 128, 16, "random"), "1000")],
        lucent=Case(r20, "layer3", 64, 16, cifar_w), lucent_steps=256, lucent_repeats=args.repeats or 2,
        whole_layer=Case(r20, "layer3", 32, 0, cifar_w), whole_layer_channels=64,
        whole_layer_batches=args.whole_layer_batches or [16, 64],
        whole_layer_steps=256,
        scaling_batches=[1, 4, 16, 64, 128], scaling_sizes=[32, 64, 128, 224],
        scaling_case=Case(r20, "layer3", 32, 4, cifar_w),
        levers=Case(r20, "layer3", 64, 16, cifar_w),
    )


# ---------------------------------------------------------------------------------------------------
# Measurement primitives


class _Models:
    """Models by (name, weights), loaded once, on the plan's device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cache: dict[tuple[str, str], Model] = {}

    def get(self, name: str, weights: str) -> Model:
        key = (name, weights)
        if key not in self.cache:
            self.cache[key] = load_model(name, weights=weights, device=self.device)
        return self.cache[key]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_time(stamps: list[float], warmup: int, device: torch.device) -> float:
    """Seconds per step from per-step clock stamps: the median interval after ``warmup`` stamps (CPU), or
    the window mean from stamp ``warmup`` to the last (CUDA, where only those two stamps are synchronized)."""
    if len(stamps) < warmup + 2:
        raise ValueError(f"need at least {warmup + 2} stamps, got {len(stamps)}")
    if device.type == "cuda":
        return (stamps[-1] - stamps[warmup]) / (len(stamps) - 1 - warmup)
    return statistics.median(b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:]))


@dataclass(frozen=True)
class Timing:
    """Seconds per step: ``wall`` (what a user waits) and, on the CPU, ``cpu`` (process CPU time, which
    other load on a shared machine barely moves; with one thread it is what the wall time would be alone)."""

    wall: float
    cpu: float | None


class Clock:
    """Stamps taken after each step ``tick(i)``: wall and process CPU time on the CPU; on CUDA only at steps
    ``sync_from`` and ``sync_last``, after a synchronize (no host sync inside the measured window)."""

    def __init__(self, device: torch.device, sync_from: int = 0, sync_last: int = 0) -> None:
        self.device = device
        self.sync_points = {sync_from, sync_last}
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def tick(self, i: int) -> None:
        if self.device.type != "cuda":
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())
        elif i in self.sync_points:
            torch.cuda.synchronize(self.device)
            self.wall.append(time.perf_counter())

    def per_step(self, warmup: int) -> Timing:
        if self.device.type == "cuda":
            return Timing(step_time(self.wall, 0, self.device), None)
        return Timing(step_time(self.wall, warmup, self.device), step_time(self.cpu, warmup, self.device))


class StepClock(torch.optim.Adam):
    """Adam (lr 0.05, render's default) that ticks a :class:`Clock` after every step it takes.

    Passed to :func:`nnfeat.render` as ``optimizer``, it times the real loop without touching it.
    """

    def __init__(self, params, device: torch.device, sync_from: int = 0, sync_last: int = 0) -> None:
        super().__init__(params, lr=0.05)
        self.clock = Clock(device, sync_from, sync_last)
        self.count = 0

    @property
    def stamps(self) -> list[float]:
        return self.clock.wall

    @torch.no_grad()
    def step(self, closure=None):
        out = super().step(closure)
        self.clock.tick(self.count)
        self.count += 1
        return out


def channel_objective(layer: str, batch: int, n_channels: int | None = None) -> O.Objective:
    """One channel per batch item: item i -> channel i (modulo ``n_channels`` when given)."""
    channels = [i % n_channels if n_channels else i for i in range(batch)]
    return O.channel(layer, channels if batch > 1 else channels[0])


def unit_objective(model: Model, case: Case) -> O.Objective:
    """:func:`channel_objective` for ``case``, wrapping around the layer's channel count."""
    shape = model.layer_shapes([case.layer], (case.size, case.size))[case.layer]
    return channel_objective(case.layer, case.batch, channel_count(tuple(shape[1:])))


def nnfeat_step(model: Model, objective: O.Objective, case: Case, plan: Plan, timed: int | None = None,
                **render_kwargs) -> tuple[Timing, float]:
    """Steady-state time per step of a real render (see the module docstring), and its mean final value.
    ``timed``: timed steps after the warm-up (default ``plan.timed_steps``)."""
    steps = plan.warmup + (timed or plan.timed_steps) + 1
    clocks: list[StepClock] = []

    def make_optimizer(params):
        clock = StepClock(params, plan.device, sync_from=plan.warmup, sync_last=steps - 1)
        clocks.append(clock)
        return clock

    kwargs = dict(redirected_relu_steps=0)
    kwargs.update(render_kwargs)
    result = render(model, objective, size=case.size, batch=case.batch, steps=steps, optimizer=make_optimizer,
                    progress=False, device=plan.device, **kwargs)
    return clocks[0].clock.per_step(plan.warmup), float(result.final_values.mean())


class _BareStop(Exception):
    pass


def bare_step(net: torch.nn.Module, layer: str, shape: tuple[int, ...], plan: Plan, *, dtype=None,
              channels_last: bool = False, timed: int | None = None) -> Timing:
    """Time per ``net(x)`` forward (stopped at ``layer``) + backward to a fresh input leaf ``x``.

    ``dtype``: autocast dtype or None for float32; ``channels_last``: the input's memory format."""
    iters = plan.warmup + (timed or plan.timed_steps) + 1
    device = plan.device
    captured: dict[str, torch.Tensor] = {}

    def stop(_module, _inputs, output):
        captured["act"] = output[0] if isinstance(output, (tuple, list)) else output
        raise _BareStop

    handle = None if layer == OUTPUT else dict(net.named_modules())[layer].register_forward_hook(stop)
    base = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device)
    if channels_last:
        base = base.contiguous(memory_format=torch.channels_last)
    amp = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    clock = Clock(device, plan.warmup, iters - 1)
    try:
        for i in range(iters):
            x = base.detach().requires_grad_(True)
            with amp():
                try:
                    out = net(x)
                    captured["act"] = out[0] if isinstance(out, (tuple, list)) else out
                except _BareStop:
                    pass
            captured.pop("act").float().sum().backward()
            clock.tick(i)
    finally:
        if handle is not None:
            handle.remove()
    return clock.per_step(plan.warmup)


def render_defaults(device: torch.device, model: Model | None = None) -> dict:
    """The dtype, input memory format and BatchNorm folding :func:`nnfeat.render` uses by default."""
    import inspect

    from nnfeat.device import default_autocast, default_channels_last

    params = inspect.signature(render).parameters
    autocast = params["autocast"].default
    channels_last = params["channels_last"].default
    use_amp = default_autocast(device, model) if autocast is None else bool(autocast)
    if channels_last is None:  # automatic: channels-last input where it pays
        channels_last = default_channels_last(device, model)
    return {"dtype": torch.bfloat16 if use_amp else None, "channels_last": bool(channels_last),
            "fold_batchnorm": bool(params["fold_batchnorm"].default)}


def same_net(model: Model, layers: tuple[str, ...], defaults: dict) -> torch.nn.Module:
    """The network nnfeat's render runs by default (BatchNorm folded, except convolutions it reads).

    With the default channels-last setting render converts the input only; :func:`bare_step` does the same."""
    return folded_copy(model, keep=layers).net if defaults["fold_batchnorm"] else model.net


def timed_steps_for(plan: Plan, seconds_per_step: float) -> int:
    """Timed steps per measurement: ``plan.timed_steps``, fewer (not under 2) for slow cells, so that one
    measurement takes about ``plan.budget_s``."""
    return max(min(2, plan.timed_steps), min(plan.timed_steps, int(plan.budget_s / max(seconds_per_step, 1e-6))))


def _median(values) -> float:
    return float(statistics.median(values))


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def _sec(seconds: float) -> str:
    return f"{seconds:.1f}" if seconds >= 10 else f"{seconds:.2f}"


def _x(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def _med(runs: list[Timing], attr: str = "wall") -> float | None:
    values = [getattr(t, attr) for t in runs]
    return None if any(v is None for v in values) else _median(values)


def _ratio(top: list[Timing], bottom: list[Timing], attr: str = "wall") -> float | None:
    """Median over repeats of the per-repeat ratio (measurements of a repeat were taken side by side)."""
    pairs = [(getattr(a, attr), getattr(b, attr)) for a, b in zip(top, bottom)]
    return None if any(a is None or b is None for a, b in pairs) else _median(a / b for a, b in pairs)


def _runs_json(runs: dict[str, list[Timing]]) -> dict:
    return {name: {"wall_s": [t.wall for t in ts], "cpu_s": [t.cpu for t in ts]} for name, ts in runs.items()}


# ---------------------------------------------------------------------------------------------------
# Row 1: overhead


def row_overhead(plan: Plan, models: _Models, log) -> list[dict]:
    cells = []
    for case in plan.overhead:
        model = models.get(case.model, case.weights)
        defaults = render_defaults(plan.device, model)
        obj = unit_objective(model, case)
        shape = (case.batch, 3, case.size, case.size)
        runs: dict[str, list[Timing]] = {"nnfeat": [], "bare": [], "same_net": []}
        net_same = same_net(model, obj.model_layers, defaults)
        timed = None
        for _ in range(plan.repeats):  # interleaved: each repeat measures all three back to back
            runs["bare"].append(bare_step(model.net, case.layer, shape, plan, dtype=defaults["dtype"], timed=timed))
            timed = timed or timed_steps_for(plan, runs["bare"][0].wall)
            runs["same_net"].append(bare_step(net_same, case.layer, shape, plan, dtype=defaults["dtype"],
                                              channels_last=defaults["channels_last"], timed=timed))
            runs["nnfeat"].append(nnfeat_step(model, obj, case, plan, timed)[0])
        cell = {"case": case.__dict__, "label": case.label, "runs": _runs_json(runs)}
        for name, timings in runs.items():
            cell[f"{name}_step_s"] = _med(timings)
            cell[f"{name}_cpu_step_s"] = _med(timings, "cpu")
        cell["overhead"] = _ratio(runs["nnfeat"], runs["bare"])
        cell["overhead_cpu"] = _ratio(runs["nnfeat"], runs["bare"], "cpu")
        cell["overhead_vs_same_net"] = _ratio(runs["nnfeat"], runs["same_net"])
        cell["overhead_vs_same_net_cpu"] = _ratio(runs["nnfeat"], runs["same_net"], "cpu")
        cells.append(cell)
        log(f"  overhead {case.label}: nnfeat {_ms(cell['nnfeat_step_s'])} ms, bare {_ms(cell['bare_step_s'])} ms, "
            f"same-net {_ms(cell['same_net_step_s'])} ms -> {_x(cell['overhead'])} (cpu {_x(cell['overhead_cpu'])}; "
            f"loop overhead {_x(cell['overhead_vs_same_net'])}, cpu {_x(cell['overhead_vs_same_net_cpu'])})")
    return cells


# ---------------------------------------------------------------------------------------------------
# Row 2: early exit


def row_early_exit(plan: Plan, models: _Models, log) -> list[dict]:
    cells = []
    for case, n_classes in plan.early_exit:
        model = models.get(case.model, case.weights)
        defaults = render_defaults(plan.device, model)
        shallow = unit_objective(model, case)
        deep = O.logit([i % int(n_classes) for i in range(case.batch)] if case.batch > 1 else 0)
        shape = (case.batch, 3, case.size, case.size)
        runs: dict[str, list[Timing]] = {"shallow": [], "logit": [], "bare_shallow": [], "bare_logit": []}
        for _ in range(plan.repeats):
            runs["shallow"].append(nnfeat_step(model, shallow, case, plan)[0])
            runs["logit"].append(nnfeat_step(model, deep, case, plan)[0])
            runs["bare_shallow"].append(bare_step(model.net, case.layer, shape, plan, dtype=defaults["dtype"]))
            runs["bare_logit"].append(bare_step(model.net, OUTPUT, shape, plan, dtype=defaults["dtype"]))
        cell = {
            "case": case.__dict__, "label": case.label, "runs": _runs_json(runs),
            "shallow_step_s": _med(runs["shallow"]), "logit_step_s": _med(runs["logit"]),
            "ratio": _ratio(runs["shallow"], runs["logit"]), "ratio_cpu": _ratio(runs["shallow"], runs["logit"], "cpu"),
            "bare_ratio": _ratio(runs["bare_shallow"], runs["bare_logit"]),
            "bare_ratio_cpu": _ratio(runs["bare_shallow"], runs["bare_logit"], "cpu"),
        }
        cells.append(cell)
        log(f"  early exit {case.label}: {case.layer} {_ms(cell['shallow_step_s'])} ms / logit "
            f"{_ms(cell['logit_step_s'])} ms = {cell['ratio']:.2f} (cpu {_x(cell['ratio_cpu'])}; bare net: "
            f"{cell['bare_ratio']:.2f})")
    return cells


# ---------------------------------------------------------------------------------------------------
# Row 3: against lucent


class LucentWorker:
    """``lucent_side.py`` running in the lucent venv; one JSON request/answer per line."""

    def __init__(self, python: Path, log_path: Path, pythonpath: str = "") -> None:
        env = lucent_env(pythonpath)
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([str(python), str(LUCENT_SIDE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=env, cwd=str(REPO_ROOT))

    def render(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"lucent worker exited (see {self.log.name})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"lucent worker: {answer['error']}")
        return answer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        self.log.close()


def lucent_env(pythonpath: str = "") -> dict:
    """The worker's environment: ``pythonpath`` (where lucent and its kornia are, if not in a venv) first,
    then the repo (for nnfeat's model loading)."""
    env = dict(os.environ)
    parts = [pythonpath, str(REPO_ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
    return env


def lucent_status(python: Path, pythonpath: str = "") -> str | None:
    """None when the lucent interpreter is usable, else why not (one line)."""
    import shutil

    if not (python.exists() or shutil.which(str(python))):
        return f"skipped: no lucent venv at {python} (run `bash experiments/setup_lucent.sh`)"
    probe = subprocess.run([str(python), "-c", "import lucent, kornia; print(kornia.__version__)"],
                           capture_output=True, text=True, timeout=300, env=lucent_env(pythonpath))
    if probe.returncode != 0:
        return f"skipped: lucent venv at {python} cannot import lucent ({probe.stderr.strip().splitlines()[-1:]})"
    return None


def lucent_contestants(device: torch.device, model: Model) -> list[tuple[str, dict]]:
    """nnfeat's side of row 3: its defaults, and the other precision (fp32 where the default is bf16)."""
    from nnfeat.device import default_autocast

    if default_autocast(device, model):
        return [("nnfeat (default: bf16)", {}), ("nnfeat autocast=False (fp32)", {"autocast": False})]
    return [("nnfeat (default: fp32)", {}), ("nnfeat autocast=True (bf16)", {"autocast": True})]


def row_lucent(plan: Plan, models: _Models, log, lucent_python: Path, workdir: Path, pythonpath: str = "",
               worker_log: Path | None = None) -> dict:
    case = plan.lucent
    model = models.get(case.model, case.weights)
    channels = list(range(case.batch))
    obj = O.channel(case.layer, channels)
    out = {"case": case.__dict__, "label": case.label, "steps": plan.lucent_steps, "channels": channels,
           "nnfeat_settings": "render() defaults: fft + decorrelation, auto transforms, Adam 0.05, "
                              "redirected ReLU 16 steps, BatchNorm folding, channels-last input on CPU, "
                              "bf16 autocast where it pays (render.default_autocast)",
           "lucent_settings": "render_vis: param.image(fft, decorrelate), standard_transforms, Adam 0.05, "
                              f"fixed_image_size={case.size}, preprocess=False (normalization inside the model)"}
    reason = lucent_status(lucent_python, pythonpath)
    if reason is not None:
        out["skipped"] = reason
        log(f"  lucent: {reason}")
        return out
    import numpy as np

    contestants = lucent_contestants(plan.device, model)
    worker = LucentWorker(lucent_python, worker_log or workdir / "lucent_worker.log", pythonpath)
    request = {"model": case.model, "weights": case.weights, "layer": case.layer, "channels": channels,
               "size": case.size, "device": str(plan.device), "threads": plan.threads}
    runs: dict[str, dict[str, list]] = {name: {"wall_s": [], "cpu_s": [], "act": []}
                                        for name in [n for n, _ in contestants] + ["lucent"]}
    try:
        # warm both sides (lazy imports, allocator, BatchNorm folding cache) with a 2-step render each
        worker.render({**request, "steps": 2, "seed": 0, "out": str(workdir / "lucent_warm.npy")})
        for _, kwargs in contestants:
            render(model, obj, size=case.size, steps=2, progress=False, device=plan.device, **kwargs)
        for rep in range(plan.lucent_repeats):
            for name, kwargs in contestants:
                _sync(plan.device)
                start, cpu_start = time.perf_counter(), time.process_time()
                result = render(model, obj, size=case.size, steps=plan.lucent_steps, seed=rep, progress=False,
                                device=plan.device, **kwargs)
                _sync(plan.device)
                runs[name]["wall_s"].append(time.perf_counter() - start)
                runs[name]["cpu_s"].append(time.process_time() - cpu_start)
                runs[name]["act"].append(float(evaluate(model, obj, result.images).mean()))
            path = workdir / f"lucent_{rep}.npy"
            answer = worker.render({**request, "steps": plan.lucent_steps, "seed": rep, "out": str(path)})
            images = torch.from_numpy(np.load(path)).permute(0, 3, 1, 2).contiguous()
            runs["lucent"]["wall_s"].append(answer["seconds"])
            runs["lucent"]["cpu_s"].append(answer["cpu_seconds"])
            runs["lucent"]["act"].append(float(evaluate(model, obj, images).mean()))
            out["versions"] = {k: answer[k] for k in ("lucent", "kornia", "torch")}
            log(f"  lucent rep {rep}: " + ", ".join(
                f"{name} {r['wall_s'][-1]:.1f} s (cpu {r['cpu_s'][-1]:.1f}, act {r['act'][-1]:.3f})"
                for name, r in runs.items()))
    finally:
        worker.close()
    lucent = runs["lucent"]
    out["tools"] = []
    for name, r in runs.items():
        out["tools"].append({
            "tool": name if name != "lucent" else f"lucent {out['versions']['lucent']}",
            "wall_s": _median(r["wall_s"]), "cpu_s": _median(r["cpu_s"]), "act": _median(r["act"]),
            "speedup": _median(lw / w for lw, w in zip(lucent["wall_s"], r["wall_s"])),
            "cpu_speedup": _median(lc / c for lc, c in zip(lucent["cpu_s"], r["cpu_s"])),
        })
    main = out["tools"][0]
    out.update({"nnfeat_s": main["wall_s"], "lucent_s": out["tools"][-1]["wall_s"], "speedup": main["speedup"],
                "cpu_time_speedup": main["cpu_speedup"], "nnfeat_act": main["act"],
                "lucent_act": out["tools"][-1]["act"], "runs": runs})
    return out


# ---------------------------------------------------------------------------------------------------
# Row 4: whole layer (each batch size in a fresh process, so that peak memory is its own)


def whole_layer_job(job: dict) -> dict:
    """Render ``channels`` channels of ``layer`` in batches of ``batch``; time and peak memory."""
    torch.set_num_threads(int(job["threads"]))
    device = resolve_device(job["device"])
    model = load_model(job["model"], weights=job["weights"], device=device)
    channels = list(range(int(job["channels"])))
    batch = int(job["batch"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    rss_before = _rss_now()
    _reset_peak_rss()
    acts = []
    _sync(device)
    start = time.perf_counter()
    for first in range(0, len(channels), batch):
        chunk = channels[first:first + batch]
        obj = O.channel(job["layer"], chunk if len(chunk) > 1 else chunk[0])
        result = render(model, obj, size=int(job["size"]), batch=len(chunk), steps=int(job["steps"]),
                        progress=False, device=device, seed=first)
        acts.extend(result.final_values.tolist())
    _sync(device)
    seconds = time.perf_counter() - start
    answer = {"batch": batch, "renders": math.ceil(len(channels) / batch), "seconds": seconds,
              "images_per_s": len(channels) / seconds, "mean_act": sum(acts) / len(acts)}
    if device.type == "cuda":
        answer["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        answer["memory"] = "torch.cuda.max_memory_allocated minus what the model held before"
    else:
        peak = _peak_rss()
        answer["peak_mb"] = (peak - rss_before) / 2**20
        answer["peak_rss_mb"] = peak / 2**20
        answer["memory"] = "process peak RSS (VmHWM, reset after loading the model) minus RSS before the first render"
    return answer


def _rss_now() -> int:
    """Resident bytes now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: fall back to the high-water mark
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_SCALE


def _reset_peak_rss() -> None:
    """Reset Linux's resident high-water mark (VmHWM) to the current RSS, where the kernel allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    """Peak resident bytes of this process image. VmHWM, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over
    from the parent across fork and exec, so a child of a big process would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_SCALE


def row_whole_layer(plan: Plan, log, cifar_env: dict) -> list[dict]:
    case = plan.whole_layer
    cells = []
    for batch in plan.whole_layer_batches:
        job = {"model": case.model, "weights": case.weights, "layer": case.layer, "size": case.size,
               "channels": plan.whole_layer_channels, "batch": batch, "steps": plan.whole_layer_steps,
               "threads": plan.threads, "device": str(plan.device)}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--whole-layer-job", json.dumps(job)],
                              capture_output=True, text=True, env=cifar_env, cwd=str(REPO_ROOT))
        if proc.returncode != 0:
            raise RuntimeError(f"whole-layer job failed: {proc.stderr.strip()[-500:]}")
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        answer.update({"model": case.model, "layer": case.layer, "size": case.size,
                       "channels": plan.whole_layer_channels, "steps": plan.whole_layer_steps})
        cells.append(answer)
        log(f"  whole layer batch {batch}: {answer['seconds']:.1f} s ({answer['images_per_s']:.2f} images/s), "
            f"peak +{answer['peak_mb']:.0f} MB, mean act {answer['mean_act']:.3f}")
    return cells


# ---------------------------------------------------------------------------------------------------
# Row 5: scaling


def _component_step(fn, plan: Plan, iters: int | None = None) -> Timing:
    """Time per call of ``fn()`` (which runs forward and backward), after the warm-up."""
    iters = iters or plan.warmup + plan.timed_steps + 1
    clock = Clock(plan.device, plan.warmup, iters - 1)
    for i in range(iters):
        fn()
        clock.tick(i)
    return clock.per_step(plan.warmup)


def param_and_transform_steps(case: Case, plan: Plan) -> tuple[Timing, Timing]:
    """Forward+backward seconds of the default parameterization alone, and of the default transforms alone."""
    gen = torch.Generator(device=plan.device).manual_seed(0)
    param = image_param("fft", case.size, case.batch, generator=gen).to(plan.device)
    transform = make_transforms("auto", case.size, (case.size, case.size)).to(plan.device)
    images = torch.rand(case.batch, 3, case.size, case.size, device=plan.device)

    def param_pass():
        param.zero_grad(set_to_none=True)
        param().sum().backward()

    def transform_pass():
        x = images.detach().requires_grad_(True)
        transform(x, gen).sum().backward()

    return _component_step(param_pass, plan), _component_step(transform_pass, plan)


def row_scaling(plan: Plan, models: _Models, log) -> list[dict]:
    base = plan.scaling_case
    model = models.get(base.model, base.weights)
    defaults = render_defaults(plan.device, model)
    cases = [Case(base.model, base.layer, base.size, b, base.weights) for b in plan.scaling_batches]
    cases += [Case(base.model, base.layer, s, base.batch, base.weights) for s in plan.scaling_sizes
              if s != base.size]
    cells = []
    for case in cases:
        obj = unit_objective(model, case)
        shape = (case.batch, 3, case.size, case.size)
        net_same = same_net(model, obj.model_layers, defaults)
        runs: dict[str, list[Timing]] = {"nnfeat": [], "bare": [], "same_net": [], "param": [], "transforms": []}
        timed = None
        for _ in range(max(1, plan.repeats - 1)):
            runs["bare"].append(bare_step(model.net, case.layer, shape, plan, dtype=defaults["dtype"], timed=timed))
            timed = timed or timed_steps_for(plan, runs["bare"][0].wall)
            runs["same_net"].append(bare_step(net_same, case.layer, shape, plan, dtype=defaults["dtype"],
                                              channels_last=defaults["channels_last"], timed=timed))
            runs["nnfeat"].append(nnfeat_step(model, obj, case, plan, timed)[0])
            p, t = param_and_transform_steps(case, plan)
            runs["param"].append(p)
            runs["transforms"].append(t)
        cell = {"case": case.__dict__, "label": case.label, "runs": _runs_json(runs)}
        for key, timings in runs.items():
            cell[f"{key}_step_s"] = _med(timings)
            cell[f"{key}_cpu_step_s"] = _med(timings, "cpu")
        cell["per_image_ms"] = cell["nnfeat_step_s"] * 1e3 / case.batch
        cell["overhead"] = _ratio(runs["nnfeat"], runs["bare"])
        cell["overhead_cpu"] = _ratio(runs["nnfeat"], runs["bare"], "cpu")
        cells.append(cell)
        log(f"  scaling {case.label}: nnfeat {_ms(cell['nnfeat_step_s'])} ms ({cell['per_image_ms']:.2f} ms/image), "
            f"bare {_ms(cell['bare_step_s'])}, same-net {_ms(cell['same_net_step_s'])}, param "
            f"{_ms(cell['param_step_s'])}, transforms {_ms(cell['transforms_step_s'])} ms")
    return cells


# ---------------------------------------------------------------------------------------------------
# Row L: levers


def lever_variants(device: torch.device, model: Model) -> list[tuple[str, dict]]:
    """(name, render kwargs) for row L; each changes one thing from render's defaults."""
    defaults = render_defaults(device, model)
    variants = [
        ("default", {}),
        ("fold_batchnorm=False", {"fold_batchnorm": False}),
        ("channels_last=False (NCHW)" if defaults["channels_last"] else "channels_last=True",
         {"channels_last": not defaults["channels_last"]}),
    ]
    if defaults["channels_last"]:
        variants.append(("channels_last=True (weights converted too)", {"channels_last": True}))
    variants += [
        ("autocast=" + ("False (fp32)" if defaults["dtype"] is not None else "True (bf16)"),
         {"autocast": defaults["dtype"] is None}),
        ("redirected ReLU step", {"redirected_relu_steps": 10**6}),
        ("transforms='none' (no transform cost)", {"transforms": "none"}),
    ]
    return variants


def row_levers(plan: Plan, models: _Models, log) -> list[dict]:
    case = plan.levers
    model = models.get(case.model, case.weights)
    obj = unit_objective(model, case)
    variants = lever_variants(plan.device, model)
    runs: dict[str, list[Timing]] = {name: [] for name, _ in variants}
    finals: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(plan.repeats):
        for name, kwargs in variants:  # interleaved
            timing, final = nnfeat_step(model, obj, case, plan, **kwargs)
            runs[name].append(timing)
            finals[name].append(final)
    cells = []
    for name, _ in variants:
        cells.append({"variant": name, "step_s": _med(runs[name]), "cpu_step_s": _med(runs[name], "cpu"),
                      "vs_default": _ratio(runs[name], runs["default"]),
                      "vs_default_cpu": _ratio(runs[name], runs["default"], "cpu"),
                      "final_act": _median(finals[name]), "runs": _runs_json({name: runs[name]})[name]})
        log(f"  lever {case.label} {name}: {_ms(cells[-1]['step_s'])} ms ({_x(cells[-1]['vs_default'])} default; "
            f"cpu {_x(cells[-1]['vs_default_cpu'])})")
    return [{"case": case.__dict__, "label": case.label, "variants": cells}]


# ---------------------------------------------------------------------------------------------------
# Table


def format_table(report: dict) -> str:
    rows = report["rows"]
    meta = report["meta"]
    cpu = meta["device"].startswith("cpu")
    lines = [f"# nnfeat render benchmark ({meta['device']}, {meta['threads']} thread(s), torch {meta['torch']})", "",
             f"Command: `{meta['command']}`", "",
             "Times are medians over interleaved repeats; ratios are medians of per-repeat ratios. "
             + ("*cpu* columns use process CPU time instead of wall time (robust to other load on a shared "
                "machine; with one thread it is the wall time the step would take alone)." if cpu else ""), ""]
    if "overhead" in rows:
        lines += ["## 1. Overhead: nnfeat step / bare forward+backward (steady state)", "",
                  "| model, layer, size, batch | nnfeat ms/step | bare ms | **overhead** | overhead (cpu) | "
                  "same-net ms | loop overhead | loop overhead (cpu) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for c in rows["overhead"]:
            lines.append(f"| {c['label']} | {_ms(c['nnfeat_step_s'])} | {_ms(c['bare_step_s'])} | "
                         f"**{_x(c['overhead'])}** | {_x(c['overhead_cpu'])} | {_ms(c['same_net_step_s'])} | "
                         f"{_x(c['overhead_vs_same_net'])} | {_x(c['overhead_vs_same_net_cpu'])} |")
        lines += ["", "*bare*: the user's network (unfolded BatchNorm, NCHW, same dtype), stopped at the layer by a "
                      "raising hook, `act.sum().backward()` to the input. *same-net*: that loop on the network nnfeat "
                      "runs (BatchNorm folded, channels-last input where render uses it), so *loop overhead* is "
                      "nnfeat's own cost (parameterization, transforms, hooks, objective, Adam, Python). Target: "
                      "overhead ≤ 1.25× at batch ≥ 16.", ""]
    if "early_exit" in rows:
        lines += ["## 2. Early exit: shallow objective / logit objective, same model", "",
                  "| model, shallow layer, size, batch | shallow ms | logit ms | **ratio** | ratio (cpu) | "
                  "bare-net ratio |", "|---|---:|---:|---:|---:|---:|"]
        for c in rows["early_exit"]:
            lines.append(f"| {c['label']} | {_ms(c['shallow_step_s'])} | {_ms(c['logit_step_s'])} | "
                         f"**{c['ratio']:.2f}** | {_x(c['ratio_cpu'])} | {c['bare_ratio']:.2f} |")
        lines.append("")
    if "lucent" in rows:
        c = rows["lucent"]
        lines += [f"## 3. Against lucent: {c['label']}, channels {c['channels'][0]}–{c['channels'][-1]} "
                  f"(one per item), {c['steps']} steps", ""]
        if "skipped" in c:
            lines += [f"*{c['skipped']}*", ""]
        else:
            lines += ["| tool | wall time s | speed-up vs lucent | CPU time s | speed-up (cpu) | "
                      "final mean activation |", "|---|---:|---:|---:|---:|---:|"]
            for t in c["tools"]:
                bold = "**" if t is c["tools"][0] else ""
                lines.append(f"| {t['tool']} | {_sec(t['wall_s'])} | {bold}{t['speedup']:.2f}×{bold} | "
                             f"{_sec(t['cpu_s'])} | {t['cpu_speedup']:.2f}× | {bold}{t['act']:.3f}{bold} |")
            lines += ["", f"Median of {len(c['runs']['lucent']['wall_s'])} interleaved repeats (seeds 0, 1, ...). "
                      f"nnfeat: {c['nnfeat_settings']}. lucent: {c['lucent_settings']}. Every tool's final images "
                      f"are scored by `nnfeat.evaluate` (channel mean, fp32, no transforms).", ""]
    if "whole_layer" in rows and rows["whole_layer"]:
        first = rows["whole_layer"][0]
        lines += [f"## 4. Whole layer: {first['channels']} channels of {first['model']} {first['layer']} at "
                  f"{first['size']} px, {first['steps']} steps", "",
                  "| batch | renders | total s | images/s | peak memory MB | mean activation |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for c in rows["whole_layer"]:
            lines.append(f"| {c['batch']} | {c['renders']} | {_sec(c['seconds'])} | {c['images_per_s']:.2f} | "
                         f"{c['peak_mb']:.0f} | {c['mean_act']:.3f} |")
        lines += ["", f"Default render settings, one fresh process per batch size. Memory: {first['memory']}.", ""]
    if "scaling" in rows:
        lines += ["## 5. Scaling: where a step's time goes", "",
                  "| model, layer, size, batch | nnfeat ms | ms/image | bare ms | same-net ms | param ms | "
                  "transforms ms | overhead | overhead (cpu) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c in rows["scaling"]:
            lines.append(f"| {c['label']} | {_ms(c['nnfeat_step_s'])} | {c['per_image_ms']:.2f} | "
                         f"{_ms(c['bare_step_s'])} | {_ms(c['same_net_step_s'])} | {_ms(c['param_step_s'])} | "
                         f"{_ms(c['transforms_step_s'])} | {_x(c['overhead'])} | {_x(c['overhead_cpu'])} |")
        lines += ["", "param / transforms: forward+backward of the default fft parameterization / auto transforms "
                      "alone, same batch and size.", ""]
    if "levers" in rows:
        for block in rows["levers"]:
            lines += [f"## L. Levers: step time with one option changed ({block['label']})", "",
                      "| variant | ms/step | vs default | vs default (cpu) | objective after the short run |",
                      "|---|---:|---:|---:|---:|"]
            for c in block["variants"]:
                lines.append(f"| {c['variant']} | {_ms(c['step_s'])} | {_x(c['vs_default'])} | "
                             f"{_x(c['vs_default_cpu'])} | {c['final_act']:.3f} |")
            lines += ["", "Steady-state steps (redirected_relu_steps=0) except the *redirected ReLU step* row, whose "
                          "steps all use it (a default render uses it for its first 16 steps).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few steps of every row (seconds; CI smoke test)")
    p.add_argument("--preset", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: the rows of the issue; gpu: googlenet at 224 px, batch 64")
    p.add_argument("--rows", default="1,2,3,4,5,L", help="comma-separated rows to run (1,2,3,4,5,L)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (a one-line error when CUDA is absent)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for every side (default 1)")
    p.add_argument("--repeats", type=int, default=0, help="repeats per measurement (default: 3, quick 1)")
    p.add_argument("--whole-layer-batches", type=lambda text: [int(b) for b in text.split(",")], default=None,
                   help="row 4 batch sizes, comma-separated (default 16,64; gpu preset 64,128)")
    p.add_argument("--cifar-weights", choices=("pretrained", "random"), default="pretrained",
                   help="weights for cifar10-resnet20 (random needs no ../shared)")
    p.add_argument("--lucent-python", type=Path, default=LUCENT_PYTHON,
                   help="python of the lucent venv (default .venv-lucent/bin/python)")
    p.add_argument("--lucent-pythonpath", default="",
                   help="put first on the lucent worker's PYTHONPATH (lucent + kornia 0.4.1 installed with --target)")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder (writes OUT/bench/...)")
    p.add_argument("--whole-layer-job", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _environment() -> dict:
    env = dict(os.environ)
    models = SHARED / "models"
    if models.is_dir() and not env.get("NNFEAT_WEIGHTS_PATH"):
        env["NNFEAT_WEIGHTS_PATH"] = str(models)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.whole_layer_job:
        print(json.dumps(whole_layer_job(json.loads(args.whole_layer_job))))
        return 0
    env = _environment()
    os.environ.setdefault("NNFEAT_WEIGHTS_PATH", env.get("NNFEAT_WEIGHTS_PATH", ""))
    try:
        plan = make_plan(args)
    except NnfeatError as err:
        print(f"bench_render: {err}", file=sys.stderr)
        return 2
    rows = {r.strip().upper() for r in args.rows.split(",") if r.strip()}
    unknown = rows - {"1", "2", "3", "4", "5", "L"}
    if unknown:
        print(f"bench_render: unknown rows {sorted(unknown)}: use a comma-separated subset of 1,2,3,4,5,L",
              file=sys.stderr)
        return 2
    threads_before = torch.get_num_threads()
    torch.set_num_threads(plan.threads)
    try:
        return _run(args, plan, rows, env)
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, plan: Plan, rows: set[str], env: dict) -> int:
    out_dir = args.out / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    models = _Models(plan.device)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.time()
    report: dict = {"meta": {
        "command": " ".join(["python", "experiments/bench_render.py", *args.argv]),
        "device": _device_name(plan.device), "threads": plan.threads, "torch": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "load_before": _loadavg(), "quick": args.quick, "repeats": plan.repeats, "warmup": plan.warmup,
        "timed_steps": plan.timed_steps, "render_defaults": {k: str(v) for k, v in
                                                             render_defaults(plan.device).items()},
        "bare": "model.net as loaded (unfolded BatchNorm, contiguous NCHW), weights frozen, render's default "
                "dtype, random input leaf of the transformed batch's shape, stopped at the layer by a raising "
                "forward hook, act.sum().backward()",
        "same_net": "the network render runs by default (BatchNorm folded) with render's default input "
                    "memory format and dtype, same loop as bare",
        "nnfeat_step": "median interval between optimizer steps inside render(), after the warm-up steps, "
                       "redirected_relu_steps=0 (steady state); CUDA: window mean, synchronized at its ends",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, "rows": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:
            if "1" in rows:
                log("row 1: overhead")
                report["rows"]["overhead"] = row_overhead(plan, models, log)
            if "2" in rows:
                log("row 2: early exit")
                report["rows"]["early_exit"] = row_early_exit(plan, models, log)
            if "3" in rows and plan.lucent is not None:
                log("row 3: against lucent")
                report["rows"]["lucent"] = row_lucent(plan, models, log, args.lucent_python, Path(tmp),
                                                      args.lucent_pythonpath, out_dir / "lucent_worker.log")
            if "4" in rows and plan.whole_layer is not None:
                log("row 4: whole layer")
                report["rows"]["whole_layer"] = row_whole_layer(plan, log, env)
            if "5" in rows and plan.scaling_case is not None:
                log("row 5: scaling")
                report["rows"]["scaling"] = row_scaling(plan, models, log)
            if "L" in rows and plan.levers is not None:
                log("row L: levers")
                report["rows"]["levers"] = row_levers(plan, models, log)
    except NnfeatError as err:
        print(f"bench_render: {err}", file=sys.stderr)
        return 2
    report["meta"]["seconds"] = time.time() - started
    report["meta"]["load_after"] = _loadavg()
    table = format_table(report)
    write_json(out_dir / "bench_render.json", report)
    write_text(out_dir / "bench_render.md", table + "\n")
    print(table)
    log(f"wrote {out_dir / 'bench_render.json'} and {out_dir / 'bench_render.md'} in {report['meta']['seconds']:.0f} s")
    return 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
