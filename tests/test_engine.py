"""Render engine behaviour on real models: determinism, early exit, exact BatchNorm folding,
parameterizations and transforms, and the CIFAR ResNet activation-ratio check."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from nnfeat import objectives as O
from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.models.base import Model
from nnfeat.models.fold import folded_copy
from nnfeat.engine.param import PARAM_KINDS, image_param
from nnfeat.ops.render import render
from nnfeat.engine.transforms import Jitter, Pad, RandomAffine, RandomRotate, RandomScale, auto_transforms, standard_transforms

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="module")
def resnet20():
    if not (SHARED / "models" / "resnet20-12fca82f.th").exists():
        pytest.skip("../shared/models/resnet20-12fca82f.th is absent (CI has it)")
    from nnfeat.models.zoo import load_model

    return load_model("cifar10-resnet20")


def test_same_seed_same_image_different_seed_different(resnet20):
    kwargs = dict(steps=12, progress=False, batch=2)
    a = render(resnet20, O.channel("layer2", 3), seed=7, **kwargs)
    b = render(resnet20, O.channel("layer2", 3), seed=7, **kwargs)
    c = render(resnet20, O.channel("layer2", 3), seed=8, **kwargs)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.values, b.values)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images[0], a.images[1]), "batch items must start from independent draws"


def test_render_never_runs_modules_past_the_deepest_target(resnet20):
    calls = {"layer2": 0, "layer3": 0, "linear": 0}
    handles = [getattr(resnet20.net, n).register_forward_hook(lambda *a, n=n: calls.__setitem__(n, calls[n] + 1))
               for n in calls]
    try:
        render(resnet20, O.channel("layer1", 0), steps=3, progress=False, fold_batchnorm=False)
        assert calls == {"layer2": 0, "layer3": 0, "linear": 0}
        render(resnet20, O.logit(2), steps=3, progress=False, fold_batchnorm=False)
        assert calls["linear"] >= 4  # 3 steps + final evaluation (+ a one-off shape probe)
    finally:
        for h in handles:
            h.remove()
    assert not any(m._forward_hooks for m in resnet20.net.modules())


def test_hooks_are_removed_after_a_failing_render(resnet20):
    with pytest.raises(NnfeatError):
        render(resnet20, O.channel("layer3", 64), steps=2, progress=False)
    bad = O.Objective(lambda acts: acts["layer2"].sum() * torch.tensor([1.0, 2.0]), ["layer2"], "bad")
    with pytest.raises(RuntimeError):
        render(resnet20, bad, steps=2, progress=False, batch=3, fold_batchnorm=False)
    assert not any(m._forward_hooks for m in resnet20.net.modules())


def _output_and_input_grad(model: Model, x: torch.Tensor, layer: str):
    x = x.clone().requires_grad_(True)
    with ActivationCapture(model, [layer]) as capture:
        act = capture(x)[layer]
    (grad,) = torch.autograd.grad(act.pow(2).sum(), x)
    return act.detach(), grad


@pytest.mark.parametrize("arch,layer", [("resnet18", "layer3"), ("googlenet", "inception4a"), ("resnet18", "output")])
def test_batchnorm_folding_is_exact_on_torchvision_models(arch, layer):
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    net = torchvision.models.get_model(arch, weights=None, **kwargs)
    for m in net.modules():  # non-trivial BN statistics, as a trained net has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model = Model(net, input_size=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    folded = folded_copy(model)
    assert folded is not model
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.net.modules()) == 0
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ref_act, _ = _output_and_input_grad(model, x, layer)
    act, _ = _output_and_input_grad(folded, x, layer)
    assert torch.allclose(act, ref_act, rtol=1e-4, atol=1e-4)
    # Gradients in float64: in float32, rounding can flip near-ties of max-pool windows in googlenet.
    ref_act, ref_grad = _output_and_input_grad(model.double(), x.double(), layer)
    act, grad = _output_and_input_grad(folded.double(), x.double(), layer)
    # (the folded weights were computed in float32, so agreement is to float32 precision)
    assert (act - ref_act).norm() / ref_act.norm() < 1e-5
    assert (grad - ref_grad).norm() / ref_grad.norm() < 1e-5


def test_folding_keeps_targeted_convolutions_unfolded(resnet20):
    folded = folded_copy(resnet20, keep=["layer2.0.conv1"])
    assert isinstance(folded.net.layer2[0].bn1, torch.nn.BatchNorm2d)
    assert isinstance(folded.net.layer2[0].bn2, torch.nn.Identity)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad(), ActivationCapture(resnet20, ["layer2.0.conv1"]) as a, \
            ActivationCapture(folded, ["layer2.0.conv1"]) as b:
        assert torch.allclose(a(x)["layer2.0.conv1"], b(x)["layer2.0.conv1"], atol=1e-5)


@pytest.mark.parametrize("kind", [k for k in PARAM_KINDS if k != "maco"])
def test_parameterizations_give_valid_images_and_learn(kind, resnet20):
    g = torch.Generator().manual_seed(0)
    param = image_param(kind, 32, 2, generator=g)
    images = param()
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    result = render(resnet20, O.channel("layer2", 1), param=param, steps=30, lr=0.02 if kind == "cppn" else 0.05,
                    progress=False)
    assert (result.values[-3:].mean(0) > result.values[:2].mean(0)).all()


def test_maco_keeps_the_magnitude_fixed():
    magnitude = torch.rand(3, 16, 9, generator=torch.Generator().manual_seed(0))
    param = image_param("maco", 16, 2, magnitude=magnitude, decorrelate=False, generator=torch.Generator())
    raw = param.raw()
    assert torch.allclose(torch.fft.rfft2(raw, norm="ortho").abs()[..., 1:8], magnitude.expand(2, -1, -1, -1)[..., 1:8],
                          atol=1e-4)


def test_shared_components_are_common_to_the_batch():
    param = image_param("fft+shared", 16, 3, generator=torch.Generator().manual_seed(0))
    shared = param.raw.parts[1]()
    assert torch.equal(shared[0], shared[2])


def test_transforms_identity_pad_and_batching():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g)
    assert torch.allclose(RandomAffine([])(x, g), x, atol=1e-6)
    padded = RandomAffine([Pad(16)], out_size=(64, 64))(x, g)
    assert torch.allclose(padded[:, :, 16:48, 16:48], x, atol=1e-5)
    assert torch.all(padded[:, :, :14] == 0.5)
    moved = RandomAffine([Jitter(6), RandomScale([0.9, 1.1]), RandomRotate([-10, 10])])(x, g)
    assert not torch.allclose(moved[0], moved[1])  # each item gets its own draw
    out = standard_transforms(224)(x, g)
    assert out.shape == (4, 3, 224, 224)


def test_auto_transforms_scale_with_size_and_equal_lucid_at_128():
    def numbers(t):
        return [s.pad if isinstance(s, Pad) else s.d for s in t.steps if isinstance(s, (Pad, Jitter))]

    assert numbers(auto_transforms(128)) == numbers(standard_transforms()) == [12, 8, 4]
    assert numbers(auto_transforms(32)) == [3, 2, 1]
    assert torch.allclose(auto_transforms(128).steps[2].scales, standard_transforms().steps[2].scales)


def _testset(n=None):
    data = np.load(SHARED / "data" / "cifar10_test.npz")
    images = torch.from_numpy(data["images"][:n]).permute(0, 3, 1, 2).float() / 255
    return images, torch.from_numpy(data["labels"][:n])


@pytest.mark.slow
def test_cifar_layer3_channel_renders_beat_the_test_set_maximum(resnet20):
    """Renders of layer3 channels exceed each channel's max mean activation over the CIFAR-10 test set."""
    images, _ = _testset()
    channels = list(range(0, 64, 4))
    with torch.no_grad(), ActivationCapture(resnet20, ["layer3"]) as capture:
        dataset_max = torch.cat([capture(images[i:i + 2000])["layer3"].mean((2, 3)) for i in range(0, 10000, 2000)])
    dataset_max = dataset_max.max(0).values[channels]
    result = render(resnet20, O.channel("layer3", channels), steps=128, progress=False)
    ratio = result.final_values / dataset_max
    assert (ratio > 1).sum() >= 12, f"ratios {ratio.tolist()}"
    assert (result.final_values > 0).all(), "no channel may be left at zero"
