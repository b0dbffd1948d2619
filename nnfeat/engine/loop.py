"""The render loop: optimize an image parameterization to maximize an objective.

One step is: ``images = param()`` -> ``transforms(images)`` -> model forward up to the deepest layer the
objective needs (hooks on those layers only) -> ``objective(acts)`` (B,) -> backward -> optimizer step.
Nothing in the loop reads values back to the host: per-step values go into a preallocated device tensor
and images are copied at the thresholds; both are read once at the end.

:func:`render_images` is four named steps:

1. :func:`~nnfeat.engine.settings.plan_render`: check the settings once (:class:`RenderPlan`);
2. :func:`build_run`: the parameterization, transforms, optimizer and the network the loop runs (BatchNorm
   folded, channels-last) (:class:`RenderRun`);
3. :func:`optimize`: the loop -> per-step values (steps, B) and the images kept at the thresholds;
4. :func:`final_scores` and :func:`render_settings`: the objective of the final images without transforms,
   and the settings record -> :class:`RenderOutput`, plain tensors on the CPU.

A unit the objective minimizes (``-layer3:5``) is read before its layer's ReLU where the layer's output comes
from one (the capture records it; see :mod:`nnfeat.engine.objective`); the settings say where
(``pre_relu``) and where not (``not_relu_outputs``).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from nnfeat.device import default_channels_last, precision_used, resolve_device
from nnfeat.engine.objective import Objective
from nnfeat.engine.param import DEFAULT_LR, ImageParam, image_param, random_backgrounds
from nnfeat.engine.relu import RedirectedReLU
from nnfeat.engine.settings import RenderOptions, RenderPlan, item_units, plan_render
from nnfeat.engine.transforms import make_transforms
from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.imageops import to_grey
from nnfeat.layouts import IMAGE
from nnfeat.models.base import Model
from nnfeat.models.fold import folded_copy, weights_version
from nnfeat.progress import progress_bar


@dataclass
class RenderOutput:
    """What the engine returns: plain tensors on the CPU.

    Attributes:
        history: ``{step: Tensor (B, 3, H, W)}`` in [0, 1], one entry per threshold (the last one is ``images``).
        values: (steps, B) the objective of each batch item at each step (on the transformed image).
        final_values: (B,) the objective of the final images, evaluated without transforms.
        elapsed: seconds spent in the loop.
        settings: the settings used (model, objective, size, steps, seed, device, precision, ...).
    """

    history: dict[int, torch.Tensor]
    values: torch.Tensor
    final_values: torch.Tensor
    elapsed: float
    settings: dict

    @property
    def images(self) -> torch.Tensor:
        """(B, 3, H, W): the images at the last threshold."""
        return self.history[max(self.history)]


@dataclass
class RenderRun:
    """Everything the loop runs: built once by :func:`build_run`."""

    device: torch.device
    network: Model  # the model as the loop runs it (BatchNorm folded, maybe channels-last weights)
    param: ImageParam  # () -> (B, 3, H, W) images in [0, 1]
    transform: torch.nn.Module  # (images, generator) -> images at the model's input size
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # seeds the parameter initialization and every transform draw
    lr: float
    channels_last: bool  # channels-last input (the first forward may fall back to contiguous)
    auto_channels_last: bool  # channels-last chosen by default: fall back if the network rejects it
    bf16: bool  # bf16 autocast of the model's forward pass
    grey: bool  # a grey model sees luminance only: render grey images, so colour is not noise
    alpha: bool  # transparency: composite over a new random background each step

    def amp(self):
        """The autocast context of one forward pass (bf16, or none)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def kept_images(self) -> torch.Tensor:
        """A copy of the current images (B, 3, H, W), grey for a grey model (call under ``torch.no_grad``)."""
        return to_grey(self.param()) if self.grey else self.param().detach().clone()


def render_images(model: Model, objective: Objective, options: RenderOptions = RenderOptions()) -> RenderOutput:
    """Render images (B, 3, H, W) that maximize ``objective`` on ``model`` -> :class:`RenderOutput`."""
    plan = plan_render(model, objective, options)
    run = build_run(model, objective, plan, options)
    bar = progress_bar(plan.steps, f"render {objective.description[:40]}", enabled=options.progress, unit="step")
    start = time.perf_counter()
    with _bar_erased_on_error(bar), ActivationCapture(run.network, objective.model_layers,
                                                      pre_relu=objective.minimized_layers) as capture:
        values, kept = optimize(run, objective, plan, capture, bar, options.redirected_relu_steps, model.name)
        final_values = final_scores(objective, capture, kept[plan.thresholds[-1]], plan.input_size, model.name)
    elapsed = time.perf_counter() - start
    if options.progress:
        bar.set_postfix_str(f"mean objective {final_values.mean().item():.3g}")
    bar.close()
    settings = render_settings(model, objective, plan, run, options, capture.pre_relu_found)
    return RenderOutput(history={k: v.cpu() for k, v in kept.items()}, values=values.cpu(),
                        final_values=final_values.cpu(), elapsed=elapsed, settings=settings)


def build_run(model: Model, objective: Objective, plan: RenderPlan, options: RenderOptions) -> RenderRun:
    """The parameterization (seeded), transforms, optimizer and network of a render."""
    generator = torch.Generator(device=plan.device).manual_seed(int(options.seed))
    param = options.param
    if param is None or isinstance(param, str):
        param = image_param(param or "fft", plan.size, plan.batch, decorrelate=options.decorrelate,
                            magnitude=options.spectrum, generator=generator)
    param = param.to(plan.device)
    transform = make_transforms(options.transforms, plan.size[0], plan.input_size).to(plan.device)
    params = [p for p in param.parameters() if p.requires_grad]
    lr = float(getattr(param, "default_lr", DEFAULT_LR) if options.lr is None else options.lr)
    optimizer = options.optimizer(params) if options.optimizer is not None else torch.optim.Adam(params, lr=lr)
    network = prepared_network(model, objective.model_layers, options.fold_batchnorm, options.channels_last is True)
    auto_channels_last = options.channels_last is None and default_channels_last(plan.device, model)
    return RenderRun(device=plan.device, network=network, param=param, transform=transform, optimizer=optimizer,
                     generator=generator, lr=lr, channels_last=bool(options.channels_last) or auto_channels_last,
                     auto_channels_last=auto_channels_last,
                     bf16=precision_used(plan.device, options.autocast, model) == "bf16",
                     grey=model.in_channels == 1, alpha=bool(getattr(param, "has_alpha", False)))


def optimize(run: RenderRun, objective: Objective, plan: RenderPlan, capture: ActivationCapture, bar,
             redirected_relu_steps: int, model_name: str) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The loop: ``plan.steps`` optimizer steps -> (values (steps, B) on the device, {threshold: images (B, 3, H, W)}).

    The host reads the device only at step 1 and at the thresholds (the finite check), never per step.
    """
    values = torch.zeros(plan.steps, plan.batch, device=plan.device)
    finite = torch.ones(plan.steps, dtype=torch.bool, device=plan.device)  # (steps,) every item's objective finite
    kept: dict[int, torch.Tensor] = {}
    redirect = RedirectedReLU()
    channels_last = run.channels_last
    for step in range(plan.steps):
        with redirect if step < redirected_relu_steps else contextlib.nullcontext():
            score, channels_last = _score(run, objective, plan, capture, step, channels_last)
            loss = -score.sum()
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        values[step] = score.detach()
        finite[step] = torch.isfinite(values[step]).all()  # on the device: read at step 1 and the thresholds
        if step == 0 or step + 1 in plan.thresholds:
            _check_finite(finite[:step + 1], plan.steps, model_name)
        if step + 1 in plan.thresholds:
            with torch.no_grad():
                kept[step + 1] = run.kept_images()
        bar.update(1)
    return values, kept


def _score(run: RenderRun, objective: Objective, plan: RenderPlan, capture: ActivationCapture, step: int,
           channels_last: bool) -> tuple[torch.Tensor, bool]:
    """One forward pass: images -> transforms -> model -> objective. -> (score (B,) float32, channels_last)."""
    images = run.param(random_backgrounds(plan.batch, plan.size, run.generator)) if run.alpha else run.param()
    if run.grey:
        images = to_grey(images)
    seen = run.transform(images, run.generator)
    with run.amp():
        if not objective.model_layers:
            acts = {}
        elif run.auto_channels_last and step == 0:
            acts, channels_last = _first_forward(capture, seen)
        else:
            acts = capture(seen.contiguous(memory_format=torch.channels_last) if channels_last else seen)
    if IMAGE in objective.layers:
        acts[IMAGE] = images
    return objective(acts).float(), channels_last


@torch.no_grad()
def final_scores(objective: Objective, capture: ActivationCapture, final: torch.Tensor, input_size: tuple[int, int],
                 model_name: str) -> torch.Tensor:
    """The objective (B,) float32 of the final images (B, 3, H, W), without transforms (a one-line error where it
    is not finite)."""
    seen = _resize(final, input_size)
    acts = capture(seen) if objective.model_layers else {}
    if IMAGE in objective.layers:
        acts[IMAGE] = final
    final_values = objective(acts).float()
    if not bool(torch.isfinite(final_values).all()):
        raise NnfeatError(f"model '{model_name}' gave a non-finite objective (NaN or Inf) on the final images: "
                          "check the model's forward for NaN/Inf")
    return final_values


def render_settings(model: Model, objective: Objective, plan: RenderPlan, run: RenderRun,
                    options: RenderOptions, pre_relu_found: dict[str, bool] | None = None) -> dict:
    """The settings record of a render (``render.json``'s ``settings``; keys in this order).

    ``pre_relu_found``: ``{minimized layer: whether its output is a ReLU output}`` (the capture's
    :attr:`~nnfeat.hooks.ActivationCapture.pre_relu_found`); with any, the record ends with ``pre_relu`` (the
    layers whose minimized units read the pre-activation) and ``not_relu_outputs`` (those read as they are).
    """
    param, transforms = run.param, options.transforms
    settings = {
        "size": list(plan.size), "model_input_size": list(plan.input_size), "batch": plan.batch, "steps": plan.steps,
        "lr": run.lr, "seed": options.seed, "device": str(plan.device),
        "param": type(param.raw).__name__ if hasattr(param, "raw") else type(param).__name__,
        "decorrelate": getattr(param, "decorrelation", None) is not None,
        "transforms": transforms if isinstance(transforms, str) or transforms is None else type(transforms).__name__,
        "thresholds": plan.thresholds, "redirected_relu_steps": options.redirected_relu_steps,
        "precision": "bf16" if run.bf16 else "fp32",
        "model": model.name, "weights": getattr(model, "weights", None), "objective": objective.description,
        "item_units": item_units(objective, plan.batch),
    }
    if pre_relu_found:
        settings["pre_relu"] = [layer for layer, found in pre_relu_found.items() if found]
        settings["not_relu_outputs"] = [layer for layer, found in pre_relu_found.items() if not found]
    return settings


@torch.no_grad()
def evaluate(model: Model, objective: Objective, images: torch.Tensor,
             device: str | torch.device | None = None) -> torch.Tensor:
    """The objective on fixed images (B, 3, H, W) in [0,1], no transforms -> (B,) on the CPU (minimized units read
    as in a render: before their layer's ReLU)."""
    dev = resolve_device(device, model)
    model = model.to(dev)
    images = images.to(dev)
    with ActivationCapture(model, objective.model_layers, pre_relu=objective.minimized_layers) as capture:
        acts = capture(model.fit(images)) if objective.model_layers else {}
    if IMAGE in objective.layers:
        acts[IMAGE] = images
    return objective(acts).float().cpu()


def prepared_network(model: Model, keep: Sequence[str], fold_batchnorm: bool, convert_weights: bool) -> Model:
    """The network a render runs: BatchNorm folded (cached on ``model`` by :func:`folded_copy`) and, with
    ``convert_weights``, a copy of that with channels-last weights, cached on it per device and weights version
    (the caller's model is never converted in place)."""
    network = folded_copy(model, keep=keep) if fold_batchnorm else model
    if not convert_weights:
        return network
    copies = network.__dict__.setdefault("_channels_last_copies", {})
    key, version = str(model.device), weights_version(network)
    if key not in copies or copies[key][0] != version:  # new, or the weights changed in place since
        # deep-copy the network only, not the caches that hang on the module
        memo = {id(v): {} for k, v in network.__dict__.items() if k in ("_folded_cache", "_channels_last_copies")}
        copies[key] = (version, copy.deepcopy(network, memo).to(memory_format=torch.channels_last))
    return copies[key][1]


@contextlib.contextmanager
def _bar_erased_on_error(bar):
    """Erase the progress bar when the render stops with an error, so the error line stands alone."""
    try:
        yield
    except BaseException:
        bar.leave = False
        bar.close()
        raise


def _check_finite(finite: torch.Tensor, steps: int, model_name: str) -> None:
    """A one-line error naming the first step whose objective was NaN or Inf. ``finite``: (done,) bool, on the
    device (one host read here, at step 1 and at each threshold, not per step)."""
    if bool(finite.all()):
        return
    first = int((~finite).nonzero()[0]) + 1
    raise NnfeatError(f"model '{model_name}' gave a non-finite objective (NaN or Inf) at step {first} of {steps}: "
                      "check the model's forward for NaN/Inf (or use a smaller --lr)")


def _first_forward(capture: ActivationCapture, seen: torch.Tensor) -> tuple[dict[str, torch.Tensor], bool]:
    """The first forward pass with automatic channels-last: if the network rejects channels-last input (e.g.
    it calls ``.view`` on a conv output), run it contiguous, and keep doing so. -> (acts, channels_last)."""
    try:
        return capture(seen.contiguous(memory_format=torch.channels_last)), True
    except RuntimeError:
        return capture(seen), False


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size), bilinear; unchanged when already that size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False)
