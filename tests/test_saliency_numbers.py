"""Saliency numbers by default (issue 25 §2): deletion / insertion AUC beside a random map's in one batched stream,
a verdict that names each check passed, failed or not run (the same words on the terminal, in the record and on
the page), and a model that gives NaN or Inf stopped with one line and nothing written."""

from __future__ import annotations

import html
import json

import pytest
import torch
from torch import nn

from nnfeat import cli
from nnfeat.analysis.attribution import baseline_images
from nnfeat.analysis.saliency import MethodMaps, display_scale, saliency_maps
from nnfeat.analysis.sanity import causal_scores, deletion_insertion, pixel_order, random_maps, randomization_test
from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model
from nnfeat.ops.saliency import saliency
from nnfeat.views.saliency_page import method_section, numbers_table
from tests.test_saliency import SIZE, region_model


def _region_maps():
    """RegionNet's class-0 Grad-CAM (mass inside its region), its negation (the region last) and a random map."""
    model = region_model()
    x = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    t = torch.zeros(4, dtype=torch.long)
    cam = saliency_maps(model, x, t, "gradcam")
    return model, x, t, [cam, -cam, random_maps(cam.shape, 0)]


# -- one stream of batched passes ---------------------------------------------------------------------------
def test_every_map_in_one_stream_equals_the_step_by_step_definition():
    model, x, t, maps = _region_maps()
    calls = []
    handle = model.net.register_forward_pre_hook(lambda _m, inp: calls.append(inp[0].shape[0]))
    try:
        scores = causal_scores(model, x, maps, t, steps=4, batch_size=10_000)
    finally:
        handle.remove()
    # the end points once per image (the image and its blurred copy: the blur baseline is the insertion start),
    # then (deletion, insertion) x 3 maps x 4 images x 3 inner steps in one pass
    assert calls == [8, 72]
    blurred = baseline_images(x, "blur", sigma=SIZE / 8)
    for m, s in zip(maps, scores):
        ranks = pixel_order(m, 0)  # 24 px images: single-pixel regions
        for start, end, curve in ((x, blurred, s.deletion_curve), (blurred, x, s.insertion_curve)):
            for k in range(5):
                mask = (ranks < round(k / 4 * SIZE * SIZE)).view(-1, 1, SIZE, SIZE).float()
                with torch.no_grad():
                    p = torch.softmax(model(start * (1 - mask) + end * mask), 1)[:, 0]
                torch.testing.assert_close(curve[:, k], p, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s.deletion, torch.trapezoid(s.deletion_curve, dx=0.25, dim=1))
    one = deletion_insertion(model, x, maps[0], t, steps=4, batch_size=7)  # other chunking, same numbers
    torch.testing.assert_close(one.deletion_curve, scores[0].deletion_curve)
    cam, anti, rnd = scores
    assert cam.deletion.mean() < rnd.deletion.mean() < anti.deletion.mean()
    assert cam.insertion.mean() > rnd.insertion.mean() > anti.insertion.mean()


# -- a verdict names each check ------------------------------------------------------------------------------
def test_the_verdict_names_each_check_and_the_numbers_that_failed_it():
    model, x, t, maps = _region_maps()
    cam_s, anti_s, rnd_s = causal_scores(model, x, maps, t, steps=4)
    anti = MethodMaps("anti-gradcam", maps[1], display_scale(maps[1]), False, "gate", causal=anti_s, chance=rnd_s)
    d, rd = float(anti_s.deletion.mean()), float(rnd_s.deletion.mean())
    i, ri = float(anti_s.insertion.mean()), float(rnd_s.insertion.mean())
    assert anti.verdict == (f"deletion: worse than random ({d:.3f} vs {rd:.3f}); insertion: worse than random "
                            f"({i:.3f} vs {ri:.3f}); randomization: not run (--sanity)")
    assert anti.status == "fails" and [c.outcome for c in anti.checks] == ["fails", "fails", "not run"]
    cam = MethodMaps("gradcam", maps[0], display_scale(maps[0]), False, "gate", causal=cam_s, chance=rnd_s)
    cam.randomization = randomization_test(model, x, "gradcam", t, layer="gate", ks=[1])
    want = "deletion: better than random; insertion: better than random; randomization: " + \
        ("passes" if cam.randomization.passes else "fails")
    assert cam.verdict.startswith(want) and cam.status == ("passes" if cam.randomization.passes else "fails")
    # the page and the terminal say the same words
    section = method_section(anti, rnd_s)
    assert 'data-verdict="fails"' in section and '<span class="flag">fails deletion, insertion</span>' in section
    for check in anti.checks:
        assert html.escape(check.text) in section
    table = numbers_table([cam, anti], rnd_s).splitlines()
    assert "deletion AUC (lower better)" in table[0] and "insertion AUC (higher better)" in table[0]
    assert table[2].startswith("anti-gradcam") and table[2].endswith(anti.verdict)
    assert f"{d:.3f}" in table[2] and f"{rd:.3f} / {ri:.3f}" in table[2]
    untested = MethodMaps("gradient", maps[0], 1.0, True)
    assert untested.status == "untested" and untested.verdict == \
        "deletion: not run; insertion: not run; randomization: not run (--sanity)"


def test_default_run_prints_the_table_and_records_the_same_verdict(tmp_path, capsys, shared_dir):
    out = tmp_path / "o"
    assert cli.main(["saliency", "cifar10-resnet20", "--images", str(shared_dir / "data" / "cifar10_test.npz"),
                     "--n", "3", "--method", "gradient,gradcam", "--steps", "4", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    rec = json.loads((out / "saliency.json").read_text())
    assert rec["settings"]["numbers"] is True and rec["settings"]["sanity"] is False and "random_map" in rec
    head = next(k for k, line in enumerate(printed) if line.startswith("method "))
    page = (out / "index.html").read_text()
    for m, line in zip(rec["methods"], printed[head + 1:head + 3]):
        di = m["deletion_insertion"]
        assert line.startswith(m["method"]) and line.endswith(m["verdict"])
        assert f"{di['deletion_auc']:.3f}" in line and f"{di['random_deletion_auc']:.3f}" in line
        assert m["verdict"].endswith("randomization: not run (--sanity)") and "randomization" not in m
        assert m["checks"]["randomization"] == "not run" and m["status"] in ("partial", "fails")
        assert m["verdict"].startswith("deletion: better than random" if di["deletion_auc"] <
                                       di["random_deletion_auc"] else "deletion: worse than random (")
        assert f'data-method="{m["method"]}" data-verdict="{m["status"]}"' in page
        assert html.escape(m["verdict"].split("; ")[0]) in page


def test_no_numbers_and_the_conflict_with_sanity(tmp_path, capsys, shared_dir):
    data = str(shared_dir / "data" / "cifar10_test.npz")
    out = tmp_path / "o"
    assert cli.main(["saliency", "cifar10-resnet20", "--images", data, "--n", "2", "--no-numbers", "--quiet",
                     "--out", str(out)]) == 0
    rec = json.loads((out / "saliency.json").read_text())
    (m,) = rec["methods"]
    assert "deletion_insertion" not in m and "random_map" not in rec and m["status"] == "untested"
    assert m["verdict"] == "deletion: not run; insertion: not run; randomization: not run (--sanity)"
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert cli.main(["saliency", "cifar10-resnet20", "--images", data, "--n", "2", "--no-numbers", "--sanity",
                     "--quiet", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sanity needs the deletion / insertion numbers" in err[0] and not bad.exists()


# -- NaN / Inf: one line, nothing written ---------------------------------------------------------------------
NET_FILE = '''
import torch
from torch import nn
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


class NanHalfDeleted(Net):
    """NaN once between half and nearly all of an image's pixels are exactly 0: the middle steps of a deletion into
    black; finite on real images, on random test images, on the blurred copy and on an all-black image."""

    def forward(self, x):
        y = super().forward(x)
        zeros = (x == 0).float().mean((1, 2, 3))
        return torch.where(((zeros > 0.5) & (zeros < 0.95))[:, None], torch.full_like(y, float("nan")), y)


class NanEverywhere(Net):
    def forward(self, x):
        return super().forward(x) * float("nan")


def make_half():
    return NanHalfDeleted()


def make_nan():
    return NanEverywhere()
'''


@pytest.fixture()
def net_file(tmp_path):
    import numpy as np

    (tmp_path / "net.py").write_text(NET_FILE)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "good.npz", images=rng.integers(1, 256, (4, 32, 32, 3), dtype=np.uint8))  # no zero pixel
    return tmp_path


def test_nan_in_the_deletion_stream_is_one_line_and_nothing_is_written(net_file, tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["saliency", f"{net_file}/net.py:make_half", "--images", f"{net_file}/good.npz",
                     "--deletion-baseline", "black", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "gave NaN or Inf at its output on the deletion images of gradient (first at image 0)" in err[0], err
    assert "check the model's forward" in err[0] and not out.exists()
    # the same model with the blur baseline never sees a half-black image: it runs
    assert cli.main(["saliency", f"{net_file}/net.py:make_half", "--images", f"{net_file}/good.npz", "--quiet",
                     "--out", str(out)]) == 0


def test_the_api_probes_before_any_work(net_file):
    import importlib.util

    spec = importlib.util.spec_from_file_location("nan_net", net_file / "net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = Model(module.make_nan(), name="nan-net", input_size=16)
    calls = []
    model.net.register_forward_pre_hook(lambda _m, inp: calls.append(inp[0].shape[0]))
    with pytest.raises(NnfeatError, match=r"model 'nan-net' gives NaN or Inf at its output on a test image"):
        saliency(model, torch.rand(5, 3, 16, 16), "gradient")
    assert calls == [2]  # the probe's two images, nothing else
    half = Model(module.make_half(), name="half", input_size=16)
    with pytest.raises(NnfeatError, match=r"on the deletion images of gradient \(first at image 0\)"):
        saliency(half, torch.rand(2, 3, 16, 16) * 0.9 + 0.1, "gradient", deletion_baseline="black")


class DarkCornerNaN(nn.Module):
    """Inf (and a non-finite gradient) for an image whose top-left pixel is (nearly) black; finite otherwise."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = self.head(self.conv(x).mean((2, 3)))
        return y / (x[:, 0, 0, 0] >= 0.05).float()[:, None]


def test_the_maps_stop_at_the_first_bad_block_of_batches():
    model = Model(DarkCornerNaN(), name="corner", input_size=8)
    x = torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.1
    x[3, :, 0, 0] = 0.0
    with_grad = []
    model.net.register_forward_pre_hook(lambda _m, _i: with_grad.append(torch.is_grad_enabled()))
    with pytest.raises(NnfeatError, match=r"model 'corner' gave NaN or Inf in its gradient saliency maps \(first at "
                                          r"image 3\)"):
        saliency(model, x, "gradient", batch_size=1)
    assert sum(with_grad) == 8  # the first block: 8 batches of 1 image; the other 12 images never ran
