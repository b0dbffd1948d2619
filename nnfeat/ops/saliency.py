"""The saliency operation and its result: :func:`saliency` -> :class:`SaliencyResult` (kind ``saliency``).

Per method the result holds the (B, H, W) maps and, by default (``numbers=True``), their deletion and
insertion AUC beside the same AUCs of a seeded random map (:func:`nnfeat.analysis.sanity.causal_scores`: every
method's and the random map's steps in one stream of batched forward passes); ``sanity=True`` adds the cascading
model-randomization test (:func:`nnfeat.analysis.sanity.randomization_test`) and the model-independent ``edge``
control, so the page shows what a failing method looks like. Each method's verdict names every check as passed,
failed (with its numbers) or not run (:func:`nnfeat.analysis.saliency.method_checks`), in the same words on the
terminal (:meth:`SaliencyResult.numbers_table`), in the record and on the page.

Colour: maps of different methods live on different scales, so each method's maps are divided by their
99th-percentile |value| over all images (stated in the record as ``display_scale``); then one colour scale
holds for the whole figure: 0..1 viridis-like for the absolute view (the sheet ``saliency.png``), -1..1
blue-white-red for the signed view (``signed.png``; one-signed methods use only its red half). The drawing is
:mod:`nnfeat.views.saliency_page`.

Files: ``saliency.png`` (absolute view), ``signed.png``, per method ``<method>-abs.png`` and
``<method>-signed.png``, and ``index.html`` (the page: per method the maps, the numbers and the verdict, each
failed check flagged; stable hooks ``#methods``, ``section.method[data-method][data-verdict]`` (the status:
passes, fails, partial or untested), ``.numbers td.num``, ``.verdict``).

A model that gives NaN or Inf is a one-line error before anything is written: a probe of two random images before
the work, each method's maps a block of batches at a time, each chunk of the deletion / insertion stream as it
comes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch

from nnfeat.analysis.fast_path import fast_network
from nnfeat.analysis.saliency import (CAM_METHODS, DISPLAY_PERCENTILE, SALIENCY, MethodMaps, default_cam_layer,
                                     display_scale, parse_methods, resolve_targets, saliency_maps)
from nnfeat.targets import parse_target as parse_target_text
from nnfeat.analysis.sanity import CausalScores, cascade_depths, causal_scores, random_maps, randomization_test
from nnfeat.data import ImageSet
from nnfeat.errors import NnfeatError, nearest
from nnfeat.finite import ADVICE, check_finite, probe_finite
from nnfeat.io import save_image
from nnfeat.layouts import OUTPUT
from nnfeat.models.base import as_model
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.targets import Target, describe_target
from nnfeat.views import saliency_page as page
from nnfeat.views.saliency_page import slug


def parse_target(model, target) -> int | Target | None:
    """``None``/``"pred"`` -> None (each image's predicted class); an index or a class name -> its index; any other
    target text (``out:3@mask``, ``value``; :mod:`nnfeat.targets`) or a :class:`Target` -> the Target, its
    class name looked up. A one-line error naming the nearest class names."""
    if isinstance(target, Target):
        return _class_of(model, target)
    if target is None or (isinstance(target, str) and target.strip().lower() in ("pred", "predicted", "")):
        return None
    classes = list(getattr(model, "classes", None) or [])
    text = str(target).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if classes and not 0 <= index < len(classes):
            raise NnfeatError(f"--target {index} out of range: {getattr(model, 'name', 'the model')} has "
                              f"{len(classes)} classes (0..{len(classes) - 1})")
        return index
    if text in classes:
        return classes.index(text)
    folded = [c.lower() for c in classes]
    if text.lower() in folded:
        return folded.index(text.lower())
    if ":" in text or "@" in text or text == "value":
        return _class_of(model, parse_target_text(text))
    near = nearest(text, classes)
    hint = f"; nearest: {', '.join(near)}" if near else (f"; classes: {', '.join(classes[:10])}" if classes else "")
    raise NnfeatError(f"unknown class '{text}'{hint} (or give a class index, or 'pred')")


def _class_of(model, target: Target) -> Target:
    """``target`` with a class name replaced by its index (a one-line error naming the nearest names)."""
    if not isinstance(target.cls, str):
        return target
    classes = list(getattr(model, "classes", None) or [])
    folded = [c.lower() for c in classes]
    if target.cls.lower() in folded:
        return replace(target, cls=folded.index(target.cls.lower()))
    near = nearest(target.cls, classes)
    hint = f"; nearest: {', '.join(near)}" if near else ""
    raise NnfeatError(f"unknown class '{target.cls}' in target '{target}'{hint} (or give a class index, pred or "
                      "value)")


@dataclass(repr=False)
class SaliencyResult(Result):
    """What :func:`saliency` returns: per method a :class:`MethodMaps`; ``inputs`` (B, 3, H, W); ``targets``
    (B,) the explained classes (None for a value); ``random`` the random map's deletion / insertion scores (with
    the numbers); ``target_text`` the target as given (``pred``, ``3``, ``out:3@mask``); ``target`` its record
    (:func:`~nnfeat.targets.describe_target`) for a target other than a class logit, else None."""

    model: str
    methods: list[MethodMaps]
    inputs: torch.Tensor
    targets: list[int]
    target_names: list[str]
    target_mode: str
    indices: list[int]
    image_labels: list[str | None]
    source: str
    random: CausalScores | None = None
    settings: dict = field(default_factory=dict)
    alpha: float = 0.6
    device: str = "cpu"
    elapsed: float = 0.0
    command: str | None = None
    target_text: str = ""
    target: dict | None = None
    #: each image's name (a folder source's relative file paths), shown instead of its index; None: indices
    image_names: list[str] | None = None
    #: seconds of the deletion / insertion stream (every method and the random map together)
    numbers_elapsed: float = 0.0
    kind: ClassVar[str] = "saliency"
    run_fields: ClassVar[tuple[str, ...]] = ("timings_seconds",)

    # -- pictures (drawn by nnfeat.views.saliency_page) ---------------------------------------------
    def overlays(self, view: str = "abs") -> torch.Tensor:
        """(B, M, 3, H, W): every method's maps over the images, absolute (viridis 0..1) or signed (-1..1)."""
        return page.overlays(self.inputs, self.methods, self.alpha, view)

    @property
    def images(self) -> torch.Tensor:
        return self.overlays("abs").flatten(0, 1)

    @property
    def sheet_columns(self) -> int:  # type: ignore[override]
        return len(self.methods) + 1

    def image_caption(self, i: int) -> str:
        return page.image_caption((self.image_names or self.indices)[i], self.target_mode, self.target_names[i],
                                  self.image_labels[i],
                                  self.target_text if self.target is not None else None)

    def map_caption(self, i: int, j: int) -> str:
        return page.map_caption(self.methods[j], i, self.random)

    def captions(self) -> list[str]:
        out = []
        for i in range(len(self.inputs)):
            out.append(self.image_caption(i))
            out.extend(self.map_caption(i, j) for j in range(len(self.methods)))
        return out

    def numbers_table(self) -> str:
        """The terminal's table: per method deletion and insertion AUC, the random map's, and the verdict."""
        return page.numbers_table(self.methods, self.random)

    def title(self) -> str:
        return f"{self.model}  saliency ({', '.join(m.method for m in self.methods)})  {self.source}"

    def colorbar(self, width: int, view: str) -> np.ndarray:
        return page.colorbar(width, view)

    def view_sheet(self, view: str = "abs") -> np.ndarray:
        return page.view_sheet(self.inputs, self.overlays(view), self.captions(), self.title(), view)

    def sheet(self) -> np.ndarray:
        return self.view_sheet("abs")

    # -- record and files ---------------------------------------------------------------------------
    def method_record(self, m: MethodMaps) -> dict:
        flat = m.maps.flatten(1)
        entry = {"method": m.method, "layer": m.layer, "signed": m.signed, "display_scale": m.scale,
                 "verdict": m.verdict, "status": m.status, "checks": {c.name: c.outcome for c in m.checks},
                 "per_image": [{"min": float(a), "max": float(b), "abs_mean": float(c)} for a, b, c in
                               zip(flat.min(1).values, flat.max(1).values, flat.abs().mean(1))],
                 "files": [f"{slug(m.method)}-abs.png", f"{slug(m.method)}-signed.png"]}
        if m.causal is not None:
            entry["deletion_insertion"] = {**m.causal.summary(), "deletion_per_image": m.causal.deletion.tolist(),
                                           "insertion_per_image": m.causal.insertion.tolist()}
            if self.random is not None:
                entry["deletion_insertion"].update(random_deletion_auc=float(self.random.deletion.mean()),
                                                   random_insertion_auc=float(self.random.insertion.mean()))
        if m.randomization is not None:
            entry["randomization"] = m.randomization.summary()
        return entry

    def record(self) -> dict:
        timings = {m.method: round(m.elapsed, 3) for m in self.methods}
        if self.random is not None:
            timings["deletion_insertion"] = round(self.numbers_elapsed, 3)
        rec = {"model": self.model, "source": self.source, "target": self.target_mode,
               "target_text": self.target_text or self.target_mode,
               "images": [{"index": idx, "label": lab, "target": t, "target_name": name}
                          for idx, lab, t, name in zip(self.indices, self.image_labels, self.targets,
                                                       self.target_names)],
               "input_size": list(self.inputs.shape[-2:]), "device": self.device, "settings": self.settings,
               "colour_scale": {"absolute": "viridis 0..1 of |map| / display_scale (one scale for the figure)",
                                "signed": "blue-white-red -1..1 of map / display_scale (one scale for the figure)",
                                "display_scale": f"p{DISPLAY_PERCENTILE:g} of |map| over all images, per method"},
               "methods": [self.method_record(m) for m in self.methods],
               "timings_seconds": timings}
        if self.target is not None:
            rec["target_spec"] = self.target
        if self.random is not None:
            rec["random_map"] = {**self.random.summary(), "seed": self.settings.get("seed", 0)}
        return rec

    def write_files(self, out: Path) -> list[str]:
        files = [save_image(out / "signed.png", self.view_sheet("signed")).name]
        abs_o, signed_o = self.overlays("abs").cpu(), self.overlays("signed").cpu()
        for j, m in enumerate(self.methods):
            caps = [f"{self.image_caption(i).splitlines()[0]}\n{self.map_caption(i, j)}"
                    for i in range(len(self.inputs))]
            for view, tiles in (("abs", abs_o), ("signed", signed_o)):
                sheet = page.method_sheet(tiles[:, j], caps)
                files.append(save_image(out / f"{slug(m.method)}-{view}.png", sheet).name)
        files.append(write_saliency_page(out / "index.html", self, sheet=f"{self.kind}.png").name)
        return files


def write_saliency_page(path, result: SaliencyResult, *, sheet: str) -> Path:
    """Write the saliency page (``index.html``, images linked relatively, no script) and return its path."""
    return page.write_page(path, title=result.title(), methods=result.methods, random=result.random,
                           n_images=len(result.inputs), source=result.source, target_mode=result.target_mode,
                           target_name=result.target_names[0] if result.target_names else "",
                           target_description=result.target["score"] if result.target is not None else None,
                           settings=result.settings, sheet=sheet)


def _inputs(model, images: ImageSet | torch.Tensor, batch_size: int):
    """(inputs (B, 3, H, W) on the model's device, source name, source indices, image labels, CLI options)."""
    if isinstance(images, ImageSet):
        inputs = torch.cat(list(images.iter_batches(batch_size, model.input_size, device=model.device)))
        labels = ([images.label_name(int(l)) for l in images.labels] if images.labels is not None
                  else [None] * len(images))
        return inputs, images.name, images.source_indices.tolist(), labels, images.command_options()
    inputs = images.to(model.device).float()
    return inputs, "tensor", list(range(len(inputs))), [None] * len(inputs), {"images": "tensor", "n": len(inputs)}


#: the maps are made and checked for NaN / Inf a block of this many batches at a time (a block's batches shard over
#: torchrun ranks; the blocks do not depend on the rank count)
BLOCK_BATCHES = 8


def _checked_maps(model, name: str, inputs: torch.Tensor, targets, opts: dict, layer: str | None,
                  indices: list[int]) -> torch.Tensor:
    """(B, H, W) maps of method ``name``, made a block of ``BLOCK_BATCHES`` batches at a time, each block checked
    for NaN / Inf as it comes (a one-line error naming the first bad image); block k > 0 draws its noise from
    ``seed + k``."""
    step = BLOCK_BATCHES * opts["batch_size"]
    parts = []
    for k, start in enumerate(range(0, len(inputs), step)):
        part = slice(start, start + step)
        options = dict(opts, seed=opts["seed"] + k) if "seed" in opts else opts
        maps = saliency_maps(model, inputs[part], targets[part], name, layer=layer, **options).float()
        check_finite(maps, getattr(model, "name", "model"), f"its {name} saliency maps", indices[part])
        parts.append(maps.contiguous())
    return torch.cat(parts)


def _method_maps(model, name: str, inputs: torch.Tensor, targets: torch.Tensor, opts: dict, layer: str | None,
                 indices: list[int], sanity: dict | None, network=None) -> MethodMaps:
    """One method's maps (checked for NaN / Inf), made by ``network`` (the fast network of ``model``; default
    ``model``) and, with ``sanity`` (the randomization settings), its randomization test (on re-initialized
    copies of ``model`` itself)."""
    t0 = time.perf_counter()
    entry = SALIENCY[name]
    maps = _checked_maps(network or model, name, inputs, targets, opts, layer, indices)
    m = MethodMaps(name, maps.cpu(), display_scale(maps), entry.signed, layer)
    if sanity is not None:
        cascade = sanity["cascade"]
        ks = None if cascade is None else cascade_depths(model, inputs.shape[-2:], cascade)
        m.randomization = randomization_test(model, inputs, name, targets, layer=layer, ks=ks, seed=sanity["seed"],
                                             repeats=sanity["repeats"], maps=maps, options=opts)
    m.elapsed = time.perf_counter() - t0
    return m


def _numbers(model, inputs: torch.Tensor, methods: list[MethodMaps], targets, indices: list[int], *, steps: int,
             baseline: str, patch: int | None, seed: int, batch_size: int) -> CausalScores:
    """Deletion / insertion of every method's maps and of a seeded random map in one stream of batched passes,
    each chunk checked for NaN / Inf as it comes; sets each method's ``causal`` and ``chance``, returns the random
    map's scores."""
    name = getattr(model, "name", "model")
    labels = [m.method for m in methods] + ["the random map"]

    def check(probs, kinds, which, images) -> None:
        bad = (~torch.isfinite(probs)).nonzero()
        if len(bad):
            r = int(bad[0, 0])
            where = (f"the {('deletion', 'insertion')[kinds[r]]} images of {labels[which[r]]}" if which is not None
                     else "the images or their blurred copies" if baseline == "blur" else
                     f"the images, their blurred copies or their {baseline} deletion baseline")
            raise NnfeatError(f"model '{name}' gave NaN or Inf at its output on {where} (first at image "
                              f"{indices[images[r]]}): {ADVICE}")

    chance = random_maps((len(inputs), *inputs.shape[-2:]), seed, inputs.device)
    scores = causal_scores(model, inputs, [m.maps for m in methods] + [chance], targets, steps=steps,
                           baseline=baseline, patch=patch, seed=seed, batch_size=batch_size, check=check,
                           rank_by=["abs" if SALIENCY[m.method].rank_by_abs else "value" for m in methods] + ["value"])
    for m, s in zip(methods, scores):
        m.causal, m.chance = s, scores[-1]
    return scores[-1]


def saliency(model, images: ImageSet | torch.Tensor, methods: str | Sequence[str] = "gradient", *,
             target=None, layer: str | None = None, numbers: bool = True, sanity: bool = False, steps: int = 16,
             deletion_baseline: str = "blur", patch: int | None = None, cascade: int | None = None,
             repeats: int = 1, alphas: int = 32,
             baseline: str = "black", samples: int = 16, window: int | None = None, batch_size: int = 256,
             seed: int = 0, alpha: float = 0.6) -> SaliencyResult:
    """Saliency maps of ``methods`` (``"gradient,gradcam"`` or a list) for ``images`` (an :class:`ImageSet` or
    (B, 3, H, W) in [0, 1] at the model's input size), explaining ``target`` (None/"pred": each image's
    predicted class; a class index or name; a target text such as ``out:3@mask``, ``out:3@8:24,16:40`` or
    ``value``, or a :class:`~nnfeat.targets.Target`: see :mod:`nnfeat.targets`; every method and
    the numbers explain that one score). ``layer``: the CAM layer (default: the last spatial layer).
    ``numbers`` (default on): deletion / insertion AUC (``steps``, ``deletion_baseline``, ``patch``) beside a
    seeded random map's, about 4 * steps forward passes per image and method. ``sanity``: add the randomization
    test (``cascade`` depths evenly spread over 1..all, default all; ``repeats`` random networks) and the ``edge``
    control (it needs the numbers). ``alphas``/``baseline``: Integrated Gradients; ``samples``: the SmoothGrad
    family; ``window``: occlusion."""
    started = time.perf_counter()
    model = as_model(model)
    if sanity and not numbers:
        raise NnfeatError("sanity needs the deletion / insertion numbers: drop --no-numbers (numbers=False) or "
                          "--sanity")
    names = parse_methods(methods)
    if sanity and "edge" not in names:
        names.append("edge")
    target_index = parse_target(model, target)
    if numbers and steps < 1:
        raise NnfeatError(f"deletion/insertion needs steps >= 1; got {steps}")
    inputs, source, indices, labels, options = _inputs(model, images, batch_size)
    probe_finite(model, [OUTPUT] + ([layer] if layer else []), inputs.shape[-2:])  # NaN / Inf: before any work
    spec = target_index if isinstance(target_index, Target) else None
    cam_layer = None
    if any(n in CAM_METHODS for n in names):
        cam_layer = layer or default_cam_layer(model, inputs.shape[-2:], None if spec is None else spec.part)
    elif layer is not None:
        raise NnfeatError(f"--layer is for the CAM methods ({', '.join(CAM_METHODS)}); "
                          f"none of {', '.join(names)} is one")
    # every pass below runs on it: BatchNorm folded (not into the CAM layer's conv), channels-last, built once
    fast = fast_network(model, keep=[cam_layer] if cam_layer else [])
    targets = resolve_targets(fast.network, inputs, target_index, batch_size)  # a bad target: an error first
    given = {"alphas": alphas, "baseline": baseline, "samples": samples, "window": window, "seed": seed}
    checks = dict(cascade=cascade, repeats=repeats, seed=seed) if sanity else None
    results = []
    for name in names:
        opts = dict({k: given[k] for k in SALIENCY[name].settings}, batch_size=batch_size)
        lay = cam_layer if name in CAM_METHODS else None
        results.append(_method_maps(model, name, inputs, targets, opts, lay, indices, checks, fast.network))
    random, t0 = None, time.perf_counter()
    if numbers:  # beside the chance level: a seeded random map's deletion / insertion
        random = _numbers(fast.network, inputs, results, targets, indices, steps=steps, baseline=deletion_baseline,
                          patch=patch, seed=seed, batch_size=batch_size)
    numbers_elapsed = time.perf_counter() - t0
    classes = list(getattr(model, "classes", None) or [])
    tnames = ["value" if t is None else classes[t] if t < len(classes) else str(t) for t in targets.tolist()]
    settings = {"methods": names, "layer": cam_layer, "numbers": numbers, "sanity": sanity,
                "batch_size": batch_size, "seed": seed,
                "integrated_gradients": {"alphas": alphas, "baseline": baseline, "rule": "midpoint"},
                "smoothgrad": {"samples": samples, "noise": 0.15}, "occlusion": {"window": window},
                "fast_path": fast.record()}
    if numbers:
        settings.update(steps=steps, deletion_baseline=deletion_baseline, patch=random.patch)
    if sanity:
        settings.update(cascade=cascade, repeats=repeats,
                        randomization="cascading re-initialization from the logits down (Adebayo et al. 2018), "
                                      "Spearman of |map|, fails at median >= 0.3 after full randomization")
    command = cli_command("saliency", model.name, **options,
                          target=None if target_index is None else str(target),
                          method=",".join(parse_methods(methods)),
                          layer=layer, no_numbers=not numbers, sanity=sanity,
                          steps=None if steps == 16 or not numbers else steps,
                          weights=weights_flag(model))
    return SaliencyResult(model=getattr(model, "name", "model"), methods=results, inputs=inputs.cpu(),
                          targets=targets.tolist(), target_names=tnames,
                          target_mode=_target_mode(target_index), indices=indices,
                          image_labels=labels, source=source, random=random, settings=settings, alpha=alpha,
                          device=str(inputs.device), elapsed=time.perf_counter() - started, command=command,
                          target_text="pred" if target_index is None else str(target),
                          target=None if spec is None else describe_target(spec),
                          image_names=images.names if isinstance(images, ImageSet) else None,
                          numbers_elapsed=numbers_elapsed)


def _target_mode(target: int | Target | None) -> str:
    """``pred`` (each image's predicted class), ``class`` (one given class) or ``value`` (a regression output)."""
    if isinstance(target, Target):
        return "value" if target.value else "pred" if target.cls is None else "class"
    return "pred" if target is None else "class"


__all__ = ["SaliencyResult", "MethodMaps", "saliency", "write_saliency_page", "parse_target", "display_scale",
           "slug"]
