"""Objectives on real activation layouts: conv maps, ViT tokens, vectors; composition and batching."""

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer

from nnfeat import objectives as O
from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model
from nnfeat.ops.render import evaluate, render


def test_channel_neuron_deepdream_definitions():
    act = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    acts = {"l": act}
    assert torch.equal(O.channel("l", 1)(acts), act[:, 1].mean((1, 2)))
    assert torch.equal(O.neuron("l", 2)(acts), act[:, 2, 2, 2])
    assert torch.equal(O.neuron("l", 2, x=3, y=0)(acts), act[:, 2, 0, 3])
    assert torch.equal(O.deepdream("l")(acts), act.pow(2).flatten(1).mean(1))


def test_one_channel_per_batch_item_is_vectorized_gather():
    act = torch.randn(4, 6, 3, 3)
    got = O.channel("l", [5, 0, 2, 2])({"l": act})
    expected = torch.stack([act[0, 5].mean(), act[1, 0].mean(), act[2, 2].mean(), act[3, 2].mean()])
    assert torch.allclose(got, expected)
    assert O.channel("l", [5, 0, 2, 2]).batch_size == 4


def test_batch_targeting_masks_other_items():
    act = torch.randn(3, 2, 2, 2)
    values = O.channel("l", 1, batch=2)({"l": act})
    assert values[0] == 0 and values[1] == 0 and values[2] == act[2, 1].mean()


def test_operators_compose_like_numbers():
    acts = {"l": torch.randn(2, 4, 3, 3)}
    a, b = O.channel("l", 0), O.channel("l", 3)
    va, vb = a(acts), b(acts)
    assert torch.allclose((a + 2 * b - 1)(acts), va + 2 * vb - 1)
    assert torch.allclose((-a / 4)(acts), -va / 4)
    assert torch.allclose((a * b)(acts), va * vb)
    assert torch.allclose((3 - a)(acts), 3 - va)
    assert (a + b).layers == ("l",)


def test_direction_and_cossim_follow_reference_formula():
    h = torch.randn(2, 5, 3, 3)
    v = torch.randn(2, 5)
    got = O.direction_neuron_cossim("l", v, cossim_pow=3)({"l": h})
    centre = h[:, :, 1, 1]
    dot = (centre * v).mean(1)
    cos = (dot / (1e-4 + centre.norm(dim=1))).clamp_min(0.1)
    assert torch.allclose(got, dot * cos**3)
    assert torch.allclose(O.direction("l", v[0])({"l": h}), (h * v[0].view(1, 5, 1, 1)).sum(1).mean((1, 2)))


def test_diversity_rewards_different_items():
    same = torch.randn(1, 4, 5, 5).repeat(3, 1, 1, 1)
    different = torch.randn(3, 4, 5, 5)
    div = O.diversity("l")
    assert div({"l": same}).mean() < div({"l": different}).mean()
    assert torch.allclose(div({"l": same}), torch.full((3,), -1.0), atol=1e-5)


def test_alignment_prefers_neighbours_alike():
    smooth = torch.linspace(0, 1, 4).view(4, 1, 1, 1).expand(4, 2, 3, 3)
    rough = torch.tensor([0.0, 1, 0, 1]).view(4, 1, 1, 1).expand(4, 2, 3, 3)
    assert O.alignment("l")({"l": smooth}).sum() > O.alignment("l")({"l": rough}).sum()


def test_regularizers_are_penalties_on_the_image():
    grey = torch.full((1, 3, 8, 8), 0.5)
    noise = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for penalty in (O.l1(), O.total_variation(), O.blur()):
        assert penalty({"image": grey}).item() == pytest.approx(0.0, abs=1e-6)
        assert penalty({"image": noise}).item() > 0.01


def test_validation_names_the_valid_channel_range():
    shapes = {"l": torch.Size([1, 16, 8, 8])}
    with pytest.raises(NnfeatError, match=r"valid channels are 0\.\.15"):
        O.channel("l", 16).validate(shapes, 1)
    with pytest.raises(NnfeatError, match=r"valid x is 0\.\.7"):
        O.neuron("l", 0, x=8, y=0).validate(shapes, 1)
    with pytest.raises(NnfeatError, match="has 3 units"):
        O.channel("l", [0, 1, 2]).validate(shapes, 2)


def tiny_vit() -> Model:
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    return Model(vit, name="tiny-vit", input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_objectives_work_on_vit_tokens_and_render_raises_them():
    model = tiny_vit()
    layer = "encoder.layers.encoder_layer_0"
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for obj in (O.channel(layer, 3), O.neuron(layer, 3, x=5), O.deepdream(layer), O.diversity(layer)):
        assert evaluate(model, obj, images).shape == (2,)
    result = render(model, O.channel(layer, [3, 7]), size=32, steps=40, progress=False)
    assert (result.values[-5:].mean(0) > result.values[:3].mean(0) + 0.1).all()
    with pytest.raises(NnfeatError, match=r"valid channels are 0\.\.31"):
        render(model, O.channel(layer, 32), size=32, steps=2, progress=False)
