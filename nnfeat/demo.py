"""``nnfeat demo``: the offline main job on the embedded ``digits-cnn``.

Trains (or reuses) the digits CNN, renders its 10 class logits and the channels of ``bn2`` (the second
block after BatchNorm, before its ReLU: the units the next layer sees, like Lucid's ``*_pre_relu``
layers), shows the layer views (activation heatmaps of ``bn2``, the first layer's filters, a UMAP projection
of ``relu1`` beside ``relu3`` over the digits), builds a digits activation atlas of ``conv3``, and writes
``OUT/index.html`` showing all of it.
"""

from __future__ import annotations

import time
from pathlib import Path

from nnfeat.io import save_image, write_json
from nnfeat.models.zoo import load_model
from nnfeat.objectives import logit
from nnfeat.rendering import render
from nnfeat.views.gallery import write_gallery

#: The class renders: a 12 px Fourier image upsampled to the net's 32 px, on a dark-background prior
#: (L1 toward 0: the digits are white strokes on black) with a smoothness prior (total variation), jittered on a
#: black fill. With the adversarially trained digits-cnn this reads as digits to classifiers of other families
#: (``experiments/demo_transfer.py``).
CLASS_RENDER_SIZE = 12
CLASS_L1_WEIGHT = 20.0
CLASS_TV_WEIGHT = 10.0

DEMO_LAYER = "bn2"  # conv2 itself has no bias; a few of its channels cannot exceed 0 on grey input
ATLAS_LAYER = "conv3"
PROJECTION_LAYERS = "relu1,relu3"  # a shallow and a deep block: classes separate with depth


def class_render_settings(steps: int = 256, seed: int = 0) -> tuple:
    """The demo's class-render call as ``(objective, kwargs)``: ``render(model, objective, **kwargs)``."""
    from nnfeat.objectives import l1, total_variation
    from nnfeat.transforms import Jitter, Pad, RandomAffine, RandomRotate, RandomScale

    shift = CLASS_RENDER_SIZE / 30.0  # mild: +-1/30 of the side, 5 % scale, 5 degrees, on black (not grey) fill
    transforms = RandomAffine([Pad(shift), Jitter(2 * shift), RandomScale([0.95, 1.0, 1.05]),
                               RandomRotate([-5.0, 0.0, 5.0])], 32, fill=0.0)
    objective = logit(list(range(10))) - CLASS_L1_WEIGHT * l1(0.0) - CLASS_TV_WEIGHT * total_variation()
    return objective, dict(size=CLASS_RENDER_SIZE, model_input_size=32, param="fft", transforms=transforms,
                           steps=steps, seed=seed)


def run_demo(out: Path, *, steps: int = 256, atlas: bool = True, progress: bool = True) -> Path:
    """Run the demo into ``out``; returns the path of ``index.html``."""
    from nnfeat.microscopy import microscope

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = load_model("digits-cnn")
    print(f"digits-cnn ready ({time.perf_counter() - started:.1f} s)")

    objective, settings = class_render_settings(steps=steps, seed=0)
    result = render(model, objective, progress=progress, **settings)
    logit_items = []
    for c, (image, value) in enumerate(zip(result.images, result.final_values.tolist())):
        save_image(out / "logits" / f"logit-{c}.png", image)
        logit_items.append({"src": f"logits/logit-{c}.png", "caption": f"digit {c} (logit {value:.1f})"})

    layer_view = microscope(model, DEMO_LAYER, out=out / DEMO_LAYER, batch=32, size=32, steps=steps, seed=0,
                            progress=progress)
    layer_view.save(out / DEMO_LAYER)
    channel_items = [{"src": f"{DEMO_LAYER}/channel-{c}.png", "caption": f"{layer_view.unit_name(c)} ({v:.2f})"}
                     for c, v in zip(layer_view.channels, layer_view.values.tolist())]

    sections = [
        {"title": "Class logits", "note": "A 12 px Fourier image upsampled to 32 px, with a dark-background "
                                          "(L1) and a smoothness (total variation) prior, jittered on black, "
                                          f"{steps} steps; one image per class, rendered as one batch. digits-cnn "
                                          "is adversarially trained, so its class renders look like digits.",
         "items": logit_items},
        {"title": f"Channels of {DEMO_LAYER}",
         "note": "One render per channel (nnfeat microscope), after BatchNorm and before the ReLU; "
                 f"<a href='{DEMO_LAYER}/index.html'>the layer's page</a>.",
         "items": channel_items},
    ]
    sections.extend(_layer_views(model, out, progress))
    sections.extend(_decision_views(model, out, progress))
    if atlas:
        sections.append(_demo_atlas(model, out, steps, progress))
    index = write_gallery(out / "index.html", "nnfeat demo: digits-cnn", sections)
    write_json(out / "demo.json", {"elapsed_seconds": round(time.perf_counter() - started, 1), "steps": steps})
    print(f"wrote {index} ({time.perf_counter() - started:.0f} s)")
    return index


def _layer_views(model, out: Path, progress: bool) -> list[dict]:
    """Heatmaps, first-layer filters and projections (the layer views) on the digits."""
    from nnfeat.data import load_images
    from nnfeat.views.filters_page import filters
    from nnfeat.views.heatmap_page import heatmap
    from nnfeat.views.projection_page import project

    digits = load_images("digits", size=model.input_size)
    maps = heatmap(model, DEMO_LAYER, digits.sample(6, 0), top=6)
    maps.save(out / "heatmap")
    weights = filters(model)
    weights.save(out / "filters")
    layout = project(model, PROJECTION_LAYERS, digits, method="umap", cache=out / "project" / "cache",
                     progress=progress)
    layout.save(out / "project")
    scores = "; ".join(layout.caption(name).replace("\n", ", ") for name in layout.layers)
    return [
        {"title": f"Activation heatmaps of {DEMO_LAYER}",
         "note": "The 6 strongest channels on 6 digits, one colour scale for the figure (nnfeat heatmap).",
         "items": [{"src": "heatmap/heatmap.png", "caption": "heatmap.png"}], "wide": True},
        {"title": f"Filters of {weights.layer}",
         "note": "The first convolution's weights, zero at mid-grey, one symmetric scale (nnfeat filters).",
         "items": [{"src": "filters/filters.png", "caption": "filters.png"}], "wide": True},
        {"title": f"UMAP projections of {PROJECTION_LAYERS.replace(',', ' and ')}",
         "note": f"Mean-pooled activations of all {len(digits)} digits (nnfeat project): {scores}. "
                 "Open <a href='project/projection.html'>the interactive scatter</a> (hover a point for its image).",
         "items": [{"src": "project/projection.png", "caption": "projection.png"}], "wide": True},
    ]


def _decision_views(model, out: Path, progress: bool) -> list[dict]:
    """Why the decision: saliency maps with their sanity numbers, attention of the digits ViT (with rollout), and
    the uncertainty of an ensemble of the CNN and the ViT over all digits."""
    from nnfeat.data import load_images
    from nnfeat.views.attention_page import attention
    from nnfeat.views.saliency_page import saliency
    from nnfeat.views.uncertainty_page import uncertainty

    digits = load_images("digits", size=model.input_size)
    maps = saliency(model, digits.sample(6, 0), "gradient,integrated-gradients,gradcam", sanity=True)
    maps.save(out / "saliency")
    vit = load_model("digits-vit")
    print("digits-vit ready")
    looks = attention(vit, digits.sample(4, 0), rollout=True, grad_rollout=True)
    looks.save(out / "attention")
    unsure = uncertainty([model, vit], digits, method="ensemble", top=8)
    unsure.save(out / "uncertainty")
    record = unsure.record()
    summary = (record.get("metrics") or {}).get(record.get("combined"), {})
    numbers = ", ".join(f"{name} {summary[key]:.3f}" for name, key in
                        (("accuracy", "accuracy"), ("ECE", "ece"), ("error-detection AUROC", "error_auroc"))
                        if isinstance(summary.get(key), float))
    return [
        {"title": "Saliency maps of digits-cnn, with their sanity numbers",
         "note": "Gradient, integrated gradients and Grad-CAM for the predicted digit, with deletion / insertion AUC "
                 "beside a random map's and the cascading randomization test (nnfeat saliency --sanity); "
                 "<a href='saliency/index.html'>the numbers page</a>.",
         "items": [{"src": "saliency/saliency.png", "caption": "saliency.png"}], "wide": True},
        {"title": "Attention of digits-vit",
         "note": "Where the class token looks, per layer and head, then attention rollout and gradient-weighted "
                 "rollout for the predicted digit (nnfeat attention).",
         "items": [{"src": "attention/attention.png", "caption": "attention.png"}], "wide": True},
        {"title": "Uncertainty of the ensemble digits-cnn + digits-vit",
         "note": f"All {len(digits)} digits (nnfeat uncertainty --method ensemble){': ' + numbers if numbers else ''}. "
                 "The most uncertain digits, with each member's gradient saliency map, and the reliability diagram.",
         "items": [{"src": "uncertainty/uncertainty.png", "caption": "uncertainty.png"},
                   {"src": "uncertainty/reliability.png", "caption": "reliability.png"}], "wide": True},
    ]


def _demo_atlas(model, out: Path, steps: int, progress: bool) -> dict:
    from nnfeat.atlas.pipeline import AtlasSettings, build_atlas
    from nnfeat.data import load_images

    atlas_dir = out / "atlas"
    settings = AtlasSettings(samples=1797 * 4, per_image=4, grid=12, min_count=3, icon_size=32, steps=steps, batch=64, seed=0,
                             layout="umap")
    build_atlas(model, ATLAS_LAYER, load_images("digits"), atlas_dir, settings, progress=progress).save(atlas_dir)
    return {"title": f"Activation atlas of {ATLAS_LAYER} on the digits",
            "note": "UMAP layout of 4 positions per image, 12x12 grid; open <a href='atlas/atlas.html'>the interactive "
                    "viewer</a>.",
            "items": [{"src": "atlas/atlas.png", "caption": "atlas.png"}], "wide": True}
