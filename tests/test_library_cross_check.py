"""nnfeat's maps equal the libraries a user would check them against (issue 25 §3): captum's ``Saliency``,
``IntegratedGradients``, ``Occlusion`` and ``LayerGradCam``, and pytorch-grad-cam's ``GradCAM``, on the trained
cifar10-resnet20 and 8 images of a seeded stratified sample (``experiments/_sample.py``), each explaining its
predicted class, at one thread. Each reference call is set to nnfeat's definition (said beside it); Pearson r
per image >= 0.9999 and the largest difference within 2e-3 of the map's scale (``REL_DIFF``). captum and pytorch-grad-cam are
test extras (``pip install .[test]``): a missing one is an import error here, not a skip.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from nnfeat.analysis.saliency import predicted_classes
from nnfeat.data import load_images
from nnfeat.ops.saliency import saliency

REPO = Path(__file__).resolve().parents[1]
R_MIN = 0.9999
#: the largest |difference| / max |map|: nnfeat's passes run on the fast network (BatchNorm folded, channels-last:
#: nnfeat.analysis.fast_path), the same function rounded differently (~1e-6); where a ReLU sits at its kink on one
#: of IG's path images that rounding flips its gradient, so one pixel may move by ~1e-3 of the map's scale
REL_DIFF = 2e-3


def _load_sample_module():
    spec = importlib.util.spec_from_file_location("bench_sample", REPO / "experiments" / "_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def case(cifar_resnet20, shared_dir, one_thread):
    """(model, images (8, 3, 32, 32) in [0, 1], their predicted classes (8,))."""
    source = _load_sample_module().stratified(load_images(shared_dir / "data" / "cifar10_test.npz"), 8, 0)
    images = torch.cat(list(source.iter_batches(8, cifar_resnet20.input_size)))
    return cifar_resnet20, images, predicted_classes(cifar_resnet20, images)


def nnfeat_maps(model, images, method: str, targets: torch.Tensor, **options) -> torch.Tensor:
    """(B, H, W) maps as ``nnfeat saliency`` makes them (the public operation, on its fast network), no numbers;
    its targets must be the predicted classes the references are given."""
    result = saliency(model, images, method, numbers=False, **options)
    assert result.targets == targets.tolist()
    return result.methods[0].maps


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, ...) and (B, ...) -> (B,) Pearson r of each image's flattened maps (float64)."""
    a, b = a.detach().flatten(1).double(), b.detach().flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def assert_equal_maps(mine: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Pearson r >= R_MIN for every image and max |mine - ref| <= REL_DIFF * max |mine|."""
    mine, ref = mine.detach().float(), ref.detach().float()
    assert mine.shape == ref.shape, f"{what}: shapes {tuple(mine.shape)} vs {tuple(ref.shape)}"
    assert bool((mine.flatten(1).abs().amax(1) > 0).all()), f"{what}: an all-zero map says nothing"
    r = pearson(mine, ref)
    assert bool((r >= R_MIN).all()), f"{what}: Pearson r per image {r.tolist()}"
    diff, scale = float((mine - ref).abs().max()), float(mine.abs().max())
    assert diff <= REL_DIFF * scale, f"{what}: max abs diff {diff:.3g} at map scale {scale:.3g}"


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> each map scaled to [0, 1] as pytorch-grad-cam's scale_cam_image does: (x - min) / (1e-7 + max)."""
    flat = maps.flatten(1)
    flat = flat - flat.amin(1, keepdim=True)
    return (flat / (1e-7 + flat.amax(1, keepdim=True))).view_as(maps)


def test_gradient_equals_captum_saliency(case):
    model, images, targets = case
    mine = nnfeat_maps(model, images, "gradient", targets)
    # captum's Saliency takes |grad| by default; nnfeat's "gradient" is the signed gradient summed over channels
    ref = Saliency(model).attribute(images.clone(), target=targets, abs=False).sum(1)
    assert_equal_maps(mine, ref, "gradient vs captum Saliency(abs=False)")


def test_the_check_tells_a_different_definition_apart(case):
    """captum's default, |grad| summed over the channels, is a different map: the check must notice."""
    model, images, targets = case
    mine = nnfeat_maps(model, images, "gradient", targets)
    ref = Saliency(model).attribute(images.clone(), target=targets).sum(1)  # abs=True
    assert float(pearson(mine, ref).max()) < R_MIN


def test_integrated_gradients_equal_captum(case):
    model, images, targets = case
    mine = nnfeat_maps(model, images, "integrated-gradients", targets, alphas=32, baseline="black")
    # nnfeat: the midpoint rule, alphas (k + 1/2) / 32, from a black (all-zero, in [0, 1] pixels) baseline
    ref = IntegratedGradients(model).attribute(images, baselines=torch.zeros_like(images), target=targets,
                                               n_steps=32, method="riemann_middle", internal_batch_size=256).sum(1)
    assert_equal_maps(mine, ref, "integrated gradients vs captum IntegratedGradients")


def test_occlusion_equals_captum(case):
    model, images, targets = case
    mine = nnfeat_maps(model, images, "occlusion", targets)
    # nnfeat's defaults: a 4 px window (min(H, W) // 8) over all three channels, stride 2 px, black (0) fill, the
    # drop averaged over the windows covering each pixel (captum divides by the same count); for 32 px both slide
    # the windows 0, 2, ..., 28, so the last one touches the edge in both
    ref = Occlusion(model).attribute(images, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), baselines=0,
                                     target=targets, perturbations_per_eval=16)
    assert bool((ref == ref[:, :1]).all())  # one value per pixel, the same in every channel
    assert_equal_maps(mine, ref[:, 0], "occlusion vs captum Occlusion")


def test_gradcam_equals_captum_layer_gradcam(case):
    model, images, targets = case
    mine = nnfeat_maps(model, images, "gradcam", targets, layer="layer3")
    # nnfeat: ReLU(sum_c mean_hw(G_c) A_c), upsampled bilinearly (align_corners=False) to the input
    lgc = LayerGradCam(model, model.module("layer3"))
    ref = lgc.attribute(images, target=targets, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, tuple(images.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    assert_equal_maps(mine, ref, "Grad-CAM vs captum LayerGradCam")


def test_gradcam_equals_pytorch_grad_cam(case):
    model, images, targets = case
    mine = nnfeat_maps(model, images, "gradcam", targets, layer="layer3")
    # pytorch-grad-cam returns each map min-max scaled to [0, 1] and resized by cv2 (bilinear, half-pixel centres,
    # as nnfeat's upsampling): compare after the same scaling. nnfeat's model has frozen weights, so the graph
    # starts at an input that requires grad.
    x = images.clone().requires_grad_(True)
    with GradCAM(model=model, target_layers=[model.module("layer3")]) as cam:
        ref = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in targets]))
    assert not model.module("layer3")._forward_hooks  # its hooks are gone with it
    assert_equal_maps(minmax(mine), ref, "Grad-CAM vs pytorch-grad-cam GradCAM (both min-max scaled)")


def test_gradcam_of_another_layer_is_told_apart(case):
    model, images, targets = case
    mine = nnfeat_maps(model, images, "gradcam", targets, layer="layer3")
    with GradCAM(model=model, target_layers=[model.module("layer2")]) as cam:
        ref = torch.from_numpy(cam(input_tensor=images.clone().requires_grad_(True),
                                   targets=[ClassifierOutputTarget(int(c)) for c in targets]))
    assert float(pearson(minmax(mine), ref).median()) < R_MIN
