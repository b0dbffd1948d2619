"""``nnfeat render``: optimize images to maximize an objective (the operation and its :class:`RenderResult`).

The loop itself is the render engine's (:mod:`nnfeat.engine.loop`): one step is ``images = param()`` ->
``transforms(images)`` -> model forward up to the deepest layer the objective needs -> ``objective(acts)`` (B,)
-> backward -> optimizer step, with no per-step reads back to the host. This module wraps the model once,
parses a text objective, and turns the engine's plain output into a :class:`RenderResult` with its command.

A unit the objective minimizes (``-layer3:5``) is read before its layer's ReLU where the layer's output comes from
one (after it the minimum is 0, reached by a flat image): the settings list those layers (``pre_relu``), the
captions and title say "pre-ReLU", and :meth:`RenderResult.notes` says it in words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Sequence

import torch
from torch import nn

from nnfeat.engine.expr import parse_objective
from nnfeat.engine.loop import evaluate as evaluate_on_model
from nnfeat.engine.loop import render_images
from nnfeat.engine.objectives import Objective
from nnfeat.engine.param import ImageParam
from nnfeat.engine.settings import RenderOptions
from nnfeat.errors import NnfeatError
from nnfeat.io import save_image
from nnfeat.models.base import Model, as_model
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.views.sheets import labelled_sheet


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
        pre_relu = self.settings.get("pre_relu")
        tail = f"  (minimized: pre-ReLU {', '.join(pre_relu)})" if pre_relu else ""
        return f"{self.settings.get('model', 'model')}  {self.settings.get('objective', '')}{tail}"

    def captions(self) -> list[str]:
        units = self.settings.get("item_units")
        names = units if units and len(units) == len(self.final_values) else [f"item {i}" for i in range(len(self.final_values))]
        return [f"{self._unit_name(name)}\n{value:.3g}" for name, value in zip(names, self.final_values.tolist())]

    def _unit_name(self, name: str) -> str:
        """A unit's caption: ``-layer3:5 (pre-ReLU)`` for a minimized unit read before its layer's ReLU."""
        pre_relu = self.settings.get("pre_relu") or []
        return f"{name} (pre-ReLU)" if name.startswith("-") and name[1:].partition(":")[0] in pre_relu else name

    def notes(self) -> list[str]:
        """One sentence per minimized layer: read before its ReLU, or as it is (not a ReLU output)."""
        objective = self.settings.get("objective", "")
        return [*(f"{objective}: the minimized units of '{layer}' read its pre-ReLU value (after the ReLU their "
                  f"minimum is 0, a flat image); the objective is the negated pre-activation"
                  for layer in self.settings.get("pre_relu") or []),
                *(f"{objective}: '{layer}' is not a ReLU output: its minimized units read it as it is"
                  for layer in self.settings.get("not_relu_outputs") or [])]

    def record(self) -> dict:
        record = {"model": self.settings.get("model"), "objective": self.settings.get("objective"),
                  "seed": self.settings.get("seed"), "device": self.settings.get("device"),
                  "precision": self.settings.get("precision"), "settings": self.settings,
                  "final_values": self.final_values.tolist(), "values_last_step": self.values[-1].tolist()}
        if self.notes():
            record["notes"] = self.notes()
        return record

    def write_files(self, out: Path) -> list[str]:
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
        return [self._unit_name(units[i]) if i < len(units) else f"item {i}" for i in range(len(self.history[step]))]


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
        objective = parse_objective(objective, model)
    options = RenderOptions(size=size, batch=batch, param=param, decorrelate=decorrelate, spectrum=spectrum,
                            transforms=transforms, model_input_size=model_input_size, steps=steps, lr=lr,
                            optimizer=optimizer, thresholds=thresholds, seed=seed, device=device, progress=progress,
                            redirected_relu_steps=redirected_relu_steps, fold_batchnorm=fold_batchnorm,
                            channels_last=channels_last, autocast=autocast)
    out = render_images(model, objective, options)
    return RenderResult(history=out.history, values=out.values, final_values=out.final_values, elapsed=out.elapsed,
                        settings=out.settings, command=_render_command(model, objective, out.settings, options))


def _render_command(model: Model, objective: Objective, settings: dict, options: RenderOptions) -> str | None:
    """The ``nnfeat render`` command that repeats this render, or None where some input has no text form
    (a hand-built objective, parameterization, transform module or spectrum tensor)."""
    param_kind = options.param if isinstance(options.param, str) else ("fft" if options.param is None else None)
    try:
        if parse_objective(objective.description).description != objective.description:
            return None
    except NnfeatError:
        return None
    if param_kind is None or options.spectrum is not None or not isinstance(settings["transforms"], str):
        return None
    precision = {None: None, False: "fp32", True: "bf16"}[options.autocast]
    return cli_command("render", model.name, objective.description, batch=settings["batch"],
                       size=settings["size"][0] if settings["size"][0] == settings["size"][1] else None,
                       steps=settings["steps"], seed=settings["seed"],
                       param=None if param_kind == "fft" else param_kind,
                       no_decorrelate=not settings["decorrelate"],
                       transforms=None if settings["transforms"] == "auto" else settings["transforms"],
                       lr=settings["lr"] if options.lr is not None else None, precision=precision,
                       thresholds=",".join(map(str, settings["thresholds"])) if len(settings["thresholds"]) > 1 else None,
                       weights=weights_flag(settings.get("weights")))


def evaluate(model: nn.Module | Model, objective: Objective, images: torch.Tensor,
             device: str | torch.device | None = None) -> torch.Tensor:
    """The objective on fixed images (B, 3, H, W) in [0,1], no transforms -> (B,)."""
    return evaluate_on_model(as_model(model), objective, images, device)
