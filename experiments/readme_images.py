"""Make the README's pictures by running exactly the code and the command printed above them.

    NNFEAT_WEIGHTS_PATH=../shared/models python experiments/readme_images.py

* ``docs/images/api-layer3.png`` is ``out/layer3/render.png`` written by the README's Python API example
  (``nnfeat.render(model, "layer3:0..3", steps=256, seed=0).save("out/layer3")``);
* ``docs/images/cli-layer3-5.png`` is ``out/layer3-5/render.png`` written by
  ``nnfeat render cifar10-resnet20 layer3:5 --batch 4 --out out/layer3-5``;
* the layer views' pictures are the sheets of the commands in :data:`VIEWS` (the README's "Layer views" block).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nnfeat  # noqa: E402


CIFAR = "../shared/data/cifar10_test.npz"
#: (README picture, the file the command writes, the command's arguments after ``nnfeat``)
VIEWS = [
    ("views-heatmap.png", "out/heatmap/heatmap.png",
     ["heatmap", "cifar10-resnet20", "layer2", "--images", CIFAR, "--n", "4", "--top", "6", "--out", "out/heatmap"]),
    ("views-filters.png", "out/filters/filters.png", ["filters", "cifar10-resnet20", "--out", "out/filters"]),
    ("views-project.png", "out/project/projection.png",
     ["project", "cifar10-resnet20", "layer1,layer2,layer3", "--images", CIFAR, "--n", "2000", "--method", "pca",
      "--thumbnails", "--out", "out/project"]),
]


def main() -> None:
    images = ROOT / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    model = nnfeat.load_model("cifar10-resnet20")
    result = nnfeat.render(model, "layer3:0..3", steps=256, seed=0)
    result.save(ROOT / "out" / "layer3")
    shutil.copyfile(ROOT / "out" / "layer3" / "render.png", images / "api-layer3.png")
    subprocess.run([sys.executable, "-m", "nnfeat", "render", "cifar10-resnet20", "layer3:5", "--batch", "4",
                    "--out", "out/layer3-5"], cwd=ROOT, check=True)
    shutil.copyfile(ROOT / "out" / "layer3-5" / "render.png", images / "cli-layer3-5.png")
    for picture, written, args in VIEWS:
        subprocess.run([sys.executable, "-m", "nnfeat", *args, "--quiet"], cwd=ROOT, check=True)
        shutil.copyfile(ROOT / written, images / picture)
    print(f"wrote {images / 'api-layer3.png'}, {images / 'cli-layer3-5.png'} and "
          f"{', '.join(picture for picture, _, _ in VIEWS)}")


if __name__ == "__main__":
    main()
