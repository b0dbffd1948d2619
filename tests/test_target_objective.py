"""Objectives in the target grammar (``target("out:3@mask")``, nnfeat.engine.objectives.target): the same text
saliency and uncertainty read names what a render maximizes on a dict, map, tuple or regression output -- on the
hand-built segmentation net of test_targets whose class 3 depends only on one square, on torchvision's
deeplabv3 with random weights, and through the CLI (``output:3`` on a dict output is a one-line error)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nnfeat.engine.expr import parse_objective
from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model
from nnfeat.ops.render import render
from nnfeat.targets import parse_target, resolve_target, target_scores

try:
    from tests.test_targets import NETS, SIZE, SQUARE, _NS, images, seg_model
except ImportError:  # tests/ not importable as a package: pytest put tests/ itself on sys.path
    from test_targets import NETS, SIZE, SQUARE, _NS, images, seg_model


def _acts(model: Model, x: torch.Tensor) -> dict:
    return {"output": model(x)}


@pytest.mark.parametrize("text", ["out:3", "out:3@mask", "out:3@12:18,14:20", "out:pred@mask"])
def test_objective_equals_the_target_score(text):
    model, x = seg_model(), images(3)
    objective = parse_objective(f'target("{text}")', model)
    assert objective.description == f'target("{text}")' and objective.layers == ("output",)
    output = model(x)
    expected = target_scores(output, resolve_target(output, parse_target(text)))
    assert torch.allclose(objective(_acts(model, x)), expected)
    if text == "out:3@mask":  # class 3 wins exactly the square: its score is class 3's map summed over it
        y0, y1, x0, x1 = SQUARE
        assert torch.allclose(expected, output["out"][:, 3, y0:y1, x0:x1].sum((1, 2)))


def test_empty_mask_scores_the_whole_map_in_a_render_and_is_an_error_for_saliency():
    out = torch.zeros(2, 4, 8, 8)
    out[:, 1] = 1.0  # class 1 wins every pixel: class 0's mask is empty
    out[0, 0, 0, 0] = 5.0  # except one pixel of image 0
    target = parse_target("out:0@mask")
    resolved = resolve_target({"out": out}, target, empty_mask="all")
    assert resolved.weights[0].sum() == 1 and resolved.weights[1].sum() == 64
    with pytest.raises(NnfeatError, match="image 1's output map"):
        resolve_target({"out": out}, target)


def test_render_of_a_box_brightens_only_the_pixels_it_reads():
    """Class 3's map is a 1x1 conv with positive weights inside SQUARE: maximizing it over a box inside SQUARE
    drives those pixels white; pixels the box does not read are left near grey."""
    y0, y1, x0, x1 = 12, 18, 14, 20
    result = render(seg_model(), f'target("out:3@{y0}:{y1},{x0}:{x1}")', steps=48, batch=1, seed=0, progress=False)
    image = result.images[0]
    inside = float(image[:, y0:y1, x0:x1].mean())
    outside = image.clone()
    outside[:, max(0, y0 - 6):y1 + 6, max(0, x0 - 6):x1 + 6] = float("nan")  # jitter spreads the box a little
    assert inside > 0.85 and inside > float(outside.nanmean()) + 0.2, (inside, float(outside.nanmean()))
    assert float(result.final_values[0]) > 0


def test_regression_and_tuple_outputs():
    regression = Model(_NS["Regression"](), name="regression", input_size=SIZE)
    result = render(regression, 'target("value")', steps=8, batch=1, seed=0, progress=False)
    assert torch.isfinite(result.final_values).all()
    pair = Model(_NS["Pair"](), name="pair", input_size=SIZE)
    x = images(2)
    objective = parse_objective('target("0:1") + target("1:3@mask")', pair)
    logits, seg = pair(x)
    y0, y1, x0, x1 = SQUARE
    assert torch.allclose(objective(_acts(pair, x)), logits[:, 1] + seg[:, 3, y0:y1, x0:x1].sum((1, 2)))


def test_reading_channels_of_a_dict_output_is_one_line_naming_its_parts():
    with pytest.raises(NnfeatError, match=r"returns dict out \(B, 4, 32, 32\): name the part, e\.g\. target\(\"out:3\"\)"):
        render(seg_model(), "output:3", steps=1, progress=False)
    with pytest.raises(NnfeatError, match="returns dict out"):
        render(seg_model(), "logit(3)", steps=1, progress=False)


@pytest.mark.parametrize("text, needle", [
    ("target(3)", 'a target in quotes, e.g. "out:3@mask"'),
    ('target("out:cat")', "an objective takes a class index"),
    ('target("out:3@maks")', "bad region 'maks'"),
])
def test_bad_target_objectives_are_one_line(text, needle):
    with pytest.raises(NnfeatError) as caught:
        parse_objective(text, seg_model())
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_a_target_the_output_lacks_is_one_line_before_work():
    with pytest.raises(NnfeatError, match="use one of its keys"):
        render(seg_model(), 'target("aux:3")', steps=1, progress=False)


def test_torchvision_deeplab_random_weights():
    from torchvision.models import segmentation

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    model = Model(net, name="deeplab", input_size=48)
    result = render(model, 'target("out:1@mask") + target("out:2@8:24,16:40")', steps=3, batch=2, seed=0,
                    progress=False)
    assert result.images.shape == (2, 3, 48, 48) and torch.isfinite(result.final_values).all()


def test_cli_render_of_a_segmentation_target(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    out = tmp_path / "o"
    run = subprocess.run([sys.executable, "-m", "nnfeat", "render", f"{tmp_path}/nets.py:make_seg",
                          'target("out:3@mask")', "--size", str(SIZE), "--steps", "4", "--quiet", "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    record = json.loads((out / "render.json").read_text())
    assert record["objective"] == 'target("out:3@mask")' and "'target(\"out:3@mask\")'" in record["command"]
    bad = tmp_path / "bad"
    run = subprocess.run([sys.executable, "-m", "nnfeat", "render", f"{tmp_path}/nets.py:make_seg", "output:3",
                          "--size", str(SIZE), "--steps", "4", "--quiet", "--out", str(bad)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and 'target("out:3")' in run.stderr
    assert not bad.exists()
