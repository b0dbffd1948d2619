"""`nnfeat demo`, the offline main job, end to end on the embedded digits-cnn (few steps)."""

import json
import re

from nnfeat import cli


def test_demo_writes_a_gallery_whose_images_all_exist(tmp_path):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--steps", "8", "--quiet"]) == 0
    page = (out / "index.html").read_text()
    sources = re.findall(r"src=['\"]([^'\"]+\.png)['\"]", page)
    assert len(sources) >= 10 + 32  # 10 logits + every channel of the demo layer
    missing = [src for src in sources if not (out / src).is_file()]
    assert not missing, missing
    channels = json.loads((out / "bn2" / "microscope.json").read_text())["channels"]
    assert sorted(map(int, channels)) == list(range(32))
    assert (out / "atlas" / "atlas.png").is_file() and (out / "atlas" / "atlas.html").is_file()
    for view in ("heatmap/heatmap.png", "filters/filters.png", "project/projection.png", "project/projection.html"):
        assert (out / view).is_file(), view
    scores = json.loads((out / "project" / "projection.json").read_text())["scores"]
    assert scores["relu3"]["knn_accuracy_2d"] > scores["relu3"]["chance"]
    for view in ("attention/attention.png", "uncertainty/uncertainty.png", "uncertainty/reliability.png"):
        assert (out / view).is_file(), view
    assert (out / "saliency" / "saliency.png").is_file() and (out / "saliency" / "index.html").is_file()
