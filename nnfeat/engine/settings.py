"""The settings of a render: the knobs as given (:class:`RenderOptions`) and, checked once before any work, what
the loop runs with (:class:`RenderPlan`, from :func:`plan_render`).

Every refusal here is one :class:`~nnfeat.errors.NnfeatError` line (unknown layer with the nearest names,
channel or position out of range, batch that does not match the objective, bad thresholds), raised before a
parameterization is built or a step is run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from nnfeat.device import resolve_device
from nnfeat.engine.objective import Objective
from nnfeat.engine.param import ImageParam
from nnfeat.errors import NnfeatError
from nnfeat.layouts import IMAGE, OUTPUT, size2
from nnfeat.models.base import Model
from nnfeat.targets import EXAMPLES, describe_output
from nnfeat.units import format_units


@dataclass(frozen=True)
class RenderOptions:
    """The knobs of one render, with the names and defaults of :func:`nnfeat.render` (see its docstring)."""

    size: int | tuple[int, int] | None = None
    batch: int | None = None
    param: ImageParam | str | None = None
    decorrelate: bool = True
    spectrum: torch.Tensor | None = None  # (3, H, W//2+1) Fourier magnitude for param="maco"
    transforms: str | nn.Module | None = "auto"
    model_input_size: int | tuple[int, int] | None = None
    steps: int = 256
    lr: float | None = None
    optimizer: Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer] | None = None
    thresholds: Sequence[int] | None = None
    seed: int = 0
    device: str | torch.device | None = None
    progress: bool = True
    redirected_relu_steps: int = 16
    fold_batchnorm: bool = True
    channels_last: bool | None = None
    autocast: bool | None = None


@dataclass(frozen=True)
class RenderPlan:
    """The checked settings the loop runs with.

    Attributes:
        device: where the model, the parameterization and every per-step tensor live.
        size: (H, W) of the rendered images.
        input_size: (H, W) the model sees (the transforms resize to it).
        batch: B, the number of images.
        steps: optimization length.
        thresholds: sorted 1-based steps at which the images are kept (the last one is the result).
    """

    device: torch.device
    size: tuple[int, int]
    input_size: tuple[int, int]
    batch: int
    steps: int
    thresholds: list[int]


def plan_render(model: Model, objective: Objective, options: RenderOptions) -> RenderPlan:
    """Check ``options`` against ``model`` and ``objective`` once -> :class:`RenderPlan`.

    Moves ``model`` to the render's device (in place, as :meth:`torch.nn.Module.to` does): the layer shapes
    that the units are checked against come from one forward pass there.
    """
    if not isinstance(objective, Objective):
        raise NnfeatError(f"objective must be an nnfeat Objective or an expression; got {type(objective).__name__}")
    if options.steps < 1:
        raise NnfeatError(f"steps must be at least 1; got {options.steps}")
    device = resolve_device(options.device, model)
    model.to(device)
    size = size2(options.size or model.input_size)
    # a network that takes only its native size (a ViT's fixed patch grid) sees the render resized to it
    input_size = size2(options.model_input_size or (size if model.accepts_size(size) else model.input_size))

    # Validate layers and units before any work: one-line errors with nearest names and valid ranges.
    for layer in objective.model_layers:
        model.check_layer(layer)
    shapes = model.layer_shapes(objective.model_layers, input_size) if objective.model_layers else {}
    batch = options.batch
    if isinstance(options.param, ImageParam) and batch is None:
        batch = options.param().shape[0]
    batch = batch or objective.min_batch
    _check_output_is_read_as_a_tensor(model, objective, shapes, input_size)
    objective.validate(shapes, batch)
    return RenderPlan(device, size, input_size, batch, options.steps, _thresholds(options.thresholds, options.steps))


@torch.no_grad()
def _check_output_is_read_as_a_tensor(model: Model, objective: Objective, shapes: dict, size: tuple[int, int]) -> None:
    """A unit of ``output`` (``output:3``, ``logit(3)``) on a model whose output is a dict or tuple: one line
    showing the output's parts and the target objective that names one."""
    if OUTPUT in shapes or not any(u.layer == OUTPUT for u in objective.units):
        return
    output = model(torch.full((1, 3, *size), 0.5, device=model.device))
    first = next(iter(output)) if isinstance(output, dict) and output else 0
    raise NnfeatError(f"objective '{objective.description}' reads channels of the output, but model '{model.name}' "
                      f"returns {describe_output(output)}: name the part, e.g. target(\"{first}:3\") "
                      f"(the target grammar: {EXAMPLES})")


def _thresholds(thresholds: Sequence[int] | None, steps: int) -> list[int]:
    """The sorted, distinct keep-steps (default: the last step only), each within 1..steps."""
    kept = sorted({int(t) for t in (thresholds or (steps,))})
    if kept[0] < 1 or kept[-1] > steps:
        raise NnfeatError(f"thresholds must lie in 1..{steps}; got {kept}")
    return kept


def item_units(objective: Objective, batch: int) -> list[str] | None:
    """What each batch item renders, as unit text, when the objective is one unit list (``layer3:0..3``); a
    minimized unit keeps its minus (``-layer3:5``)."""
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
    sign = "-" if [s for _, s in objective.unit_signs] == [-1] else ""
    return [sign + format_units(unit.layer, [c], position) for c in channels]
