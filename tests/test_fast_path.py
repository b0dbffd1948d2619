"""The fast network of dataset passes (nnfeat.analysis.fast_path): same maps as the plain model, actually folded
and channels-last, a network that rejects channels-last still runs, a kept BatchNorm output is what it was."""

from __future__ import annotations

import torch
from torch import nn

import nnfeat
from nnfeat.analysis.attribution import input_gradients
from nnfeat.analysis.fast_path import fast_network
from nnfeat.analysis.heatmap import layer_maps
from nnfeat.analysis.saliency import saliency_maps
from nnfeat.analysis.uncertainty import mc_dropout_probs
from nnfeat.models.base import Model


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _same(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    a, b = a.double().flatten(), b.double().flatten()
    r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert r >= 0.99999, r
    assert float((a - b).abs().max()) <= atol * float(a.abs().max()), float((a - b).abs().max())


def test_same_maps_as_the_plain_model(cifar_resnet20):
    model = cifar_resnet20
    x = _images()
    targets = torch.arange(len(x)) % 10
    fast = fast_network(model, keep=["layer3.2.conv2"])
    assert fast.record() == {"batchnorm_folded": True, "folded_layers": 18, "channels_last": True,
                             "precision": "fp32"}  # 19 BatchNorms, the kept conv's stays
    _same(layer_maps(model, "layer2", x), layer_maps(fast.network, "layer2", x), 1e-5)
    # the kept conv's own (pre-BatchNorm) output
    _same(layer_maps(model, "layer3.2.conv2", x), layer_maps(fast.network, "layer3.2.conv2", x), 1e-5)
    _same(input_gradients(model, x, targets), input_gradients(fast.network, x, targets), 1e-5)
    # IG's path starts at a black image, where activations sit near ReLU kinks: a rounding-level difference flips
    # a few ReLUs at some alphas (measured: the same 1.4e-3 of the peak with channels-last alone, no fold)
    for method, atol in (("integrated-gradients", 3e-3), ("gradcam", 1e-4)):
        layer = "layer3.2.conv2" if method == "gradcam" else None
        plain = saliency_maps(model, x, targets, method, layer=layer, batch_size=64)
        fast_maps = saliency_maps(fast.network, x, targets, method, layer=layer, batch_size=64)
        _same(plain, fast_maps, atol)
    assert fast_network(model, keep=["layer3.2.conv2"]) is fast  # cached: no re-fold per pass


def test_no_batchnorm_runs_and_the_first_conv_sees_channels_last(cifar_resnet20):
    fast = fast_network(cifar_resnet20)
    bn_calls, seen = [], []
    handles = [m.register_forward_hook(lambda *_: bn_calls.append(1)) for m in fast.network.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    first_conv = next(m for m in fast.network.modules() if isinstance(m, nn.Conv2d))
    handles.append(first_conv.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0])))
    plain_calls = []
    handles += [m.register_forward_hook(lambda *_: plain_calls.append(1)) for m in cifar_resnet20.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        with torch.no_grad():
            fast.network(_images(2))
            cifar_resnet20(_images(2))
    finally:
        for h in handles:
            h.remove()
    assert bn_calls == [] and len(plain_calls) == 19
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()


class _Flattens(nn.Module):
    """conv -> BatchNorm -> .view on the conv map (rejects channels-last) -> linear: 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.fc(y.view(y.shape[0], -1))


def _flattens() -> Model:
    torch.manual_seed(0)
    net = _Flattens()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.2, 0.2)
    return Model(net, name="flattens", input_size=8)


def test_a_network_that_rejects_channels_last_still_runs():
    model = _flattens()
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the failure the fallback guards against is real
        try:
            model(x.contiguous(memory_format=torch.channels_last))
            rejected = False
        except RuntimeError:
            rejected = True
    assert rejected
    fast = fast_network(model)
    assert fast.record() == {"batchnorm_folded": True, "folded_layers": 1, "channels_last": False,
                             "precision": "fp32"}
    targets = torch.arange(5)
    _same(input_gradients(model, x, targets), input_gradients(fast.network, x, targets), 1e-5)
    with torch.no_grad():
        _same(model(x), fast.network(x), 1e-5)


def test_a_kept_batchnorm_output_is_what_the_user_asked_to_see():
    model = _flattens()
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    fast = fast_network(model, keep=["bn"])
    plain_bn = layer_maps(model, "bn", x)
    _same(plain_bn, layer_maps(fast.network, "bn", x), 1e-5)
    conv = layer_maps(model, "conv", x)
    assert float((conv - plain_bn).abs().max()) > 0.1  # the BatchNorm does change the map
    kept_conv = fast_network(model, keep=["conv"])  # the conv's own output: its BatchNorm stays
    assert kept_conv.batchnorm_folded == 0
    _same(conv, layer_maps(kept_conv.network, "conv", x), 1e-6)


def test_results_say_what_ran(cifar_resnet20):
    x = _images(4)
    heat = nnfeat.heatmap(cifar_resnet20, "layer2", x, top=2)
    assert heat.record()["fast_path"] == {"batchnorm_folded": True, "folded_layers": 19, "channels_last": True,
                                          "precision": "fp32"}
    assert heat.maps.is_contiguous()
    sal = nnfeat.saliency(cifar_resnet20, x, "gradient,gradcam", numbers=False)
    assert sal.record()["settings"]["fast_path"]["channels_last"] is True
    assert all(m.maps.is_contiguous() for m in sal.methods)


class _Dropping(nn.Module):
    """conv -> BatchNorm -> ReLU -> pool -> dropout -> linear: an MC-dropout model with a BatchNorm to fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc(self.drop(y))


def test_mc_dropout_keeps_dropout_active_on_the_folded_network():
    torch.manual_seed(0)
    net = _Dropping()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    model = Model(net, name="dropping", input_size=8, classes=list("abcd"))
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    result = nnfeat.uncertainty(model, x, "mc-dropout", samples=4, top=1)
    assert result.record()["fast_path"] == [{"batchnorm_folded": True, "folded_layers": 1, "channels_last": False,
                                             "precision": "fp32"}]
    # the samples differ (dropout ran) and equal the plain model's (same masks from the same seed)
    plain = mc_dropout_probs(model, x, samples=4, seed=0)
    fast = mc_dropout_probs(fast_network(model, channels_last=False).network, x, samples=4, seed=0)
    assert float((plain[0] - plain[1]).abs().max()) > 1e-3
    _same(plain, fast, 1e-5)


def test_weights_changed_in_place_after_a_pass_are_the_ones_used(cifar_resnet20):
    """A notebook fine-tune (in-place weight and running-statistics changes) after a first pass: the cached folded,
    fast and channels-last copies are made again, so the next pass computes the changed model, not the old one."""
    import copy

    from nnfeat.engine.loop import prepared_network
    from nnfeat.models.fold import folded_copy

    model = copy.deepcopy(cifar_resnet20)
    x = _images(4)
    before = fast_network(model)
    assert fast_network(model) is before  # unchanged weights: the cache hits
    prepared_network(model, [], True, True)
    with torch.no_grad():
        old = model(x)
        model.net.conv1.weight.mul_(-1.5)
        model.net.layer2[0].bn1.running_mean.add_(0.3)
        expected = model(x)
    assert float((expected - old).abs().max()) > 0.1  # the change matters
    tolerance = 1e-4 * float(expected.abs().max())
    with torch.no_grad():
        for network in (fast_network(model).network, folded_copy(model), prepared_network(model, [], True, True)):
            assert float((network(x) - expected).abs().max()) <= tolerance
    assert fast_network(model) is not before


class _ChecksLayout(_Flattens):
    """A model with its own layout check: a ValueError (not a RuntimeError) on channels-last input."""

    def forward(self, x):
        if not x.is_contiguous():
            raise ValueError("this model wants contiguous NCHW input")
        return super().forward(x)


def test_a_network_refusing_channels_last_with_its_own_error_runs_contiguous():
    torch.manual_seed(0)
    model = Model(_ChecksLayout(), name="checks-layout", input_size=8)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    fast = fast_network(model)
    assert fast.record()["channels_last"] is False
    with torch.no_grad():
        _same(model(x), fast.network(x), 1e-5)
