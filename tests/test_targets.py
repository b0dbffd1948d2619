"""Targets beyond a class logit (nnfeat.targets): the grammar, the reduction of an output to one score
per image, and every saliency method explaining it -- on hand-built networks whose answer is known (a segmentation
net whose class 3 sees only one square, a regression head, a tuple output), on torchvision's segmentation models
with random weights, and through the CLI (one-line errors, exit 2, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nnfeat import cli
from nnfeat.analysis.attribution import baseline_images
from nnfeat.analysis.saliency import saliency_maps
from nnfeat.analysis.sanity import deletion_insertion
from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model
from nnfeat.ops.saliency import saliency
from nnfeat.targets import (Target, format_target, parse_target, resolve_target, target_probabilities,
                            target_scores)

SIZE = 32
SQUARE = (10, 20, 12, 22)  # y0, y1, x0, x1: the only pixels class 3's map depends on, and where class 3 wins

#: the hand-built networks, also written as a FILE.py:FACTORY for the CLI
NETS = '''
import torch
from torch import nn

SIZE, SQUARE = 32, (10, 20, 12, 22)


def square_mask():
    mask = torch.zeros(1, 1, SIZE, SIZE)
    y0, y1, x0, x1 = SQUARE
    mask[..., y0:y1, x0:x1] = 1
    return mask


class SquareSeg(nn.Module):
    """{'out': (B, 4, H, W)}: classes 0..2 a 3x3 conv of every pixel, squashed to (-3, -1); class 3 a 1x1 conv of
    the pixel itself plus 5 inside SQUARE, -5 outside: class 3 wins exactly SQUARE and depends on nothing else."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.others = nn.Conv2d(3, 3, 3, padding=1)
        self.three = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.others.weight.copy_(torch.randn(self.others.weight.shape, generator=g))
            self.three.weight.copy_(torch.rand(self.three.weight.shape, generator=g) + 0.5)
        self.register_buffer("mask", square_mask())

    def forward(self, x):
        others = torch.tanh(self.others(x)) - 2
        three = self.mask * (self.three(x) + 5) - (1 - self.mask) * 5
        return {"out": torch.cat([others, three], 1)}


class Regression(nn.Module):
    """(B, 1): a weighted sum of the pixels inside SQUARE (a regression head)."""

    def __init__(self, flat=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        self.flat = flat
        self.register_buffer("mask", square_mask())

    def forward(self, x):
        value = (self.conv(x) * self.mask).sum((2, 3))
        return value[:, 0] if self.flat else value


class Pair(nn.Module):
    """(logits (B, 2), the SquareSeg map (B, 4, H, W)): a tuple output."""

    def __init__(self):
        super().__init__()
        self.seg = SquareSeg()
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        out = self.seg(x)["out"]
        return self.head(x.mean((2, 3))), out


def make_seg():
    return SquareSeg()
'''
_NS: dict = {}
exec(NETS, _NS)  # noqa: S102 - our own source, shared with the CLI's model file


def seg_model(net=None) -> Model:
    return Model(net or _NS["SquareSeg"](), name="square-seg", input_size=SIZE)


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def mass_inside(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B,) share of sum |map| inside SQUARE."""
    y0, y1, x0, x1 = SQUARE
    return maps.abs()[:, y0:y1, x0:x1].sum((1, 2)) / maps.abs().sum((1, 2)).clamp_min(1e-12)


# -- the grammar -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, part, cls, value, region", [
    ("3", None, 3, False, None),
    ("cat", None, "cat", False, None),
    ("pred", None, None, False, None),
    ("out:3", "out", 3, False, None),
    ("0:3", "0", 3, False, None),
    ("out:3@mask", "out", 3, False, "mask"),
    ("out:pred@mask", "out", None, False, "mask"),
    ("out:3@8:24,16:40", "out", 3, False, (8, 24, 16, 40)),
    ("3@0:4,0:4", None, 3, False, (0, 4, 0, 4)),
    ("value", None, None, True, None),
    ("head:value", "head", None, True, None),
])
def test_grammar(text, part, cls, value, region):
    t = parse_target(text)
    assert (t.part, t.cls, t.value, t.region) == (part, cls, value, region)
    assert format_target(t) == text and parse_target(format_target(t)).region == region


@pytest.mark.parametrize("text, needle", [
    ("out:3@maks", "bad region 'maks'"),
    ("out:3@5:2,0:4", "empty or huge box"),
    ("value@mask", "is a value"),
    ("a:b:c", "bad target"),
    ("out:", "bad target"),
    (":3", "bad target"),
    ("out:-3", "out of range"),
    ("out:99999999", "out of range"),
])
def test_bad_texts_are_one_line(text, needle):
    with pytest.raises(NnfeatError) as err:
        parse_target(text)
    assert needle in str(err.value) and "\n" not in str(err.value)


# -- the reduction to one score per image --------------------------------------------------------------------
def test_scores_of_each_output_kind():
    g = torch.Generator().manual_seed(0)
    logits, seg = torch.randn(2, 5, generator=g), torch.randn(2, 4, 6, 7, generator=g)
    seg[:, 2, 0] = 10  # class 2 wins row 0 of both images
    t = resolve_target(logits, parse_target("3"))
    torch.testing.assert_close(target_scores(logits, t), logits[:, 3])
    t = resolve_target({"out": seg}, parse_target("out:pred@mask"))
    winners = seg.argmax(1)
    counts = torch.stack([torch.bincount(w.flatten(), minlength=4) for w in winners])  # (2, 4) pixels won
    assert torch.equal(counts.gather(1, t.classes[:, None])[:, 0], counts.max(1).values)  # pred: most pixels
    for i in range(2):
        c = int(t.classes[i])
        torch.testing.assert_close(target_scores({"out": seg}, t)[i], seg[i, c][winners[i] == c].sum())
    t = resolve_target((logits, seg), parse_target("1:2@1:3,2:5"))
    torch.testing.assert_close(target_scores((logits, seg), t), seg[:, 2, 1:3, 2:5].sum((1, 2)))
    t = resolve_target((logits, seg), parse_target("0:4"))
    torch.testing.assert_close(target_scores((logits, seg), t), logits[:, 4])
    for value in (torch.randn(2, 1), torch.randn(2)):
        t = resolve_target({"v": value}, parse_target("v:value"))
        torch.testing.assert_close(target_scores({"v": value}, t), value.reshape(2))
        torch.testing.assert_close(target_probabilities({"v": value}, t), value.reshape(2))
    t = resolve_target(seg, parse_target("2@mask"))
    p = torch.softmax(seg, 1)[:, 2]
    expected = torch.stack([p[i][winners[i] == 2].mean() for i in range(2)])
    torch.testing.assert_close(target_probabilities(seg, t), expected)
    torch.testing.assert_close(target_scores(seg, t), torch.stack([seg[i, 2][winners[i] == 2].sum() for i in range(2)]))


@pytest.mark.parametrize("output, text, needle", [
    ({"out": torch.zeros(1, 4, 5, 5)}, "3", "say which part to explain, e.g. --target out:3"),
    ({"out": torch.zeros(1, 4, 5, 5)}, "aux:3", "use one of its keys"),
    ((torch.zeros(1, 4),), "2:1", "use an element index 0..0"),
    (torch.zeros(1, 4), "out:1", "drop 'out:'"),
    (torch.zeros(1, 4), "1@mask", "has a region, but the output is (B, 4)"),
    ({"out": torch.zeros(1, 4, 5, 5)}, "out:9@mask", "target class 9 out of range: output part 'out' has 4 classes"),
    ({"out": torch.zeros(1, 4, 5, 5)}, "out:1@0:6,0:2", "leaves the 5x5 output map"),
    ({"out": torch.zeros(1, 4, 5, 5)}, "out:value", "asks for a value"),
    (torch.zeros(1), "3", "use --target value"),
    (torch.zeros(1, 4, 5, 5), "pred", "saliency needs"),
])
def test_output_mismatch_is_one_line(output, text, needle):
    if text == "pred":  # the plain path (no target given) on a map: the classic message, with the way out
        with pytest.raises(NnfeatError) as err:
            saliency_maps(torch.nn.Conv2d(3, 4, 1), torch.zeros(1, 3, 5, 5))
        assert "3@mask" in str(err.value)
    else:
        with pytest.raises(NnfeatError) as err:
            resolve_target(output, parse_target(text))
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_empty_mask_names_the_image():
    seg = torch.zeros(2, 4, 5, 5)
    seg[:, 1] = 1
    seg[1, 2, 0, 0] = 5
    with pytest.raises(NnfeatError, match="class 2 wins no pixel of image 0"):
        resolve_target(seg, parse_target("2@mask"))


# -- every method explains the target --------------------------------------------------------------------------
def test_plain_class_target_is_bit_identical_to_class_indices():
    """A class target given as text goes the Target way; the maps equal those of (B,) class indices."""
    torch.manual_seed(0)
    model = Model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                      torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)),
                  input_size=16)
    x = torch.rand(2, 3, 16, 16)
    for method, opts in (("gradient", {}), ("integrated-gradients", {"alphas": 4}), ("occlusion", {"window": 4}),
                         ("gradcam", {}), ("smoothgrad", {"samples": 3})):
        a = saliency_maps(model, x, torch.tensor([2, 2]), method, **opts)
        b = saliency_maps(model, x, "2", method, **opts)
        assert torch.equal(a, b), method


@pytest.mark.parametrize("text", ["out:3@mask", "out:3@0:32,0:32", "out:3@8:24,8:24"])
@pytest.mark.parametrize("method", ["gradient", "gradient-x-input", "integrated-gradients", "smoothgrad",
                                    "occlusion"])
def test_segmentation_saliency_falls_inside_the_square(method, text):
    """Class 3 of SquareSeg depends only on the pixels in SQUARE, and wins exactly there: every method's map of
    out:3 over its mask, or over a box holding (part of) the square, lies inside SQUARE."""
    model = seg_model()
    opts = {"integrated-gradients": {"alphas": 4}, "smoothgrad": {"samples": 4, "noise": 0.05},
            "occlusion": {"window": 1}}.get(method, {})  # 1 px: no window straddles the edge
    maps = saliency_maps(model, images(), text, method, **opts)
    assert maps.shape == (2, SIZE, SIZE) and bool(maps.abs().sum((1, 2)).gt(0).all())
    assert bool((mass_inside(maps) > 0.95).all()), mass_inside(maps)


def test_box_outside_the_square_gives_nothing_and_mask_is_the_square():
    model = seg_model()
    assert saliency_maps(model, images(), "out:3@0:4,0:4", "gradient").abs().sum() == 0
    t = resolve_target(model(images()), parse_target("out:3@mask"))
    y0, y1, x0, x1 = SQUARE
    assert int(t.weights.sum()) == 2 * (y1 - y0) * (x1 - x0) and bool(t.weights[:, y0:y1, x0:x1].all())
    assert t.classes.tolist() == [3, 3]


def test_cam_and_sanity_explain_the_same_target():
    """The CAM family explains out:3@mask on a layer of the map (LayerCAM, weighting each position by its own
    gradient, lies inside the square; Grad-CAM's one weight per channel cannot localize a 1-channel layer);
    deletion / insertion track class 3's softmax probability over the clean image's mask: the curves start and
    end at it, for the clean and the blurred image."""
    model = seg_model()
    x = images(3)
    t = resolve_target(model(x), parse_target("out:3@mask"))
    assert saliency_maps(model, x, t, "gradcam", layer="three").abs().sum() > 0
    cam = saliency_maps(model, x, t, "layercam", layer="three")
    assert cam.shape == (3, SIZE, SIZE) and bool((mass_inside(cam) > 0.95).all()), mass_inside(cam)
    grad = saliency_maps(model, x, t, "gradient")
    scores = deletion_insertion(model, x, grad, t, steps=4, rank_by="abs", patch=2)
    torch.testing.assert_close(scores.deletion_curve[:, 0], target_probabilities(model(x), t))
    blurred = baseline_images(x, "blur", sigma=scores.insertion_sigma)
    torch.testing.assert_close(scores.deletion_curve[:, -1], target_probabilities(model(blurred), t))
    torch.testing.assert_close(scores.insertion_curve[:, 0], target_probabilities(model(blurred), t))


def test_regression_head_and_tuple_output():
    for flat in (False, True):
        model = Model(_NS["Regression"](flat), input_size=SIZE)
        maps = saliency_maps(model, images(), "value", "gradient")
        assert bool((mass_inside(maps) > 0.99).all())
    pair = Model(_NS["Pair"](), input_size=SIZE)
    assert bool((mass_inside(saliency_maps(pair, images(), "1:3@mask", "gradient")) > 0.95).all())
    assert saliency_maps(pair, images(), "0:1", "gradient").shape == (2, SIZE, SIZE)
    r = saliency(Model(_NS["Regression"](), input_size=SIZE, name="reg"), images(), "gradient", target="value",
                 sanity=True, steps=4, cascade=1)
    rec = r.record()
    assert rec["target"] == "value" and rec["target_text"] == "value" and rec["images"][0]["target"] is None


def test_operation_records_the_target(tmp_path):
    r = saliency(seg_model(), images(), "gradient,gradcam", target="out:3@mask", sanity=True, steps=4, cascade=1)
    rec = r.record()
    assert rec["target_text"] == "out:3@mask" and rec["target_spec"]["region"] == "mask"
    assert "summed over its predicted mask" in rec["target_spec"]["score"]
    assert [i["target"] for i in rec["images"]] == [3, 3] and "--target out:3@mask" in r.command
    assert "target out:3@mask" in r.image_caption(0)
    r.save(tmp_path)
    assert "class 3 of output part" in (tmp_path / "index.html").read_text()


# -- torchvision segmentation models (random weights) ------------------------------------------------------------
@pytest.mark.parametrize("arch", ["deeplabv3_mobilenet_v3_large", "fcn_resnet50"])
def test_torchvision_segmentation(arch):
    from torchvision.models import segmentation

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=5)
    size = 48
    model = Model(net, name=arch, input_size=size)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        winners = model(x)["out"].argmax(1)
    cls = int(winners.flatten().mode().values)
    methods = "gradient,gradcam" if arch == "fcn_resnet50" else "gradient,gradcam,integrated-gradients,occlusion"
    for text in (f"out:{cls}@mask", f"out:{cls}@8:24,16:40"):
        r = saliency(model, x, methods, target=text, alphas=4, window=8, batch_size=64)
        for m in r.methods:
            assert m.maps.shape == (1, size, size) and bool(torch.isfinite(m.maps).all()), (text, m.method)
        assert r.record()["target_spec"]["text"] == text and r.targets == [cls]
    grad = saliency_maps(model, x, f"out:{cls}@8:24,16:40", "gradient")
    assert grad.abs().sum() > 0
    with pytest.raises(NnfeatError, match="say which part to explain"):
        saliency(model, x, "gradient")


# -- the CLI ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("targets")
    (d / "nets.py").write_text(NETS)
    rng = np.random.default_rng(0)
    np.savez(d / "images.npz", images=rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8))
    return d


def test_cli_segmentation_target(cli_inputs, tmp_path):
    out = tmp_path / "o"
    assert cli.main(["saliency", f"{cli_inputs}/nets.py:make_seg", "--images", f"{cli_inputs}/images.npz",
                     "--size", str(SIZE), "--target", "out:3@mask", "--method", "gradient", "--quiet",
                     "--out", str(out)]) == 0
    rec = json.loads((out / "saliency.json").read_text())
    assert rec["target_text"] == "out:3@mask" and rec["target_spec"]["part"] == "out"
    assert "--target out:3@mask" in rec["command"]


@pytest.mark.parametrize("target, needle", [
    (None, "say which part to explain, e.g. --target out:3"),
    ("out:3@maks", "bad region 'maks'"),
    ("aux:3@mask", "use one of its keys"),
    ("out:7@mask", "target class 7 out of range: output part 'out' has 4 classes (0..3)"),
    ("out:3@0:40,0:4", "leaves the 32x32 output map"),
    ("out:value", "asks for a value"),
    ("out:cat@mask", "unknown class 'cat'"),
])
def test_cli_bad_target_is_one_line_exit_2_nothing_written(target, needle, cli_inputs, tmp_path, capsys):
    out = tmp_path / "o"
    extra = [] if target is None else ["--target", target]
    assert cli.main(["saliency", f"{cli_inputs}/nets.py:make_seg", "--images", f"{cli_inputs}/images.npz",
                     "--size", str(SIZE), *extra, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_target_class_resolved_once_from_the_clean_image():
    """A Target's classes and regions are fixed: noisy copies (smoothgrad) explain the clean image's mask."""
    model = seg_model()
    t = resolve_target(model(images()), parse_target("out:3@mask"))
    assert isinstance(t, Target) and t.resolved and len(t.repeat(3)) == 6 and t.repeat(3).weights.shape[0] == 6
    assert torch.equal(t[1:].classes, t.classes[1:])


# -- uncertainty of a part of the output -----------------------------------------------------------------------
def test_uncertainty_of_a_segmentation_box_knows_where_the_map_is_sure():
    """SquareSeg is sure (class 3 by ~7 logits) inside SQUARE and unsure outside: the distribution averaged over
    the square has near-zero entropy and predicts 3; a corner box has a large entropy and predicts one of 0..2."""
    from nnfeat.ops.uncertainty import uncertainty

    y0, y1, x0, x1 = SQUARE
    inside = uncertainty(seg_model(), images(3), "tta", samples=2, target=f"out:pred@{y0}:{y1},{x0}:{x1}", top=0)
    corner = uncertainty(seg_model(), images(3), "tta", samples=2, target="out:pred@0:6,0:6", top=0)
    assert inside.summary.prediction.tolist() == [3, 3, 3]
    assert float(inside.summary.entropy.max()) < 0.05
    assert all(int(c) in (0, 1, 2) for c in corner.summary.prediction)
    assert float(corner.summary.entropy.min()) > 0.3
    assert f"--target out:pred@{y0}:{y1},{x0}:{x1}" in inside.command


@pytest.mark.parametrize("target, needle", [
    (None, "outputs a dict out (B, 4, 32, 32): say which part holds the class scores, e.g. --target out:pred"),
    ("out:3", "uncertainty measures the whole class distribution"),
    ("out:pred@mask", "uncertainty measures the whole class distribution"),
    ("out:pred@0:40,0:4", "leaves the 32x32 output map"),
])
def test_cli_uncertainty_bad_target_is_one_line(target, needle, cli_inputs, tmp_path, capsys):
    out = tmp_path / "o"
    extra = [] if target is None else ["--target", target]
    code = cli.main(["uncertainty", f"{cli_inputs}/nets.py:make_seg", "--images", f"{cli_inputs}/images.npz",
                     "--size", str(SIZE), "--method", "tta", "--samples", "2", *extra, "--quiet", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not out.exists()

