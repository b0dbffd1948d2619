"""Minimized units read the pre-activation where their layer's output comes from a ReLU (issue 25 §2).

Known answers: on the trained CIFAR ResNet-20, ``-layer3:5`` used to give a flat grey image with objective ``-0``
(the post-ReLU minimum); now the image has structure and unit 5's input to the last ReLU is strongly negative.
Hand-built nets with every ReLU call form (module, in-place module, ``F.relu``, ``torch.relu_``, ``Tensor.relu``)
have a pre-activation we compute by hand; a layer that is not a ReLU output renders exactly as before.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnfeat
from nnfeat.cli import main as cli_main
from nnfeat.engine.expr import parse_objective
from nnfeat.engine.loop import evaluate
from nnfeat.engine.objectives import Objective, channel
from nnfeat.hooks import ActivationCapture, pre_relu_key
from nnfeat.models.base import wrap_module

STEPS = 64


def relu_input(model, images: torch.Tensor) -> torch.Tensor:
    """(B, 64, 8, 8): the input of ResNet-20's last ReLU (``layer3.2.relu2``), read by a plain pre-hook."""
    seen = []
    handle = model.net.layer3[2].relu2.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return seen[0]


@pytest.fixture(scope="module")
def minimized(cifar_resnet20):
    return nnfeat.render(cifar_resnet20, "-layer3:5", steps=STEPS, progress=False)


def test_minimized_unit_is_not_a_flat_image_and_drives_the_pre_activation_down(cifar_resnet20, minimized):
    images = minimized.images
    assert images.flatten(1).std(1).item() > 0.05  # the old flat grey render had a pixel std of 0.002
    pre = relu_input(cifar_resnet20, images)[:, 5].mean((1, 2))
    noise = relu_input(cifar_resnet20, torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    grey = relu_input(cifar_resnet20, torch.full((1, 3, 32, 32), 0.5))
    assert pre.item() < -2.0  # measured -3.7 at 64 steps (-4.8 at 256)
    assert pre.item() < noise[:, 5].mean((1, 2)).min().item() - 1.0  # noise images: -0.01 .. -0.52
    assert pre.item() < grey[:, 5].mean().item() - 1.0  # flat grey: -0.36
    # the objective is the negated pre-activation: positive, with its sign, never -0
    assert minimized.final_values.item() == pytest.approx(-pre.item(), rel=1e-4, abs=1e-4)
    assert evaluate(cifar_resnet20, parse_objective("-layer3:5"), images).item() == pytest.approx(-pre.item(),
                                                                                                  rel=1e-4, abs=1e-4)
    positive = nnfeat.render(cifar_resnet20, "layer3:5", steps=STEPS, progress=False)
    assert relu_input(cifar_resnet20, positive.images)[:, 5].mean().item() > 5.0  # measured 9.2


def test_caption_title_and_json_keep_the_minus_and_say_pre_relu(minimized, tmp_path):
    assert minimized.settings["objective"] == "-layer3:5"
    assert minimized.settings["item_units"] == ["-layer3:5"]
    assert minimized.settings["pre_relu"] == ["layer3"] and minimized.settings["not_relu_outputs"] == []
    caption = minimized.captions()[0]
    assert caption.startswith("-layer3:5 (pre-ReLU)\n") and not caption.endswith("-0")
    assert "-layer3:5" in minimized.title() and "pre-ReLU layer3" in minimized.title()
    minimized.save(tmp_path)
    record = json.loads((tmp_path / "render.json").read_text())
    assert record["settings"]["pre_relu"] == ["layer3"]
    assert any("pre-ReLU" in note and "layer3" in note for note in record["notes"])


def test_cli_prints_the_note_and_a_signed_objective(tmp_path, capsys):
    assert cli_main(["render", "cifar10-resnet20", "-layer3:5", "--steps", "8", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "note: -layer3:5: the minimized units of 'layer3' read its pre-ReLU value" in out
    value = out.split("final objective ")[1].split()[0]
    assert float(value) > 0.1 and value != "-0"


def test_positive_render_is_unchanged_by_recording_the_pre_activation(cifar_resnet20):
    """The same positive objective, once declaring layer3 minimized (the capture then records every ReLU call of
    layer3 and copies the pre-activation) and once not: the same bytes, so recording changes nothing it reads."""
    plain = channel("layer3", 5)
    recorded = Objective(plain.fn, plain.layers, plain.description, plain.units, unit_signs=[("layer3", -1)])
    assert recorded.minimized_layers == ("layer3",) and plain.minimized_layers == ()
    a = nnfeat.render(cifar_resnet20, plain, steps=20, progress=False)
    b = nnfeat.render(cifar_resnet20, recorded, steps=20, progress=False)  # redirected ReLU in the first 16 steps
    assert torch.equal(a.images, b.images) and torch.equal(a.values, b.values)
    assert "pre_relu" not in a.settings and b.settings["pre_relu"] == ["layer3"]


@pytest.mark.parametrize("text, minimized", [
    ("layer3:5", ()), ("-layer3:5", ("layer3",)), ("-0.5*layer3:5", ("layer3",)), ("layer3:5 / -2", ("layer3",)),
    ("2 - layer3:5", ("layer3",)), ("-(-layer3:5)", ()), ("layer2:1 - layer3:5", ("layer3",)),
    ("-(layer2:1 - layer3:5)", ("layer2",)), ("-(layer3:5 * layer2:1)", ()), ("-output:3", ()),
    ("-deepdream(\"layer3\")", ()), ("layer3:5 - 0.05*total_variation()", ()),
])
def test_which_units_are_minimized(text, minimized):
    assert parse_objective(text).minimized_layers == minimized


def test_each_term_reads_its_own_value(cifar_resnet20):
    """On fixed images: minimized terms read the pre-activation, positive ones and products the post-ReLU value."""
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = relu_input(cifar_resnet20, images)  # (B, 64, 8, 8)
    pre, post = before.mean((2, 3)), before.clamp_min(0).mean((2, 3))  # (B, 64) channel means
    expected = {
        "-layer3:5": -pre[:, 5], "-0.5*layer3:5": -0.5 * pre[:, 5], "layer3:4 - layer3:5": post[:, 4] - pre[:, 5],
        "-(-layer3:5)": post[:, 5], "-(layer3:4 - layer3:5)": post[:, 5] - pre[:, 4],
        "-(layer3:5 * layer3:4)": -post[:, 5] * post[:, 4],
    }
    for text, want in expected.items():
        got = evaluate(cifar_resnet20, parse_objective(text), images)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=text)


class Block(nn.Module):
    """1x1 conv (weights 1, bias -1.5: the pre-activation is r + g + b - 1.5) then one ReLU call form."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(-1.5)
        self.form = form
        self.relu = nn.ReLU(inplace=form == "module_inplace")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.form.startswith("module"):
            return self.relu(y)
        if self.form == "F.relu":
            return F.relu(y)
        if self.form == "F.relu_inplace":
            return F.relu(y, inplace=True)
        if self.form == "torch.relu_":
            return torch.relu_(y)
        if self.form == "Tensor.relu":
            return y.relu()
        return F.relu(y) * 2.0  # "not_relu_output": a ReLU is called, but the output is not its result


def tiny_net(form: str) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(block=Block(form), head=nn.Conv2d(2, 3, 1))).eval()


FORMS = ["module", "module_inplace", "F.relu", "F.relu_inplace", "torch.relu_", "Tensor.relu"]


@pytest.mark.parametrize("form", FORMS)
def test_capture_reads_the_input_of_every_relu_call_form(form):
    net = tiny_net(form)
    images = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    want_pre = images.sum(1, keepdim=True).expand(-1, 2, -1, -1) - 1.5
    with torch.no_grad():
        want_out = net(images)
        with ActivationCapture(net, ["block", "output"], pre_relu=["block"]) as capture:
            acts = capture(images)
    assert capture.pre_relu_found == {"block": True}
    torch.testing.assert_close(acts[pre_relu_key("block")], want_pre)
    torch.testing.assert_close(acts["block"], want_pre.clamp_min(0))
    torch.testing.assert_close(acts["output"], want_out)  # recording (and copying before in-place) changes nothing


@pytest.mark.parametrize("form", ["module_inplace", "F.relu"])
def test_minimizing_a_tiny_relu_unit_finds_the_known_answer(form):
    """min over [0,1] images of r + g + b - 1.5 is -1.5, at a black image; after the ReLU the minimum 0 is reached
    by any dark-enough image, so reading the post-ReLU value would stop far from black."""
    model = wrap_module(tiny_net(form), "tiny")
    result = nnfeat.render(model, "-block:0", size=16, steps=96, param="pixel", progress=False, transforms="none")
    assert result.settings["pre_relu"] == ["block"]
    assert result.final_values.item() > 1.0  # the negated pre-activation, at most 1.5 (measured 1.22)
    assert result.images.mean().item() < 0.2  # from grey (0.5, where the pre-activation is 0) to near black


def test_a_layer_that_is_not_a_relu_output_is_minimized_as_before():
    model = wrap_module(tiny_net("not_relu_output"), "tiny")
    with ActivationCapture(model, ["block"], pre_relu=["block"]) as capture:
        capture(torch.rand(1, 3, 5, 5))
    assert capture.pre_relu_found == {"block": False}
    for layer in ("block", "head"):
        by_grammar = nnfeat.render(model, f"-{layer}:0", size=16, steps=12, progress=False)
        assert by_grammar.settings["pre_relu"] == [] and by_grammar.settings["not_relu_outputs"] == [layer]
        by_hand = Objective(lambda acts, layer=layer: -acts[layer][:, 0].mean((1, 2)), [layer], "by hand")
        assert torch.equal(by_grammar.images, nnfeat.render(model, by_hand, size=16, steps=12, progress=False).images)
        assert f"'{layer}' is not a ReLU output" in by_grammar.notes()[0]


def test_torchvision_resnet18_reused_inplace_relu():
    """torchvision's BasicBlock reuses one ``relu`` (inplace=True) twice: ``layer3`` and ``layer3.1.relu#1`` are
    both the output of its second call, ``layer3.1.relu`` (the first call) another pre-activation."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    seen = []
    block = net.layer3[1]
    handle = block.bn2.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    layers = ["layer3", "layer3.1.relu#1", "layer3.1.relu"]
    try:
        with torch.no_grad(), ActivationCapture(net, layers, pre_relu=layers) as capture:
            acts = capture(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    finally:
        handle.remove()
    assert capture.pre_relu_found == dict.fromkeys(layers, True)
    # bn2's output plus the identity is what the second ReLU call saw
    identity = acts[pre_relu_key("layer3")] - seen[0]
    assert identity.min().item() >= 0  # the block input is itself a ReLU output
    torch.testing.assert_close(acts[pre_relu_key("layer3")], acts[pre_relu_key("layer3.1.relu#1")])
    torch.testing.assert_close(acts[pre_relu_key("layer3")].clamp_min(0), acts["layer3"])
    assert acts[pre_relu_key("layer3")].min().item() < 0
    torch.testing.assert_close(acts[pre_relu_key("layer3.1.relu")].clamp_min(0), acts["layer3.1.relu"])
