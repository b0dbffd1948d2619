"""The uncertainty operation and its result: :func:`uncertainty` -> :class:`UncertaintyResult` (kind ``uncertainty``).

The sheet shows the most uncertain images (highest predictive entropy), each with the mean of its gradient
saliency maps over the members / dropout samples / augmentations, the first few of those maps, and their std
map; every caption gives the numbers (entropy, mutual information, the predicted class with its probability
± spread, and how much the maps agree: mean pairwise Spearman). One colour scale (|gradient|, stated) for every
saliency map of the figure; the std maps share a second one. Below: the reliability diagram (15 equal-width
confidence bins, accuracy per bin against the diagonal, ECE / accuracy / error-detection AUROC printed on each
panel) of every single model and of the combined prediction.

Files: ``uncertainty.png`` (that sheet), ``reliability.png`` (the diagram alone), ``per-image.csv`` (every
image's numbers), ``uncertainty.npz`` (per image: mean class probabilities and their std over members (N, K),
entropy, expected entropy, mutual information (N,), labels (-1: none), source indices) and ``uncertainty.json``
(settings, the numbers per model and combined, the top images).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from nnfeat.analysis.calibration import ECE_BINS, set_metrics
from nnfeat.analysis.fast_path import fast_network
from nnfeat.analysis.uncertainty import (Summary, check_distribution_target, check_same_classes, distribution_model,
                                         fit_images, flip_safe, map_agreement, summarize)
from nnfeat.analysis.uncertainty_methods import UNCERTAINTY, check_method, model_device, saliency_across
from nnfeat.data import ImageSet
from nnfeat.errors import NnfeatError
from nnfeat.finite import check_finite
from nnfeat.io import atomic_path, save_image
from nnfeat.models.base import as_model
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.targets import parse_target
from nnfeat.views import uncertainty_page as page
from nnfeat.views.uncertainty_page import SHOWN_MAPS

#: saliency maps per top image at most (members / samples / augmentations); the sheet shows the first SHOWN_MAPS
SALIENCY_MAPS = 16


@dataclass(repr=False)
class UncertaintyResult(Result):
    """What :func:`uncertainty` returns.

    ``summary``: per-image numbers over all N images (:class:`~nnfeat.analysis.uncertainty.Summary`);
    ``labels`` (N,) or None; ``singles``: {name: its own (N, K) probabilities} (each ensemble member; the model
    without dropout / augmentation); ``metrics``: {name: :func:`set_metrics` dict} for the singles and for
    ``combined_name`` (empty without labels); ``top`` (k,) positions of the most uncertain images; ``inputs``
    (k, 3, H, W); ``maps`` (S, k, H, W) gradient saliency per member / sample / augmentation; ``map_names`` (S,);
    ``spearman`` (k,) mean pairwise Spearman of the |maps|; ``std_maps`` (k, H, W)."""

    models: list[str]
    method: str
    samples: int
    seed: int
    flip: bool
    source: str
    labels_note: str | None
    classes: list[str] | None
    summary: Summary
    labels: torch.Tensor | None
    indices: list[int]
    singles: dict
    metrics: dict
    combined_name: str
    top: torch.Tensor
    inputs: torch.Tensor
    maps: torch.Tensor
    map_names: list[str]
    spearman: torch.Tensor
    std_maps: torch.Tensor
    device: str = "cpu"
    elapsed: float = 0.0
    command: str | None = None
    #: each image's name (a folder source's relative file paths), shown instead of its index; None: indices
    image_names: list[str] | None = None
    #: what the passes ran, one per model (:meth:`nnfeat.analysis.fast_path.FastPath.record`)
    fast_path: list | None = None
    kind: ClassVar[str] = "uncertainty"

    # -- pictures (drawn by nnfeat.views.uncertainty_page) ----------------------------------------
    def _class(self, k: int) -> str:
        return page.class_name(self.classes, k)

    @property
    def shown(self) -> int:
        return min(SHOWN_MAPS, self.maps.shape[0])

    @property
    def sheet_columns(self) -> int:  # type: ignore[override]
        return self.shown + 3

    def map_limit(self) -> float:
        """The top of the figure's one |gradient| colour scale: the 99th percentile of every |map| value shown
        (mean maps and the first maps), so one hot pixel does not darken the rest; larger values saturate."""
        return page.map_limit(self.maps, self.shown)

    def _tiles(self) -> torch.Tensor:
        """(k, shown + 3, 3, H, W): image, mean-map overlay, the first maps' overlays, the std map."""
        return page.tiles(self.inputs, self.maps, self.std_maps, self.shown)

    @property
    def images(self) -> torch.Tensor:
        return self._tiles().flatten(0, 1) if len(self.top) else torch.zeros(0, 3, 8, 8)

    def captions(self) -> list[str]:
        return page.captions(self.summary, self.top.tolist(), self.labels, self.image_names or self.indices,
                             self.classes, self.maps.shape[0], self.map_names, self.shown, self.spearman)

    def title(self) -> str:
        return page.title(self.models, self.method, self.source, len(self.indices),
                          self.metrics.get(self.combined_name))

    def reliability_diagram(self) -> np.ndarray:
        """One panel per single model and one for the combined prediction: (H, W, 3) uint8."""
        return page.reliability_diagram([*self.singles, self.combined_name], self.metrics, self.labels_note)

    def sheet(self) -> np.ndarray:
        diagram = self.reliability_diagram()
        grid = note = None
        if len(self.top):
            grid = page.grid(self.images, self.captions(), self.sheet_columns)
            std_hi = float(self.std_maps.max()) if self.std_maps.numel() else 0.0
            note = page.colour_note(max(grid.shape[1], diagram.shape[1]), self.map_limit(), std_hi)
        return page.sheet(self.title(), grid, note, diagram)

    # -- records ----------------------------------------------------------------------------------
    def record(self) -> dict:
        s = self.summary
        top = []
        for j, i in enumerate(self.top.tolist()):
            order = s.mean[i].argsort(descending=True)[:3].tolist()
            top.append({"index": self.indices[i], **({"name": self.image_names[i]} if self.image_names else {}),
                        "label": None if self.labels is None else self._class(int(self.labels[i])),
                        "prediction": self._class(int(s.prediction[i])), "confidence": float(s.confidence[i]),
                        "entropy": float(s.entropy[i]), "mutual_information": float(s.mutual_information[i]),
                        "top_classes": [{"class": self._class(k), "p": float(s.mean[i, k]), "std": float(s.std[i, k])}
                                        for k in order],
                        "saliency_spearman": None if math.isnan(float(self.spearman[j])) else float(self.spearman[j]),
                        "saliency_std_mean": float(self.std_maps[j].mean())})
        return {"models": self.models, "method": self.method, "samples": self.samples, "seed": self.seed,
                "tta_flip": self.flip if UNCERTAINTY[self.method].augments else None,
                "source": self.source, "n": len(self.indices), "classes": self.classes, "ece_bins": ECE_BINS,
                "combined": self.combined_name, "metrics": self.metrics, "labels_note": self.labels_note,
                "mean_entropy": float(s.entropy.mean()), "mean_mutual_information": float(s.mutual_information.mean()),
                "max_entropy": math.log(s.mean.shape[1]),
                "saliency": {"method": "gradient", "target": "combined prediction", "maps": self.map_names,
                             "mean_spearman": _nanmean(self.spearman)},
                "most_uncertain": top, "device": self.device,
                **({"fast_path": self.fast_path} if self.fast_path else {})}

    def write_files(self, out: Path) -> list[str]:
        files = [save_image(out / "reliability.png", self.reliability_diagram()).name]
        s = self.summary
        labels = self.labels if self.labels is not None else torch.full((len(self.indices),), -1)
        pred = s.prediction
        table = np.stack([np.asarray(self.indices, dtype=np.float64), labels.double().numpy(), pred.double().numpy(),
                          s.confidence.double().numpy(), s.std.gather(1, pred[:, None])[:, 0].double().numpy(),
                          s.entropy.double().numpy(), s.expected_entropy.double().numpy(),
                          s.mutual_information.double().numpy()], 1)
        with atomic_path(out / "per-image.csv") as tmp:
            np.savetxt(tmp, table, delimiter=",", fmt=["%d", "%d", "%d", "%.6f", "%.6f", "%.6f", "%.6f", "%.6f"],
                       header="index,label,prediction,confidence,confidence_std,entropy,expected_entropy,"
                              "mutual_information", comments="")
        members_are_models = UNCERTAINTY[self.method].multi_model
        with atomic_path(out / "uncertainty.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, mean=s.mean.numpy(), std=s.std.numpy(), entropy=s.entropy.numpy(),
                                    expected_entropy=s.expected_entropy.numpy(),
                                    mutual_information=s.mutual_information.numpy(), labels=labels.numpy(),
                                    indices=np.asarray(self.indices, dtype=np.int64),
                                    members=np.asarray(list(self.singles) if members_are_models else []),
                                    classes=np.asarray(self.classes if self.classes is not None else []))
        return files + ["per-image.csv", "uncertainty.npz"]


def _nanmean(x: torch.Tensor) -> float | None:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else None


def _labels(images: ImageSet | torch.Tensor, labels, classes: list[str] | None,
            k: int) -> tuple[torch.Tensor | None, str | None]:
    """(labels (N,) as the model's class indices or None, a note on why a source's labels were left out)."""
    if isinstance(images, ImageSet):
        if images.labels is None:
            return None, None
        y = torch.from_numpy(np.asarray(images.labels)).long()
        if images.classes is not None and classes is not None and list(map(str, images.classes)) != list(classes):
            where = {str(c): i for i, c in enumerate(classes)}
            missing = [str(c) for c in images.classes if str(c) not in where]
            if missing:  # e.g. a folder of cats and dogs under an ImageNet model: score nothing, say why
                return None, (f"labels of '{images.name}' left out: classes {', '.join(missing[:3])}"
                              f"{', …' if len(missing) > 3 else ''} are not the model's")
            y = torch.tensor([where[str(c)] for c in images.classes])[y]
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
            return None, f"labels of '{images.name}' left out: they are not class indices 0..{k - 1}"
        return y, None
    if labels is None:
        return None, None
    y = torch.as_tensor(labels).long().flatten()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        raise NnfeatError(f"labels must be class indices 0..{k - 1}; got {int(y.min())}..{int(y.max())}")
    return y, None


def uncertainty(models, images: ImageSet | torch.Tensor, method: str = "ensemble", *, samples: int | None = None,
                labels: torch.Tensor | None = None, top: int = 8, seed: int = 0, flip: bool | None = None,
                batch_size: int = 256, target: str | None = None) -> UncertaintyResult:
    """Uncertainty of ``models`` (a list for ``ensemble``; one model, or a list of one, otherwise) on ``images``
    (an :class:`ImageSet`, labels taken from it, or (N, 3, H, W) in [0, 1] with optional ``labels`` (N,)).

    ``method``: ``ensemble`` | ``mc-dropout`` | ``tta``; ``samples``: T for mc-dropout / tta (default 20 / 8);
    ``top``: how many of the most uncertain images the sheet shows with their saliency maps; ``flip``: whether
    TTA mirrors images (None: unless the classes are glyphs such as digits, :func:`flip_safe`); ``target``: which
    class distribution of the output to measure (``pred``; ``out:pred`` of a dict output; ``out:pred@Y0:Y1,X0:X1``,
    a segmentation map's per-pixel distribution averaged over a box; see :mod:`nnfeat.targets`)."""
    started = time.perf_counter()
    explained = None if target is None else check_distribution_target(parse_target(target))
    models = [distribution_model(as_model(m), explained)
              for m in (models if isinstance(models, (list, tuple)) else [models])]
    samples_used = check_method(method, models, samples)
    kind = UNCERTAINTY[method]()
    if top < 0:
        raise NnfeatError(f"--top must be at least 0; got {top}")
    classes = check_same_classes(models)
    kind.check_models(models)
    first = models[0]
    names = [getattr(m, "name", type(m).__name__) for m in models]
    labels_of = [n if names.count(n) == 1 else f"{n} ({names[:i + 1].count(n)})" for i, n in enumerate(names)]
    flip = flip_safe(classes) if flip is None else bool(flip)
    k = len(classes) if classes is not None else None
    if isinstance(images, ImageSet):
        inputs = torch.cat(list(images.iter_batches(batch_size, tuple(first.input_size))))
        source, indices, options = images.name, images.source_indices.tolist(), images.command_options()
        image_names = images.names
    else:
        inputs = fit_images(first, images.detach().float().cpu())
        source, indices, options = "tensor", list(range(len(images))), {"images": "tensor", "n": len(images)}
        image_names = None
    if len(inputs) == 0:
        raise NnfeatError("no images to measure: give --images a source with at least one image")

    # the passes run BatchNorm folded, channels-last (not for MC dropout: its masks are drawn in memory order)
    fast = [fast_network(m, channels_last=False if method == "mc-dropout" else None) for m in models]
    runs = [f.network for f in fast]
    # every chunk of the dataset pass is checked as it comes: the first with a NaN or Inf stops the work
    member = kind.member_probs(runs, inputs, samples_used, seed, batch_size, flip, indices)
    singles = kind.singles(runs, labels_of, member, inputs, batch_size, indices)
    combined = kind.combined_name(models, samples_used)
    summary = summarize(member)
    y, labels_note = _labels(images, labels, classes, k or member.shape[-1])
    if y is not None and len(y) != len(inputs):
        raise NnfeatError(f"{len(y)} labels for {len(inputs)} images: give one label per image")
    metrics = {}
    if y is not None:
        for name, p in singles.items():
            metrics[name] = set_metrics(p, y)
        metrics[combined] = set_metrics(summary.mean, y, summary.entropy)

    order = summary.entropy.argsort(descending=True, stable=True)[:min(top, len(inputs))]
    picked = inputs[order]
    size = tuple(first.input_size)
    if len(order):
        mats = kind.matrices(len(inputs), size, samples_used, seed, flip, order)
        maps_t, map_names = saliency_across(method, runs, labels_of, picked, summary.prediction[order],
                                            min(SALIENCY_MAPS, samples_used), seed, mats)
        check_finite(maps_t.transpose(0, 1), ",".join(names), "its gradient saliency maps",
                     [indices[i] for i in order.tolist()])
        spearman, std_maps = map_agreement(maps_t)
    else:
        maps_t, map_names = torch.zeros(0, 0, *size), []
        spearman, std_maps = torch.zeros(0), torch.zeros(0, *size)
    device = model_device(first)

    options = {**options, "seed": seed or None}
    command = cli_command("uncertainty", ",".join(names), **options, method=method, samples=samples,
                          top=None if top == 8 else top,
                          flip=None if not kind.augments or flip == flip_safe(classes) else ("yes" if flip else "no"),
                          weights=weights_flag(first), target=target)
    return UncertaintyResult(models=names, method=method, samples=samples_used, seed=seed, flip=flip, source=source,
                             labels_note=labels_note, classes=classes, summary=summary, labels=y, indices=indices,
                             singles=singles, metrics=metrics, combined_name=combined, top=order,
                             inputs=picked.cpu(), maps=maps_t,
                             map_names=map_names, spearman=spearman, std_maps=std_maps, device=str(device),
                             elapsed=time.perf_counter() - started, command=command, image_names=image_names,
                             fast_path=[f.record() for f in fast])


__all__ = ["UncertaintyResult", "uncertainty", "saliency_across", "check_method", "SALIENCY_MAPS"]
