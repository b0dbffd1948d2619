"""Filter grids: hand-set filters appear with their colour and orientation, zero is exactly mid-grey, the scale is
symmetric; deep, grouped and non-conv layers; renders and dataset examples beside each filter; the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from nnfeat.analysis.filters import (channel_mosaic, channel_tiles, conv_layers, filter_tiles, find_conv,
                                     input_channel_offsets)
from nnfeat.data import ImageSet
from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model
from nnfeat.ops.filters import filters

M = 0.8  # the largest |w| of the hand-set layer


def _hand_set() -> Model:
    """conv 3->4, 5x5: filter 0 pure red (+), 1 a vertical edge (left column -M, right +M, all of RGB),
    2 all zeros, 3 green centre +M/2 and blue centre -M/2."""
    conv = nn.Conv2d(3, 4, 5, bias=False)
    with torch.no_grad():
        w = torch.zeros(4, 3, 5, 5)
        w[0, 0] = 0.5
        w[1, :, :, 0], w[1, :, :, 4] = -M, M
        w[3, 1, 2, 2], w[3, 2, 2, 2] = M / 2, -M / 2
        conv.weight.copy_(w)
    net = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 10 * 10, 2))
    return Model(net, name="hand", input_size=16)


def test_hand_set_colour_orientation_and_mid_grey():
    model = _hand_set()
    tiles = filter_tiles(model.net[0].weight)
    assert tiles.shape == (4, 3, 5, 5)
    # zero weights are exactly mid-grey: the whole zero filter, and the unused channels of filter 0
    assert torch.equal(tiles[2], torch.full((3, 5, 5), 0.5))
    assert torch.equal(tiles[0, 1:], torch.full((2, 5, 5), 0.5))
    # filter 0 is red: red above the other two everywhere
    assert bool((tiles[0, 0] > tiles[0, 1]).all()) and bool((tiles[0, 0] > tiles[0, 2]).all())
    # filter 1 is a vertical edge: dark on the left, bright on the right, grey between, the same in every row
    assert torch.equal(tiles[1, :, :, 0], torch.zeros(3, 5)) and torch.equal(tiles[1, :, :, 4], torch.ones(3, 5))
    assert torch.equal(tiles[1, :, :, 1:4], torch.full((3, 5, 3), 0.5))
    # symmetric layer scale: -M -> 0, +M -> 1, +-M/2 -> 0.75 / 0.25, 0.5 -> 0.5/(2M) + 0.5
    assert float(tiles[3, 1, 2, 2]) == 0.75 and float(tiles[3, 2, 2, 2]) == 0.25
    assert torch.allclose(tiles[0, 0], torch.full((5, 5), 0.5 / (2 * M) + 0.5))
    # per-filter scale: each filter reaches 0 or 1 at its own max |w|; the zero filter stays mid-grey
    own = filter_tiles(model.net[0].weight, scale="filter")
    assert torch.equal(own[0, 0], torch.ones(5, 5)) and float(own[3, 2, 2, 2]) == 0.0
    assert torch.equal(own[2], torch.full((3, 5, 5), 0.5))


def test_result_sheet_shows_exact_mid_grey_tile(tmp_path):
    result = filters(_hand_set())
    assert result.rgb and result.layer == "0" and result.images.shape == (4, 3, 5, 5)
    path = result.save(tmp_path)
    record = json.loads(path.read_text())
    assert record["kind"] == "filters" and record["shape"] == [4, 3, 5, 5]
    assert record["scale"]["max_abs"] == pytest.approx(M)
    assert [f["max_abs"] for f in record["filters"]] == pytest.approx([0.5, M, 0.0, M / 2])
    assert record["filters"][1]["norm"] == pytest.approx(M * (30 ** 0.5))
    assert (tmp_path / "filters.png").exists() and (tmp_path / "filter-0003.png").exists()
    # the zero filter is a whole upscaled tile of pure mid-grey (128) in the saved sheet
    sheet = np.asarray(Image.open(tmp_path / "filters.png"))
    grey = (sheet == 128).all(2).astype(np.int64)
    side = 96  # a tile is upscaled to at least 96 px
    cs = np.pad(grey.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    full = cs[side:, side:] - cs[:-side, side:] - cs[side:, :-side] + cs[:-side, :-side]
    assert int(full.max()) == side * side
    assert "max |w| = 0.8" in result.scale_note()
    own = filters(_hand_set(), "0", units=[3, 0], scale="filter")
    assert own.indices == [3, 0] and own.bounds.tolist() == pytest.approx([M / 2, 0.5])
    assert float(own.tiles[0, 1, 2, 2]) == 1.0 and "per-filter" in own.scale_note()


def test_deep_and_grouped_layers():
    model = _hand_set()
    name, conv = find_conv(model, "2")
    assert conv_layers(model) == ["0", "2"] and name == "2"
    assert tuple(channel_tiles(conv.weight).shape) == (8, 2, 3, 3)
    assert input_channel_offsets(conv).tolist() == [0, 0, 0, 0, 2, 2, 2, 2]
    result = filters(model, "2:4..5")
    assert not result.rgb and result.indices == [4, 5] and result.offsets == [2, 2]
    # the grey tiles give the weights back through the symmetric rule
    m = float(conv.weight.abs().max())
    assert torch.allclose((result.channel_tiles - 0.5) * 2 * m, conv.weight[4:6].float(), atol=1e-6)
    mosaic = channel_mosaic(result.channel_tiles)  # 2 channels side by side, zoomed 2x, 1-px gutter
    assert mosaic.shape == (2, 3, 6, 13) and torch.equal(mosaic[:, :, :, 6], torch.tensor([1.0, 0.8, 0.3])
                                                         .view(1, 3, 1).expand(2, 3, 6))


@pytest.mark.parametrize("layer, words", [("4", ["Linear", "conv layers", "0"]), ("1", ["ReLU", "2-D convolution"]),
                                          ("nope", ["unknown layer", "conv layers"]), ("0@1,1", ["position"]),
                                          ("0:9", ["0..3"])])
def test_bad_layers_one_line(layer, words):
    with pytest.raises(NnfeatError) as err:
        filters(_hand_set(), layer)
    text = str(err.value)
    assert "\n" not in text and all(w in text for w in words)


def test_model_without_convolutions():
    with pytest.raises(NnfeatError, match="no 2-D convolution"):
        filters(Model(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)), name="mlp", input_size=4))


def test_renders_and_examples_beside_each_filter(tmp_path):
    model = _hand_set()
    images = np.zeros((6, 16, 16, 3), np.uint8)
    images[4, 2:9, 3:10, 0] = 255  # one red square: the top example of the red filter
    images[1, :, 8:, 1:] = 255     # a vertical edge, black to cyan: the edge filter's top example, no red
    source = ImageSet(name="hand-images", array=images, labels=np.arange(6))
    result = filters(model, "0:0,1", with_renders=True, steps=2, images=source, k=2)
    assert result.renders.shape == (2, 3, 16, 16) and result.examples.shape[:2] == (2, 2)
    assert [r[0]["index"] for r in result.example_records] == [4, 1]
    red_crop = result.examples[0, 0]
    assert float(red_crop[0].max()) == 1.0 and float(red_crop[1:].max()) == 0.0
    assert result.sheet_columns == 4 and len(result.sheet_images()) == 8 == len(result.captions())
    result.save(tmp_path)
    assert (tmp_path / "render-0001.png").exists()
    assert json.loads((tmp_path / "filters.json").read_text())["filters"][0]["examples"][0]["index"] == 4


def test_resnet20_first_and_deep(cifar_resnet20):
    first = filters(cifar_resnet20)
    assert first.layer == "conv1" and first.rgb and first.tiles.shape == (16, 3, 3, 3)
    deep = filters(cifar_resnet20, "layer1.0.conv1", max_filters=8)
    assert deep.channel_tiles.shape == (8, 16, 3, 3) and deep.capped and deep.total == 16
    assert not deep.rgb and deep.tiles.shape[:2] == (8, 3)
    assert "first 8 of 16" in deep.scale_note()


def test_cli_defaults_match_the_api():
    import inspect

    from nnfeat.cli import filters as cli_filters
    import nnfeat.ops.filters as filters_page

    defaults = inspect.signature(filters_page.filters).parameters
    assert (cli_filters.MAX_FILTERS, cli_filters.STEPS, cli_filters.DEFAULT_K) == \
        (defaults["max_filters"].default, defaults["steps"].default, defaults["k"].default)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nnfeat", "filters", *args], capture_output=True, text=True)


def test_cli(tmp_path):
    ok = _cli("digits-cnn", "--weights", "random", "--out", str(tmp_path / "o"), "--quiet")  # random: no training
    assert ok.returncode == 0, ok.stderr
    record = json.loads((tmp_path / "o" / "filters.json").read_text())
    assert record["layer"] == "conv1" and record["shape"] == [16, 1, 5, 5] and (tmp_path / "o" / "filters.png").exists()
    bad = _cli("digits-cnn", "fc", "--weights", "random", "--out", str(tmp_path / "b"), "--quiet")
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "conv" in lines[0] and not (tmp_path / "b").exists()
