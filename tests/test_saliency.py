"""nnfeat saliency: attribution maps (nnfeat.analysis.saliency), their sanity numbers (nnfeat.analysis.sanity),
the result / page (nnfeat.ops.saliency) and the CLI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from nnfeat import cli
from nnfeat.analysis.cam import CAMS, cam_maps, default_cam_layer
from nnfeat.analysis.saliency import SALIENCY, integrated_gradients, saliency_maps
from nnfeat.analysis.sanity import (deletion_insertion, parameter_layers, random_maps, randomization_test,
                                    spearman)
from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model

SIZE = 24
REGION = (8, 16, 10, 18)  # y0, y1, x0, x1: the only pixels class 0's logit can see (through a 3x3 conv)


class Gate(nn.Module):
    """Zero every position outside REGION (a fixed spatial mask)."""

    def __init__(self):
        super().__init__()
        mask = torch.zeros(1, 1, SIZE, SIZE)
        y0, y1, x0, x1 = REGION
        mask[..., y0:y1, x0:x1] = 1
        self.register_buffer("mask", mask)

    def forward(self, x):
        return x * self.mask


class RegionNet(nn.Module):
    """conv 3x3 -> ReLU(inplace) -> gate (REGION) -> global mean -> linear: the logits depend only on the pixels
    within 1 px of REGION; class 0's weights are positive, so its CAM is positive inside REGION."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.gate = Gate()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(6, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.5)
            self.conv.bias.fill_(1.0)
            self.fc.weight.copy_(torch.stack([torch.rand(6, generator=g) + 0.5, -(torch.rand(6, generator=g) + 0.5)]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.gate(self.relu(self.conv(x))))))


def region_model() -> Model:
    return Model(RegionNet(), name="region-net", input_size=SIZE, classes=["inside", "negated"])


def mass_inside(maps: torch.Tensor, margin: int) -> torch.Tensor:
    """(B, H, W) -> (B,) share of sum |map| within REGION grown by ``margin`` px."""
    y0, y1, x0, x1 = REGION
    inside = maps.abs()[:, max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin].sum((1, 2))
    return inside / maps.abs().sum((1, 2)).clamp_min(1e-12)


def hook_counts(model: nn.Module) -> dict:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")
    return {(n, a): len(getattr(m, a, {}) or {}) for n, m in model.named_modules() for a in names}


# -- every method on a network with a known answer ---------------------------------------------------------------
@pytest.mark.parametrize("method", SALIENCY.names(where=lambda m: m.family != "control"))
def test_every_method_puts_its_mass_in_the_region(method):
    model = region_model()
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    before = hook_counts(model)
    maps = saliency_maps(model, x, torch.zeros(3, dtype=torch.long), method)
    assert hook_counts(model) == before
    assert maps.shape == (3, SIZE, SIZE) and torch.isfinite(maps).all()
    # the conv reaches 1 px out of REGION; an occlusion window (3 px here) covering it reaches 2 px further
    margin = 3 if method == "occlusion" else 1
    share = mass_inside(maps, margin)
    assert (share > 0.95).all(), (method, share)


def test_the_edge_control_does_not_know_the_region():
    """The criterion above can fail: the model-independent edge map spreads over the whole image."""
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    share = mass_inside(saliency_maps(region_model(), x, method="edge"), 1)
    assert (share < 0.4).all(), share


def test_gradcam_on_the_gate_layer_recovers_the_region():
    model = region_model()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    assert default_cam_layer(model) == "gate"
    y0, y1, x0, x1 = REGION
    for method in CAMS.names():
        cam = cam_maps(model, x, torch.zeros(2, dtype=torch.long), method, layer="gate", upsample=False)
        inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert (cam[:, ~inside] == 0).all(), method
        assert (cam[:, inside] > 0).float().mean() > 0.9, method
    # the direct computation for gradcam: GAP head -> d logit0 / d A_c = w_0c / (H W); CAM = ReLU(sum_c w_0c A_c) / HW
    with torch.no_grad():
        a = model.net.gate(model.net.relu(model.net.conv(x)))
        want = (model.net.fc.weight[0].view(1, -1, 1, 1) * a).sum(1).clamp_min(0) / (SIZE * SIZE)
    got = saliency_maps(model, x, torch.zeros(2, dtype=torch.long), "gradcam", layer="gate")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_integrated_gradients_completeness_and_batched_alphas():
    """Sum of IG attributions ~ logit(x) - logit(baseline) (midpoint rule); every alpha in one chunked pass."""
    model = region_model()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    t = torch.zeros(2, dtype=torch.long)
    calls = []
    handle = model.net.register_forward_pre_hook(lambda m, inp: calls.append(inp[0].shape[0]))
    try:
        attr = integrated_gradients(model, x, t, alphas=64, batch_size=1024)
    finally:
        handle.remove()
    assert calls == [128]  # 2 images x 64 alphas, one forward
    with torch.no_grad():
        gap = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    torch.testing.assert_close(attr.sum((1, 2, 3)), gap, rtol=2e-3, atol=1e-4)


# -- captum as the reference ----------------------------------------------------------------------------------
def _captum():
    try:
        import captum.attr  # noqa: F401
        return captum.attr
    except ImportError:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail("CI is set but captum (a test extra) is missing", pytrace=False)
        pytest.skip("captum not installed (pip install captum)")


def test_matches_captum_on_cifar_resnet20(cifar_resnet20, cifar_subset):
    ca = _captum()
    model = cifar_resnet20
    x = cifar_subset[0][:3]
    t = torch.tensor([3, 5, 1])
    ours = saliency_maps(model, x, t, "gradient")
    theirs = ca.Saliency(model).attribute(x.clone(), target=t, abs=False).sum(1)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    ours = saliency_maps(model, x, t, "integrated-gradients", alphas=16, baseline="black")
    theirs = ca.IntegratedGradients(model).attribute(x.clone(), baselines=torch.zeros_like(x), target=t, n_steps=16,
                                                     method="riemann_middle").sum(1)
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5)
    ours = saliency_maps(model, x, t, "gradcam", layer="layer2")
    cam = ca.LayerGradCam(model, model.net.layer2).attribute(x.clone(), target=t, relu_attributions=True)
    theirs = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


# -- hooks are gone after every call, also on error ------------------------------------------------------------
class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_hooks_removed_after_every_call_and_on_errors(cifar_resnet20, cifar_subset):
    model = cifar_resnet20
    x = cifar_subset[0][:2]
    before = hook_counts(model)
    for method in SALIENCY.names():
        opts = {"alphas": 2} if method == "integrated-gradients" else {"samples": 2} if method in (
            "smoothgrad", "smoothgrad-sq", "vargrad") else {"window": 16} if method == "occlusion" else {}
        saliency_maps(model, x, method=method, **opts)
        assert hook_counts(model) == before, method
    for kwargs in ({"method": "gradcam", "layer": "avgpool"}, {"method": "gradcam", "layer": "nope"},
                   {"method": "gradient", "targets": torch.tensor([0, 10])},
                   {"method": "layercam", "targets": torch.tensor([11, 0])}):
        with pytest.raises(NnfeatError):
            saliency_maps(model, x, **kwargs)
        assert hook_counts(model) == before, kwargs
    randomization_test(model, x, "gradcam", ks=[1])
    assert hook_counts(model) == before
    # an exception raised inside the network itself, after the captured layer
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Exploding())
    broken = Model(net, input_size=8)
    before = hook_counts(broken)
    for method in ("gradient", "gradcam"):
        with pytest.raises(RuntimeError, match="boom"):
            saliency_maps(broken, torch.rand(1, 3, 8, 8), torch.zeros(1, dtype=torch.long), method, layer=(
                "1" if method == "gradcam" else None))
        assert hook_counts(broken) == before


def test_one_line_errors():
    model = region_model()
    x = torch.rand(1, 3, SIZE, SIZE)
    with pytest.raises(NnfeatError, match=r"unknown saliency method 'gradcm' \(nearest: gradcam"):
        saliency_maps(model, x, method="gradcm")
    with pytest.raises(NnfeatError, match="no spatial map"):
        saliency_maps(model, x, method="gradcam", layer="fc")
    with pytest.raises(NnfeatError, match="is for the CAM methods"):
        saliency_maps(model, x, method="gradient", layer="gate")
    with pytest.raises(NnfeatError, match="takes no option alphas"):
        saliency_maps(model, x, method="gradient", alphas=3)


# -- the sanity numbers on the trained CIFAR-10 ResNet-20 -------------------------------------------------------
def test_spearman_with_ties():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    b = torch.tensor([[10.0, 20.0, 30.0, 40.0], [5.0, 5.0, 6.0, 7.0], [1.0, 2.0, 3.0, 4.0]])
    rho = spearman(a, b)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(1.0) and torch.isnan(rho[2])
    assert spearman(a[:1], -b[:1])[0] == pytest.approx(-1.0)


def test_randomization_gradient_and_gradcam_pass_edge_fails(cifar_resnet20, cifar_subset):
    model = cifar_resnet20
    x = cifar_subset[0][:12]
    layers = parameter_layers(model, (32, 32))
    assert layers[0] == "linear" and layers[-1] == "conv1" and len(layers) == 39
    before = {k: v.clone() for k, v in model.state_dict().items()}
    results = {m: randomization_test(model, x, m, ks=[1, 20], repeats=3) for m in ("gradient", "gradcam", "edge")}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a deep copy was randomized
    for m, r in results.items():
        assert r.depths == [1, 20, 39] and r.correlations.shape == (3, 36)
    assert results["gradient"].passes and results["gradient"].final_median < 0.3, results["gradient"].summary()
    assert results["gradcam"].passes and results["gradcam"].final_median < 0.3, results["gradcam"].summary()
    assert not results["edge"].passes and results["edge"].final_median == pytest.approx(1.0)


def test_gradcam_deletion_below_random_insertion_above(cifar_resnet20, cifar_subset):
    from nnfeat.analysis.attribution import predicted_classes

    model = cifar_resnet20
    x = cifar_subset[0][:24]
    t = predicted_classes(model, x)
    cam = saliency_maps(model, x, t, "gradcam")
    ours = deletion_insertion(model, x, cam, t, steps=8)
    rand = deletion_insertion(model, x, random_maps(cam.shape, 0), t, steps=8)
    assert ours.patch == 2 and ours.deletion_curve.shape == (24, 9)
    torch.testing.assert_close(ours.deletion_curve[:, 0], ours.insertion_curve[:, -1])  # both = p(x)
    torch.testing.assert_close(ours.deletion_curve[:, 0], rand.deletion_curve[:, 0])
    assert ours.deletion.mean() < rand.deletion.mean() - 0.1, (ours.summary(), rand.summary())
    assert ours.insertion.mean() > rand.insertion.mean() + 0.04, (ours.summary(), rand.summary())


# -- the result, its page and the CLI -----------------------------------------------------------------------------
def test_cli_writes_maps_numbers_and_page(tmp_path, shared_dir):
    out = tmp_path / "o"
    assert cli.main(["saliency", "cifar10-resnet20", "--images", str(shared_dir / "data" / "cifar10_test.npz"),
                     "--n", "3", "--method", "gradient,gradcam", "--sanity", "--cascade", "3", "--steps", "8",
                     "--quiet", "--out", str(out)]) == 0
    rec = json.loads((out / "saliency.json").read_text())
    assert rec["kind"] == "saliency" and [m["method"] for m in rec["methods"]] == ["gradient", "gradcam", "edge"]
    by = {m["method"]: m for m in rec["methods"]}
    assert by["gradcam"]["layer"] == "layer3" and by["edge"]["status"] == "fails"
    assert by["edge"]["checks"]["randomization"] == "fails"
    assert "randomization: fails (median Spearman " in by["edge"]["verdict"]
    assert "random_deletion_auc" in by["gradcam"]["deletion_insertion"]
    assert by["gradcam"]["randomization"]["depths"] == [13, 26, 39]
    for name in rec["files"]:
        assert (out / name).is_file(), name
    page = (out / "index.html").read_text()
    assert "Content-Security-Policy" in page and 'data-method="edge" data-verdict="fails"' in page
    assert "<script" not in page


@pytest.mark.parametrize("extra, needle", [
    (["--method", "gradcm"], "unknown saliency method 'gradcm'"),
    (["--target", "dgo"], "nearest: dog"),
    (["--target", "10"], "out of range"),
    (["--method", "gradcam", "--layer", "avgpool"], "no spatial map"),
    (["--method", "gradient", "--layer", "layer2"], "is for the CAM methods"),
    (["--n", "0"], "--n"),
])
def test_cli_bad_input_is_one_line(extra, needle, tmp_path, capsys, shared_dir):
    out = tmp_path / "o"
    assert cli.main(["saliency", "cifar10-resnet20", "--images", str(shared_dir / "data" / "cifar10_test.npz"),
                     "--n", "2", *extra, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_page_in_a_browser(tmp_path):
    from tests.browser import file_url, headless_chromium
    from nnfeat.ops.saliency import saliency

    result = saliency(region_model(), torch.rand(2, 3, SIZE, SIZE), "gradient,gradcam", target="inside",
                      sanity=True, steps=4, cascade=2)
    result.save(tmp_path)
    with headless_chromium() as driver:
        driver.get(file_url(tmp_path / "index.html"))
        sections = driver.find_elements("css selector", "section.method")
        assert [s.get_attribute("data-method") for s in sections] == ["gradient", "gradcam", "edge"]
        assert sections[2].get_attribute("data-verdict") == "fails"
        sizes = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert sizes and all(ok and w > 0 for ok, w in sizes), sizes
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors


def test_token_layers_fold_to_the_patch_grid():
    """A timm ViT (random weights): Grad-CAM of a block's tokens is a 14x14 patch map (class token dropped),
    upsampled to 224x224; the default layer is one whose patch tokens the class logit reaches."""
    pytest.importorskip("timm")
    from nnfeat.models import load_model

    model = load_model("timm:vit_tiny_patch16_224", weights="random", device="cpu")
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3])
    grid = cam_maps(model, x, t, "gradcam", layer="blocks.10", upsample=False)
    assert grid.shape == (1, 14, 14) and grid.abs().sum() > 0
    assert saliency_maps(model, x, t, "layercam", layer="blocks.10").shape == (1, 224, 224)
    layer = default_cam_layer(model)
    assert layer.startswith("blocks.11"), layer  # not the final norm: its patch tokens never reach the head
    assert saliency_maps(model, x, t, "gradcam").abs().sum() > 0


# -- the registry is the one list of methods --------------------------------------------------------------------
def test_readme_lists_exactly_the_registered_methods():
    """README's saliency bullet names every registered method and no other (options and paths aside)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    bullet = readme[readme.index("* **Saliency** ("):]
    bullet = bullet[:bullet.index("a model-independent control")]
    named = [t for t in re.findall(r"`([^`]+)`", bullet) if not t.startswith("-") and "/" not in t]
    assert sorted(named) == sorted(SALIENCY.names()), named


def test_cli_lists_the_registered_methods():
    from nnfeat.cli import _subparser, build_parser

    sub = _subparser(build_parser(), "saliency")
    (method,) = [a for a in sub._actions if a.dest == "method"]
    assert method.help == f"one or more of: {', '.join(SALIENCY.names())} (default gradient)"
    assert SALIENCY.names(where=lambda m: m.family == "cam") == CAMS.names()
