"""``--scale figure|per-map`` of ``nnfeat attention``: a head whose weights are all small is nearly dark on the
figure's one scale and uses the whole colour range on its own; the figure, the record and the equivalent command
say which scale. Image ViTs (a hand-set transformer with a known answer, digits-vit through the CLI) and token
models (a hand-built layer, dates-seq2seq's cross attention)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from nnfeat import cli
from nnfeat.analysis.heatmap import COLORMAPS
from nnfeat.errors import NnfeatError
from nnfeat.models import Model, load_model
from nnfeat.models.text import TokenModel
from nnfeat.models.text_blocks import AttentionProbs
from nnfeat.models.tokenizers import WordTokenizer
from nnfeat.ops.attention import attention
from nnfeat.ops.token_attention import token_attention
from nnfeat.views.attention_page import HEAD_SCALE_NOTE
from nnfeat.views.token_attention_page import model_view_figure, steps_figure

PATCH, SIDE, BRIGHT = 4, 16, 5   # a 4x4 grid of 4 px patches; the bright patch of the one image
TABLE = COLORMAPS["viridis"]
TOP, BOTTOM = TABLE[-1], TABLE[0]


class TwoHeads(nn.Module):
    """Tokens: a class token e0 and one token per patch, b * e1 (b: the patch's brightness). The class token's
    query in head 0 scores patch j as 12 b_j (sharp: ~1 on the bright patch); head 1's as 0.05 b_j (nearly
    uniform: every weight ~1/17, the bright patch's a little more)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_size = PATCH
        self.patch_embed = nn.Conv2d(3, 4, PATCH, stride=PATCH)
        self.class_token = nn.Parameter(torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]))
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.patch_embed.weight.zero_()
            self.patch_embed.weight[1] = 1.0 / (3 * PATCH * PATCH)
            self.patch_embed.bias.zero_()
            self.attn.in_proj_weight.zero_()
            self.attn.in_proj_bias.zero_()
            for h, score in ((0, 12.0), (1, 0.05)):  # q.k / sqrt(2) = a^2 b / sqrt(2) = score * b
                a = math.sqrt(score * math.sqrt(2.0))
                self.attn.in_proj_weight[2 * h, 0] = a      # head h query <- class-token flag
                self.attn.in_proj_weight[4 + 2 * h, 1] = a  # head h key   <- brightness

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(len(tokens), -1, -1), tokens], 1)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(x[:, 0])


def two_heads() -> tuple[Model, torch.Tensor]:
    images = torch.zeros(1, 3, SIDE, SIDE)
    r, c = divmod(BRIGHT, SIDE // PATCH)
    images[0, :, r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = 1.0
    return Model(TwoHeads(), name="two-heads", input_size=SIDE), images


def colours(result, head: int) -> torch.Tensor:
    """(3, H, W) the colour of head ``head``'s map before it is laid over the image (the image is known)."""
    return (result.overlays[0, 0, head] - 0.4 * result.inputs[0]) / 0.6


def table_positions(colour: torch.Tensor) -> torch.Tensor:
    """(3, H, W) colours of the table -> (H, W) their places in it, 0 (bottom) .. 1 (top)."""
    distance = (colour.flatten(1).T[:, None] - TABLE[None]).abs().sum(-1)   # (H*W, table)
    return (distance.argmin(1).float() / (len(TABLE) - 1)).reshape(colour.shape[1:])


def test_a_faint_head_is_dark_on_the_figure_scale_and_full_range_on_its_own():
    model, images = two_heads()
    figure = attention(model, images)
    head = attention(model, images, scale="per-map")
    assert torch.equal(figure.maps, head.maps)
    faint = figure.maps[0, 0, 1]
    assert float(faint.max()) < 0.1 and float(faint.max() - faint.min()) > 1e-4   # nearly uniform, not flat
    # one figure scale: the faint head is near the bottom of the table everywhere
    dark = colours(figure, 1)
    assert float((dark - BOTTOM[:, None, None]).abs().max()) < 0.15
    assert float(dark.mean()) < 0.3
    assert float(table_positions(dark).max()) < 0.1
    # its own scale: the whole table, from the bottom (far from the bright patch) to near the top (on it; the
    # bilinear upsampling of the 4x4 map never quite reaches the patch's own value)
    own = colours(head, 1)
    places = table_positions(own)
    cy, cx = (BRIGHT // 4) * PATCH + PATCH // 2, (BRIGHT % 4) * PATCH + PATCH // 2
    assert float(places.min()) == 0.0 and float(places.max()) > 0.7 and float(places[cy, cx]) > 0.7
    assert float(own.mean(0).max()) > 0.4 > 0.3 > float(dark.mean(0).max())   # its brightest pixel: bright vs dark
    # the sharp head reaches near the top on both scales
    assert float(table_positions(colours(figure, 0))[cy, cx]) > 0.7
    # the figure states the scale: each tile its limits, the colour bar the note, the record every limit
    view = head._view()
    caps = view.grid_captions(0)
    lo, hi = float(faint.min()), float(faint.max())
    assert caps[2].splitlines()[-1] == f"{lo:.3g}..{hi:.3g}" and caps[1].splitlines()[-1].endswith("..1")
    assert view.scale_note() == HEAD_SCALE_NOTE and "each head has its own scale" in HEAD_SCALE_NOTE
    assert figure._view().grid_captions(0)[2].splitlines()[-1] == f"max {hi:.3g}"
    record = head.record()
    assert record["scale"]["mode"] == "per-map" and figure.record()["scale"]["mode"] == "figure"
    limits = record["images"][0]["maps"][1]["scale"]
    assert limits == pytest.approx({"vmin": lo, "vmax": hi})
    assert "scale" not in figure.record()["images"][0]["maps"][1]
    assert "--scale per-map" in head.command and "--scale" not in figure.command
    assert head.sheet().shape[1] == figure.sheet().shape[1] and not np.array_equal(head.sheet(), figure.sheet())


def test_figure_scale_is_the_default_and_a_bad_scale_is_one_line():
    model, images = two_heads()
    assert np.array_equal(attention(model, images).sheet(), attention(model, images, scale="figure").sheet())
    with pytest.raises(NnfeatError, match="unknown scale 'map': use figure"):
        attention(model, images, scale="map")


def test_cli_scale_head_on_digits_vit(tmp_path, capsys):
    out = tmp_path / "attn"
    assert cli.main(["attention", "digits-vit", "--images", "digits", "--n", "2", "--weights", "random",
                     "--scale", "per-map", "--quiet", "--out", str(out)]) == 0
    record = json.loads((out / "attention.json").read_text())
    assert record["scale"]["mode"] == "per-map" and " --scale per-map" in record["command"]
    maps = np.load(out / "attention-maps.npz")["maps"]   # (B, L, K, gh, gw)
    entry = record["images"][1]["maps"][5]                # image 1, layer 1, head 1
    assert entry["scale"]["vmin"] == pytest.approx(float(maps[1, 1, 1].min()))
    assert entry["scale"]["vmax"] == pytest.approx(float(maps[1, 1, 1].max()))
    never = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["attention", "digits-vit", "--images", "digits", "--weights", "random", "--scale", "map",
                  "--quiet", "--out", str(never)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'map'" in err and not never.exists()


# --- token models ---------------------------------------------------------------------------------------
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(12)]


class SharpAndFaint(nn.Module):
    """Head 0 attends to the previous token (weight 1); head 1 nearly uniformly, its diagonal a little more."""

    def __init__(self):
        super().__init__()
        self.embed, self.attn = nn.Embedding(len(WORDS), 4), nn.Module()
        self.attn.probs = AttentionProbs()   # the probe nnfeat reads the weights from

    def forward(self, ids, mask=None):
        t, rows = ids.shape[1], torch.arange(ids.shape[1])
        sharp = torch.zeros(t, t)
        sharp[rows, (rows - 1).clamp_min(0)] = 1
        faint = torch.softmax(torch.eye(t) * 0.3, -1)
        w = self.attn.probs(torch.stack([sharp, faint])[None].expand(len(ids), -1, -1, -1))
        return w.sum(1) @ self.embed(ids)


def faint_model() -> TokenModel:
    return TokenModel(SharpAndFaint(), name="sharp-and-faint", tokenizer=WordTokenizer(WORDS, wrap=("cls", "sep")),
                      kind="encoder", max_length=32, call="ids_mask", embedding="embed")


def cell(figure, l: int, h: int) -> np.ndarray:
    x, y, w, hgt = figure.boxes[(l, h)]
    return figure.image[y:y + hgt, x:x + w].astype(float) / 255


def test_token_model_view_per_head_scale(tmp_path):
    result = token_attention(faint_model(), ["w1 w2 w3 w4 w5"], scale="per-map")
    plain = token_attention(faint_model(), ["w1 w2 w3 w4 w5"])
    stack = result.stack(["attn.probs"], 0)
    tokens = result.tokens[0]
    fig = model_view_figure(stack, tokens, tokens, layer_names=["attn.probs"], scores=result.scores, scale="figure")
    own = model_view_figure(stack, tokens, tokens, layer_names=["attn.probs"], scores=result.scores, scale="per-map")
    top, bottom = TOP.numpy(), BOTTOM.numpy()
    faint_fig, faint_own = cell(fig, 0, 1), cell(own, 0, 1)
    assert faint_fig.mean() < 0.35 and np.abs(faint_fig - bottom).max() < 0.3      # dark on the figure's scale
    px = own.px
    assert np.allclose(faint_own[px // 2, px // 2], top, atol=0.02)                 # its diagonal: the top colour
    assert faint_own.mean() > faint_fig.mean() + 0.1
    assert np.allclose(own.vmax[0, 1], float(stack[0, 1].max()))
    # the op draws what it was asked for, says so in the record and the command; figure stays the default
    result.save(tmp_path / "head", timing=False)
    plain.save(tmp_path / "figure", timing=False)
    saved = np.asarray(Image.open(tmp_path / "head" / "model-view-0.png").convert("RGB"))
    assert np.array_equal(saved, own.image)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "figure" / "model-view-0.png").convert("RGB")), fig.image)
    record = json.loads((tmp_path / "head" / "attention.json").read_text())
    assert record["scale"] == "per-map" and record["command"].split(" --text")[0].endswith("--scale per-map")
    assert json.loads((tmp_path / "figure" / "attention.json").read_text())["scale"] == "figure"
    with pytest.raises(NnfeatError, match="unknown scale 'cell'"):
        token_attention(faint_model(), ["w1 w2"], scale="cell")


def test_decoding_steps_per_head_scale_and_dates_seq2seq(tmp_path):
    w = torch.zeros(2, 3, 4)          # (heads, steps, source tokens)
    w[0, torch.arange(3), torch.arange(3)] = 1.0
    w[1] = 0.02
    w[1, :, 3] = 0.05                  # head 1: all small, the last source token the largest
    src, tgt = ["a", "b", "c", "d"], ["x", "y", "z"]
    fig = steps_figure(w, src, tgt, scale="figure")
    own = steps_figure(w, src, tgt, scale="per-map")
    top = tuple(int(v) for v in (TOP * 255).round())
    # head 1's strip: a row of 10 px per head; on its own scale its largest weight is the top colour
    assert (own == np.array(top, dtype=np.uint8)).all(-1).sum() > (fig == np.array(top, dtype=np.uint8)).all(-1).sum()
    with pytest.raises(NnfeatError, match="unknown scale 'x'"):
        steps_figure(w, src, tgt, scale="x")
    model = load_model("dates-seq2seq", weights="random", device="cpu")
    result = token_attention(model, ["25th of June, 2009"], scale="per-map")
    result.save(tmp_path / "dates", timing=False)
    names = {p.name for p in (tmp_path / "dates").iterdir()}
    assert {"model-view-0.png", "cross-view-0.png", "steps-0.png"} <= names
    assert json.loads((tmp_path / "dates" / "attention.json").read_text())["scale"] == "per-map"
