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
from typing import ClassVar, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from nnfeat.analysis.heatmap import COLORMAPS, colorize, overlay
from nnfeat.analysis.uncertainty import (DEFAULT_SAMPLES, ECE_BINS, METHODS, Augmented, Summary,
                                         check_dropout, check_same_classes, dropout_active, ensemble_probs,
                                         fit_images, flip_safe, map_agreement, mc_dropout_probs, set_metrics, summarize,
                                         tta_matrices, tta_probs)
from nnfeat.data import ImageSet
from nnfeat.errors import NnfeatError, nearest
from nnfeat.finite import check_finite
from nnfeat.ops.results import Result, cli_command
from nnfeat.seeds import stage_seed
from nnfeat.views.sheets import _font, labelled_sheet, stack_rows

#: saliency maps per top image at most (members / samples / augmentations), and how many of them the sheet shows
SALIENCY_MAPS = 16
SHOWN_MAPS = 4
_PANEL = 250


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


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
    kind: ClassVar[str] = "uncertainty"

    # -- pictures ---------------------------------------------------------------------------------
    def _class(self, k: int) -> str:
        return str(self.classes[k]) if self.classes is not None and 0 <= k < len(self.classes) else str(k)

    @property
    def shown(self) -> int:
        return min(SHOWN_MAPS, self.maps.shape[0])

    @property
    def sheet_columns(self) -> int:  # type: ignore[override]
        return self.shown + 3

    def map_limit(self) -> float:
        """The top of the figure's one |gradient| colour scale: the 99th percentile of every |map| value shown
        (mean maps and the first maps), so one hot pixel does not darken the rest; larger values saturate."""
        if not self.maps.numel():
            return 1.0
        absmaps = self.maps.abs()
        shown = torch.cat([absmaps.mean(0).flatten(), absmaps[:self.shown].flatten()]).float()
        return max(float(torch.quantile(shown[:2 ** 24], 0.99)), 1e-12)

    def _tiles(self) -> torch.Tensor:
        """(k, shown + 3, 3, H, W): image, mean-map overlay, the first maps' overlays, the std map."""
        absmaps = self.maps.abs()
        hi = self.map_limit()
        over_mean = overlay(self.inputs, absmaps.mean(0), 0.0, hi)
        over_each = overlay(self.inputs, absmaps[:self.shown].transpose(0, 1), 0.0, hi)
        std_hi = float(self.std_maps.max()) if self.std_maps.numel() else 1.0
        std = colorize(self.std_maps[:, None], 0.0, max(std_hi, 1e-12))[:, 0]
        return torch.cat([self.inputs[:, None], over_mean[:, None], over_each, std[:, None]], 1)

    @property
    def images(self) -> torch.Tensor:
        return self._tiles().flatten(0, 1) if len(self.top) else torch.zeros(0, 3, 8, 8)

    def captions(self) -> list[str]:
        out = []
        s = self.summary
        for j, i in enumerate(self.top.tolist()):
            pred = int(s.prediction[i])
            label = "no label" if self.labels is None else f"label {self._class(int(self.labels[i]))}"
            out.append(f"image {self.indices[i]}\n{label}\nH {s.entropy[i]:.2f} MI {s.mutual_information[i]:.2f}")
            out.append(f"mean |grad| of {self.maps.shape[0]}\npred {self._class(pred)}\np {s.mean[i, pred]:.2f} ± "
                       f"{s.std[i, pred]:.2f}")
            out.extend(f"{name}" for name in self.map_names[:self.shown])
            out.append(f"std of maps\nSpearman {_fmt(float(self.spearman[j]), '.2f')}")
        return out

    def title(self) -> str:
        m = self.metrics.get(self.combined_name)
        numbers = (f": acc {m['accuracy']:.3f}, ECE {m['ece']:.3f}, AUROC {_fmt(m['error_auroc'])}" if m else "")
        source = Path(self.source).name if self.source not in ("tensor", "digits") else self.source
        return f"{','.join(self.models)}  {self.method} ({source}, {len(self.indices)} images){numbers}"

    def reliability_diagram(self) -> np.ndarray:
        """One panel per single model and one for the combined prediction: (H, W, 3) uint8."""
        names = [*self.singles, self.combined_name]
        panels = [_panel(name, self.metrics.get(name), self.labels_note) for name in names]
        return np.concatenate(panels, 1)

    def _colour_note(self, width: int) -> np.ndarray:
        font = _font()
        bar = Image.new("RGB", (max(width, 240), 36), (255, 255, 255))
        draw = ImageDraw.Draw(bar)
        table = (COLORMAPS["viridis"].numpy() * 255).astype(np.uint8)
        ramp = np.repeat(table[np.linspace(0, 255, 120).astype(int)][None], 10, 0)
        bar.paste(Image.fromarray(ramp), (4, 6))
        std_hi = float(self.std_maps.max()) if self.std_maps.numel() else 0.0
        draw.text((130, 2), f"one scale for every |gradient| map: 0 .. {self.map_limit():.3g} (99th percentile; "
                            "above it saturates)", fill=(40, 40, 40), font=font)
        draw.text((130, 18), f"std maps (maps scaled to max 1): 0 .. {std_hi:.3g}", fill=(40, 40, 40), font=font)
        return np.asarray(bar)

    def sheet(self) -> np.ndarray:
        diagram = self.reliability_diagram()
        parts = [diagram]
        if len(self.top):
            grid = labelled_sheet(self.images, self.captions(), ncol=self.sheet_columns)
            parts = [grid, self._colour_note(max(grid.shape[1], diagram.shape[1])), diagram]
        width = max(p.shape[1] for p in parts)
        strip = Image.new("RGB", (width, 22), (255, 255, 255))  # the title over the whole width
        ImageDraw.Draw(strip).text((4, 4), self.title(), fill=(40, 40, 40), font=_font())
        parts.insert(0, np.asarray(strip))
        return stack_rows(parts)

    # -- records ----------------------------------------------------------------------------------
    def record(self) -> dict:
        s = self.summary
        top = []
        for j, i in enumerate(self.top.tolist()):
            order = s.mean[i].argsort(descending=True)[:3].tolist()
            top.append({"index": self.indices[i],
                        "label": None if self.labels is None else self._class(int(self.labels[i])),
                        "prediction": self._class(int(s.prediction[i])), "confidence": float(s.confidence[i]),
                        "entropy": float(s.entropy[i]), "mutual_information": float(s.mutual_information[i]),
                        "top_classes": [{"class": self._class(k), "p": float(s.mean[i, k]), "std": float(s.std[i, k])}
                                        for k in order],
                        "saliency_spearman": None if math.isnan(float(self.spearman[j])) else float(self.spearman[j]),
                        "saliency_std_mean": float(self.std_maps[j].mean())})
        return {"models": self.models, "method": self.method, "samples": self.samples, "seed": self.seed,
                "tta_flip": self.flip if self.method == "tta" else None,
                "source": self.source, "n": len(self.indices), "classes": self.classes, "ece_bins": ECE_BINS,
                "combined": self.combined_name, "metrics": self.metrics, "labels_note": self.labels_note,
                "mean_entropy": float(s.entropy.mean()), "mean_mutual_information": float(s.mutual_information.mean()),
                "max_entropy": math.log(s.mean.shape[1]),
                "saliency": {"method": "gradient", "target": "combined prediction", "maps": self.map_names,
                             "mean_spearman": _nanmean(self.spearman)},
                "most_uncertain": top, "device": self.device}

    def write_files(self, out: Path) -> list[str]:
        from nnfeat.io import atomic_path, save_image

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
        with atomic_path(out / "uncertainty.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, mean=s.mean.numpy(), std=s.std.numpy(), entropy=s.entropy.numpy(),
                                    expected_entropy=s.expected_entropy.numpy(),
                                    mutual_information=s.mutual_information.numpy(), labels=labels.numpy(),
                                    indices=np.asarray(self.indices, dtype=np.int64),
                                    members=np.asarray(list(self.singles) if self.method == "ensemble" else []),
                                    classes=np.asarray(self.classes if self.classes is not None else []))
        return files + ["per-image.csv", "uncertainty.npz"]


def _nanmean(x: torch.Tensor) -> float | None:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else None


def _panel(name: str, m: dict | None, note: str | None = None, size: int = _PANEL) -> np.ndarray:
    """A reliability panel: accuracy per confidence bin (bars) against the diagonal, the gap shaded, the
    numbers written on it."""
    font = _font()
    image = Image.new("RGB", (size, size + 58), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    x0, y0, side = 34, 40, size - 48  # plot box: (x0, y0) top-left, side px
    draw.text((4, 2), name, fill=(20, 20, 20), font=font)
    if m is None:
        draw.text((4, 20), "no labels: no calibration", fill=(120, 40, 40), font=font)
        words, line, y = (note or "").split(), "", 38
        for word in words:  # the note, wrapped to the panel
            if draw.textlength(f"{line} {word}", font=font) > size - 8 and line:
                draw.text((4, y), line, fill=(120, 40, 40), font=font)
                line, y = word, y + 16
            else:
                line = f"{line} {word}".strip()
        if line:
            draw.text((4, y), line, fill=(120, 40, 40), font=font)
        return np.asarray(image)
    draw.text((4, 18), f"acc {m['accuracy']:.3f}  ECE {m['ece']:.3f}  AUROC {_fmt(m['error_auroc'])}",
              fill=(20, 20, 20), font=font)
    bins = m["bins"]
    edges = bins["edges"]

    def px(cx: float, cy: float) -> tuple[float, float]:
        return x0 + cx * side, y0 + (1 - cy) * side

    for b, (acc, conf) in enumerate(zip(bins["accuracy"], bins["confidence"])):
        if acc is None:
            continue
        left, right = px(edges[b], 0)[0], px(edges[b + 1], 0)[0]
        draw.rectangle([left, px(0, acc)[1], right - 1, y0 + side], fill=(70, 110, 200), outline=(40, 60, 120))
        top, bottom = sorted([px(0, acc)[1], px(0, conf)[1]])
        draw.rectangle([left, top, right - 1, bottom], fill=None, outline=(210, 60, 60))
    draw.line([px(0, 0), px(1, 1)], fill=(120, 120, 120), width=1)
    draw.rectangle([x0, y0, x0 + side, y0 + side], outline=(40, 40, 40))
    for v in (0.0, 0.5, 1.0):
        draw.text((px(v, 0)[0] - 8, y0 + side + 2), f"{v:g}", fill=(40, 40, 40), font=font)
        draw.text((4, px(0, v)[1] - 7), f"{v:g}", fill=(40, 40, 40), font=font)
    draw.text((x0, y0 + side + 16), f"confidence, {len(edges) - 1} bins; y: accuracy", fill=(40, 40, 40), font=font)
    draw.text((x0, y0 + side + 30), f"red: gap; n {m['n']}, {m['errors']} errors", fill=(40, 40, 40), font=font)
    return np.asarray(image)


# -- the operation --------------------------------------------------------------------------------------
def check_method(method: str, models: Sequence, samples: int | None) -> int:
    """Checks a method against the models and samples before any work; returns the sample count (M)."""
    if method not in METHODS:
        near = nearest(method, METHODS)
        raise NnfeatError(f"unknown method '{method}'; choose from {', '.join(METHODS)}"
                          + (f" (nearest: {near[0]})" if near else ""))
    if method == "ensemble":
        if len(models) < 2:
            raise NnfeatError("an ensemble needs two or more models (MODEL1,MODEL2,...); for one model use "
                              "--method mc-dropout or tta")
        if samples is not None:
            raise NnfeatError("--samples is for mc-dropout and tta; an ensemble has one sample per model")
        return len(models)
    if len(models) != 1:
        raise NnfeatError(f"--method {method} takes one model; got {len(models)} (use --method ensemble for a list)")
    if samples is not None and samples < 2:
        raise NnfeatError(f"--samples must be at least 2 (one sample has no spread); got {samples}")
    return samples if samples is not None else DEFAULT_SAMPLES[method]


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


def _device(model) -> torch.device:
    return next((b.device for b in model.buffers()), torch.device("cpu"))


def saliency_across(method: str, models: Sequence, names: Sequence[str], images: torch.Tensor,
                    targets: torch.Tensor, samples: int, seed: int = 0,
                    matrices: torch.Tensor | None = None) -> tuple[torch.Tensor, list[str]]:
    """Gradient saliency (:func:`nnfeat.analysis.saliency.saliency_maps`) of ``targets`` (k,) on ``images``
    (k, 3, H, W) once per ensemble member, dropout mask (``samples`` of them, seeded) or augmentation
    (``matrices`` (T, k, 3, 3), taken through the augmentation so every map lies in the original image's frame):
    (S, k, H, W) maps and their S names."""
    from nnfeat.analysis.saliency import saliency_maps

    first, size = models[0], tuple(images.shape[-2:])
    maps, labels = [], []
    if method == "ensemble":
        for name, model in zip(names, models):
            dev = _device(model)
            m = saliency_maps(model, fit_images(model, images.to(dev)), targets.to(dev), method="gradient").cpu()
            if tuple(m.shape[-2:]) != size:  # a member of another input size: its map on this image's grid
                m = torch.nn.functional.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            maps.append(m)
            labels.append(name)
    elif method == "mc-dropout":
        dev = _device(first)
        with dropout_active(first):
            for t in range(samples):
                with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                    torch.manual_seed(stage_seed(seed, "mc-dropout-saliency", t))
                    maps.append(saliency_maps(first, images.to(dev), targets.to(dev), method="gradient").cpu())
                labels.append(f"dropout {t}")
    else:
        dev = _device(first)
        for t in range(min(samples, len(matrices))):
            wrapped = Augmented(first, matrices[t]).to(dev)
            maps.append(saliency_maps(wrapped, images.to(dev), targets.to(dev), method="gradient").cpu())
            labels.append("no augmentation" if t == 0 else f"augmentation {t}")
    return torch.stack(maps).float(), labels


def uncertainty(models, images: ImageSet | torch.Tensor, method: str = "ensemble", *, samples: int | None = None,
                labels: torch.Tensor | None = None, top: int = 8, seed: int = 0, flip: bool | None = None,
                batch_size: int = 256) -> UncertaintyResult:
    """Uncertainty of ``models`` (a list for ``ensemble``; one model, or a list of one, otherwise) on ``images``
    (an :class:`ImageSet`, labels taken from it, or (N, 3, H, W) in [0, 1] with optional ``labels`` (N,)).

    ``method``: ``ensemble`` | ``mc-dropout`` | ``tta``; ``samples``: T for mc-dropout / tta (default 20 / 8);
    ``top``: how many of the most uncertain images the sheet shows with their saliency maps; ``flip``: whether
    TTA mirrors images (None: unless the classes are glyphs such as digits, :func:`flip_safe`)."""
    started = time.perf_counter()
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    samples_used = check_method(method, models, samples)
    if top < 0:
        raise NnfeatError(f"--top must be at least 0; got {top}")
    classes = check_same_classes(models)
    if method == "mc-dropout":
        check_dropout(models[0])
    first = models[0]
    names = [getattr(m, "name", type(m).__name__) for m in models]
    labels_of = [n if names.count(n) == 1 else f"{n} ({names[:i + 1].count(n)})" for i, n in enumerate(names)]
    flip = flip_safe(classes) if flip is None else bool(flip)
    k = len(classes) if classes is not None else None
    if isinstance(images, ImageSet):
        inputs = torch.cat(list(images.iter_batches(batch_size, tuple(first.input_size))))
        source, indices, options = images.name, images.source_indices.tolist(), images.command_options()
    else:
        inputs = fit_images(first, images.detach().float().cpu())
        source, indices, options = "tensor", list(range(len(images))), {"images": "tensor", "n": len(images)}
    if len(inputs) == 0:
        raise NnfeatError("no images to measure: give --images a source with at least one image")

    if method == "ensemble":
        member = ensemble_probs(models, inputs, batch_size)
        singles = {name: member[i] for i, name in enumerate(labels_of)}
        combined = f"ensemble of {len(models)}"
    elif method == "mc-dropout":
        member = mc_dropout_probs(first, inputs, samples_used, seed, batch_size)
        singles = {f"{names[0]} (dropout off)": ensemble_probs([first], inputs, batch_size)[0]}
        combined = f"mc-dropout, {samples_used} samples"
    else:
        member = tta_probs(first, inputs, samples_used, seed, batch_size, flip)
        singles = {f"{names[0]} (no augmentation)": member[0]}
        combined = f"tta, {samples_used} augmentations"
    check_finite(member.transpose(0, 1), ",".join(names), "its predicted probabilities", indices)
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
        mats = (tta_matrices(len(inputs), size, samples_used, seed, flip)[:, order] if method == "tta" else None)
        maps_t, map_names = saliency_across(method, models, labels_of, picked, summary.prediction[order],
                                            min(SALIENCY_MAPS, samples_used), seed, mats)
        spearman, std_maps = map_agreement(maps_t)
    else:
        maps_t, map_names = torch.zeros(0, 0, *size), []
        spearman, std_maps = torch.zeros(0), torch.zeros(0, *size)
    device = _device(first)

    options = {**options, "seed": seed or None}
    command = cli_command("uncertainty", ",".join(names), **options, method=method, samples=samples,
                          top=None if top == 8 else top,
                          flip=None if method != "tta" or flip == flip_safe(classes) else ("yes" if flip else "no"),
                          weights="random" if getattr(first, "weights", None) == "random" else None)
    return UncertaintyResult(models=names, method=method, samples=samples_used, seed=seed, flip=flip, source=source,
                             labels_note=labels_note, classes=classes, summary=summary, labels=y, indices=indices,
                             singles=singles, metrics=metrics, combined_name=combined, top=order,
                             inputs=picked.cpu(), maps=maps_t,
                             map_names=map_names, spearman=spearman, std_maps=std_maps, device=str(device),
                             elapsed=time.perf_counter() - started, command=command)


__all__ = ["UncertaintyResult", "uncertainty", "saliency_across", "check_method", "SALIENCY_MAPS"]
