"""The render loop: optimize an image parameterization to maximize an objective.

One step is: ``images = param()`` -> ``transforms(images)`` -> model forward up to the deepest layer the
objective needs (hooks on those layers only) -> ``objective(acts)`` (B,) -> backward -> optimizer step.
Nothing in the loop reads values back to the host: per-step values go into a preallocated device tensor
and images are copied at the thresholds; both are read once at the end.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Sequence

import torch
from torch import nn

from nnfeat.device import default_channels_last, precision_used, resolve_device
from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.imageops import to_grey
from nnfeat.layouts import IMAGE, size2
from nnfeat.models.base import Model, as_model
from nnfeat.models.fold import folded_copy
from nnfeat.engine.objectives import Objective
from nnfeat.engine.param import DEFAULT_LR, ImageParam, image_param, random_backgrounds
from nnfeat.progress import progress_bar
from nnfeat.engine.relu import RedirectedReLU
from nnfeat.ops.results import Result, cli_command
from nnfeat.views.sheets import labelled_sheet
from nnfeat.engine.transforms import make_transforms


@dataclass(repr=False)
class RenderResult(Result):
    """What :func:`render` returns (the :class:`~nnfeat.ops.results.Result` protocol).

    Attributes:
        images: (B, 3, H, W) in [0, 1] on the CPU: the images at the last threshold.
        history: ``{step: Tensor (B, 3, H, W)}``, one entry per threshold (the last one is ``images``).
        values: (steps, B) the objective of each batch item at each step (on the transformed image).
        final_values: (B,) the objective of the final images, evaluated without transforms.
        elapsed: seconds spent in the loop.
        settings: the settings used (model, objective, size, steps, seed, device, precision, ...).
        command: the equivalent ``nnfeat render`` command, or None where the objective has no text form.
    """

    history: dict[int, torch.Tensor]
    values: torch.Tensor
    final_values: torch.Tensor
    elapsed: float
    settings: dict = field(default_factory=dict)
    command: str | None = None
    kind: ClassVar[str] = "render"

    @property
    def images(self) -> torch.Tensor:
        return self.history[max(self.history)]

    def title(self) -> str:
        return f"{self.settings.get('model', 'model')}  {self.settings.get('objective', '')}"

    def captions(self) -> list[str]:
        units = self.settings.get("item_units")
        names = units if units and len(units) == len(self.final_values) else [f"item {i}" for i in range(len(self.final_values))]
        return [f"{name}\n{value:.3g}" for name, value in zip(names, self.final_values.tolist())]

    def record(self) -> dict:
        return {"model": self.settings.get("model"), "objective": self.settings.get("objective"),
                "seed": self.settings.get("seed"), "device": self.settings.get("device"),
                "precision": self.settings.get("precision"), "settings": self.settings,
                "final_values": self.final_values.tolist(), "values_last_step": self.values[-1].tolist()}

    def write_files(self, out: Path) -> list[str]:
        from nnfeat.io import save_image

        files = []
        for i, image in enumerate(self.images):
            files.append(save_image(out / f"render-{i}.png", image).name)
        last = max(self.history)
        for step, images in sorted(self.history.items()):
            if step != last:
                files.append(save_image(out / f"render-step{step}.png",
                                        labelled_sheet(images, self.captions_at(step), title=f"step {step}")).name)
        return files

    def captions_at(self, step: int) -> list[str]:
        """Captions for the images at threshold ``step`` (unit names; values are the final ones' only)."""
        units = self.settings.get("item_units") or []
        return [units[i] if i < len(units) else f"item {i}" for i in range(len(self.history[step]))]


def render(
    model: nn.Module | Model,
    objective: Objective | str,
    *,
    size: int | tuple[int, int] | None = None,
    batch: int | None = None,
    param: ImageParam | str | None = None,
    decorrelate: bool = True,
    spectrum: torch.Tensor | None = None,
    transforms: str | nn.Module | None = "auto",
    model_input_size: int | tuple[int, int] | None = None,
    steps: int = 256,
    lr: float | None = None,
    optimizer: Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer] | None = None,
    thresholds: Sequence[int] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    redirected_relu_steps: int = 16,
    fold_batchnorm: bool = True,
    channels_last: bool | None = None,
    autocast: bool | None = None,
) -> RenderResult:
    """Render images that maximize ``objective`` on ``model``.

    Args:
        model: an nnfeat :class:`Model` (from ``load_model``) or a bare module (RGB, no normalization).
        objective: what to maximize: an :class:`Objective`, or an expression (``"layer3:0..3"``,
            ``"output:3 - 0.5*diversity('layer2')"``; see :mod:`nnfeat.engine.expr` and :mod:`nnfeat.units`). Its
            batch size (units per item), if any, sets ``batch``.
        size: image size (int or (H, W)); default: the model's native input size.
        batch: number of images; default: the objective's unit count, else the highest ``batch=i`` it uses + 1,
            else 1.
        param: an :class:`ImageParam`, or a kind for :func:`nnfeat.engine.param.image_param` (default ``"fft"``).
        decorrelate: colour decorrelation for a param built here.
        spectrum: the fixed Fourier magnitude (3, H, W//2+1) for ``param="maco"`` (see ``nnfeat.engine.spectrum``);
            its H, W must equal ``size``.
        transforms: ``"auto"`` (size-aware), ``"standard"`` (Lucid's), ``"none"``, or a module
            ``(images, generator) -> images``.
        model_input_size: the size the transforms resize to before the model; default ``size``, or the model's
            native size when the network takes no other (:meth:`Model.accepts_size`).
        steps: optimization length.
        lr: Adam learning rate; default: the parameterization's ``default_lr`` (0.05; CPPN 0.005).
        optimizer: ``params -> torch.optim.Optimizer``; default Adam(lr).
        thresholds: steps (1-based) at which to keep a copy of the images; default ``(steps,)``.
        seed: seeds the parameter initialization and every transform draw (torch RNG).
        device: ``cpu``, ``cuda``...; default: the model's device.
        progress: show a tqdm progress bar.
        redirected_relu_steps: use Redirected ReLU for this many first steps (0 disables).
        fold_batchnorm: fold eval-mode BatchNorm into preceding convolutions that are not targets (exact).
        channels_last: run convolutions in channels-last memory format. Default (None): channels-last input
            on the CPU for networks with 2-D convolutions (see :func:`default_channels_last`), falling back to
            contiguous input if the network rejects it; True also converts the weights (of a cached copy).
        autocast: bf16 autocast of the model's forward pass. Default (None): on where it is measured to pay
            (native bf16 hardware; on the CPU, dense-convolution networks; see :func:`default_autocast`),
            else float32. The objective, the images, the
            optimizer and ``final_values`` stay float32 either way.
    Returns:
        :class:`RenderResult`.
    """
    model = as_model(model)
    if isinstance(objective, str):
        from nnfeat.engine.expr import parse_objective

        objective = parse_objective(objective, model)
    if not isinstance(objective, Objective):
        raise NnfeatError(f"objective must be an nnfeat Objective or an expression; got {type(objective).__name__}")
    if steps < 1:
        raise NnfeatError(f"steps must be at least 1; got {steps}")
    dev = resolve_device(device, model)
    model = model.to(dev)
    size = size2(size or model.input_size)
    # a network that takes only its native size (a ViT's fixed patch grid) sees the render resized to it
    input_size = size2(model_input_size or (size if model.accepts_size(size) else model.input_size))

    # Validate layers and units before any work: one-line errors with nearest names and valid ranges.
    for layer in objective.model_layers:
        model.check_layer(layer)
    shapes = model.layer_shapes(objective.model_layers, input_size) if objective.model_layers else {}
    if isinstance(param, ImageParam) and batch is None:
        batch = param().shape[0]
    batch = batch or objective.min_batch
    objective.validate(shapes, batch)

    thresholds = sorted({int(t) for t in (thresholds or (steps,))})
    if thresholds[0] < 1 or thresholds[-1] > steps:
        raise NnfeatError(f"thresholds must lie in 1..{steps}; got {thresholds}")

    generator = torch.Generator(device=dev).manual_seed(int(seed))
    param_kind = param if isinstance(param, str) else ("fft" if param is None else None)
    if param is None or isinstance(param, str):
        param = image_param(param or "fft", size, batch, decorrelate=decorrelate, magnitude=spectrum,
                            generator=generator)
    param = param.to(dev)
    transform = make_transforms(transforms, size[0], input_size).to(dev)
    params = [p for p in param.parameters() if p.requires_grad]
    lr_given = lr is not None
    lr = float(getattr(param, "default_lr", DEFAULT_LR) if lr is None else lr)
    opt = optimizer(params) if optimizer is not None else torch.optim.Adam(params, lr=lr)

    run_model = _run_model(model, objective.model_layers, fold_batchnorm, channels_last is True)
    auto_channels_last = channels_last is None and default_channels_last(dev, model)
    channels_last = bool(channels_last) or auto_channels_last
    use_autocast = precision_used(dev, autocast, model) == "bf16"
    amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if use_autocast else contextlib.nullcontext
    needs_image = IMAGE in objective.layers
    redirect = RedirectedReLU()
    grey = model.in_channels == 1  # a grey model sees luminance only: render grey images, so colour is not noise
    alpha = bool(getattr(param, "has_alpha", False))  # transparency: composite over a new random background each step

    values = torch.zeros(steps, batch, device=dev)
    finite = torch.ones(steps, dtype=torch.bool, device=dev)  # (steps,) whether every item's objective was finite
    kept: dict[int, torch.Tensor] = {}
    bar = progress_bar(steps, f"render {objective.description[:40]}", enabled=progress, unit="step")
    start = time.perf_counter()
    with _bar_erased_on_error(bar), ActivationCapture(run_model, objective.model_layers) as capture:
        for step in range(steps):
            with redirect if step < redirected_relu_steps else contextlib.nullcontext():
                images = param(random_backgrounds(batch, size, generator)) if alpha else param()
                if grey:
                    images = to_grey(images)
                seen = transform(images, generator)
                with amp():
                    if not objective.model_layers:
                        acts = {}
                    elif auto_channels_last and step == 0:
                        acts, channels_last = _first_forward(capture, seen)
                    else:
                        acts = capture(seen.contiguous(memory_format=torch.channels_last) if channels_last else seen)
                if needs_image:
                    acts[IMAGE] = images
                score = objective(acts).float()
                loss = -score.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            values[step] = score.detach()
            finite[step] = torch.isfinite(values[step]).all()  # on the device: read at step 1 and the thresholds
            if step == 0 or step + 1 in thresholds:
                _check_finite(finite[:step + 1], steps, model.name)
            if step + 1 in thresholds:
                with torch.no_grad():
                    kept[step + 1] = to_grey(param()) if grey else param().detach().clone()
            bar.update(1)
        with torch.no_grad():
            final = kept[thresholds[-1]]
            seen = _resize(final, input_size)
            acts = capture(seen) if objective.model_layers else {}
            if needs_image:
                acts[IMAGE] = final
            final_values = objective(acts).float()
            if not bool(torch.isfinite(final_values).all()):
                raise NnfeatError(f"model '{model.name}' gave a non-finite objective (NaN or Inf) on the final images: "
                                  "check the model's forward for NaN/Inf")
    elapsed = time.perf_counter() - start
    if progress:
        bar.set_postfix_str(f"mean objective {final_values.mean().item():.3g}")
    bar.close()
    settings = {
        "size": list(size), "model_input_size": list(input_size), "batch": batch, "steps": steps, "lr": lr,
        "seed": seed, "device": str(dev), "param": type(param.raw).__name__ if hasattr(param, "raw") else type(param).__name__,
        "decorrelate": getattr(param, "decorrelation", None) is not None,
        "transforms": transforms if isinstance(transforms, str) or transforms is None else type(transforms).__name__,
        "thresholds": thresholds, "redirected_relu_steps": redirected_relu_steps,
        "precision": "bf16" if use_autocast else "fp32",
        "model": model.name, "weights": getattr(model, "weights", None), "objective": objective.description,
        "item_units": item_units(objective, batch),
    }
    command = _render_command(model, objective, settings, param_kind, lr_given, autocast, spectrum is not None)
    return RenderResult(
        history={k: v.cpu() for k, v in kept.items()},
        values=values.cpu(),
        final_values=final_values.cpu(),
        elapsed=elapsed,
        settings=settings,
        command=command,
    )


def item_units(objective: Objective, batch: int) -> list[str] | None:
    """What each batch item renders, as unit text, when the objective is one unit list (``layer3:0..3``)."""
    from nnfeat.units import format_units

    units = [u for u in objective.units if u.layer != IMAGE]
    if len(units) != 1 or not units[0].channels or len(units[0].channels) not in (1, batch):
        return None
    unit = units[0]
    channels = unit.channels * batch if len(unit.channels) == 1 else unit.channels
    position = None if unit.position is None or unit.position == (None, None) else unit.position
    if position is not None and position[0] is None:
        position = (position[1],)
    if position is not None and None in position:
        position = None
    return [format_units(unit.layer, [c], position) for c in channels]


def _render_command(model: Model, objective: Objective, settings: dict, param_kind: str | None, lr_given: bool,
                    autocast: bool | None, has_spectrum: bool) -> str | None:
    """The ``nnfeat render`` command that repeats this render, or None where some input has no text form
    (a hand-built objective, parameterization, transform module or spectrum tensor)."""
    from nnfeat.engine.expr import parse_objective

    try:
        if parse_objective(objective.description).description != objective.description:
            return None
    except NnfeatError:
        return None
    if param_kind is None or has_spectrum or not isinstance(settings["transforms"], str):
        return None
    precision = {None: None, False: "fp32", True: "bf16"}[autocast]
    return cli_command("render", model.name, objective.description, batch=settings["batch"],
                       size=settings["size"][0] if settings["size"][0] == settings["size"][1] else None,
                       steps=settings["steps"], seed=settings["seed"],
                       param=None if param_kind == "fft" else param_kind,
                       no_decorrelate=not settings["decorrelate"],
                       transforms=None if settings["transforms"] == "auto" else settings["transforms"],
                       lr=settings["lr"] if lr_given else None, precision=precision,
                       thresholds=",".join(map(str, settings["thresholds"])) if len(settings["thresholds"]) > 1 else None,
                       weights="random" if settings.get("weights") == "random" else None)


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


def _run_model(model: Model, keep: Sequence[str], fold_batchnorm: bool, convert_weights: bool) -> Model:
    """The network a render runs: BatchNorm folded (cached on ``model`` by :func:`folded_copy`) and, with
    ``convert_weights``, a copy of that with channels-last weights, cached on it per device (the caller's
    model is never converted in place)."""
    run_model = folded_copy(model, keep=keep) if fold_batchnorm else model
    if not convert_weights:
        return run_model
    copies = run_model.__dict__.setdefault("_channels_last_copies", {})
    key = str(model.device)
    if key not in copies:
        # deep-copy the network only, not the caches that hang on the module
        memo = {id(v): {} for k, v in run_model.__dict__.items() if k in ("_folded_cache", "_channels_last_copies")}
        copies[key] = copy.deepcopy(run_model, memo).to(memory_format=torch.channels_last)
    return copies[key]


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def evaluate(model: nn.Module | Model, objective: Objective, images: torch.Tensor,
             device: str | torch.device | None = None) -> torch.Tensor:
    """The objective on fixed images (B, 3, H, W) in [0,1], no transforms -> (B,)."""
    model = as_model(model)
    dev = resolve_device(device, model)
    model = model.to(dev)
    images = images.to(dev)
    with ActivationCapture(model, objective.model_layers) as capture:
        acts = capture(model.fit(images)) if objective.model_layers else {}
    if IMAGE in objective.layers:
        acts[IMAGE] = images
    return objective(acts).float().cpu()
