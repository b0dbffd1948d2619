"""Sheets a reader can read (nnfeat.views.sheets): no caption or title is cut off -- long ones wrap, a word wider
than its tile breaks at characters -- and a sheet of one tile is drawn at least 256 px."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

from nnfeat.views.sheets import SINGLE_TILE, font, labelled_sheet, wrap_text


def test_long_captions_and_titles_wrap_instead_of_being_cut():
    tiles = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    short = labelled_sheet(tiles, ["a", "b"], title="t")
    long_caption = "output:3 - (0.5 * diversity('layer2')) pred cat (label dog)"
    long = labelled_sheet(tiles, [long_caption, "cifar10-resnet20-with-a-very-long-name"], title="x " * 60)
    assert long.shape[1] == short.shape[1] and long.shape[0] > short.shape[0] + 4 * 15  # more lines, same width
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = wrap_text(long_caption, 96)
    assert " ".join(lines).replace(" ", "") == long_caption.replace(" ", "")  # every character kept
    assert all(draw.textlength(line, font=font()) <= 96 for line in lines)
    pieces = wrap_text("cifar10-resnet20-with-a-very-long-name", 40)
    assert "".join(pieces) == "cifar10-resnet20-with-a-very-long-name" and len(pieces) > 2

def test_a_single_tile_is_drawn_at_least_256_px():
    one = labelled_sheet(torch.rand(1, 3, 32, 32), ["one"])
    assert one.shape[1] >= SINGLE_TILE and SINGLE_TILE == 256
    two = labelled_sheet(torch.rand(2, 3, 32, 32), ["a", "b"])
    assert two.shape[1] < 2 * SINGLE_TILE  # several tiles keep the smaller minimum
