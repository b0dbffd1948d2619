"""The uncertainty methods by name (:data:`UNCERTAINTY`): what each one samples, what it compares against, and
how it takes the saliency maps of its members (tensors in, tensors out).

Each method is a small :class:`UncertaintyMethod` subclass registered by name; :data:`METHODS` lists them in
registration order and :data:`DEFAULT_SAMPLES` their default sample counts. The sampling itself is in
:mod:`nnfeat.analysis.uncertainty`:

* ``ensemble`` -- one member per model of a list of two or more (:func:`~nnfeat.analysis.uncertainty.ensemble_probs`);
* ``mc-dropout`` -- T dropout masks of one model (:func:`~nnfeat.analysis.uncertainty.mc_dropout_probs`);
* ``tta`` -- T test-time augmentations of one model (:func:`~nnfeat.analysis.uncertainty.tta_probs`).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import nn

from nnfeat.analysis.registry import Registry
from nnfeat.analysis.saliency import saliency_maps
from nnfeat.analysis.uncertainty import (Augmented, check_dropout, dropout_active, ensemble_probs, fit_images,
                                         mc_dropout_probs, tta_matrices, tta_probs)
from nnfeat.errors import NnfeatError, nearest
from nnfeat.seeds import stage_seed

#: the uncertainty methods by name, in registration order
UNCERTAINTY = Registry("uncertainty method")


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s buffers (CPU when it has none)."""
    return next((b.device for b in model.buffers()), torch.device("cpu"))


class UncertaintyMethod:
    """One way of sampling a classifier's predictive distribution. ``multi_model``: its members are the models of
    a list (else samples of one model); ``augments``: its members see transformed images (``flip`` applies);
    ``default_samples``: the sample count without ``--samples``."""

    name: ClassVar[str] = ""
    multi_model: ClassVar[bool] = False
    augments: ClassVar[bool] = False
    default_samples: ClassVar[int | None] = None

    def check(self, models: Sequence, samples: int | None) -> int:
        """Checks the models (or their names) and ``samples`` before any work; returns the member count M."""
        if len(models) != 1:
            raise NnfeatError(f"--method {self.name} takes one model; got {len(models)} (use --method ensemble for "
                              "a list)")
        if samples is not None and samples < 2:
            raise NnfeatError(f"--samples must be at least 2 (one sample has no spread); got {samples}")
        return samples if samples is not None else self.default_samples

    def check_models(self, models: Sequence[nn.Module]) -> None:
        """Checks the loaded models (a one-line error when the method cannot sample them)."""

    def member_probs(self, models, images: torch.Tensor, samples: int, seed: int, batch_size: int,
                     flip: bool, items: Sequence | None = None) -> torch.Tensor:
        """(N, 3, H, W) -> (M, N, K) member probabilities; a one-line error at the first chunk of images with a NaN
        or Inf (``items``: the N images' names in it, e.g. source indices)."""
        raise NotImplementedError

    def singles(self, models, labels: Sequence[str], member: torch.Tensor, images: torch.Tensor,
                batch_size: int, items: Sequence | None = None) -> dict[str, torch.Tensor]:
        """{name: (N, K) probabilities} of each single model the combined prediction is compared against (a pass
        of their own is checked for NaN or Inf like :meth:`member_probs`)."""
        raise NotImplementedError

    def combined_name(self, models, samples: int) -> str:
        raise NotImplementedError

    def matrices(self, n: int, size: Sequence[int], samples: int, seed: int, flip: bool,
                 order: torch.Tensor) -> torch.Tensor | None:
        """The members' (T, k, 3, 3) augmentations of the k images at positions ``order`` of the n (None: none)."""
        return None

    def member_maps(self, models, labels: Sequence[str], images: torch.Tensor, targets: torch.Tensor, samples: int,
                    seed: int, matrices: torch.Tensor | None) -> tuple[list[torch.Tensor], list[str]]:
        """Gradient saliency (k, H, W) of every member on (k, 3, H, W) ``images`` for (k,) ``targets``, and the
        members' names."""
        raise NotImplementedError


@UNCERTAINTY.register("ensemble")
class Ensemble(UncertaintyMethod):
    multi_model = True

    def check(self, models, samples):
        if len(models) < 2:
            raise NnfeatError("an ensemble needs two or more models (MODEL1,MODEL2,...); for one model use "
                              "--method mc-dropout or tta")
        if samples is not None:
            raise NnfeatError("--samples is for mc-dropout and tta; an ensemble has one sample per model")
        names = [m.strip() for m in models if isinstance(m, str)]
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            raise NnfeatError(f"the ensemble names '{twice}' twice: its copies always agree, so the mutual "
                              "information would be 0 by construction; name each model once")
        return len(models)

    def check_models(self, models):
        """A one-line error when two members are the same network (the same weights, by value)."""
        for i, model in enumerate(models):
            for j in range(i):
                if _same_weights(models[j], model):
                    raise NnfeatError(f"ensemble members {j + 1} and {i + 1} ('{_name(models[j])}', "
                                      f"'{_name(model)}') have the same weights: they always agree, so the mutual "
                                      "information would be 0 by construction; give models of other weights")

    def member_probs(self, models, images, samples, seed, batch_size, flip, items=None):
        return ensemble_probs(models, images, batch_size, items)

    def singles(self, models, labels, member, images, batch_size, items=None):
        return {name: member[i] for i, name in enumerate(labels)}

    def combined_name(self, models, samples):
        return f"ensemble of {len(models)}"

    def member_maps(self, models, labels, images, targets, samples, seed, matrices):
        size = tuple(images.shape[-2:])
        maps, names = [], []
        for name, model in zip(labels, models):
            dev = model_device(model)
            m = saliency_maps(model, fit_images(model, images.to(dev)), targets.to(dev), method="gradient").cpu()
            if tuple(m.shape[-2:]) != size:  # a member of another input size: its map on this image's grid
                m = torch.nn.functional.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            maps.append(m)
            names.append(name)
        return maps, names


@UNCERTAINTY.register("mc-dropout")
class MCDropout(UncertaintyMethod):
    default_samples = 20

    def check_models(self, models):
        check_dropout(models[0])

    def member_probs(self, models, images, samples, seed, batch_size, flip, items=None):
        return mc_dropout_probs(models[0], images, samples, seed, batch_size, items)

    def singles(self, models, labels, member, images, batch_size, items=None):
        return {f"{_name(models[0])} (dropout off)": ensemble_probs([models[0]], images, batch_size, items)[0]}

    def combined_name(self, models, samples):
        return f"mc-dropout, {samples} samples"

    def member_maps(self, models, labels, images, targets, samples, seed, matrices):
        first = models[0]
        dev = model_device(first)
        maps, names = [], []
        with dropout_active(first):
            for t in range(samples):
                with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                    torch.manual_seed(stage_seed(seed, "mc-dropout-saliency", t))
                    maps.append(saliency_maps(first, images.to(dev), targets.to(dev), method="gradient").cpu())
                names.append(f"dropout {t}")
        return maps, names


@UNCERTAINTY.register("tta")
class TestTimeAugmentation(UncertaintyMethod):
    augments = True
    default_samples = 8

    def member_probs(self, models, images, samples, seed, batch_size, flip, items=None):
        return tta_probs(models[0], images, samples, seed, batch_size, flip, items)

    def singles(self, models, labels, member, images, batch_size, items=None):
        return {f"{_name(models[0])} (no augmentation)": member[0]}

    def combined_name(self, models, samples):
        return f"tta, {samples} augmentations"

    def matrices(self, n, size, samples, seed, flip, order):
        return tta_matrices(n, size, samples, seed, flip)[:, order]

    def member_maps(self, models, labels, images, targets, samples, seed, matrices):
        first = models[0]
        dev = model_device(first)
        maps, names = [], []
        for t in range(min(samples, len(matrices))):
            wrapped = Augmented(first, matrices[t]).to(dev)
            maps.append(saliency_maps(wrapped, images.to(dev), targets.to(dev), method="gradient").cpu())
            names.append("no augmentation" if t == 0 else f"augmentation {t}")
        return maps, names


for _key in UNCERTAINTY:
    UNCERTAINTY[_key].name = _key

METHODS = tuple(UNCERTAINTY.names())
DEFAULT_SAMPLES = {n: UNCERTAINTY[n].default_samples for n in METHODS if UNCERTAINTY[n].default_samples}


def _name(model: nn.Module) -> str:
    return getattr(model, "name", type(model).__name__)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two networks hold the same parameters and buffers (names, shapes and values); one object twice
    counts, a network without any parameters never does."""
    if a is b:
        return True
    sa, sb = a.state_dict(), b.state_dict()
    if not sa or sa.keys() != sb.keys():
        return False
    return all(x.shape == sb[k].shape and x.dtype == sb[k].dtype and
               (x.data_ptr() == sb[k].data_ptr() or torch.equal(x.cpu(), sb[k].cpu())) for k, x in sa.items())


def check_method(method: str, models: Sequence, samples: int | None) -> int:
    """Checks a method against the models (or their names) and samples before any work; returns the sample count
    (M)."""
    if method not in UNCERTAINTY:
        near = nearest(method, METHODS)
        raise NnfeatError(f"unknown method '{method}'; choose from {', '.join(METHODS)}"
                          + (f" (nearest: {near[0]})" if near else ""))
    return UNCERTAINTY[method]().check(models, samples)


def saliency_across(method: str, models: Sequence, names: Sequence[str], images: torch.Tensor,
                    targets: torch.Tensor, samples: int, seed: int = 0,
                    matrices: torch.Tensor | None = None) -> tuple[torch.Tensor, list[str]]:
    """Gradient saliency (:func:`nnfeat.analysis.saliency.saliency_maps`) of ``targets`` (k,) on ``images``
    (k, 3, H, W) once per ensemble member, dropout mask (``samples`` of them, seeded) or augmentation
    (``matrices`` (T, k, 3, 3), taken through the augmentation so every map lies in the original image's frame):
    (S, k, H, W) maps and their S names."""
    maps, labels = UNCERTAINTY[method]().member_maps(models, names, images, targets, samples, seed, matrices)
    return torch.stack(maps).float(), labels


__all__ = ["UNCERTAINTY", "UncertaintyMethod", "Ensemble", "MCDropout", "TestTimeAugmentation", "METHODS",
           "DEFAULT_SAMPLES", "check_method", "saliency_across", "model_device"]
