"""Property-based fuzzing of the objective expression grammar (:mod:`nnfeat.engine.expr`), plus one example test per
bug the fuzzing found.

Properties:

1. any text (random, or built from the grammar's own tokens, Python escape tricks and digits-cnn's layer
   names) parses, the way the CLI parses it (``parse_objective(text, model)``), to an Objective or to ONE
   :class:`NnfeatError` line, within a second, without running code (a canary file is never created);
2. generated expression trees either build an objective that evaluates on digits-cnn's real activations to
   one finite score per batch item, or fail with the one-line error (at parse, validate or evaluation);
3. deep nesting, long inputs and huge numbers fail fast with a short one-line error naming the limit;
4. a wrong argument type names the argument and what it should be.

Hypothesis runs derandomized and without its example database, so CI sees the same examples every time.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from nnfeat.errors import NnfeatError
from nnfeat.engine.expr import MAX_CHANNELS, MAX_DEPTH, MAX_FACTORS, MAX_LENGTH, MAX_NUMBER, parse_objective
from nnfeat.hooks import ActivationCapture
from nnfeat.engine.objectives import CONSTRUCTORS

FUZZ = settings(derandomize=True, database=None, deadline=5000, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BATCH = 8  # images in the one forward pass whose activations every generated objective is evaluated on
LAYERS = ["conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2", "pool2", "conv3", "bn3", "relu3", "avgpool", "fc"]


@pytest.fixture(scope="module")
def digits(digits_model):
    """digits-cnn, its layer shapes (batch 1) and the activations of every layer for BATCH images."""
    model = digits_model
    assert model.layer_names() == LAYERS  # the strategies below name these layers
    names = [*model.layer_names(), "output"]
    shapes = model.layer_shapes(names)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 3, *model.input_size, generator=generator)
    with torch.no_grad(), ActivationCapture(model, names) as capture:
        acts = capture(model.fit(images))
    acts["image"] = images
    return model, shapes, acts


def note(outcome: str) -> None:
    """Count ``outcome`` in hypothesis's statistics (``--hypothesis-show-statistics``) inside a property test."""
    if currently_in_test_context():
        event(outcome)


def expect_one_line(text: str, model=None):
    """Parse ``text``; return the Objective or the NnfeatError. Anything else, a multi-line or overlong message
    or a parse slower than a second fails the test."""
    start = time.process_time()  # this process's CPU time: the bound holds on a loaded machine too
    try:
        result = parse_objective(text, model)
    except NnfeatError as err:
        result = err
        message = str(err)
        assert message and len(message.splitlines()) == 1 and "\n" not in message, repr(message)
        assert len(message) <= 400, f"error echoes too much ({len(message)} characters): {message[:200]}"
    note("parsed" if not isinstance(result, NnfeatError) else "refused by the parser")
    elapsed = time.process_time() - start
    assert elapsed < 1.0, f"parse took {elapsed:.2f} s of CPU for {text[:80]!r}"
    return result


def evaluate_or_one_line(objective, shapes, acts) -> torch.Tensor | None:
    """Validate ``objective`` against digits-cnn and evaluate it on the captured activations: a (B,) tensor of
    finite scores, or None where it is refused with the one-line error."""
    batch = objective.batch_size or max(objective.min_batch, 2)
    if batch > BATCH:
        return None  # more units than captured images: validity of this size is checked by test_units
    try:
        objective.validate(shapes, batch)
        scores = objective({k: v[:batch] for k, v in acts.items()})
    except NnfeatError as err:
        assert len(str(err).splitlines()) == 1
        note("refused by validate or evaluation")
        return None
    note("evaluated")
    assert scores.shape == (batch,), (objective.description, scores.shape)
    assert torch.isfinite(scores).all(), (objective.description, scores)
    return scores


# -- 1. arbitrary text ----------------------------------------------------------------------------------------
_CANARY_NAME = "nnfeat_expr_canary"
_PAYLOADS = [
    "__import__('os').system('touch CANARY')",
    "__import__('pathlib').Path('CANARY').touch()",
    "open('CANARY', 'w')",
    "exec(\"open('CANARY', 'w')\")",
    "eval(\"open('CANARY', 'w')\")",
    "().__class__.__bases__[0].__subclasses__()",
    "[c for c in ().__class__.__base__.__subclasses__()]",
    "{c: 1 for c in range(3)}",
    "(lambda: __import__('os').system('touch CANARY'))()",
    "f\"{__import__('os').system('touch CANARY')}\"",
    "(x := __import__('os'))",
    "globals()['__builtins__']",
    "breakpoint()",
    "conv1:1 + __import__('os').system('touch CANARY')",
    "channel(__import__('os').system('touch CANARY'), 1)",
    "channel(\"conv1\"); __import__('os').system('touch CANARY'); (\"\", 1)",
    "channel('conv1\\'); open(\\'CANARY\\', \\'w\\'); (\\'', 1)",
    "conv1:1 if open('CANARY', 'w') else conv1:2",
    "neuron(**{'layer': 'conv1', 'channel': 1})",
    "neuron(*['conv1', 1])",
    "conv1:1.__class__",
    "conv1:1[0]",
    "yield 1",
    "await conv1:1",
    "__unit__(0)",
    "__unit__(-1)",
    "(__unit__)(0)",
]
_TOKENS = [
    *LAYERS, "output", "image", "layer3", "'conv1'", '"bn2"', '"fc"', "conv1:0", "bn2:0..3", "fc:1", "conv3:5@1,2",
    "conv1:*", "conv1:99", "fc:3@0", "relu3:0,1", *CONSTRUCTORS, "__import__", "os", "system", "__class__",
    "__bases__", "lambda", "for", "in", "if", "else", "not", "and", "or", "is", "None", "True", ":=", "yield",
    "+", "-", "*", "/", "**", "//", "%", "@", "~", "<<", "==", "<", "(", ")", "[", "]", "{", "}", ",", ":", "..", ".",
    ";", "=", "'", '"', "x=", "y=", "batch=", "sigma=", "0", "1", "2", "5", "63", "-1", "2.5", "1e309", "1e-300",
    "10**400", "-0.0", "nan", "inf", "1" + "0" * 30, " ", "\n", "\t", "\x00", "é", "⟨here⟩",
]
TEXTS = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(_TOKENS), max_size=30).map("".join),
    st.lists(st.sampled_from(_TOKENS), max_size=30).map(" ".join),
)


@pytest.fixture(scope="module")
def canary(tmp_path_factory):
    path = tmp_path_factory.mktemp("canary") / _CANARY_NAME
    yield path
    assert not path.exists(), "an objective expression ran code"


@pytest.mark.parametrize("payload", _PAYLOADS)
def test_code_injection_gets_one_line_and_runs_nothing(payload, canary, digits, monkeypatch):
    monkeypatch.chdir(canary.parent)
    text = payload.replace("CANARY", str(canary))
    result = expect_one_line(text, digits[0])
    assert isinstance(result, NnfeatError), f"{text!r} was accepted as {result}"
    assert not canary.exists()


@FUZZ
@given(text=TEXTS)
def test_any_text_parses_or_is_one_line(text, digits, canary):
    result = expect_one_line(text, digits[0])
    assert not canary.exists()
    if not isinstance(result, NnfeatError):
        assert result.description  # an Objective, nothing else
        evaluate_or_one_line(result, digits[1], digits[2])


@FUZZ
@given(text=st.lists(st.sampled_from(_PAYLOADS + _TOKENS), min_size=1, max_size=8).map(" ".join))
def test_payload_fragments_run_nothing(text, digits, canary):
    result = expect_one_line(text.replace("CANARY", str(canary)), digits[0])
    assert not canary.exists()
    if not isinstance(result, NnfeatError):
        evaluate_or_one_line(result, digits[1], digits[2])


# -- 2. generated expression trees --------------------------------------------------------------------------
def _number_text(value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "(1e309 - 1e309)"
    if isinstance(value, float) and math.isinf(value):
        return "1e309" if value > 0 else "-1e309"
    return repr(value)


NUMBERS = st.one_of(
    st.integers(-20, 20), st.integers(-2 * MAX_NUMBER, 2 * MAX_NUMBER),
    st.sampled_from([10**400, -(10**400), 1e309, float("nan"), -0.0, 0.0, 1e-300, 5e-324, 1e6, 1e-6, 0.5]),
    st.floats(allow_nan=True, allow_infinity=True),
).map(_number_text)
LAYER_NAMES = st.one_of(st.sampled_from(LAYERS + ["output", "image"]), st.sampled_from(["nope", "", "conv1:3", "fc#1"]),
                        st.text(max_size=10))
INDICES = st.one_of(st.integers(0, 20), st.integers(-3, 100), st.just(MAX_NUMBER + 1))
UNITS = st.builds(
    lambda layer, selector, position: f"{layer}:{selector}{position}",
    st.sampled_from(LAYERS + ["output"]),
    st.one_of(INDICES.filter(lambda i: i >= 0).map(str), st.tuples(st.integers(0, 9), st.integers(0, 9)).map(
        lambda ab: f"{min(ab)}..{max(ab)}"), st.just("*"), st.just(f"0..{MAX_CHANNELS}")),
    st.one_of(st.just(""), st.tuples(st.integers(0, 40), st.integers(0, 40)).map(lambda p: f"@{p[0]},{p[1]}"),
              st.integers(0, 9).map(lambda t: f"@{t}")),
)


def _quoted(text: str) -> str:
    return repr(text)


def _argument(kind: str):
    """A strategy for one argument's text: mostly of the kind the parameter wants, sometimes anything."""
    right = {
        "layer": LAYER_NAMES.map(_quoted),
        "index": INDICES.map(str),
        "indices": st.one_of(INDICES.map(str), st.lists(INDICES, max_size=BATCH + 1).map(str)),
        "vector": st.lists(st.floats(-4, 4), min_size=0, max_size=70).map(str),
        "number": NUMBERS,
        "target": st.one_of(st.sampled_from(["3", "pred", "9", "11", "out:3", "0:3", "3@mask", "3@0:4,0:4", "value",
                                             "out:3@maks", "cat", ""]), st.text(max_size=12)).map(_quoted),
    }[kind]
    wrong = st.one_of(NUMBERS, LAYER_NAMES.map(_quoted), UNITS, st.lists(st.integers(0, 3), max_size=3).map(str),
                      st.just("[[1]]"), st.just("[]"))
    return st.one_of(right, right, right, wrong)


#: each constructor's parameters as (name, kind)
SIGNATURES = {
    "neuron": [("layer", "layer"), ("channel", "indices"), ("x", "index"), ("y", "index"), ("batch", "index")],
    "channel": [("layer", "layer"), ("channel", "indices"), ("batch", "index")],
    "deepdream": [("layer", "layer"), ("batch", "index")],
    "layer": [("layer", "layer"), ("batch", "index")],
    "direction": [("layer", "layer"), ("vectors", "vector"), ("batch", "index")],
    "direction_neuron_cossim": [("layer", "layer"), ("vectors", "vector"), ("x", "index"), ("y", "index"),
                                ("cossim_pow", "number"), ("batch", "index")],
    "logit": [("cls", "indices"), ("batch", "index")],
    "softmax": [("cls", "indices"), ("batch", "index")],
    "target": [("target", "target"), ("batch", "index")],
    "diversity": [("layer", "layer"), ("group", "index")],
    "alignment": [("layer", "layer"), ("decay_ratio", "number"), ("max_distance", "index")],
    "l1": [("constant", "number"), ("layer", "layer")],
    "total_variation": [("layer", "layer")],
    "tv": [("layer", "layer")],
    "blur": [("layer", "layer"), ("sigma", "number")],
}


def test_the_signature_table_covers_every_constructor():
    import inspect

    assert set(SIGNATURES) == set(CONSTRUCTORS)
    for name, params in SIGNATURES.items():
        assert [p for p, _ in params] == list(inspect.signature(CONSTRUCTORS[name]).parameters), name


@st.composite
def CALLS(draw):
    """A constructor call with a right or wrong number of arguments, some positional, some by keyword."""
    name = draw(st.sampled_from(sorted(SIGNATURES)))
    params = SIGNATURES[name]
    count = draw(st.integers(0, len(params) + 1))
    by_keyword = draw(st.integers(0, count))
    parts = []
    for i in range(count):
        pname, kind = params[i] if i < len(params) else ("extra", "number")
        value = draw(_argument(kind))
        parts.append(f"{pname}={value}" if i >= count - by_keyword else value)
    return f"{name}({', '.join(parts)})"


LEAVES = st.one_of(UNITS, CALLS(), NUMBERS)
EXPRESSIONS = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.builds(lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from(["+", "-", "*", "/", "**"]), inner),
        st.builds(lambda sign, a: f"{sign}{a}", st.sampled_from(["-", "+", "--"]), inner),
        inner.map(lambda a: f"({a})"),
    ),
    max_leaves=12,
)


@FUZZ
@given(text=EXPRESSIONS)
def test_generated_expressions_evaluate_finite_or_are_one_line(text, digits):
    model, shapes, acts = digits
    result = expect_one_line(text, model)
    if not isinstance(result, NnfeatError):
        evaluate_or_one_line(result, shapes, acts)


@FUZZ
@given(text=st.one_of(UNITS, CALLS()))
def test_single_terms_evaluate_finite_or_are_one_line(text, digits):
    model, shapes, acts = digits
    result = expect_one_line(text, model)
    if not isinstance(result, NnfeatError):
        evaluate_or_one_line(result, shapes, acts)


#: digits-cnn's layers: (channels, map side or 0 for a vector)
GEOMETRY = {**{n: (16, 32) for n in ("conv1", "bn1", "relu1")}, "pool1": (16, 8),
            **{n: (32, 8) for n in ("conv2", "bn2", "relu2")}, "pool2": (32, 4),
            **{n: (64, 4) for n in ("conv3", "bn3", "relu3")}, "avgpool": (64, 1), "fc": (10, 0), "output": (10, 0)}


@st.composite
def VALID_TERMS(draw):
    """A term that is valid for digits-cnn (in-range channels, positions, arguments)."""
    layer = draw(st.sampled_from(sorted(GEOMETRY)))
    channels, side = GEOMETRY[layer]
    c = draw(st.integers(0, channels - 1))
    pos = draw(st.tuples(st.integers(0, max(side - 1, 0)), st.integers(0, max(side - 1, 0))))
    maps = [n for n, (_, sd) in GEOMETRY.items() if sd >= 2]
    weights = st.lists(st.floats(-2, 2, allow_nan=False), min_size=channels, max_size=channels).map(str)
    number = st.one_of(st.integers(-100, 100), st.floats(-100, 100)).map(repr)
    options = [
        st.just(f"{layer}:{c}"),
        st.just(f"{layer}:{c}@{pos[0]},{pos[1]}" if side else f"{layer}:{c}"),
        st.just(f'neuron("{layer}", {c}' + (f", x={pos[1]}, y={pos[0]})" if side else ")")),
        st.integers(0, BATCH - 1).map(lambda b: f'channel("{layer}", {c}, batch={b})'),
        st.just(f'deepdream("{layer}")'), st.just(f"logit({c % 10})"), st.just(f"softmax({c % 10})"),
        st.just(f'diversity("{layer}")'),
        st.tuples(st.floats(1, 4), st.integers(1, 4)).map(lambda a: f'alignment("{layer}", {a[0]!r}, {a[1]})'),
        number.map(lambda k: f"l1({k})"), st.just("tv()"), st.sampled_from(maps).map(lambda m: f'tv("{m}")'),
        st.floats(0.1, 8).map(lambda sg: f'blur("image", {sg!r})'),
        weights.map(lambda w: f'direction("{layer}", {w})'),
    ]
    if side:
        options.append(st.tuples(weights, st.floats(0, 8)).map(
            lambda a: f'direction_neuron_cossim("{layer}", {a[0]}, x={pos[1]}, y={pos[0]}, cossim_pow={a[1]!r})'))
    return draw(st.one_of(options))


VALID_EXPRESSIONS = st.recursive(
    st.one_of(VALID_TERMS(), VALID_TERMS(), st.one_of(st.integers(-100, 100), st.floats(-100, 100)).map(repr)),
    lambda inner: st.one_of(
        st.builds(lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from(["+", "-", "*", "/"]), inner),
        inner.map(lambda a: f"-({a})"), inner.map(lambda a: f"({a})"),
    ),
    max_leaves=8,
)


@FUZZ
@given(text=VALID_EXPRESSIONS)
def test_valid_leaning_expressions_evaluate_finite_or_are_one_line(text, digits):
    model, shapes, acts = digits
    result = expect_one_line(text, model)
    if not isinstance(result, NnfeatError):
        evaluate_or_one_line(result, shapes, acts)


def test_valid_expressions_do_evaluate(digits):
    """The generators above are not only producing refusals: typical expressions build and evaluate."""
    model, shapes, acts = digits
    for text in ('conv3:5 - 0.5*diversity("bn2")', "bn2:0..3", 'neuron("conv2", 3, x=1, y=2) * fc:1',
                 "1e6 * conv1:0 / 1e6", 'alignment("relu2", 1.5, 3) + blur("image", 2) - 0.05*tv()',
                 "conv1:1 * conv1:2 * conv1:3 * conv1:4", "l1() + softmax(3)",
                 f"direction('relu3', {[0.1] * 64}) + direction_neuron_cossim('relu3', {[0.1] * 64}, x=1, y=1)"):
        scores = evaluate_or_one_line(parse_objective(text, model), shapes, acts)
        assert scores is not None, text


# -- 3. deep, long, huge --------------------------------------------------------------------------------------
DEEP = [
    ("(", ")"), ("-", ""), ("+", ""), ("- ", ""), ("[", "]"), ("channel(", ")"), ("neuron('conv1', ", ")"),
    ("1 + ", ""), ("conv1:1 * ", ""), ("conv1:1 + ", ""), ("2 * (", ")"), ("~", ""), ("not ", ""), ("(-", ")"),
    ("", " ** 2"), ("", ".real"), ("", "[0]"), ("", "()"), ("a.", ""), ("a+", ""), ("a", ""), ("a:", ""),
]


@FUZZ
@given(shape=st.sampled_from(DEEP), depth=st.one_of(st.integers(0, 300), st.integers(0, 20_000)))
def test_deep_nesting_fails_fast_with_one_line(shape, depth, digits):
    prefix, suffix = shape
    text = prefix * depth + "conv1:1" + suffix * depth
    result = expect_one_line(text, digits[0])
    if not isinstance(result, NnfeatError):
        evaluate_or_one_line(result, digits[1], digits[2])


@pytest.mark.parametrize("text,fragment", [
    ("(" * 10_000 + "conv1:1" + ")" * 10_000, "too long"),
    ("-" * 5_000 + "conv1:1", f"at most {MAX_DEPTH} levels"),
    ("(" * 300 + "conv1:1" + ")" * 300, "nested parentheses"),
    ("+".join(["conv1:1"] * 1_200), f"at most {MAX_DEPTH} levels"),
    ("conv1:1 + " * 10_000 + "1", "too long"),
    ("conv1:1 + " + "1" * 100_000, f"at most {MAX_LENGTH}"),
    ("conv1:1 + " + "1" * 5_000, "digits: numbers must be within"),
    ("conv1:1 * 1" + "0" * 400, "number of 401 digits is out of range"),
    ("layer3:0 ** 1e9", "operator Pow is not allowed"),
    ("2**2**2**2**2", "operator Pow is not allowed"),
    ("conv1:1 * 1e309", "number inf is out of range"),
    ("conv1:1 * (0 * 1e309)", "number inf is out of range"),
    ("conv1:1 * 1e7", f"-{MAX_NUMBER}..{MAX_NUMBER}"),
    ("conv1:1 * (1000 * 1000 * 1000)", "out of range"),
    ("1e6 * (1e6 * conv1:1)", f"at most {MAX_NUMBER}"),
    ("conv1:1 / 1e-300", f"at most {MAX_NUMBER}"),
    ("conv1:1" + " * conv1:1" * MAX_FACTORS, f"at most {MAX_FACTORS} objectives"),
    ("conv1:0..999999999999", "indices go up to"),
    ("conv1:" + "9" * 5_000, "indices go up to"),
    ("conv1:1@" + "9" * 30 + ",1", "indices go up to"),
    (f"conv1:0..{MAX_CHANNELS}", f"at most {MAX_CHANNELS}"),
    ("channel('conv1', 1, batch=" + "9" * 3_000 + " * " + "9" * 3_000 + ")", "out of range"),
])
def test_limits_fail_fast_without_echoing_the_input(text, fragment, digits):
    result = expect_one_line(text, digits[0])
    assert isinstance(result, NnfeatError), text[:80]
    assert fragment in str(result)
    assert len(str(result)) < 300


# -- 4. wrong argument types ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text,fragments", [
    ('channel("conv1", "b")', ["argument 'channel' of channel()", "channel index", "the string 'b'"]),
    ("channel(conv1:3, 2)", ["argument 'layer' of channel()", "in quotes", "the objective conv1:3"]),
    ('channel("conv1", 2.5)', ["argument 'channel'", "the number 2.5"]),
    ('channel("conv1", [0.5, 1.7])', ["argument 'channel'", "list of 2"]),
    ('channel("conv1", [])', ["argument 'channel'", "non-empty"]),
    ('neuron("conv1", 1, x=-1)', ["argument 'x' of neuron()", "0..1000000", "-1"]),
    ('neuron("conv1", 1, y=1.5)', ["argument 'y'", "integer"]),
    ('channel("conv1", 1, batch=-1)', ["argument 'batch'"]),
    ('logit("x")', ["argument 'cls' of logit()"]),
    ('softmax(fc:1)', ["argument 'cls' of softmax()", "objective"]),
    ('l1("a")', ["argument 'constant' of l1()", "number"]),
    ('l1(0.5, 3)', ["argument 'layer' of l1()"]),
    ('blur("image", 0)', ["argument 'sigma' of blur()", "0.1..8"]),
    ('blur("image", "big")', ["argument 'sigma'"]),
    ('alignment("conv1", 0)', ["argument 'decay_ratio'", "1..1000000"]),
    ('alignment("conv1", 2, 2.5)', ["argument 'max_distance'", "integer 1.."]),
    ('direction("conv1", [])', ["argument 'vectors' of direction()", "non-empty"]),
    ('direction("conv1", 3)', ["argument 'vectors'"]),
    ('direction_neuron_cossim("conv1", [1.0], cossim_pow=50)', ["argument 'cossim_pow'", "0..8"]),
    ('deepdream("")', ["argument 'layer' of deepdream()", "layer name"]),
    ('diversity(conv1:1)', ["argument 'layer' of diversity()"]),
    ('diversity("conv1", group=1)', ["argument 'group' of diversity()", "2.."]),
    ('neuron("conv1", 1, 2, 3, 4, 5)', ["bad arguments for neuron()", "neuron(layer, channel, x=None"]),
    ('neuron("conv1", 1, q=1)', ["bad arguments for neuron()", "unexpected keyword argument 'q'"]),
    ('channel("image", 5)', ["argument 'channel' of channel()", "0..2"]),
])
def test_wrong_argument_types_name_the_argument(text, fragments):
    result = expect_one_line(text)
    assert isinstance(result, NnfeatError), text
    for fragment in fragments:
        assert fragment in str(result), (fragment, str(result))


@FUZZ
@given(data=st.data())
def test_any_wrong_argument_names_its_parameter(data):
    """One argument of a valid call replaced by a value of the wrong kind: the error names that parameter."""
    wrong_for = {
        "layer": ["3", "conv1:1", "[1]"], "indices": ["'a'", "2.5", "-1", "[]", "[0.5]", "conv1:1"],
        "index": ["'a'", "2.5", "-1", "[1]", "conv1:1"], "vector": ["[]", "3", "'a'", "conv1:1"],
        "number": ["'a'", "[1]", "conv1:1"], "target": ["3", "[1]", "conv1:1", "''"],
    }
    valid = {"layer": "'conv1'", "indices": "1", "index": "1", "vector": "[1.0]", "number": "2", "target": "'3'"}
    name = data.draw(st.sampled_from(sorted(SIGNATURES)))
    params = SIGNATURES[name]
    target = data.draw(st.integers(0, len(params) - 1))
    bad = data.draw(st.sampled_from(wrong_for[params[target][1]]))
    args = [f"{p}={bad if i == target else valid[kind]}" for i, (p, kind) in enumerate(params)]
    result = expect_one_line(f"{name}({', '.join(args)})")
    assert isinstance(result, NnfeatError)
    assert f"argument '{params[target][0]}' of {name}()" in str(result)


# -- one example per bug found (each failed before the fix) ------------------------------------------------
def test_unary_chain_is_not_a_recursion_error():
    with pytest.raises(NnfeatError, match="nested too deeply"):
        parse_objective("-" * 5000 + "conv1:1")


def test_long_sum_is_not_a_recursion_error():
    with pytest.raises(NnfeatError, match="nested too deeply"):
        parse_objective("+".join(["conv1:1"] * 1200))


def test_huge_integer_weight_is_not_an_overflow_error():
    with pytest.raises(NnfeatError, match="out of range"):
        parse_objective("conv1:1 * 1" + "0" * 400)


def test_infinite_and_nan_weights_are_refused():
    for text in ("conv1:1 * 1e309", "conv1:1 * (0 * 1e309)", "conv1:1 + 1e309"):
        with pytest.raises(NnfeatError, match="must be finite"):
            parse_objective(text)


def test_weights_that_multiply_past_the_limit_are_refused():
    with pytest.raises(NnfeatError, match="multiply to 1e\\+12"):
        parse_objective("1e6 * (1e6 * conv1:1)")
    assert str(parse_objective("1e6 * conv1:1")) == "1e+06 * conv1:1"


def test_division_by_an_objective_is_refused():
    for text in ("1 / conv1:1", "conv1:1 / bn2:1"):
        with pytest.raises(NnfeatError, match="dividing by an objective"):
            parse_objective(text)


def test_non_integer_channels_are_not_truncated():
    with pytest.raises(NnfeatError, match="argument 'channel'"):
        parse_objective('channel("conv1", [0.5, 1.7])')


def test_strings_for_numbers_are_one_line_not_value_errors():
    for text in ('channel("conv1", "b")', 'logit("x")', 'l1("a")'):
        with pytest.raises(NnfeatError, match="argument '"):
            parse_objective(text)


def test_units_with_huge_numbers_fail_at_once():
    for text in ("conv1:" + "9" * 5000, "conv1:0..999999999999", "x + conv1:0..999999999999"):
        with pytest.raises(NnfeatError, match="indices go up to"):
            parse_objective(text)


def test_a_bare_number_string_or_list_is_not_an_objective():
    for text in ("1", "'abc'", "[1, 2]", "2 * 3"):
        with pytest.raises(NnfeatError, match="not an objective"):
            parse_objective(text)


def test_typed_unit_marker_is_an_unknown_function():
    for text in ("__unit__(0)", "conv1:1 + __unit__(0)", "conv1:1 + __unit__(5)"):
        with pytest.raises(NnfeatError, match="unknown function '__unit__'"):
            parse_objective(text)


def test_line_breaks_are_spaces_and_errors_stay_one_line():
    assert str(parse_objective("conv1:1\n+ 1")) == "conv1:1 + 1"
    with pytest.raises(NnfeatError) as err:
        parse_objective("conv1:1 +\nfoo(1)")
    assert "\n" not in str(err.value)
    with pytest.raises(NnfeatError, match=r"control character \\x00"):
        parse_objective("conv1:1\x00")


def test_error_column_counts_characters_not_bytes():
    with pytest.raises(NnfeatError) as err:
        parse_objective('"é" + foo(1)')
    assert 'at column 7: "é" + ⟨here⟩foo(1)' in str(err.value)


def test_error_on_long_input_shows_only_the_neighbourhood():
    text = "conv1:1" + " " * 8000 + "+ foo(1)"
    with pytest.raises(NnfeatError) as err:
        parse_objective(text)
    message = str(err.value)
    assert len(message) < 300 and f"({len(text)} characters)" in message and "⟨here⟩foo(1)" in message


def test_map_penalties_on_vector_layers_are_refused_with_the_model(digits):
    model = digits[0]
    for text in ('tv("fc")', 'total_variation("fc")', 'blur("fc")', 'tv("avgpool")'):
        with pytest.raises(NnfeatError, match="map"):
            parse_objective(text, model)
    with pytest.raises(NnfeatError, match="too large for the 4x4 map"):
        parse_objective('blur("pool2", 2)', model)
    parse_objective('tv("pool2") + blur("pool2", 1.5) + blur("image", 8)', model)


def test_alignment_and_direction_arguments_are_checked():
    for text in ('alignment("conv1", 0, 2.5)', 'alignment("conv1", 0)', 'direction("conv1", [])'):
        with pytest.raises(NnfeatError, match="argument '"):
            parse_objective(text)


def test_image_channels_beyond_rgb_are_refused():
    with pytest.raises(NnfeatError, match="0..2"):
        parse_objective('channel("image", 5)')


def test_python_syntax_warnings_are_not_printed():
    import warnings

    for text in ("1if conv1:1 else 2", "conv1:1 + 1or 2", "2in conv1:1"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(NnfeatError, match="invalid decimal literal"):
                parse_objective(text)
        assert not caught, [str(w.message) for w in caught]


def test_unit_scan_is_linear_in_the_input():
    """A long dotted run after a unit (``conv1:1.real.real...``) used to rescan the rest of the text at each name."""
    start = time.process_time()
    for _ in range(3):
        with pytest.raises(NnfeatError, match="attribute access|nested too deeply"):
            parse_objective("conv1:1" + ".real" * 1900)
    assert time.process_time() - start < 1.0
