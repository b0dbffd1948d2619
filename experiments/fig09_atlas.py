"""Figure 9: an activation atlas and a class atlas (Carter et al., Distill 2019).

Runs :func:`nnfeat.ops.atlas.build_atlas` twice on the same image source -- once for the whole layer and
once for one class (samples whose attribution favours it) -- and puts the two mosaics side by side.
The atlases themselves (``cells.json``, ``atlas.html``, icons) stay in ``OUT/figures/fig09_atlas/``.

    python experiments/fig09_atlas.py --images /data/imagenet/train    # inceptionv1 mixed4c, 100 k samples, UMAP
    python experiments/fig09_atlas.py --quick                          # cifar10-resnet20 layer3 on CIFAR-10 (CI)

If :mod:`nnfeat.ops.atlas` is missing or its API differs, the script says so and exits 0.
"""

from __future__ import annotations

import sys

import _figures as F

NAME = "fig09_atlas"
TITLE = "Activation atlas and class atlas"


def main(argv: list[str] | None = None) -> int:
    return F.main_wrapper(_main, argv)


def _atlas_api():
    """(AtlasSettings, build_atlas), or None with the reason printed when the atlas module is unusable."""
    try:
        from nnfeat.ops.atlas import AtlasSettings, build_atlas

        AtlasSettings(samples=10, layout="pca", grid=2, min_count=1, steps=1, batch=1, icon_size=8, class_=0)
    except (ImportError, AttributeError, TypeError) as err:
        print(f"[{NAME}] skipped: nnfeat.ops.atlas is not usable here ({type(err).__name__}: {err})")
        return None
    return AtlasSettings, build_atlas


def _main(argv):
    args = F.make_parser(__doc__.splitlines()[0], images=True).parse_args(argv)
    api = _atlas_api()
    if api is None:
        return 0
    AtlasSettings, build_atlas = api
    run = F.setup(NAME, TITLE, args)
    images = run.images("an activation atlas")
    layer, cls = run.units["atlas_layer"], run.units["atlas_class"]
    if run.quick:
        common = dict(samples=len(images), layout="pca", icon_size=32, steps=run.steps(0, 4), batch=64, seed=args.seed)
        whole = AtlasSettings(grid=6, min_count=3, **common)
        per_class = AtlasSettings(grid=4, min_count=2, class_=cls, **common)
    else:
        common = dict(samples=min(100_000, len(images)), layout="umap", steps=run.steps(512, 0), seed=args.seed)
        whole = AtlasSettings(grid=20, **common)
        per_class = AtlasSettings(class_=cls, **common)
    directory = run.figures_dir / NAME
    log = (lambda line: run.log(line)) if not run.quick else None
    run.log(f"activation atlas of {layer} ({whole.samples} samples, {whole.layout}, grid {whole.grid})")
    atlas = build_atlas(run.model, layer, images, directory / "atlas", whole, progress=not run.quick, log=log)
    run.log(f"class atlas of class {cls}")
    class_atlas = build_atlas(run.model, layer, images, directory / f"class-{cls}", per_class,
                              progress=not run.quick, log=log)
    import numpy as np
    import torch
    from PIL import Image

    def picture(path):
        with Image.open(path) as img:
            return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1) / 255.0

    class_name = class_atlas.header["class"]["name"]
    rows = [(f"{layer}: whole layer and class {class_name}", [
        F.Panel(picture(atlas.mosaic), f"whole layer: {len(atlas.cells)} cells, mean cosine {atlas.mean_cosine:.2f}"),
        F.Panel(picture(class_atlas.mosaic), f"class {class_name}: {len(class_atlas.cells)} cells, mean cosine "
                f"{class_atlas.mean_cosine:.2f}")])]
    F.save_figure(run, rows, caption=f"Activation atlas of {layer} over {len(images)} images of {images.name}, and "
                  f"the class atlas of '{class_name}'. Interactive versions: {NAME}/atlas/atlas.html, "
                  f"{NAME}/class-{cls}/atlas.html.",
                  data={"layer": layer, "class": class_atlas.header["class"], "dataset": images.name,
                        "atlas": {"cells": len(atlas.cells), "mean_cosine": atlas.mean_cosine,
                                  "timings": atlas.timings, "settings": atlas.header["settings"]},
                        "class_atlas": {"cells": len(class_atlas.cells), "mean_cosine": class_atlas.mean_cosine,
                                        "timings": class_atlas.timings, "settings": class_atlas.header["settings"]}},
                  note="cosine: between each icon's activation and its cell's mean activation vector")
    return 0


if __name__ == "__main__":
    sys.exit(main())
