"""The one unit grammar (nnfeat.units): parsing, canonical text, range errors, and its use in expressions."""

from __future__ import annotations

import pytest

from nnfeat.errors import NnfeatError
from nnfeat.engine.expr import parse_objective
from nnfeat.units import format_channels, format_units, parse_units


@pytest.mark.parametrize("text,layer,channels,position", [
    ("layer3", "layer3", None, None),
    ("layer3:*", "layer3", None, None),
    ("layer3:5", "layer3", (5,), None),
    ("layer3:0,4,7", "layer3", (0, 4, 7), None),
    ("layer3:0..3", "layer3", (0, 1, 2, 3), None),
    ("layer3:0..2,8", "layer3", (0, 1, 2, 8), None),
    ("layer3.1.conv2:5@4,6", "layer3.1.conv2", (5,), (4, 6)),
    ("blocks.3:7@0", "blocks.3", (7,), (0,)),
    ("relu#1:2", "relu#1", (2,), None),
    ("encoder.layers.0.self_attention[1]", "encoder.layers.0.self_attention[1]", None, None),
    ("0:3", "0", (3,), None),
])
def test_unit_forms(text, layer, channels, position):
    units = parse_units(text)
    assert (units.layer, units.channels, units.position) == (layer, channels, position)


def test_canonical_text_round_trips():
    assert format_channels([0, 1, 2, 3, 8]) == "0..3,8"
    assert format_channels([4, 5]) == "4,5"
    for text in ("layer3:0..3,8", "layer3:5@4,6", "layer3:1,5,9"):
        units = parse_units(text)
        assert format_units(units.layer, units.channels, units.position) == text


@pytest.mark.parametrize("text,fragment", [
    ("layer3:0-3", "A..B"),
    ("layer3:0:64", "A..B"),
    ("layer3:3..1", "A <= B"),
    ("layer3:x", "expected LAYER[:CHANNELS][@POSITION]"),
    ("", "expected LAYER"),
])
def test_bad_units_say_what_is_right(text, fragment):
    with pytest.raises(NnfeatError, match=fragment.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        parse_units(text)


def test_units_are_checked_against_the_model(digits_model):
    units, channels = digits_model.units("bn2:30..31")
    assert channels == [30, 31]
    assert digits_model.units("bn2")[1] == list(range(32))
    with pytest.raises(NnfeatError, match=r"channel 32 out of range for layer 'bn2': valid channels are 0\.\.31"):
        digits_model.units("bn2:30..32")
    shape = digits_model.layer_shapes(["bn2"])["bn2"]
    with pytest.raises(NnfeatError, match=rf"y=99 out of range .* valid y is 0\.\.{shape[2] - 1}"):
        digits_model.units("bn2:0@99,0")
    with pytest.raises(NnfeatError, match="@Y,X"):
        digits_model.units("bn2:0@3")
    with pytest.raises(NnfeatError, match="vector"):
        digits_model.units("output:1@0")


def test_no_unit_form_is_read_as_arithmetic():
    four = parse_objective("layer3:0..3")
    assert four.batch_size == 4 and four.units[0].channels == (0, 1, 2, 3)
    with pytest.raises(NnfeatError, match=r"channel range is written A\.\.B"):
        parse_objective("layer3:0-3")
    shifted = parse_objective("layer3:0 - 3")  # with spaces it is arithmetic, as written
    assert shifted.units[0].channels == (0,) and "- 3" in shifted.description
    combined = parse_objective('layer3:0..3 - 0.5*diversity("layer3")')
    assert combined.batch_size == 4


def test_whole_layer_units_need_the_model(digits_model):
    with pytest.raises(NnfeatError, match="needs the model"):
        parse_objective("bn2")
    assert parse_objective("bn2", digits_model).batch_size == 32
    assert parse_objective("bn2:*", digits_model).units[0].channels == tuple(range(32))


def test_descriptions_are_expressions_that_parse_back():
    for text in ("layer3:5", "layer3:0..3", "-layer3:5", "layer3:5@4,6", 'layer3:1 - 0.5 * diversity("layer3")',
                 "logit(3) + l1()", 'channel("layer3", 1, batch=2)', "softmax([0, 1])"):
        description = parse_objective(text).description
        assert parse_objective(description).description == description
