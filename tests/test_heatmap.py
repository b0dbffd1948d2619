"""Activation heatmaps (``nnfeat heatmap``): known answers through every model wrapper, token grids (hand-built and
timm), signed scales, the stated colour scale, one-line errors."""

import json, subprocess, sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from nnfeat import cli
from nnfeat.analysis.heatmap import COLORMAPS, colorize, heatmaps, upsample
from nnfeat.analysis.tokens import fold_tokens, token_grid
from nnfeat.hooks import ActivationCapture
from nnfeat.models import load_model
from nnfeat.models.base import Model
from nnfeat.ops.heatmap import heatmap


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


# -- known answers: a channel that sees only a bright square, through every model wrapper ------------------------
K = 2  # the channel that sees brightness
SQUARE = (8, 16, 16, 24)  # rows 8..15, cols 16..23 of a 32x32 image: patch (1, 2) of an 8 px grid

# One source for the conv net, built in the test and written into a user's FILE.py. Channel 0: constant (dead),
# 1: darkness, 2 (K): mean brightness of a 3x3 window, 3: zero; ReLU, then a 2x2 max pool (a 16x16 map).
NET_SRC = '''
import torch
from torch import nn

def make():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_(); conv.bias.zero_()
        conv.bias[0] = 2.0  # above every live value: a figure range that counted it would show
        conv.weight[1] = -1 / 27; conv.bias[1] = 1.0
        conv.weight[2] = 1 / 27
    return nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 16 * 16, 3))

def make_model():
    from nnfeat.models.base import Model
    return Model(make(), name="bright-file", input_size=32)
'''


def _net_namespace():
    ns: dict = {}
    exec(NET_SRC, ns)
    return ns


class TinyViT(nn.Module):
    """8 px patches -> tokens (B, 1 + N, C) with a class token first; channel K of a patch token is the patch's
    mean brightness, of the class token 5 (above every patch: a fold that kept it would peak at patch 0)."""

    def __init__(self, dim: int = 4):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 8, stride=8)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.block = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)
        with torch.no_grad():
            self.embed.weight.zero_(); self.embed.bias.zero_()
            self.embed.weight[K] = 1 / (3 * 64)
            self.embed.bias[0] = 0.3
            self.cls[0, 0, K] = 5.0
            self.block.weight.copy_(torch.eye(dim)); self.block.bias.zero_()

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        tokens = self.block(torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1))  # (B, 1 + N, C)
        return self.head(tokens[:, 0])


def _square_images(squares, size=(32, 32)) -> torch.Tensor:
    """Black (B, 3, H, W) images, a white square (y0, y1, x0, x1) in each."""
    img = torch.zeros(len(squares), 3, *size)
    for i, (y0, y1, x0, x1) in enumerate(squares):
        img[i, :, y0:y1, x0:x1] = 1
    return img


def _inside(yx, square, margin=0) -> bool:
    y0, y1, x0, x1 = square
    return y0 - margin <= yx[0] < y1 + margin and x0 - margin <= yx[1] < x1 + margin


def _wrapped(kind, tmp_path):
    """(model, layer) for each way nnfeat gets a network."""
    if kind == "module":
        return Model(_net_namespace()["make"](), name="bright", input_size=32), "2"
    if kind == "file":
        (tmp_path / "bright.py").write_text(NET_SRC)
        return load_model(f"{tmp_path / 'bright.py'}:make", device="cpu"), "2"
    return Model(TinyViT(), name="tiny-vit", input_size=32), "block"


@pytest.mark.parametrize("kind", ["module", "file", "tokens"])
def test_peak_at_the_square_for_every_wrapper(kind, tmp_path):
    model, layer = _wrapped(kind, tmp_path)
    other = (20, 28, 0, 8)  # a second image, its square elsewhere (patch (2..3, 0))
    r = heatmap(model, f"{layer}:{K}", _square_images([SQUARE, other])).record()
    assert r["input_size"] == [32, 32] and r["map_size"] == ([4, 4] if kind == "tokens" else [16, 16])
    peaks = [i["maps"][0]["peak_yx"] for i in r["images"]]
    assert _inside(peaks[0], SQUARE) and _inside(peaks[1], other), peaks  # input pixels, not map cells
    if kind == "tokens":
        assert token_grid(model, 17, (32, 32)) == (1, 4, 4)


def test_token_model_nonsquare_grid_drops_the_class_token():
    model = Model(TinyViT(), name="tiny-vit", input_size=(32, 24))
    square = (16, 24, 8, 16)  # patch (2, 1) of the 4x3 grid
    img = _square_images([square], (32, 24))
    r = heatmap(model, f"block:{K}", img)
    assert token_grid(model, 13, (32, 24)) == (1, 4, 3) and tuple(r.maps.shape) == (1, 1, 4, 3)
    assert int(r.maps[0, 0].argmax()) == 2 * 3 + 1 and float(r.maps.max()) == pytest.approx(1.0, rel=1e-4)
    assert _inside(r.record()["images"][0]["maps"][0]["peak_yx"], square)


def _write_square_folder(folder, squares, size=32):
    folder.mkdir()
    for i, sq in enumerate(squares):
        arr = (_square_images([sq], (size, size))[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


def test_cli_user_model_file_and_image_folder(tmp_path, capsys):
    (tmp_path / "bright.py").write_text(NET_SRC)
    other = (20, 28, 0, 8)
    folder = _write_square_folder(tmp_path / "imgs", [SQUARE, other])
    out = tmp_path / "o"
    assert cli.main(["heatmap", f"{tmp_path / 'bright.py'}:make_model", f"2:{K}", "--images", str(folder),
                     "--quiet", "--out", str(out)]) == 0
    r = json.loads((out / "heatmap.json").read_text())
    peaks = [i["maps"][0]["peak_yx"] for i in r["images"]]
    assert _inside(peaks[0], SQUARE) and _inside(peaks[1], other), peaks


def test_cli_digits_cnn_first_layer_sees_the_square(tmp_path):
    """digits-cnn's first layer is edge detectors: their summed map peaks on the square's rim (within 2 px)."""
    squares = [(8, 16, 18, 26), (18, 28, 4, 12)]
    folder = _write_square_folder(tmp_path / "imgs", squares)
    out = tmp_path / "o"
    assert cli.main(["heatmap", "digits-cnn", "relu1", "--reduce", "sum", "--images", str(folder), "--quiet",
                     "--out", str(out)]) == 0
    r = json.loads((out / "heatmap.json").read_text())
    peaks = [i["maps"][0]["peak_yx"] for i in r["images"]]
    assert all(_inside(p, sq, margin=2) for p, sq in zip(peaks, squares)), peaks


# -- a real timm ViT: 14x14 patch grid at 224, 14x10 at 224x160 -------------------------------------------------
def test_timm_vit_grid_square_and_nonsquare():
    timm = pytest.importorskip("timm")
    model = load_model("timm:vit_tiny_patch16_224", weights="random", device="cpu")
    r = heatmap(model, "blocks.1:0..2", torch.rand(1, 3, 224, 224))
    assert tuple(r.maps.shape) == (1, 3, 14, 14) and tuple(r.overlays.shape) == (1, 3, 3, 224, 224)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True)
    wide = Model(net, name="vit-dyn", input_size=(224, 160))
    img = torch.rand(1, 3, 224, 160)
    r = heatmap(wide, "blocks.1:0..2", img)
    assert tuple(r.maps.shape) == (1, 3, 14, 10) and r.record()["input_size"] == [224, 160]
    with ActivationCapture(wide, ["blocks.1"]) as capture:
        tokens = capture(img)["blocks.1"]  # (1, 1 + 140, 192)
    assert tokens.shape[1] == 141
    # row-major patches, class token dropped: map cell (i, j) is token 1 + 10 i + j
    torch.testing.assert_close(r.maps[0, :, 3, 7], tokens[0, 1 + 3 * 10 + 7, :3])
    torch.testing.assert_close(r.maps[0, :, 13, 9], tokens[0, -1, :3])


# -- signed maps: blue-white-red, symmetric around 0 --------------------------------------------------------------
def _signed_check(r):
    rec = r.record()
    assert rec["scale"]["signed"] and rec["scale"]["colormap"] == "signed"
    assert rec["scale"]["vmin"] == -rec["scale"]["vmax"]
    live = r.maps[~r.scale.dead]
    assert rec["scale"]["vmax"] == pytest.approx(float(live.abs().max()))
    white = colorize(torch.zeros(1, 1, 1, 1), r.scale.vmin[:1, :1], r.scale.vmax[:1, :1], "signed")[0, 0, :, 0, 0]
    assert bool((white > 0.95).all()) and float(white.max() - white.min()) < 0.02
    return rec


def test_signed_map_of_a_hand_built_conv():
    conv = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1 / 3); conv.bias.fill_(-0.2)  # black -> -0.2, white -> 0.8: not symmetric itself
    r = heatmap(Model(conv, name="signed", input_size=8), "output", _square_images([(0, 4, 0, 4)], (8, 8)))
    rec = _signed_check(r)
    assert rec["scale"]["vmin"] == pytest.approx(-0.8) and rec["images"][0]["maps"][0]["min"] == pytest.approx(-0.2)


def test_signed_map_before_relu_in_cifar_resnet(cifar_resnet20, cifar_subset):
    r = heatmap(cifar_resnet20, "layer1.0.bn1", cifar_subset[0][:2], top=4)
    assert float(r.maps.min()) < 0 < float(r.maps.max())
    _signed_check(r)


# -- bad input: one line, exit 2, nothing written ---------------------------------------------------------------
@pytest.mark.parametrize("extra, needle", [
    (["relu2", "--n", "5"], "--n 5"),  # the folder holds 3 images
    (["fc"], "no spatial map"),
    (["output"], "no spatial map"),
    (["relu2", "--top", "0"], "--top"),
])
def test_cli_bad_input_is_one_line(extra, needle, tmp_path, capsys):
    folder = _write_square_folder(tmp_path / "imgs", [SQUARE] * 3)
    out = tmp_path / "o"
    assert cli.main(["heatmap", "digits-cnn", extra[0], "--images", str(folder), *extra[1:], "--quiet",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


# -- the colour scale is stated: colour bar on the sheet, figure limits = the live maps' range -----------------------
def test_figure_scale_is_the_live_range_and_the_sheet_has_its_colour_bar(tmp_path):
    model = Model(_net_namespace()["make"](), name="bright", input_size=32)
    img = _square_images([SQUARE, (0, 16, 0, 16)]) * torch.tensor([1.0, 0.5]).view(2, 1, 1, 1)  # two brightnesses
    r = heatmap(model, "2:0..2", img)
    rec = r.record()
    dead = r.scale.dead
    assert bool(dead[:, 0].all()) and not bool(dead[:, 1:].any())  # channel 0 is the constant one
    live = r.maps[~dead]
    assert rec["scale"]["mode"] == "figure" and not rec["scale"]["signed"]
    assert rec["scale"]["vmin"] == float(live.min()) and rec["scale"]["vmax"] == float(live.max())
    assert rec["scale"]["vmax"] == pytest.approx(1.0) and rec["scale"]["vmin"] == 0.0
    assert all(m["vmin"] == rec["scale"]["vmin"] and m["vmax"] == rec["scale"]["vmax"]
               for i in rec["images"] for m in i["maps"])
    r.save(tmp_path / "o")
    sheet = np.asarray(Image.open(tmp_path / "o" / "heatmap.png").convert("RGB"))
    table = (COLORMAPS["viridis"].numpy().astype(np.float64) * 255).round().astype(np.uint8)
    strip = sheet[-40 + 10, 60:sheet.shape[1] - 60]  # the colour bar's ramp, under the grid
    expected = table[np.linspace(0, len(table) - 1, len(strip)).astype(int)]
    assert np.array_equal(strip, expected)
    assert (sheet[-40:, :50] < 128).any()  # its lower number is written at the left end
