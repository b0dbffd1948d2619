"""Atlas icon quality levers: best-of-N tries per icon and the paper's icon transform set."""

from __future__ import annotations

import pytest
import torch

from nnfeat.analysis.atlas.icons import icon_objective, render_best_of
from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.ops.render import render
from nnfeat.engine.transforms import CropOrPadTo, Pad, RandomAffine, make_transforms

LAYER = "relu3"
RENDER = dict(size=32, steps=6, transforms="auto", autocast=False, progress=False)


@pytest.fixture(scope="module")
def model(digits_model):
    return digits_model


@pytest.fixture(scope="module")
def directions():
    return torch.randn(3, 64, generator=torch.Generator().manual_seed(0)).abs()  # (B, C) for relu3 (64 channels)


def _objective_of(model, images: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """The icon objective of (B, 3, 32, 32) images, computed here from the activations (B,)."""
    with torch.no_grad(), ActivationCapture(model, [LAYER]) as capture:
        acts = capture(images)
    return icon_objective(LAYER, directions, 3.0, 0.5)(acts)


def test_one_try_is_the_plain_render(model, directions):
    best = render_best_of(model, LAYER, directions, 1, cossim_pow=3.0, spatial_weight=0.5, seed=5, **RENDER)
    plain = render(model, icon_objective(LAYER, directions, 3.0, 0.5), batch=3, seed=5, **RENDER)
    assert torch.equal(best.images, plain.images)
    assert torch.equal(best.final_values, plain.final_values)
    assert best.settings["chosen_try"] == [0, 0, 0]


def test_best_of_keeps_each_icons_highest_objective_and_is_deterministic(model, directions):
    tries = 3
    best = render_best_of(model, LAYER, directions, tries, cossim_pow=3.0, spatial_weight=0.5, seed=7, **RENDER)
    # the same render, all candidates: item t * B + i is try t of icon i
    every = render(model, icon_objective(LAYER, directions.repeat(tries, 1), 3.0, 0.5), batch=3 * tries, seed=7,
                   **RENDER)
    scores = every.final_values.view(tries, 3)
    assert best.images.shape == (3, 3, 32, 32)
    assert torch.equal(best.final_values, scores.max(0).values)
    assert (best.final_values >= scores[0]).all()  # never below the first try
    chosen = best.settings["chosen_try"]
    assert torch.equal(best.images, every.images.view(tries, 3, 3, 32, 32)[chosen, torch.arange(3)])
    # the kept images really score what the result says (the objective of icon i, not of another icon)
    assert torch.allclose(_objective_of(model, best.images, directions), best.final_values, rtol=1e-4, atol=1e-5)
    again = render_best_of(model, LAYER, directions, tries, cossim_pow=3.0, spatial_weight=0.5, seed=7, **RENDER)
    assert torch.equal(again.images, best.images) and again.settings["chosen_try"] == chosen
    with pytest.raises(NnfeatError, match="tries must be at least 1"):
        render_best_of(model, LAYER, directions, 0, cossim_pow=3.0, **RENDER)


def test_atlas_transforms_keep_content_scale_and_size():
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    # pad then crop/pad back to 16 px: the identity (a final resize alone would shrink the content to 16/24)
    same = RandomAffine([Pad(4), CropOrPadTo(16)])(image)
    assert torch.allclose(same, image, atol=1e-5)
    shrunk = RandomAffine([Pad(4)])(image)
    assert not torch.allclose(shrunk, image, atol=1e-2)
    atlas = make_transforms("atlas", 32, (32, 32))
    batch = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    first = atlas(batch, torch.Generator().manual_seed(3))
    assert first.shape == (4, 3, 32, 32)
    assert torch.equal(first, atlas(batch, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, atlas(batch, torch.Generator().manual_seed(4)))
    with pytest.raises(NnfeatError, match="atlas"):
        make_transforms("atlsa", 32)
