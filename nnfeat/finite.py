"""One check, used wherever a model's numbers become a picture or a table: NaN or Inf is a one-line error naming
the model, what was computed and the first bad item (never a black image or a bare ``NaN`` in JSON).

:func:`probe_finite` runs before any work (two seeded random images through the layers a command reads, and its
output); :func:`probe_gradient_finite` does the same for the input gradient a saliency map is made of (a forward
can be finite where its backward is not: ``sqrt`` at 0); :func:`check_finite` checks each batch of a dataset pass
as it comes, for a model that breaks only on some inputs, so the first bad batch stops the work.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.layouts import OUTPUT

ADVICE = "check the model's forward (and its weights) for NaN/Inf"


def _first_bad_row(values, chunk: int = 65536) -> int | None:
    """Index along dim 0 of the first row with a NaN or Inf in (N, ...) ``values`` (tensor or array), else None."""
    if isinstance(values, torch.Tensor):
        bad = ~torch.isfinite(values.detach()).reshape(len(values), -1).all(1)
        return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None
    for start in range(0, len(values), chunk):  # memory-mapped arrays: a block at a time
        block = np.asarray(values[start:start + chunk])
        bad = np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(1))
        if len(bad):
            return start + int(bad[0])
    return None


def check_finite(values, model: str, what: str, items: Sequence | None = None, item: str = "image") -> None:
    """Raise a one-line :class:`NnfeatError` when (N, ...) ``values`` holds NaN or Inf. ``items``: what row ``i``
    is called in the message (e.g. source image indices; default ``i``)."""
    row = _first_bad_row(values)
    if row is not None:
        name = items[row] if items is not None and row < len(items) else row
        raise NnfeatError(f"model '{model}' gave NaN or Inf in {what} (first at {item} {name}): {ADVICE}")


@torch.no_grad()
def probe_finite(model, layers: Sequence[str], size: Sequence[int] | None = None,
                 channels: Sequence[int] | None = None) -> None:
    """Before any work: a one-line error when any of ``model``'s ``layers`` is NaN or Inf on two seeded random
    images of ``size`` (default the model's input size); ``channels``: only these channels (of a (B, C, ...)
    layer) count, for a command that reads only them."""
    probe = _probe_images(model, size)
    with ActivationCapture(model, list(dict.fromkeys(layers))) as capture:
        acts = capture(model.fit(probe))
    for layer in dict.fromkeys(layers):
        value = acts[layer]
        if channels is not None and isinstance(value, torch.Tensor) and value.dim() == 4:
            value = value[:, list(channels)]
        if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value.float()).all()):
            where = "its output" if layer == OUTPUT else f"layer '{layer}'"
            raise NnfeatError(f"model '{model.name}' gives NaN or Inf at {where} on a test image: {ADVICE}")


def _probe_images(model, size: Sequence[int] | None) -> torch.Tensor:
    """(2, 3, H, W): the two seeded random probe images at ``size`` (default the model's input size)."""
    size = tuple(size or model.input_size)
    return torch.rand((2, 3, *size), generator=torch.Generator().manual_seed(0)).to(model.device)


def probe_gradient_finite(model, size: Sequence[int] | None = None, name: str | None = None) -> None:
    """Before any work: a one-line error when the gradient of ``model``'s top output (a (B, K) classifier; the
    largest score of each image) with respect to the input is NaN or Inf on the two probe images of
    :func:`probe_finite` -- what a gradient saliency map of the model would be made of."""
    probe = _probe_images(model, size).requires_grad_(True)
    with torch.enable_grad():
        out = model(model.fit(probe))
        out = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or not out.is_floating_point():
            return  # not a (B, K) classifier: the command's own checks say what it needs
        (grad,) = torch.autograd.grad(out.max(1).values.sum(), probe, allow_unused=True)
    if grad is not None and not bool(torch.isfinite(grad).all()):
        raise NnfeatError(f"model '{name or model.name}' gives NaN or Inf in the gradient of its output with respect "
                          f"to a test image (its forward is finite; its backward is not, e.g. sqrt or log at 0): "
                          f"{ADVICE}")


__all__ = ["check_finite", "probe_finite", "probe_gradient_finite", "ADVICE"]
