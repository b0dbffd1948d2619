"""ActivationCapture on real networks: early exit, hook cleanup, in-place and shared ReLUs, ViT tokens."""

from __future__ import annotations

import pytest
import torch

from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.models import Model, load_model


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def hook_count(model: Model) -> int:
    return sum(len(m._forward_hooks) for m in model.net.modules())


@pytest.fixture(scope="module")
def resnet20() -> Model:
    return load_model("cifar10-resnet20", weights="random")


@pytest.fixture(scope="module")
def resnet18() -> Model:
    return load_model("torchvision:resnet18", weights="random")


class CallCounter:
    """Counts forward calls of some modules through hooks it removes on exit."""

    def __init__(self, model: Model, names: list[str]) -> None:
        self.calls = dict.fromkeys(names, 0)
        self.handles = [model.module(n).register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(*_):
            self.calls[name] += 1

        return hook

    def __enter__(self) -> "CallCounter":
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


# --- early exit ---------------------------------------------------------------------------------------
def test_early_exit_skips_later_layers(resnet20):
    x = images(2, 32)
    with CallCounter(resnet20, ["layer1", "layer2", "layer3", "linear"]) as counter:
        with ActivationCapture(resnet20, ["layer1"]) as capture:
            acts = capture(x)
    assert acts["layer1"].shape == (2, 16, 32, 32)
    assert counter.calls == {"layer1": 1, "layer2": 0, "layer3": 0, "linear": 0}


def test_output_capture_runs_everything(resnet20):
    x = images(2, 32)
    with CallCounter(resnet20, ["layer2", "layer3", "linear"]) as counter:
        with ActivationCapture(resnet20, ["layer2", "output"]) as capture:
            acts = capture(x)
    assert counter.calls == {"layer2": 1, "layer3": 1, "linear": 1}
    with torch.no_grad():
        assert torch.allclose(acts["output"], resnet20(x), atol=1e-5)
        x_net = resnet20.preprocess(x)
        net = resnet20.net
        stem = net.relu(net.bn1(net.conv1(x_net)))
        assert torch.allclose(acts["layer2"], net.layer2(net.layer1(stem)), atol=1e-5)


# --- hook cleanup -------------------------------------------------------------------------------------
def test_hooks_removed_after_context(resnet20):
    assert hook_count(resnet20) == 0
    with ActivationCapture(resnet20, ["layer1.0.relu1", "layer3", "output"]) as capture:
        assert hook_count(resnet20) == 2
        capture(images(1, 32))
    assert hook_count(resnet20) == 0


def test_hooks_removed_after_exception(resnet20):
    with pytest.raises(ZeroDivisionError):
        with ActivationCapture(resnet20, ["layer2", "layer3"]) as capture:
            capture(images(1, 32))
            assert hook_count(resnet20) == 2
            1 / 0
    assert hook_count(resnet20) == 0
    with pytest.raises(NnfeatError):  # an error raised by capture() itself
        with ActivationCapture(resnet20, ["layer2"]) as capture:
            capture(torch.rand(1, 5, 32, 32))
    assert hook_count(resnet20) == 0


def test_unknown_layer_registers_nothing(resnet20):
    with pytest.raises(NnfeatError) as err:
        ActivationCapture(resnet20, ["layer2", "layer3.1.conv"])
    assert "\n" not in str(err.value) and "layer3.1.conv" in str(err.value)
    assert hook_count(resnet20) == 0


# --- in-place ReLU ------------------------------------------------------------------------------------
@pytest.mark.parametrize("also", ["output", "layer1"])
def test_inplace_relu_does_not_overwrite_capture(resnet18, also):
    """torchvision's stem is bn1 -> ReLU(inplace=True): the captured bn1 must stay pre-ReLU, with gradients."""
    net = resnet18.net
    assert net.relu.inplace
    x = images(2, 64).requires_grad_(True)
    with ActivationCapture(resnet18, ["bn1", also]) as capture:
        acts = capture(x)
    captured = acts["bn1"]
    assert (captured < 0).any()

    x_ref = x.detach().clone().requires_grad_(True)
    reference = net.bn1(net.conv1(resnet18.preprocess(x_ref)))
    assert torch.allclose(captured, reference, atol=1e-5)

    grad = torch.autograd.grad(captured.sum(), x)[0]
    grad_ref = torch.autograd.grad(reference.sum(), x_ref)[0]
    assert grad.abs().sum() > 0
    assert torch.allclose(grad, grad_ref, atol=1e-5, rtol=1e-4)
    if also == "output":  # the copy handed downstream leaves the network's own result unchanged
        with torch.no_grad():
            assert torch.allclose(acts["output"], resnet18(x), atol=1e-4)


# --- shared ReLU --------------------------------------------------------------------------------------
def test_shared_relu_calls_are_separate_layers(resnet18):
    """torchvision's BasicBlock calls its one ``relu`` twice: after bn1 and after the residual add."""
    net = resnet18.net
    x = images(2, 64)
    with ActivationCapture(resnet18, ["layer1.0.relu#0", "layer1.0.relu#1"]) as capture:
        acts = capture(x)
    with torch.no_grad():
        block = net.layer1[0]
        block_in = net.maxpool(net.relu(net.bn1(net.conv1(resnet18.preprocess(x)))))
        first = torch.relu(block.bn1(block.conv1(block_in)))
        second = torch.relu(block.bn2(block.conv2(first)) + block_in)
    assert torch.allclose(acts["layer1.0.relu#0"], first, atol=1e-5)
    assert torch.allclose(acts["layer1.0.relu#1"], second, atol=1e-5)
    assert not torch.allclose(acts["layer1.0.relu#0"], acts["layer1.0.relu#1"])

    with ActivationCapture(resnet18, ["layer1.0.relu", "layer1.0.relu#0"]) as capture:  # plain name = first call
        acts = capture(x)
    assert torch.allclose(acts["layer1.0.relu"], first, atol=1e-5)
    assert acts["layer1.0.relu#0"] is acts["layer1.0.relu"]


def test_shared_relu_missing_call_is_one_line_error(resnet18):
    with pytest.raises(NnfeatError) as err:
        with ActivationCapture(resnet18, ["layer1.0.relu#2"]) as capture:
            capture(images(1, 64))
    text = str(err.value)
    assert "\n" not in text and "layer1.0.relu#2" in text and "2 times" in text
    assert hook_count(resnet18) == 0
    with pytest.raises(NnfeatError):
        ActivationCapture(resnet18, ["layer1.0.relu#x"])


# --- ViT tokens and layer listing ---------------------------------------------------------------------
def test_vit_token_activations():
    from torchvision.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    model = Model(vit, name="tiny-vit", input_size=32)
    x = images(3, 32).requires_grad_(True)
    with ActivationCapture(model, ["encoder.layers.encoder_layer_0", "output"]) as capture:
        acts = capture(x)
    tokens = acts["encoder.layers.encoder_layer_0"]
    assert tokens.shape == (3, 17, 32)  # 4x4 patches + class token, hidden 32
    assert acts["output"].shape == (3, 1000)
    assert torch.autograd.grad(tokens[:, 0].sum(), x)[0].abs().sum() > 0


def test_describe_layers_resnet20(resnet20):
    rows = {name: (shape, channels) for name, shape, channels in resnet20.describe_layers()}
    assert rows["layer1"] == ((16, 32, 32), 16)
    assert rows["layer2.0.shortcut"] == ((32, 16, 16), 32)
    assert rows["layer3"] == ((64, 8, 8), 64)
    assert rows["linear"] == ((10,), 10)
    assert rows["output"] == ((10,), 10)
    assert hook_count(resnet20) == 0


def test_describe_layers_lists_shared_relu_calls(resnet18):
    names = [name for name, _, _ in resnet18.describe_layers(size=(64, 64))]
    assert "layer1.0.relu#0" in names and "layer1.0.relu#1" in names
    assert "layer1.0.conv1" in names and "layer1.0.relu" not in names


class _AttendToPatch(torch.nn.Module):
    """Tokens from 2x2 patches of a 8x8 image; one attention layer whose query/key weights make every token
    attend to the brightest patch (keys ~ patch brightness, one shared query)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(embed_dim=4, num_heads=1, batch_first=True)
        with torch.no_grad():
            self.attn.in_proj_weight.zero_()
            self.attn.in_proj_bias.zero_()
            self.attn.in_proj_bias[:4] = 1.0  # every query is (1, 1, 1, 1)
            self.attn.in_proj_weight[4:8] = 20.0 * torch.eye(4)  # key = 20 x token: bright tokens win
            self.attn.in_proj_weight[8:] = torch.eye(4)

    def forward(self, x):
        tokens = torch.nn.functional.unfold(x[:, :1], 2, stride=2).transpose(1, 2)  # (B, 16, 4)
        out, _ = self.attn(tokens, tokens, tokens)
        return out.mean(1)


def test_a_tuple_element_of_an_attention_module_is_a_layer():
    model = Model(_AttendToPatch(), input_size=8)
    image = torch.zeros(1, 3, 8, 8)
    image[:, :, 4:6, 2:4] = 1.0  # patch (row 2, col 1) -> token 2 * 4 + 1 = 9
    with ActivationCapture(model, ["attn", "attn[1]"]) as capture:
        acts = capture(image)
    assert acts["attn"].shape == (1, 16, 4)  # element 0 (the output), as a plain name gives
    weights = acts["attn[1]"]
    assert weights.shape == (1, 16, 16)
    assert (weights.argmax(-1) == 9).all(), "every query attends to the bright patch"
    assert torch.allclose(weights.sum(-1), torch.ones(1, 16))


def test_a_missing_tuple_element_is_a_one_line_error():
    model = Model(_AttendToPatch(), input_size=8)
    with pytest.raises(NnfeatError, match=r"element 2, but 'attn' returns \[0\] Tensor, \[1\] Tensor"):
        with ActivationCapture(model, ["attn[2]"]) as capture:
            capture(torch.rand(1, 3, 8, 8))
