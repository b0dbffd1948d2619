import json, subprocess, sys
import torch
from torch import nn
from nnfeat.models.base import Model
from nnfeat.analysis.heatmap import heatmaps, upsample
from nnfeat.analysis.tokens import fold_tokens
from nnfeat.views.heatmap_page import heatmap


def _bright_net():
    conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_(); conv.weight[0] = 1 / 27; conv.weight[1] = 0.0
    return Model(nn.Sequential(conv, nn.MaxPool2d(2)), name="bright", input_size=32)


def test_peak_inside_square():
    img = torch.zeros(1, 3, 32, 32); img[:, :, 8:16, 18:26] = 1
    model = _bright_net()
    big = upsample(heatmaps(model, "0", img, [0]), (32, 32))[0, 0]
    y, x = divmod(int(big.argmax()), 32)
    assert 8 <= y < 16 and 18 <= x < 26


def test_scale_shared_and_dead():
    img = torch.rand(2, 3, 32, 32)
    r = heatmap(_bright_net(), "0:0,1", img).record()
    vals = {(m["vmin"], m["vmax"]) for i in r["images"] for m in i["maps"]}
    assert len(vals) == 1 and r["images"][0]["maps"][1]["dead"]
    assert "dead (constant 0)" in heatmap(_bright_net(), "0:0,1", img).captions()[2]
    r2 = heatmap(_bright_net(), "0:0", img, scale="per-map").record()
    assert len({(m["vmin"], m["vmax"]) for i in r2["images"] for m in i["maps"]}) == 2


def test_fold_nonsquare():
    act = torch.arange(141.).view(1, 141, 1)
    out = fold_tokens(act, nn.Identity(), (224, 160))
    assert out.shape == (1, 1, 14, 10) and out[0, 0, 1, 0] == 11


def test_cli(tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "nnfeat", "heatmap", "digits-cnn", "bn2", "--images", "digits", "--n", "4", "--quiet", "--out", str(out)]
    assert subprocess.run(cmd).returncode == 0
    assert json.loads((out / "heatmap.json").read_text())["kind"] == "heatmap" and (out / "image-3-channels.png").exists()
    bad = subprocess.run(cmd[:5] + ["output"] + cmd[6:-1] + [str(tmp_path / "b")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
