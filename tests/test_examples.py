"""Dataset examples: the streaming top-k equals a brute-force ranking; patches follow the receptive field."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from nnfeat.data import load_images
from nnfeat.errors import NnfeatError
from nnfeat.examples import example_patches, parse_unit, receptive_field, top_examples
from nnfeat.hooks import ActivationCapture


@pytest.fixture(scope="module")
def model():
    from nnfeat.models.zoo import load_model

    return load_model("digits-cnn")


@pytest.fixture(scope="module")
def digits():
    return load_images("digits", limit=600)


def brute_force_scores(model, layer: str, images, reduce: str) -> torch.Tensor:
    """(N, C) channel scores of every image, computed in one pass without any top-k bookkeeping."""
    with torch.no_grad(), ActivationCapture(model, [layer]) as capture:
        act = capture(images.tensors(np.arange(len(images)), model.input_size))[layer]
    return act.mean((2, 3)) if reduce == "mean" else act.amax((2, 3))


@pytest.mark.parametrize("score", ["mean", "max"])
def test_top_and_bottom_match_brute_force(model, digits, score):
    channels = [0, 7, 21]
    found = top_examples(model, "relu3", channels, digits, k=6, score=score, batch_size=64)
    scores = brute_force_scores(model, "relu3", digits, score)
    assert list(found) == channels
    for c in channels:
        column = scores[:, c]
        top = [e.score for e in found[c].top]
        bottom = [e.score for e in found[c].bottom]
        assert np.allclose(top, torch.sort(column, descending=True).values[:6].numpy(), rtol=1e-5, atol=1e-6)
        assert np.allclose(bottom, torch.sort(column).values[:6].numpy(), rtol=1e-5, atol=1e-6)
        for example in found[c].top + found[c].bottom:  # each reported score is the image's real score
            assert column[example.index].item() == pytest.approx(example.score, rel=1e-5, abs=1e-6)
            assert example.label == int(digits.labels[example.index])
        assert len({e.index for e in found[c].top}) == 6


def test_strongest_position_and_patch(model, digits):
    found = top_examples(model, "relu3", [5], digits, k=3, score="max")
    field = receptive_field(model, "relu3")
    assert field.box[2:] == (18, 18)  # conv3x3, pool2, conv3x3, pool2, conv3x3 -> 18 px
    with torch.no_grad(), ActivationCapture(model, ["relu3"]) as capture:
        for example in found[5].top:
            act = capture(digits.tensors([example.index], 32))["relu3"][0, 5]
            y, x = divmod(int(act.argmax()), act.shape[1])
            assert example.position == (y, x)
            top, left, height, width = example.box
            assert (height, width) == (18, 18)
            assert 0 <= top <= 32 - 18 and 0 <= left <= 32 - 18
            # the box is the receptive field of (y, x): stride 4, shifted into the image
            assert top == min(max(field.box[0] + (y - 4) * 4, 0), 14)
    patches = example_patches(digits, found[5].top, 32)
    assert patches.shape == (3, 3, 18, 18)
    image = digits.tensors([found[5].top[0].index], 32)[0]
    t, l, h, w = found[5].top[0].box
    assert torch.equal(patches[0], image[:, t:t + h, l:l + w])


def test_receptive_field_grows_with_depth(model):
    sizes = [receptive_field(model, layer).box[2] for layer in ("conv1", "relu2", "relu3")]
    assert sizes == [3, 8, 18]
    assert receptive_field(model, "fc").box == (0, 0, 32, 32)


def test_channel_errors(model, digits):
    with pytest.raises(NnfeatError, match="out of range"):
        top_examples(model, "relu3", [64], digits)
    with pytest.raises(NnfeatError, match="unknown layer"):
        top_examples(model, "relu9", [0], digits)
    with pytest.raises(NnfeatError, match="score"):
        top_examples(model, "relu3", [0], digits, score="median")


def test_parse_unit():
    assert parse_unit("layer3:5") == ("layer3", [5])
    assert parse_unit("layer3.0.conv1:0,4,7") == ("layer3.0.conv1", [0, 4, 7])
    assert parse_unit("relu#1:2-4") == ("relu#1", [2, 3, 4])
    for bad in ("layer3", "layer3:", "layer3:a"):
        with pytest.raises(NnfeatError):
            parse_unit(bad)


def test_examples_command_writes_files(tmp_path, model):
    from nnfeat.atlas.commands import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["examples", "digits-cnn", "relu3:3,9", "--images", "digits", "--k", "4",
                              "--limit", "300", "--device", "cpu", "--out", str(tmp_path)])
    assert args.func(args) == 0
    for channel in (3, 9):
        for name in ("top", "bottom", "top-patches", "bottom-patches"):
            assert (tmp_path / f"ch{channel:04d}-{name}.png").is_file()
    record = json.loads((tmp_path / "examples.json").read_text())
    assert [c["channel"] for c in record["channels"]] == [3, 9]
    assert len(record["channels"][0]["top"]) == 4
    scores = [e["score"] for e in record["channels"][0]["top"]]
    assert scores == sorted(scores, reverse=True)
