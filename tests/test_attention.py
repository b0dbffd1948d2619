"""`nnfeat attention`: attention weights, maps and rollouts of ViTs (a hand-set transformer with a known answer,
torchvision and timm ViTs with random weights, digits-vit), hook hygiene, the CLI."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nnfeat import cli
from nnfeat.analysis import attention as at
from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.models import Model, load_model
from nnfeat.ops.attention import AttentionResult, attention, check_request

ROOT = Path(__file__).resolve().parents[1]
PATCH, SIDE = 4, 16  # a 4x4 grid of 4 px patches on 16 px images
SHARPNESS = 12.0     # the class token's score for a bright patch (0 for a dark one)


# --- a hand-set transformer whose class token attends to the brightest patch ---------------------------
class Spotlight(nn.Module):
    """Tokens: a class token e0 and one token per 4x4 patch, b * e1 (b: the patch's mean brightness). Head 0 of
    each attention layer scores the class token against patch j as SHARPNESS * b_j, so it attends to the bright
    patch; head 1 has zero queries and keys, so it attends uniformly. Head 0's values (b_j) go to channel 2,
    which nothing reads but the logits [x2, -x2] of the class token: class 0's logit is the attention-weighted
    brightness, so its gradient w.r.t. head 0's class-token row is b_j in every layer."""

    def __init__(self, depth: int = 2, output_tokens: bool = False) -> None:
        super().__init__()
        self.patch_size = PATCH
        self.output_tokens = output_tokens
        self.patch_embed = nn.Conv2d(3, 4, PATCH, stride=PATCH)
        self.class_token = nn.Parameter(torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]))
        self.layers = nn.ModuleList(nn.MultiheadAttention(4, 2, batch_first=True) for _ in range(depth))
        self.head = nn.Linear(4, 2, bias=False)
        a = math.sqrt(SHARPNESS * math.sqrt(2.0))  # q.k / sqrt(head_dim 2) = a^2 b / sqrt(2) = SHARPNESS b
        with torch.no_grad():
            self.patch_embed.weight.zero_()
            self.patch_embed.weight[1] = 1.0 / (3 * PATCH * PATCH)
            self.patch_embed.bias.zero_()
            for mha in self.layers:
                mha.in_proj_weight.zero_()
                mha.in_proj_bias.zero_()
                mha.in_proj_weight[0, 0] = a   # head 0 query <- class-token flag
                mha.in_proj_weight[4, 1] = a   # head 0 key   <- brightness
                mha.in_proj_weight[8, 1] = 1.0  # head 0 value <- brightness
                mha.out_proj.weight.zero_()
                mha.out_proj.bias.zero_()
                mha.out_proj.weight[2, 0] = 1.0
            self.head.weight.copy_(torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, -1.0, 0.0]]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(len(tokens), -1, -1), tokens], 1)
        for mha in self.layers:
            x = x + mha(x, x, x, need_weights=False)[0]
        return x if self.output_tokens else self.head(x[:, 0])


BRIGHT = [5, 10, 15]  # the bright patch of each image (row-major on the 4x4 grid)


def spotlight_model(**kwargs) -> Model:
    return Model(Spotlight(**kwargs), name="spotlight", input_size=SIDE)


def spotlight_images() -> torch.Tensor:
    images = torch.zeros(len(BRIGHT), 3, SIDE, SIDE)
    for i, p in enumerate(BRIGHT):  # building the test input, not a hot path
        r, c = divmod(p, SIDE // PATCH)
        images[i, :, r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = 1.0
    return images


def peaks(maps: torch.Tensor) -> list[int]:
    """(B, gh, gw) -> the row-major peak patch of each map."""
    return maps.flatten(1).argmax(1).tolist()


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_known_patch_maps_and_rollouts_peak_there():
    model, images = spotlight_model(), spotlight_images()
    result = attention(model, images, rollout=True, grad_rollout=True, target=0)
    assert isinstance(result, AttentionResult)
    assert result.layout == at.TokenLayout(17, 1, (4, 4), 0) and result.layers == ["layers.0", "layers.1"]
    assert result.maps.shape == (3, 2, 2, 4, 4)  # images, layers, heads, grid
    for layer in range(2):
        assert peaks(result.maps[:, layer, 0]) == BRIGHT
        assert result.maps[:, layer, 0].flatten(1).amax(1).min() > 0.99  # head 0: (almost) all on the patch
        assert torch.allclose(result.maps[:, layer, 1], torch.full((3, 4, 4), 1 / 17))  # head 1: uniform
    assert peaks(result.rollout) == BRIGHT and peaks(result.grad_rollout) == BRIGHT
    record = result.record()
    assert [img["rollout"]["peak_patch"] for img in record["images"]] == [list(divmod(p, 4)) for p in BRIGHT]
    assert result.images.shape == (3 * (2 * 2 + 2), 3, SIDE, SIDE) and len(result.captions()) == len(result.images)
    assert result._repr_png_().startswith(b"\x89PNG")


def test_known_patch_gradients_and_head_choices():
    model, images = spotlight_model(), spotlight_images()
    captured = at.capture_attention(model, images, target=0, gradients=True)
    brightness = torch.zeros(3, 17)
    brightness[torch.arange(3), torch.tensor(BRIGHT) + 1] = 1.0
    for grad in captured.grads:  # d logit_0 / d A[head 0, class token, j] = b_j; every other entry 0
        assert torch.allclose(grad[:, 0, 0], brightness, atol=1e-5)
        assert grad[:, 0, 1:].abs().max() < 1e-6 and grad[:, 1].abs().max() < 1e-6
    layout = at.token_layout(model, 17, (SIDE, SIDE))
    weights = captured.weights[0]
    assert at.head_maps(weights, layout, "all").shape == (3, 2, 4, 4)
    assert peaks(at.head_maps(weights, layout, "mean")[:, 0]) == BRIGHT
    assert peaks(at.head_maps(weights, layout, "max")[:, 0]) == BRIGHT
    assert torch.equal(at.head_maps(weights, layout, 1), at.head_maps(weights, layout, "all")[:, 1:])
    # a patch token as the query: its head-0 query is 0, so it attends uniformly
    assert torch.allclose(at.head_maps(weights, layout, 0, query=3), torch.full((3, 1, 4, 4), 1 / 17))


def test_rollout_is_the_product_of_mixed_layers():
    weights = [torch.rand(2, 3, 5, 5).softmax(-1) for _ in range(3)]
    mixed = []
    for w in weights:
        a = 0.5 * w.mean(1) + 0.5 * torch.eye(5)
        mixed.append(a / a.sum(-1, keepdim=True))
    want = mixed[2] @ mixed[1] @ mixed[0]
    assert torch.allclose(at.attention_rollout(weights), want, atol=1e-6)
    assert torch.allclose(at.attention_rollout(weights).sum(-1), torch.ones(2, 5))
    maxed = at.attention_rollout(weights[:1], fusion="max")
    ref = 0.5 * weights[0].amax(1) + 0.5 * torch.eye(5)
    assert torch.allclose(maxed, ref / ref.sum(-1, keepdim=True))
    grads = [torch.randn(2, 3, 5, 5) for _ in range(3)]
    relevance = torch.eye(5).expand(2, 5, 5)
    for w, g in zip(weights, grads):
        relevance = relevance + (g * w).clamp_min(0).mean(1) @ relevance
    assert torch.allclose(at.gradient_rollout(weights, grads), relevance, atol=1e-6)


# --- torchvision and timm ViTs, random weights ----------------------------------------------------------
@pytest.fixture(scope="module")
def timm_vit():
    pytest.importorskip("timm")
    return load_model("timm:vit_tiny_patch16_224", weights="random", device="cpu")


def test_torchvision_vit_weights_despite_need_weights_false():
    model = load_model("torchvision:vit_b_16", weights="random", device="cpu")
    image = torch.rand(1, 3, 224, 224)
    captured = at.capture_attention(model, image, "0,-1")
    assert [layer.name for layer in captured.layers] == ["encoder.layers.encoder_layer_0.self_attention",
                                                          "encoder.layers.encoder_layer_11.self_attention"]
    assert captured.weights[0].shape == (1, 12, 197, 197)
    layout = at.token_layout(model, 197, (224, 224))
    assert at.head_maps(captured.weights[1], layout).shape == (1, 12, 14, 14)
    with ActivationCapture(model, ["encoder.layers.encoder_layer_0.ln_1"]) as capture, torch.no_grad():
        x = capture(image)["encoder.layers.encoder_layer_0.ln_1"]
        direct = model.net.encoder.layers[0].self_attention(x, x, x, need_weights=True, average_attn_weights=False)[1]
    assert torch.allclose(captured.weights[0], direct, atol=1e-5)
    assert hook_count(model) == 0


def test_timm_recomputed_weights_equal_the_unfused_softmax(timm_vit):
    assert timm_vit.net.blocks[0].attn.fused_attn  # the recomputed path is the one under test
    images = torch.rand(2, 3, 224, 224)
    captured = at.capture_attention(timm_vit, images, "blocks.0,blocks.5,11", output=False)
    assert {layer.kind for layer in captured.layers} == {"timm"} and captured.output is None
    unfused = copy.deepcopy(timm_vit)
    for block in unfused.net.blocks:
        block.attn.fused_attn = False
    refs = [f"blocks.{i}.attn.attn_drop" for i in (0, 5, 11)]
    with ActivationCapture(unfused, refs) as capture, torch.no_grad():
        real = capture(images)
    for mine, ref in zip(captured.weights, refs):
        assert mine.shape == (2, 3, 197, 197)
        assert torch.allclose(mine, real[ref], atol=1e-5)
    layout = at.token_layout(timm_vit, 197, (224, 224))
    assert layout.grid == (14, 14) and layout.cls == 0
    assert at.head_maps(captured.weights[0], layout).shape == (2, 3, 14, 14)
    # gradients run the layers unfused for the call, then fused again
    with_grads = at.capture_attention(timm_vit, images, "blocks.0,blocks.5,11", gradients=True)
    for mine, ref in zip(with_grads.weights, refs):
        assert torch.allclose(mine, real[ref], atol=1e-5)
    assert all(block.attn.fused_attn for block in timm_vit.net.blocks) and hook_count(timm_vit) == 0


def test_timm_dynamic_size_non_square_grid():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True)
    model = Model(net, name="vit-dynamic", input_size=224)
    result = attention(model, torch.rand(2, 3, 224, 160), layers="-1", head="mean", rollout=True)
    assert result.layout.grid == (14, 10) and result.maps.shape == (2, 1, 1, 14, 10)
    assert result.rollout.shape == (2, 14, 10) and result.overlays.shape == (2, 1, 1, 3, 224, 160)


def test_timm_other_attention_modules_run_unfused_and_registers_without_class_token():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    eva = Model(timm.create_model("eva02_tiny_patch14_224", pretrained=False), name="eva", input_size=224)
    image = torch.rand(1, 3, 224, 224)
    captured = at.capture_attention(eva, image, "0,-1")
    assert [layer.kind for layer in captured.layers] == ["unfused", "unfused"]
    assert captured.weights[0].shape == (1, 3, 257, 257)
    assert torch.allclose(captured.weights[1].sum(-1), torch.ones(1, 3, 257), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(captured.output, eva(image), atol=1e-4)  # unfused for the call: the same network
    assert eva.net.blocks[0].attn.fused_attn and hook_count(eva) == 0
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, reg_tokens=4, class_token=False,
                            global_pool="avg")
    model = Model(net, name="vit-reg4-gap", input_size=224)
    result = attention(model, image, layers="0", head="mean", rollout=True)
    assert result.layout == at.TokenLayout(200, 4, (14, 14), None) and result.query is None
    weights = at.capture_attention(model, image, "0").weights[0]
    want = weights.mean(1)[:, 4:, 4:].mean(1).reshape(1, 14, 14)  # no class token: the mean over patch queries
    assert torch.allclose(result.maps[:, 0, 0], want, atol=1e-6)
    assert "mean of patch tokens" in result.title()


def test_digits_vit_grad_rollout_and_layer_selection():
    model = load_model("digits-vit", weights="random", device="cpu")
    assert [layer.name for layer in at.select_layers(model, "blocks.1")] == ["blocks.1.attn"]
    assert [layer.name for layer in at.select_layers(model, [-1, "blocks.0.attn"])] == ["blocks.0.attn",
                                                                                        "blocks.2.attn"]
    images = torch.rand(3, 3, 32, 32)
    result = attention(model, images, head="max", grad_rollout=True)
    assert result.maps.shape == (3, 3, 1, 8, 8) and result.grad_rollout.shape == (3, 8, 8)
    assert torch.isfinite(result.grad_rollout).all() and result.targets == result.predictions
    with torch.no_grad():
        assert result.predictions == model(images).argmax(1).tolist()


# --- hooks and errors -----------------------------------------------------------------------------------
def test_hooks_are_removed_after_every_call_including_errors(timm_vit):
    model = spotlight_model()
    with ActivationCapture(model, ["layers.0"]):
        assert hook_count(model) > 0  # the counter sees hooks
    at.capture_attention(model, spotlight_images(), gradients=True)
    assert hook_count(model) == 0
    with pytest.raises(NnfeatError, match="images must have shape"):  # fails inside the forward pass
        at.capture_attention(model, torch.rand(1, 2, SIDE, SIDE))
    assert hook_count(model) == 0
    with pytest.raises(NnfeatError, match="target class 5 is out of range"):  # fails after the forward pass
        at.capture_attention(model, spotlight_images(), target=5, gradients=True)
    assert hook_count(model) == 0
    with pytest.raises(NnfeatError, match="target class 9999"):
        at.capture_attention(timm_vit, torch.rand(1, 3, 224, 224), "0", target=9999, gradients=True)
    assert hook_count(timm_vit) == 0 and timm_vit.net.blocks[0].attn.fused_attn


def test_one_line_errors():
    model = spotlight_model()
    cnn = load_model("digits-cnn", weights="random", device="cpu")
    cases = [
        (lambda: at.select_layers(cnn), "model 'digits-cnn' has no attention layers"),
        (lambda: check_request(model, head=2), r"head 2 is out of range: .* has 2 heads \(0..1\)"),
        (lambda: check_request(model, head="median"), "unknown head 'median'"),
        (lambda: check_request(model, "layers.7"), "'layers.7' is not an attention layer of spotlight; nearest: layers.1, layers.0"),
        (lambda: check_request(model, "5"), r"attention layer 5 is out of range: spotlight has 2 .*\(0..1\)"),
        (lambda: check_request(model, query=17), "query token 17 is out of range"),
        (lambda: check_request(model, target=1), "--target .* add --grad-rollout"),
        (lambda: check_request(spotlight_model(output_tokens=True), grad_rollout=True), "needs class logits"),
    ]
    for call, message in cases:
        with pytest.raises(NnfeatError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


# --- the CLI --------------------------------------------------------------------------------------------
def _nnfeat(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "nnfeat", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def trained_digits_vit():
    """digits-vit trained (once per session) into the session's NNFEAT_HOME, which CLI subprocesses share."""
    return load_model("digits-vit", device="cpu")


def test_cli_writes_attention_files(tmp_path, trained_digits_vit):
    out = tmp_path / "attn"
    proc = _nnfeat("attention", "digits-vit", "--images", "digits", "--n", "3", "--rollout", "--grad-rollout",
                   "--target", "3", "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert {"attention.json", "attention.png", "attention-maps.npz", "image-0.png"} <= {p.name for p in out.iterdir()}
    record = json.loads((out / "attention.json").read_text())
    assert record["kind"] == "attention" and record["model"] == "digits-vit"
    assert record["tokens"] == {"count": 65, "extra": 1, "class_token": 0, "grid": [8, 8]}
    assert record["layers"] == ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"] and record["heads_per_layer"] == [4] * 3
    assert len(record["images"]) == 3 and len(record["images"][0]["maps"]) == 12
    assert all(img["grad_rollout"]["target"] == "3" for img in record["images"])
    assert record["command"].startswith("nnfeat attention digits-vit --images digits --n 3 --rollout")


@pytest.mark.parametrize("extra, message", [
    (["digits-vit", "--images", "digits", "--head", "4"], "head 4 is out of range"),
    (["digits-cnn", "--images", "digits"], "model 'digits-cnn' has no attention layers"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, extra, message):
    out = tmp_path / "never"
    proc = _nnfeat("attention", *extra, "--weights", "random", "--quiet", "--out", str(out))
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def test_cli_more_bad_input_in_process(tmp_path, capsys):
    out = tmp_path / "never"
    for extra in (["--layer", "blocks.9"], ["--target", "3"], ["--grad-rollout", "--target", "10"],
                  ["--query", "65"], ["--n", "0"]):
        code = cli.main(["attention", "digits-vit", "--images", "digits", "--weights", "random", "--quiet",
                         "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("nnfeat: error: "), (extra, err)
        assert not out.exists()
