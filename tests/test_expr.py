"""The CLI objective grammar: what it accepts, what it builds, and what it refuses."""

import pytest
import torch

from nnfeat import objectives as O
from nnfeat.errors import NnfeatError
from nnfeat.engine.expr import parse_objective


def acts_for(*layers, batch=2, channels=8):
    torch.manual_seed(0)
    acts = {name: torch.randn(batch, channels, 4, 4) for name in layers}
    acts["output"] = torch.randn(batch, 10)
    return acts


@pytest.mark.parametrize("text,reference", [
    ("layer3:5", lambda: O.channel("layer3", 5)),
    ("layer3.1.conv2:7", lambda: O.channel("layer3.1.conv2", 7)),
    ("-layer3:5", lambda: -O.channel("layer3", 5)),
    ('linear:3 - 0.5*diversity("layer2")', lambda: O.channel("linear", 3) - 0.5 * O.diversity("layer2")),
    ('neuron("layer3", 5, x=1, y=2)', lambda: O.neuron("layer3", 5, x=1, y=2)),
    ("logit(3) + 2*softmax(3)/4", lambda: O.logit(3) + 2 * O.softmax(3) / 4),
    ('channel("layer3", [0, 1])', lambda: O.channel("layer3", [0, 1])),
    ('deepdream("layer2") * layer3:1', lambda: O.deepdream("layer2") * O.channel("layer3", 1)),
])
def test_parsed_expression_computes_the_same_as_python(text, reference):
    acts = acts_for("layer3", "layer3.1.conv2", "layer2", "linear")
    acts["linear"] = torch.randn(2, 10)
    parsed, expected = parse_objective(text), reference()
    assert torch.allclose(parsed(acts), expected(acts))
    assert set(parsed.layers) == set(expected.layers)


def test_shorthand_inside_strings_is_left_alone():
    obj = parse_objective('neuron("block:1", 2)')
    assert obj.layers == ("block:1",)


@pytest.mark.parametrize("text,fragment", [
    ("layer3:5 +)", "column 11"),
    ('__import__("os").system("ls")', "not allowed"),
    ('__import__("os")', "unknown function '__import__'"),
    ("layer3:5.real", "attribute access is not allowed"),
    ("open('x')", "unknown function 'open'"),
    ("layer3 + 1", "unknown name 'layer3'"),
    ("layer3:5 ** 2", "operator Pow is not allowed"),
    ('neuron("layer3", 5, q=1)', "bad arguments for neuron()"),
    ("[x for x in y]", "ListComp is not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("", "empty objective expression"),
    ("layer3:5 / 0", "divided by zero"),
])
def test_refusals_are_one_line_and_say_where(text, fragment):
    with pytest.raises(NnfeatError) as err:
        parse_objective(text)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_error_marks_the_breaking_column():
    with pytest.raises(NnfeatError) as err:
        parse_objective("layer3:5 + foo(1)")
    assert "layer3:5 + ⟨here⟩foo(1)" in str(err.value)


def test_expression_ending_early_points_at_the_end():
    with pytest.raises(NnfeatError, match="unexpected end of expression"):
        parse_objective("layer3:1 +")
