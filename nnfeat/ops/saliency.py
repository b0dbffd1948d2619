"""The saliency operation and its result: :func:`saliency` -> :class:`SaliencyResult` (kind ``saliency``).

Per method the result holds the (B, H, W) maps and, with ``sanity=True``, their numbers: deletion and
insertion AUC (:func:`nnfeat.analysis.sanity.deletion_insertion`) beside the same AUCs of a seeded random
map, and the cascading model-randomization test (:func:`nnfeat.analysis.sanity.randomization_test`) with
its verdict. With ``sanity`` the model-independent ``edge`` control is added, so the page shows what a
failing method looks like.

Colour: maps of different methods live on different scales, so each method's maps are divided by their
99th-percentile |value| over all images (stated in the record as ``display_scale``); then one colour scale
holds for the whole figure: 0..1 viridis-like for the absolute view (the sheet ``saliency.png``), -1..1
blue-white-red for the signed view (``signed.png``; one-signed methods use only its red half).

Files: ``saliency.png`` (absolute view), ``signed.png``, per method ``<method>-abs.png`` and
``<method>-signed.png``, and ``index.html`` (the page: per method the maps and the numbers, a failing method
flagged; stable hooks ``#methods``, ``section.method[data-method][data-verdict]``, ``.numbers td.num``).
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence
from urllib.parse import quote

import numpy as np
import torch
from PIL import Image, ImageDraw

from nnfeat.analysis.heatmap import COLORMAPS, overlay
from nnfeat.analysis.saliency import (CAM_METHODS, RANK_BY_ABS, SIGNED_METHODS, default_cam_layer, parse_methods,
                                      resolve_targets, saliency_maps)
from nnfeat.analysis.sanity import (CausalScores, RandomizationResult, deletion_insertion, random_maps,
                                    randomization_test)
from nnfeat.data import ImageSet
from nnfeat.errors import NnfeatError, nearest
from nnfeat.finite import check_finite
from nnfeat.ops.results import Result, cli_command
from nnfeat.views.sheets import _font, labelled_sheet

#: the percentile of |map| each method's maps are divided by for display
DISPLAY_PERCENTILE = 99.0


def _fmt(x: float | None, digits: int = 3) -> str:
    return "\u2014" if x is None or x != x else f"{x:.{digits}f}"


def slug(method: str) -> str:
    """A file-name form of a method name: ``gradcam++`` -> ``gradcampp``."""
    return method.replace("+", "p")


def parse_target(model, target) -> int | None:
    """``None``/``"pred"`` -> None (each image's predicted class); an index or a class name -> its index; a
    one-line error naming the nearest class names."""
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
    near = nearest(text, classes)
    hint = f"; nearest: {', '.join(near)}" if near else (f"; classes: {', '.join(classes[:10])}" if classes else "")
    raise NnfeatError(f"unknown class '{text}'{hint} (or give a class index, or 'pred')")


def display_scale(maps: torch.Tensor, percentile: float = DISPLAY_PERCENTILE) -> float:
    """The ``percentile`` of |maps| over every pixel of every image (1.0 for all-zero maps)."""
    flat = maps.detach().abs().flatten().float()
    k = max(1, min(len(flat), int(math.ceil(percentile / 100 * len(flat)))))
    value = float(flat.kthvalue(k).values) if len(flat) else 0.0
    if value <= 0:
        value = float(flat.max()) if len(flat) else 0.0
    return value if value > 0 else 1.0


@dataclass(repr=False)
class MethodMaps:
    """One method's part of a :class:`SaliencyResult`: raw ``maps`` (B, H, W), ``scale`` (what they were divided
    by for display), the CAM ``layer`` (or None), ``signed``, and the sanity numbers when computed."""

    method: str
    maps: torch.Tensor
    scale: float
    signed: bool
    layer: str | None = None
    causal: CausalScores | None = None
    randomization: RandomizationResult | None = None
    elapsed: float = 0.0

    @property
    def normalized(self) -> torch.Tensor:
        """(B, H, W) maps / scale, clamped to [-1, 1]."""
        return (self.maps / self.scale).clamp(-1, 1)

    @property
    def verdict(self) -> str:
        if self.randomization is None:
            return "untested"
        return "passes" if self.randomization.passes else "fails"


@dataclass(repr=False)
class SaliencyResult(Result):
    """What :func:`saliency` returns: per method a :class:`MethodMaps`; ``inputs`` (B, 3, H, W); ``targets``
    (B,) the explained classes; ``random`` the random map's deletion / insertion scores (with sanity)."""

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
    kind: ClassVar[str] = "saliency"
    run_fields: ClassVar[tuple[str, ...]] = ("timings_seconds",)

    # -- pictures -----------------------------------------------------------------------------------
    def overlays(self, view: str = "abs") -> torch.Tensor:
        """(B, M, 3, H, W): every method's maps over the images, absolute (viridis 0..1) or signed (-1..1)."""
        maps = torch.stack([m.normalized for m in self.methods], 1)  # (B, M, H, W)
        if view == "abs":
            return overlay(self.inputs, maps.abs(), 0.0, 1.0, "viridis", self.alpha)
        return overlay(self.inputs, maps, -1.0, 1.0, "signed", self.alpha)

    @property
    def images(self) -> torch.Tensor:
        return self.overlays("abs").flatten(0, 1)

    @property
    def sheet_columns(self) -> int:  # type: ignore[override]
        return len(self.methods) + 1

    def image_caption(self, i: int) -> str:
        label = self.image_labels[i]
        return f"image {self.indices[i]}\n{self.target_mode} {self.target_names[i]}" + \
            (f" (label {label})" if label is not None and label != self.target_names[i] else "")

    def map_caption(self, i: int, j: int) -> str:
        m = self.methods[j]
        lines = [m.method]
        if m.causal is not None and self.random is not None:
            lines.append(f"del {_fmt(float(m.causal.deletion[i]), 2)} rnd {_fmt(float(self.random.deletion[i]), 2)}")
            lines.append(f"ins {_fmt(float(m.causal.insertion[i]), 2)} rnd {_fmt(float(self.random.insertion[i]), 2)}")
        if m.randomization is not None:
            lines.append(f"rand {'FAILS' if not m.randomization.passes else 'ok'} "
                         f"{_fmt(m.randomization.final_median, 2)}")
        return "\n".join(lines)

    def captions(self) -> list[str]:
        out = []
        for i in range(len(self.inputs)):
            out.append(self.image_caption(i))
            out.extend(self.map_caption(i, j) for j in range(len(self.methods)))
        return out

    def title(self) -> str:
        return f"{self.model}  saliency ({', '.join(m.method for m in self.methods)})  {self.source}"

    def colorbar(self, width: int, view: str) -> np.ndarray:
        font = _font()
        bar = Image.new("RGB", (max(width, 320), 40), (255, 255, 255))
        draw = ImageDraw.Draw(bar)
        name = "viridis" if view == "abs" else "signed"
        table = (COLORMAPS[name].numpy() * 255).astype(np.uint8)
        x0, x1 = 40, bar.width - 40
        bar.paste(Image.fromarray(np.repeat(table[np.linspace(0, len(table) - 1, x1 - x0).astype(int)][None], 12, 0)),
                  (x0, 4))
        lo, hi = ("0", "1") if view == "abs" else ("-1", "+1")
        note = (f"one scale for the figure: |map| / its method's p{DISPLAY_PERCENTILE:g} |map|" if view == "abs" else
                f"one scale for the figure: map / its method's p{DISPLAY_PERCENTILE:g} |map|, symmetric around 0")
        draw.text((4, 4), lo, fill=(40, 40, 40), font=font)
        draw.text((x1 + 4, 4), hi, fill=(40, 40, 40), font=font)
        draw.text((x0, 20), note, fill=(40, 40, 40), font=font)
        return np.asarray(bar)

    def view_sheet(self, view: str = "abs") -> np.ndarray:
        tiles = torch.cat([self.inputs.unsqueeze(1).cpu(), self.overlays(view).cpu()], 1).flatten(0, 1)
        title = self.title() + ("  (signed)" if view == "signed" else "  (absolute)")
        grid = labelled_sheet(tiles, self.captions(), ncol=self.sheet_columns, title=title)
        bar = self.colorbar(grid.shape[1], view)
        if bar.shape[1] > grid.shape[1]:
            grid = np.pad(grid, ((0, 0), (0, bar.shape[1] - grid.shape[1]), (0, 0)), constant_values=255)
        return np.concatenate([grid, bar], 0)

    def sheet(self) -> np.ndarray:
        return self.view_sheet("abs")

    # -- record and files ---------------------------------------------------------------------------
    def method_record(self, m: MethodMaps) -> dict:
        flat = m.maps.flatten(1)
        entry = {"method": m.method, "layer": m.layer, "signed": m.signed, "display_scale": m.scale,
                 "verdict": m.verdict,
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
        rec = {"model": self.model, "source": self.source, "target": self.target_mode,
               "images": [{"index": idx, "label": lab, "target": t, "target_name": name}
                          for idx, lab, t, name in zip(self.indices, self.image_labels, self.targets,
                                                       self.target_names)],
               "input_size": list(self.inputs.shape[-2:]), "device": self.device, "settings": self.settings,
               "colour_scale": {"absolute": "viridis 0..1 of |map| / display_scale (one scale for the figure)",
                                "signed": "blue-white-red -1..1 of map / display_scale (one scale for the figure)",
                                "display_scale": f"p{DISPLAY_PERCENTILE:g} of |map| over all images, per method"},
               "methods": [self.method_record(m) for m in self.methods],
               "timings_seconds": {m.method: round(m.elapsed, 3) for m in self.methods}}
        if self.random is not None:
            rec["random_map"] = {**self.random.summary(), "seed": self.settings.get("seed", 0)}
        return rec

    def write_files(self, out: Path) -> list[str]:
        from nnfeat.io import save_image
        files = [save_image(out / "signed.png", self.view_sheet("signed")).name]
        abs_o, signed_o = self.overlays("abs").cpu(), self.overlays("signed").cpu()
        for j, m in enumerate(self.methods):
            caps = [f"{self.image_caption(i).splitlines()[0]}\n{self.map_caption(i, j)}"
                    for i in range(len(self.inputs))]
            for view, tiles in (("abs", abs_o), ("signed", signed_o)):
                files.append(save_image(out / f"{slug(m.method)}-{view}.png",
                                        labelled_sheet(tiles[:, j], caps, ncol=min(8, len(self.inputs)))).name)
        files.append(write_saliency_page(out / "index.html", self, sheet=f"{self.kind}.png").name)
        return files

# -- the page -----------------------------------------------------------------------------------------
def _cascade_svg(r: RandomizationResult, width: int = 260, height: int = 110) -> str:
    """An inline SVG: median Spearman vs cascade depth k, with the threshold line (no script, CSP-safe)."""
    n = max(1, len(r.layers))
    pad = 24

    def xy(k: int, v: float) -> tuple[float, float]:
        v = 0.0 if v != v else max(-1.0, min(1.0, v))
        return pad + (width - 2 * pad) * (k / n), (height - pad) - (height - 2 * pad) * (v + 1) / 2

    pts = [xy(0, 1.0)] + [xy(k, float(v)) for k, v in zip(r.depths, r.medians.tolist())]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    _, ty = xy(0, r.threshold)
    _, zy = xy(0, 0.0)
    return (f'<svg class="cascade" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="median Spearman vs randomized layers">'
            f'<line x1="{pad}" x2="{width - pad}" y1="{zy:.1f}" y2="{zy:.1f}" class="axis"/>'
            f'<line x1="{pad}" x2="{width - pad}" y1="{ty:.1f}" y2="{ty:.1f}" class="threshold"/>'
            f'<polyline points="{line}" class="curve"/>'
            f'<text x="{pad}" y="12">median Spearman |map| (1 at k=0)</text>'
            f'<text x="{width - pad}" y="{height - 6}" text-anchor="end">k = {n} layers re-initialized</text>'
            f'<text x="{width - pad}" y="{ty - 3:.1f}" text-anchor="end">{r.threshold:g}</text></svg>')


def _method_section(result: "SaliencyResult", m: MethodMaps) -> str:
    name = html.escape(m.method)
    rows = []
    if m.causal is not None and result.random is not None:
        d, rd = float(m.causal.deletion.mean()), float(result.random.deletion.mean())
        i, ri = float(m.causal.insertion.mean()), float(result.random.insertion.mean())
        rows.append(f'<tr><th>deletion AUC (lower is better)</th><td class="num" data-key="deletion">{_fmt(d)}</td>'
                    f'<td class="num" data-key="random-deletion">{_fmt(rd)}</td>'
                    f'<td class="{"good" if d < rd else "bad"}">{"below" if d < rd else "not below"} random</td></tr>')
        rows.append(f'<tr><th>insertion AUC (higher is better)</th><td class="num" data-key="insertion">{_fmt(i)}</td>'
                    f'<td class="num" data-key="random-insertion">{_fmt(ri)}</td>'
                    f'<td class="{"good" if i > ri else "bad"}">{"above" if i > ri else "not above"} random</td></tr>')
    if m.randomization is not None:
        r = m.randomization
        rows.append(f'<tr><th>randomization: median Spearman after all {len(r.layers)} layers</th>'
                    f'<td class="num" data-key="spearman">{_fmt(r.final_median)}</td><td>threshold {r.threshold:g}</td>'
                    f'<td class="{"good" if r.passes else "bad"}">'
                    f'{"passes" if r.passes else "FAILS: map ignores the model"}</td></tr>')
    table = ('<table class="numbers"><tr><th></th><th>method</th><th>random map</th><th></th></tr>'
             + "".join(rows) + "</table>") if rows else '<p class="note">no sanity numbers (run with --sanity)</p>'
    layer = f' <span class="layer">layer {html.escape(m.layer)}</span>' if m.layer else ""
    svg = _cascade_svg(m.randomization) if m.randomization is not None else ""
    flag = ' <span class="flag">fails the randomization test</span>' if m.verdict == "fails" else ""
    base = quote(slug(m.method))
    return (f'<section class="method" data-method="{name}" data-verdict="{m.verdict}">\n'
            f'<h2>{name}{layer}{flag}</h2>\n<div class="row">{table}{svg}</div>\n'
            f'<div class="views"><figure><img src="{base}-abs.png" alt="{name}, absolute view">'
            f'<figcaption>absolute |map|</figcaption></figure>'
            f'<figure><img src="{base}-signed.png" alt="{name}, signed view"><figcaption>signed map</figcaption>'
            f'</figure></div>\n</section>\n')


def write_saliency_page(path, result: "SaliencyResult", *, sheet: str) -> Path:
    """Write the saliency page (``index.html``, images linked relatively, no script) and return its path."""
    from nnfeat.io import write_text
    from nnfeat.views.templating import CSP_RELATIVE, fill_page

    s = result.settings
    bits = [f"{len(result.inputs)} images from {html.escape(result.source)}",
            "explaining " + ("each image's predicted class" if result.target_mode == "pred"
                             else f"class {html.escape(result.target_names[0])}")]
    if s.get("sanity"):
        bits.append(f"deletion baseline: {html.escape(str(s.get('deletion_baseline')))} (sigma "
                    f"{result.random.insertion_sigma:g} px), insertion from that blurred copy, {s.get('steps')} steps "
                    f"of "
                    f"{result.random.patch}x{result.random.patch} px regions, "
                    f"softmax probability of the target; random map: uniform noise, seed {s.get('seed')}")
    scale = (f"colour: one scale per figure, each method's maps divided by their p{DISPLAY_PERCENTILE:g} |map|; "
             "absolute view 0..1 (viridis), signed view -1..1 (blue-white-red)")
    document = fill_page("saliency.html", title=result.title(), css="saliency.css", csp=CSP_RELATIVE,
                         summary=" &middot; ".join(bits), scale=html.escape(scale), sheet=quote(sheet),
                         methods="".join(_method_section(result, m) for m in result.methods))
    return write_text(path, document)



def saliency(model, images: ImageSet | torch.Tensor, methods: str | Sequence[str] = "gradient", *,
             target=None, layer: str | None = None, sanity: bool = False, steps: int = 32,
             deletion_baseline: str = "blur", patch: int | None = None, cascade: int | None = None,
             repeats: int = 1, alphas: int = 32,
             baseline: str = "black", samples: int = 16, window: int | None = None, batch_size: int = 256,
             seed: int = 0, alpha: float = 0.6) -> SaliencyResult:
    """Saliency maps of ``methods`` (``"gradient,gradcam"`` or a list) for ``images`` (an :class:`ImageSet` or
    (B, 3, H, W) in [0, 1] at the model's input size), explaining ``target`` (None/"pred": each image's
    predicted class; a class index or name). ``layer``: the CAM layer (default: the last spatial layer).
    ``sanity``: add deletion / insertion AUC (``steps``, ``deletion_baseline``) beside a random map's and the
    randomization test (``cascade`` depths evenly spread over 1..all, default all; ``repeats`` random
    networks) and the ``edge`` control. ``alphas``/``baseline``: Integrated Gradients; ``samples``: the
    SmoothGrad family; ``window``: occlusion."""
    started = time.perf_counter()
    names = parse_methods(methods)
    if sanity and "edge" not in names:
        names.append("edge")
    target_index = parse_target(model, target)
    if isinstance(images, ImageSet):
        inputs = torch.cat(list(images.iter_batches(batch_size, model.input_size, device=model.device)))
        source, indices, options = images.name, images.source_indices.tolist(), images.command_options()
        labels = ([images.label_name(int(l)) for l in images.labels] if images.labels is not None
                  else [None] * len(images))
    else:
        inputs = images.to(model.device).float()
        source, indices, labels = "tensor", list(range(len(inputs))), [None] * len(inputs)
        options = {"images": source, "n": len(inputs)}
    if any(n in CAM_METHODS for n in names):
        cam_layer = layer or default_cam_layer(model, inputs.shape[-2:])
    elif layer is not None:
        raise NnfeatError(f"--layer is for the CAM methods ({', '.join(CAM_METHODS)}); "
                          f"none of {', '.join(names)} is one")
    else:
        cam_layer = None
    targets = resolve_targets(model, inputs, target_index, batch_size)
    per_method_options = {"integrated-gradients": {"alphas": alphas, "baseline": baseline, "seed": seed},
                          "smoothgrad": {"samples": samples, "seed": seed},
                          "smoothgrad-sq": {"samples": samples, "seed": seed},
                          "vargrad": {"samples": samples, "seed": seed},
                          "occlusion": {"window": window, "seed": seed}}
    results = []
    for name in names:
        t0 = time.perf_counter()
        opts = dict(per_method_options.get(name, {}), batch_size=batch_size)
        lay = cam_layer if name in CAM_METHODS else None
        maps = saliency_maps(model, inputs, targets, name, layer=lay, **opts).float()
        check_finite(maps, getattr(model, "name", "model"), f"its {name} saliency maps", indices)
        m = MethodMaps(name, maps.cpu(), display_scale(maps), name in SIGNED_METHODS, lay)
        if sanity:
            m.causal = deletion_insertion(model, inputs, maps, targets, steps=steps, baseline=deletion_baseline,
                                          rank_by="abs" if name in RANK_BY_ABS else "value", patch=patch, seed=seed,
                                          batch_size=batch_size)
            ks = None
            if cascade is not None:
                from nnfeat.analysis.sanity import parameter_layers

                n_layers = len(parameter_layers(model, tuple(inputs.shape[-2:])))
                ks = sorted({max(1, round(n_layers * (i + 1) / cascade)) for i in range(min(cascade, n_layers))})
            m.randomization = randomization_test(model, inputs, name, targets, layer=lay, ks=ks, seed=seed,
                                                 repeats=repeats, maps=maps, options=opts)
        m.elapsed = time.perf_counter() - t0
        results.append(m)
    random = None
    if sanity:  # the chance level: a seeded random map's deletion / insertion
        random = deletion_insertion(model, inputs, random_maps((len(inputs), *inputs.shape[-2:]), seed, inputs.device),
                                    targets, steps=steps, baseline=deletion_baseline, patch=patch, seed=seed,
                                    batch_size=batch_size)
    classes = list(getattr(model, "classes", None) or [])
    tnames = [classes[t] if t < len(classes) else str(t) for t in targets.tolist()]
    settings = {"methods": names, "layer": cam_layer, "sanity": sanity, "batch_size": batch_size, "seed": seed,
                "integrated_gradients": {"alphas": alphas, "baseline": baseline, "rule": "midpoint"},
                "smoothgrad": {"samples": samples, "noise": 0.15}, "occlusion": {"window": window}}
    if sanity:
        settings.update(steps=steps, deletion_baseline=deletion_baseline, patch=random.patch, cascade=cascade,
                        repeats=repeats,
                        randomization="cascading re-initialization from the logits down (Adebayo et al. 2018), "
                                      "Spearman of |map|, fails at median >= 0.3 after full randomization")
    command = cli_command("saliency", model.name, **options,
                          target=None if target_index is None else target,
                          method=",".join(parse_methods(methods)),
                          layer=layer, sanity=sanity,
                          weights="random" if getattr(model, "weights", None) == "random" else None)
    return SaliencyResult(model=getattr(model, "name", "model"), methods=results, inputs=inputs.cpu(),
                          targets=targets.tolist(), target_names=tnames,
                          target_mode="pred" if target_index is None else "class", indices=indices,
                          image_labels=labels, source=source, random=random, settings=settings, alpha=alpha,
                          device=str(inputs.device), elapsed=time.perf_counter() - started, command=command)


__all__ = ["SaliencyResult", "MethodMaps", "saliency", "write_saliency_page", "parse_target", "display_scale",
           "slug"]
