"""The digits-vit zoo model: trained by nnfeat on scikit-learn's digits, deterministic, cached, a real ViT."""

from __future__ import annotations

import torch

from nnfeat.analysis import attention as at
from nnfeat.models import digits, digits_vit, get_card, load_model, nnfeat_home


def accuracy(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


def test_digits_vit_trains_to_90_percent_and_is_cached():
    model = load_model("digits-vit", device="cpu")  # trains on first use (about 15-30 s on one thread)
    cache = digits_vit.cache_path()
    assert cache.parent == nnfeat_home() / "weights" and cache.is_file()
    checkpoint = digits_vit.load_checkpoint(train_if_missing=False)
    images, labels = digits.digits_dataset("test")  # held out; RGB in [0, 1], the Model converts to grey
    held_out = accuracy(model, images, labels)
    assert held_out >= 0.90 and abs(held_out - checkpoint["heldout_accuracy"]) < 1e-6
    stamp = cache.stat().st_mtime_ns
    again = load_model("digits-vit", device="cpu")
    assert cache.stat().st_mtime_ns == stamp  # reused, not retrained
    for name, tensor in model.net.state_dict().items():
        assert torch.equal(again.net.state_dict()[name], tensor), name
    assert model.weights == "pretrained" and get_card("digits-vit").weights_status() == f"cached: {cache}"


def test_training_is_deterministic():
    first, second = digits_vit.train_digits_vit(epochs=1), digits_vit.train_digits_vit(epochs=1)
    for name, tensor in first["state_dict"].items():
        assert torch.equal(second["state_dict"][name], tensor), name


def test_card_and_structure():
    card = get_card("digits-vit")
    assert card.in_channels == 1 and card.input_size == (32, 32) and card.classes == digits.CLASSES
    assert card.mean == get_card("digits-cnn").mean and card.std == get_card("digits-cnn").std
    model = load_model("digits-vit", weights="random", device="cpu")
    layers = at.attention_layers(model)
    assert [(layer.name, layer.kind, layer.heads) for layer in layers] == [
        (f"blocks.{i}.attn", "mha", digits_vit.HEADS) for i in range(digits_vit.DEPTH)]
    assert digits_vit.HEADS >= 2
    shapes = model.layer_shapes(["patch_embed", "blocks.0.attn", "output"])
    assert [tuple(s) for s in shapes.values()] == [(1, digits_vit.DIM, 8, 8), (1, 65, digits_vit.DIM), (1, 10)]
    assert at.token_layout(model, 65, (32, 32)) == at.TokenLayout(65, 1, (8, 8), 0)
    images, labels = digits.digits_dataset("test")
    assert accuracy(model, images, labels) < 0.5  # random weights know nothing
    again = load_model("digits-vit", weights="random", device="cpu")
    assert torch.equal(model.net.pos_embedding, again.net.pos_embedding)
