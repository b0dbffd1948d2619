"""The attention operation and its result: :func:`attention` -> :class:`AttentionResult` (kind ``attention``).

Per image the sheet shows a layers x heads grid: each row one attention layer (the input, then the class
token's -- or the chosen query token's -- attention over the patches per head, or fused over the heads),
overlaid on the image. With ``rollout`` / ``grad_rollout`` it adds the attention rollout (Abnar & Zuidema
2020) and the gradient-weighted rollout for a class (Chefer et al. 2021) as figures of their own. Each figure
has one colour scale (viridis-like, its smallest .. its largest value), stated in a colour bar under it; with
``scale="per-map"`` each head map of the grid has its own (its min .. its max, written under its tile), so a head
whose weights are all small is not drawn nearly black beside a sharp one. The
computation is :mod:`nnfeat.analysis.attention`, the drawing :mod:`nnfeat.views.attention_page`.

Files: ``attention.png`` (the sheet), ``attention.json`` (settings, the token layout, and per image and map
its largest value and peak patch), ``image-<i>.png`` (one image's grid and rollouts), ``attention-maps.npz``
(the raw maps on the patch grid: ``maps`` (B, L, K, gh, gw), ``rollout`` / ``grad_rollout`` (B, gh, gw)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch

from nnfeat.analysis import attention as at
from nnfeat.analysis.heatmap import ColorScale, color_scale, overlay
from nnfeat.data import ImageSet
from nnfeat.errors import NnfeatError
from nnfeat.io import atomic_path, save_image
from nnfeat.layouts import OUTPUT
from nnfeat.models.base import Model, as_model
from nnfeat.ops.results import Result, cli_command, weights_flag
from nnfeat.views import attention_page as page
from nnfeat.views.attention_page import SHEET_TILE, colorbar  # noqa: F401 - public here too (see __all__)


def _peak(maps: torch.Tensor) -> tuple[list[int], float]:
    """(gh, gw) map -> its peak [row, col] on the patch grid and its largest value."""
    index = int(maps.flatten().argmax())
    return list(divmod(index, maps.shape[-1])), float(maps.max())


@dataclass(repr=False)
class AttentionResult(Result):
    """What :func:`attention` returns.

    ``maps`` (B, L, K, gh, gw): per image, layer and head (or fused heads) the query token's attention over the
    patches; ``rollout`` / ``grad_rollout`` (B, gh, gw) or None; ``inputs`` (B, 3, H, W); ``overlays``
    (B, L, K, 3, H, W) and ``rollout_overlays`` {"rollout" / "grad_rollout": (B, 3, H, W)}; ``scale`` the head
    maps' figure scale and ``rollout_scales`` one per rollout figure."""

    model: str
    layers: list[str]
    heads: list[int]
    head: int | str
    head_labels: list[str]
    query: int | None
    layout: at.TokenLayout
    maps: torch.Tensor
    inputs: torch.Tensor
    overlays: torch.Tensor
    scale: ColorScale
    rollout: torch.Tensor | None
    grad_rollout: torch.Tensor | None
    rollout_overlays: dict
    rollout_scales: dict
    fusion: str
    targets: list[int] | None
    predictions: list[int] | None
    class_names: list[str] | None
    indices: list[int]
    image_labels: list[str | None]
    source: str
    device: str = "cpu"
    elapsed: float = 0.0
    command: str | None = None
    #: each image's name (a folder source's relative file paths), shown instead of its index; None: indices
    image_names: list[str] | None = None
    #: the head maps' colour scale: ``figure`` (one for the grid) or ``per-map`` (one per map; ``scale`` then holds
    #: vmin/vmax (B, L*K))
    scale_mode: str = "figure"
    kind: ClassVar[str] = "attention"

    # -- the Result protocol -------------------------------------------------------------------------
    @property
    def images(self) -> torch.Tensor:
        parts = [self.overlays.flatten(1, 2)] + [o.unsqueeze(1) for o in self.rollout_overlays.values()]
        return torch.cat(parts, 1).flatten(0, 1)

    def title(self) -> str:
        query = "class token" if self.query == self.layout.cls and self.query is not None else (
            f"token {self.query}" if self.query is not None else "mean of patch tokens")
        return (f"{self.model}  attention of the {query} over the {self.layout.grid[0]}x{self.layout.grid[1]} "
                f"patches ({self.source})")

    def _class_text(self, c: int) -> str:
        names = self.class_names
        return names[c] if names and 0 <= c < len(names) else str(c)

    def image_caption(self, i: int) -> str:
        """Two lines: the image (and its label), its prediction."""
        prediction = self._class_text(self.predictions[i]) if self.predictions is not None else None
        return page.image_caption((self.image_names or self.indices)[i], self.image_labels[i], prediction)

    def _view(self) -> page.AttentionFigure:
        """The figures' data (:class:`nnfeat.views.attention_page.AttentionFigure`)."""
        values = {"rollout": self.rollout, "grad_rollout": self.grad_rollout}
        rollouts = {name: (over, values[name], self.rollout_scales[name])
                    for name, over in self.rollout_overlays.items()}
        targets = [self._class_text(t) for t in self.targets] if self.targets is not None else None
        return page.AttentionFigure(self.inputs, self.overlays, self.maps, self.scale, self.layers, self.head_labels,
                                    [self.image_caption(i) for i in range(len(self.inputs))], rollouts, self.fusion,
                                    targets, per_head=self.scale_mode == "per-map")

    def captions(self) -> list[str]:
        """One caption per tile of :attr:`images` (per image: its head maps, layer by layer, then its rollouts)."""
        return self._view().captions()

    def sheet(self) -> np.ndarray:
        return self._view().figure(slice(0, len(self.inputs)), self.title())

    def record(self) -> dict:
        per_image = []
        per_head = self.scale_mode == "per-map"
        k_maps = self.maps.shape[2]
        if per_head:  # (B, L*K) limits of each map's own scale
            lows, highs = self.scale.vmin.tolist(), self.scale.vmax.tolist()
        for i in range(len(self.inputs)):
            entries = []
            for l, layer in enumerate(self.layers):
                for k in range(k_maps):
                    peak, top = _peak(self.maps[i, l, k])
                    entries.append({"layer": layer, "head": self.head_labels[k], "max": top, "peak_patch": peak})
                    if per_head:
                        entries[-1]["scale"] = {"vmin": lows[i][l * k_maps + k], "vmax": highs[i][l * k_maps + k]}
            entry = {"index": self.indices[i], **({"name": self.image_names[i]} if self.image_names else {}),
                     "label": self.image_labels[i],
                     "prediction": None if self.predictions is None else self._class_text(self.predictions[i]),
                     "maps": entries, "file": f"image-{i}.png"}
            for name, values in (("rollout", self.rollout), ("grad_rollout", self.grad_rollout)):
                if values is not None:
                    peak, top = _peak(values[i])
                    entry[name] = {"max": top, "peak_patch": peak}
                    if name == "grad_rollout":
                        entry[name]["target"] = self._class_text(self.targets[i])
            per_image.append(entry)
        scales = {"attention": ({"per_head": "each map's own limits: images[i].maps[j].scale"} if per_head else
                                {"vmin": float(self.scale.vmin.flatten()[0]), "vmax": float(self.scale.vmax.flatten()[0])})}
        for name, scale in self.rollout_scales.items():
            scales[name] = {"vmin": float(scale.vmin.flatten()[0]), "vmax": float(scale.vmax.flatten()[0])}
        layout = self.layout
        return {"model": self.model, "layers": self.layers, "heads_per_layer": self.heads, "head": str(self.head),
                "query_token": self.query,
                "tokens": {"count": layout.n_tokens, "extra": layout.extra, "class_token": layout.cls,
                           "grid": list(layout.grid)},
                "rollout": "rollout" in self.rollout_overlays, "grad_rollout": "grad_rollout" in self.rollout_overlays,
                "fusion": self.fusion, "input_size": list(self.inputs.shape[-2:]),
                "scale": {"mode": self.scale_mode, "colormap": "viridis", "figures": scales},
                "source": self.source, "device": self.device, "images": per_image}

    def write_files(self, out: Path) -> list[str]:
        view = self._view()
        files = []
        for i in range(len(self.inputs)):
            files.append(save_image(out / f"image-{i}.png", view.figure(slice(i, i + 1), None)).name)
        arrays = {"maps": self.maps.numpy()}
        for name, values in (("rollout", self.rollout), ("grad_rollout", self.grad_rollout)):
            if values is not None:
                arrays[name] = values.numpy()
        with atomic_path(out / "attention-maps.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        return files + ["attention-maps.npz"]


# -- the operation ----------------------------------------------------------------------------------
def check_request(model, layers=None, head: int | str = "all", query: int | None = None, *,
                  grad_rollout: bool = False, target: int | str | None = None, fusion: str = "mean",
                  size: Sequence[int] | None = None, scale: str = "figure"
                  ) -> tuple[list[at.AttentionLayer], int | str, at.TokenLayout]:
    """Check an attention request before any image is read: the layers exist, the head and query token are in
    range, ``target`` comes with gradient rollout and names a class, ``scale`` is ``figure`` or ``per-map``. Returns
    (layers, head, token layout at ``size``, default the model's input size). One-line :class:`NnfeatError`
    otherwise."""
    return _check_request(as_model(model), layers, head, query, grad_rollout=grad_rollout, target=target,
                          fusion=fusion, size=size, scale=scale)


def check_scale(scale: str) -> str:
    """``figure`` or ``head``, else a one-line :class:`NnfeatError`."""
    if scale not in page.SCALE_CHOICES:
        raise NnfeatError(f"unknown scale '{scale}': use figure (one colour scale for every head map) or per-map "
                          "(each head map on its own scale)")
    return scale


def _check_request(model: Model, layers, head: int | str, query: int | None, *, grad_rollout: bool,
                   target: int | str | None, fusion: str, size: Sequence[int] | None, scale: str = "figure"
                   ) -> tuple[list[at.AttentionLayer], int | str, at.TokenLayout]:
    check_scale(scale)
    selected = at.select_layers(model, layers)
    fewest = min(selected, key=lambda layer: layer.heads)
    head = at.check_head(head, fewest.heads, f"attention layer '{fewest.name}'")
    if fusion not in at.FUSIONS:
        raise NnfeatError(f"unknown head fusion '{fusion}': use {', '.join(at.FUSIONS)}")
    size = tuple(size or model.input_size)
    shapes = model.layer_shapes([selected[0].name, OUTPUT], size)
    tokens = shapes[selected[0].name]
    if len(tokens) != 3:
        raise NnfeatError(f"attention layer '{selected[0].name}' outputs shape {tuple(tokens)}; expected tokens "
                          "(B, N, C)")
    layout = at.token_layout(model, int(tokens[1]), size)
    at.check_query(query, layout)
    if target is not None and not grad_rollout:
        raise NnfeatError("--target is the class of the gradient rollout: add --grad-rollout, or leave --target out")
    if grad_rollout:
        at.resolve_targets(target, torch.zeros(tuple(shapes[OUTPUT])), model.classes, model.name)
    return selected, head, layout


def attention(model: Model, images: ImageSet | torch.Tensor, *, layers: str | Sequence[str | int] | None = None,
              head: int | str = "all", query: int | None = None, rollout: bool = False, grad_rollout: bool = False,
              target: int | str | None = None, fusion: str = "mean", batch_size: int = 16, alpha: float = 0.6,
              scale: str = "figure") -> AttentionResult:
    """Attention maps of a vision transformer on ``images`` (an :class:`ImageSet`, read at the model's input
    size, or a (B, 3, H, W) tensor in [0, 1] at any size the model takes).

    ``layers``: attention layers (default all; see :func:`nnfeat.analysis.attention.select_layers`);
    ``head``: ``all`` (default), ``mean``, ``max`` or a head number; ``query``: the query token (default the
    class token); ``rollout``: add attention rollout over every layer (heads fused by ``fusion``);
    ``grad_rollout``: add gradient-weighted rollout for ``target`` (``pred`` (default), a class number or
    name); ``scale``: ``figure`` (default: one colour scale for every head map) or ``per-map`` (each map its own,
    its limits written under its tile and in the record)."""
    started = time.perf_counter()
    model = as_model(model)
    if isinstance(images, ImageSet):
        batches = list(images.iter_batches(batch_size, model.input_size, device=model.device))
        source, indices, options = images.name, images.source_indices.tolist(), images.command_options()
        image_names = images.names
        labels = [images.label_name(int(l)) for l in images.labels] if images.labels is not None else [None] * len(images)
    else:
        if images.dim() != 4:
            raise NnfeatError(f"images must have shape (B, 3, H, W); got {tuple(images.shape)}")
        images = images.to(model.device)
        batches = list(images.split(batch_size))
        source, indices, labels, image_names = "tensor", list(range(len(images))), [None] * len(images), None
        options = {"images": source, "n": len(images)}
    size = tuple(batches[0].shape[-2:])
    selected, head, layout = _check_request(model, layers, head, query, grad_rollout=grad_rollout, target=target,
                                            fusion=fusion, size=size, scale=scale)
    query = at.check_query(query, layout)
    every = at.attention_layers(model) if (rollout or grad_rollout) else selected
    position = {layer.name: i for i, layer in enumerate(every)}
    maps, rolls, grads, preds, targets = [], [], [], [], []
    for batch in batches:
        cap = at.capture_attention(model, batch, [layer.name for layer in every], target=target,
                                   gradients=grad_rollout)
        maps.append(torch.stack([at.head_maps(cap.weights[position[layer.name]], layout, head, query)
                                 for layer in selected], 1).cpu())
        if rollout:
            rolls.append(at.relevance_map(at.attention_rollout(cap.weights, fusion), layout, query).cpu())
        if grad_rollout:
            grads.append(at.relevance_map(at.gradient_rollout(cap.weights, cap.grads), layout, query).cpu())
            targets.append(cap.targets.cpu())
        if cap.output is not None and cap.output.dim() == 2:
            preds.append(cap.output.argmax(1).cpu())
    inputs = torch.cat(batches).cpu()
    maps = torch.cat(maps)  # (B, L, K, gh, gw)
    b, n_layers, k = maps.shape[:3]
    scale_mode = scale
    scale = color_scale(maps.flatten(1, 2), "figure" if scale_mode == "figure" else "per-map", signed=False)
    overlays = overlay(inputs, maps.flatten(1, 2), scale.vmin, scale.vmax, scale.colormap, alpha)
    overlays = overlays.reshape(b, n_layers, k, *overlays.shape[-3:])
    roll_maps = {"rollout": torch.cat(rolls) if rollout else None,
                 "grad_rollout": torch.cat(grads) if grad_rollout else None}
    roll_overlays, roll_scales = {}, {}
    for name, values in roll_maps.items():
        if values is not None:
            cs = color_scale(values[:, None], "figure", signed=False)
            roll_scales[name] = cs
            roll_overlays[name] = overlay(inputs, values, cs.vmin, cs.vmax, cs.colormap, alpha)
    heads = [layer.heads for layer in selected]
    head_labels = [page.head_label(head, j) for j in range(k)]
    command = cli_command("attention", model.name, **options,
                          layer=None if layers is None else ",".join(layer.name for layer in selected),
                          head=None if head == "all" else head, query=query if query != layout.cls else None,
                          rollout=rollout, grad_rollout=grad_rollout,
                          target=None if target in (None, "pred") else target,
                          fusion=None if fusion == "mean" else fusion,
                          scale=None if scale_mode == "figure" else scale_mode, weights=weights_flag(model))
    return AttentionResult(
        model=model.name, layers=[layer.name for layer in selected], heads=heads, head=head, head_labels=head_labels,
        query=query, layout=layout, maps=maps, inputs=inputs, overlays=overlays.cpu(), scale=scale,
        rollout=roll_maps["rollout"], grad_rollout=roll_maps["grad_rollout"], rollout_overlays=roll_overlays,
        rollout_scales=roll_scales, fusion=fusion, targets=torch.cat(targets).tolist() if grad_rollout else None,
        predictions=torch.cat(preds).tolist() if preds else None, class_names=model.classes, indices=indices,
        image_labels=labels, source=source, device=str(model.device), elapsed=time.perf_counter() - started,
        command=command, image_names=image_names, scale_mode=scale_mode)


__all__ = ["AttentionResult", "attention", "check_request", "check_scale", "colorbar", "SHEET_TILE"]
