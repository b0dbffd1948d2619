"""Dataset examples: the streaming top-k equals a brute-force ranking; patches follow the receptive field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nnfeat.data import load_images
from nnfeat.errors import NnfeatError
from nnfeat.analysis.examples import example_patches, receptive_field, top_examples
from nnfeat.hooks import ActivationCapture
from nnfeat.models.base import Model


@pytest.fixture(scope="module")
def model(digits_model):
    """The trained digits-cnn (conftest trains it once per session)."""
    return digits_model


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
    height, width = field.box[2:]
    assert 1 < height <= 32 and 1 < width <= 32
    with torch.no_grad(), ActivationCapture(model, ["relu3"]) as capture:
        for example in found[5].top:
            act = capture(digits.tensors([example.index], 32))["relu3"][0, 5]
            y, x = divmod(int(act.argmax()), act.shape[1])
            assert example.position == (y, x)
            top, left, h, w = example.box
            assert (h, w) == (height, width)
            assert 0 <= top <= 32 - h and 0 <= left <= 32 - w
            # the box is the receptive field of (y, x): the centre unit's field moved by the stride, kept inside
            expected_top = round(field.box[0] + (y - field.centre[0]) * field.stride[0])
            assert top == min(max(expected_top, 0), 32 - h)
    patches = example_patches(digits, found[5].top, 32)
    assert patches.shape == (3, 3, height, width)
    image = digits.tensors([found[5].top[0].index], 32)[0]
    t, l, h, w = found[5].top[0].box
    assert torch.equal(patches[0], image[:, t:t + h, l:l + w])


def test_receptive_field_of_a_known_stack():
    """conv3 -> conv3 -> maxpool2 -> conv3 has fields 3, 5, 6, 10 px and a stride of 2 after the pool."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1),
                              torch.nn.MaxPool2d(2), torch.nn.Conv2d(4, 4, 3, padding=1))
    stack = Model(net, name="stack", input_size=32)
    fields = [receptive_field(stack, layer) for layer in ("0", "1", "2", "3")]
    assert [f.box[2:] for f in fields] == [(3, 3), (5, 5), (6, 6), (10, 10)]
    assert fields[3].stride == (2.0, 2.0) and fields[3].centre == (8, 8)
    assert fields[0].box == (15, 15, 3, 3)
    assert fields[3].box_at(0, 0)[:2] == (0, 0)  # moved into the image at the border
    assert fields[3].box_at(8, 9)[:2] == (fields[3].box[0], fields[3].box[1] + 2)


def test_receptive_field_grows_with_depth(model):
    sizes = [receptive_field(model, layer).box[2] for layer in ("conv1", "relu2", "relu3")]
    assert sizes[0] < sizes[1] < sizes[2] <= 32
    assert receptive_field(model, "fc").box == (0, 0, 32, 32)


def test_channel_errors(model, digits):
    with pytest.raises(NnfeatError, match="out of range"):
        top_examples(model, "relu3", [64], digits)
    with pytest.raises(NnfeatError, match="unknown layer"):
        top_examples(model, "relu9", [0], digits)
    with pytest.raises(NnfeatError, match="score"):
        top_examples(model, "relu3", [0], digits, score="median")


def test_examples_command_writes_files(tmp_path, model):
    from nnfeat import cli

    assert cli.main(["examples", "digits-cnn", "relu3:3,9", "--images", "digits", "--k", "4", "--n", "300",
                     "--device", "cpu", "--quiet", "--out", str(tmp_path)]) == 0
    for channel in (3, 9):
        for name in ("top", "bottom", "top-patches", "bottom-patches"):
            assert (tmp_path / f"ch{channel:04d}-{name}.png").is_file()
    record = json.loads((tmp_path / "examples.json").read_text())
    assert [c["channel"] for c in record["channels"]] == [3, 9]
    assert len(record["channels"][0]["top"]) == 4
    scores = [e["score"] for e in record["channels"][0]["top"]]
    assert scores == sorted(scores, reverse=True)
