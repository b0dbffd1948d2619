"""Lucid's InceptionV1: layer names, shapes, parameter count, TF padding/LRN, weights I/O (all offline)."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.models import inceptionv1 as iv
from nnfeat.models.base import Model

# The port's layer table (ProGamerGov/pytorch-old-tensorflow-models inception5h.py, used as-is by
# lucent/modelzoo/inceptionv1/InceptionV1.py): per mixed block
# (in, 1x1, 3x3_bottleneck, 3x3, 5x5_bottleneck, 5x5, pool_reduce).
PORT_MIXED = {
    "mixed3a": (192, 64, 96, 128, 16, 32, 32),
    "mixed3b": (256, 128, 128, 192, 32, 96, 64),
    "mixed4a": (480, 192, 96, 204, 16, 48, 64),
    "mixed4b": (508, 160, 112, 224, 24, 64, 64),
    "mixed4c": (512, 128, 128, 256, 24, 64, 64),
    "mixed4d": (512, 112, 144, 288, 32, 64, 64),
    "mixed4e": (528, 256, 160, 320, 32, 128, 128),
    "mixed5a": (832, 256, 160, 320, 48, 128, 128),
    "mixed5b": (832, 384, 192, 384, 48, 128, 128),
}
#: Sum of the port's tensor sizes: 57 convolutions + the 1024 -> 1008 softmax2 classifier.
PORT_PARAMETERS = 7_066_380
PORT_TENSORS = 116


def port_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of the port's inception5h.pth with its shape, built from the table above."""
    convs = {"conv2d0": (3, 64, 7), "conv2d1": (64, 64, 1), "conv2d2": (64, 192, 3)}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, (c_in, c_out, k) in convs.items():
        shapes[f"{name}_pre_relu_conv.weight"] = (c_out, c_in, k, k)
        shapes[f"{name}_pre_relu_conv.bias"] = (c_out,)
    for block, (c_in, c1, r3, c3, r5, c5, pp) in PORT_MIXED.items():
        for branch, i, o, k in (("1x1", c_in, c1, 1), ("3x3_bottleneck", c_in, r3, 1), ("3x3", r3, c3, 3),
                                ("5x5_bottleneck", c_in, r5, 1), ("5x5", r5, c5, 5), ("pool_reduce", c_in, pp, 1)):
            shapes[f"{block}_{branch}_pre_relu_conv.weight"] = (o, i, k, k)
            shapes[f"{block}_{branch}_pre_relu_conv.bias"] = (o,)
    shapes["softmax2_pre_activation_matmul.weight"] = (1008, 1024)
    shapes["softmax2_pre_activation_matmul.bias"] = (1008,)
    return shapes


@pytest.fixture(scope="module")
def model() -> Model:
    return iv.load("random", seed=0)


@pytest.fixture()
def offline_home(tmp_path, monkeypatch):
    """An empty NNFEAT_HOME, no extra weights path, and a download URL that refuses at once."""
    monkeypatch.setenv("NNFEAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NNFEAT_WEIGHTS_PATH", "")
    monkeypatch.setattr(iv, "WEIGHTS_URL", "http://127.0.0.1:9/inception5h.pth")
    return tmp_path / "home"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine this is faster and far steadier than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(batch: int = 1, size: int = 64, seed: int = 0) -> torch.Tensor:
    """(batch, 3, size, size) in [0, 1]; small by default (every layer still has >= 1 pixel at 32 px)."""
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------
# architecture


def test_every_lucid_layer_name_is_a_module(model):
    names = set(model.layer_names())
    for layer in iv.LUCID_LAYERS:
        assert layer in names
    for layer in ("conv2d0", "conv2d1", "conv2d2", *PORT_MIXED):
        assert f"{layer}_pre_relu" in names
        assert isinstance(model.module(layer), torch.nn.ReLU)
    for block in PORT_MIXED:
        for branch in ("1x1", "3x3_bottleneck", "3x3", "5x5_bottleneck", "5x5", "pool_reduce"):
            assert f"{block}_{branch}_pre_relu" in names
        assert f"{block}_3x3_bottleneck" in names and f"{block}_pool" in names
    for other in ("maxpool0", "maxpool1", "maxpool4", "maxpool10", "localresponsenorm0", "localresponsenorm1",
                  "avgpool0", "softmax2_pre_activation"):
        assert other in names


def test_output_shapes_at_224(model):
    expected = {
        "conv2d0": (64, 112, 112), "conv2d1": (64, 56, 56), "conv2d2": (192, 56, 56),
        "mixed3a": (256, 28, 28), "mixed3b": (480, 28, 28),
        "mixed4a": (508, 14, 14), "mixed4b": (512, 14, 14), "mixed4c": (512, 14, 14),
        "mixed4d": (528, 14, 14), "mixed4e": (832, 14, 14),
        "mixed5a": (832, 7, 7), "mixed5b": (1024, 7, 7),
        "mixed4a_pre_relu": (508, 14, 14), "softmax2": (1008,), "output": (1008,),
    }
    shapes = model.layer_shapes(list(expected), (224, 224))
    assert {k: tuple(v[1:]) for k, v in shapes.items()} == expected
    for name, depth in iv.LUCID_LAYERS.items():
        assert expected[name][0] == depth


def test_other_sizes_keep_tf_same_geometry(model):
    shapes = model.layer_shapes(["conv2d0", "mixed3a", "mixed5b", "output"], (128, 128))
    assert tuple(shapes["conv2d0"][1:]) == (64, 64, 64)
    assert tuple(shapes["mixed3a"][1:]) == (256, 16, 16)
    assert tuple(shapes["mixed5b"][1:]) == (1024, 4, 4)
    assert tuple(shapes["output"][1:]) == (1008,)


def test_parameter_count_and_keys_equal_the_port(model):
    port = iv.nnfeat_to_port_state_dict(model.net.state_dict())
    expected = port_shapes()
    assert len(port) == len(expected) == PORT_TENSORS
    assert {k: tuple(v.shape) for k, v in port.items()} == expected
    assert sum(v.numel() for v in port.values()) == PORT_PARAMETERS
    assert sum(p.numel() for p in model.net.parameters()) == PORT_PARAMETERS


def test_mixed_blocks_concatenate_1x1_3x3_5x5_pool_reduce(model):
    block = "mixed4a"
    branches = [f"{block}_{b}_pre_relu" for b in ("1x1", "3x3", "5x5", "pool_reduce")]
    x = images(2, 96)
    with ActivationCapture(model, [*branches, f"{block}_pre_relu", block]) as capture:
        acts = capture(x)
    pre = acts[f"{block}_pre_relu"]
    assert torch.equal(pre, torch.cat([acts[b] for b in branches], dim=1))
    assert torch.equal(acts[block], pre.clamp_min(0))
    # Feature Visualization's mixed4a:476 lies in the pool-reduce branch (192 + 204 + 48 = 444 before it).
    assert iv.branch_channel("mixed4a", 476) == ("mixed4a_pool_reduce", 32)
    assert iv.branch_channel("mixed4a_pre_relu", 476) == ("mixed4a_pool_reduce_pre_relu", 32)
    assert torch.equal(pre[:, 476], acts["mixed4a_pool_reduce_pre_relu"][:, 32])
    assert iv.branch_channel("mixed4a", 0) == ("mixed4a_1x1", 0)
    assert iv.branch_channel("mixed5b", 1023) == ("mixed5b_pool_reduce", 127)
    with pytest.raises(NnfeatError):
        iv.branch_channel("mixed4a", 508)
    with pytest.raises(NnfeatError):
        iv.branch_channel("conv2d0", 1)


def test_input_is_scaled_to_lucid_range(model):
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    scaled = model.preprocess(x)[0, :, 0, 0]
    assert torch.allclose(scaled, torch.tensor([-117.0, 10.5, 138.0]), atol=1e-4)


def test_output_is_logits_and_softmax2_is_probabilities(model):
    x = images(2)
    with ActivationCapture(model, ["softmax2", "output"]) as capture:
        acts = capture(x)
    assert torch.allclose(acts["softmax2"], acts["output"].softmax(1))
    assert torch.isfinite(acts["output"]).all() and acts["output"].std() > 0


def test_gradient_reaches_the_image(model):
    x = images(1).requires_grad_(True)
    with ActivationCapture(model, ["mixed4a_pre_relu"]) as capture:
        value = capture(x)["mixed4a_pre_relu"][:, 476].mean()
    value.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# TensorFlow operations


def test_same_padding_matches_tensorflow():
    assert iv.same_padding((224, 224), (7, 7), (2, 2)) == (2, 3, 2, 3)  # the port's fixed conv2d0 pad
    assert iv.same_padding((112, 112), (3, 3), (2, 2)) == (0, 1, 0, 1)  # the port's fixed stride-2 pool pad
    assert iv.same_padding((225, 224), (7, 7), (2, 2)) == (2, 3, 3, 3)  # odd height: 6 rows, 3 + 3
    assert iv.same_padding((57, 57), (3, 3), (2, 2)) == (1, 1, 1, 1)
    assert iv.same_padding((14, 14), (5, 5), (1, 1)) == (2, 2, 2, 2)


def test_same_conv_and_pool_equal_the_ports_explicit_padding():
    gen = torch.Generator().manual_seed(3)
    conv = iv.SameConv2d(3, 8, 7, stride=2)
    x = torch.randn(2, 3, 224, 224, generator=gen)
    ref = F.conv2d(F.pad(x, (2, 3, 2, 3)), conv.weight, conv.bias, stride=2)
    assert torch.allclose(conv(x), ref, atol=1e-5)
    conv3 = iv.SameConv2d(4, 5, 3)
    y = torch.randn(1, 4, 9, 9, generator=gen)
    assert torch.allclose(conv3(y), F.conv2d(F.pad(y, (1, 1, 1, 1)), conv3.weight, conv3.bias), atol=1e-5)
    z = torch.randn(2, 4, 112, 112, generator=gen)
    ref_pool = F.max_pool2d(F.pad(z, (0, 1, 0, 1), value=float("-inf")), 3, 2)
    assert torch.equal(iv.SameMaxPool2d(3, stride=2)(z), ref_pool)
    neg = -torch.rand(1, 1, 5, 5, generator=gen) - 1  # all negative: zero padding would win, -inf must not
    assert torch.equal(iv.SameMaxPool2d(3, stride=1)(neg), F.max_pool2d(F.pad(neg, (1, 1, 1, 1), value=float("-inf")), 3, 1))
    assert (iv.SameMaxPool2d(3, stride=2)(neg) < 0).all()


def test_lrn_follows_tensorflows_formula():
    x = torch.randn(2, 16, 3, 3, generator=torch.Generator().manual_seed(4)) * 30
    for setting in ("lucid", "lucent"):
        attrs = iv.LRN_SETTINGS[setting]
        r, bias, alpha, beta = attrs["depth_radius"], attrs["bias"], attrs["alpha"], attrs["beta"]
        ref = torch.empty_like(x)
        for c in range(x.shape[1]):
            window = x[:, max(0, c - r): c + r + 1]
            ref[:, c] = x[:, c] / (bias + alpha * (window**2).sum(1)) ** beta
        assert torch.allclose(iv.TFLocalResponseNorm(**attrs)(x), ref, rtol=1e-5, atol=1e-6)
    assert iv.LRN_SETTINGS["lucid"] == {"depth_radius": 5, "bias": 2.0, "alpha": 1e-4, "beta": 0.5}
    # "lucent" is exactly what the port computes with torch's size=9, alpha=1e-4, k=1.
    port = F.local_response_norm(x, 9, alpha=1e-4, beta=0.5, k=1.0)
    assert torch.allclose(iv.TFLocalResponseNorm(**iv.LRN_SETTINGS["lucent"])(x), port, rtol=1e-5)


def test_lrn_setting_changes_the_network_and_bad_setting_is_one_line():
    lucid, lucent = iv.build_inceptionv1(lrn="lucid"), iv.build_inceptionv1(lrn="lucent")
    lucent.load_state_dict(lucid.state_dict())
    x = images(1) * 255 - 117
    with torch.no_grad():
        assert not torch.allclose(lucid(x), lucent(x))
    with pytest.raises(NnfeatError) as err:
        iv.build_inceptionv1(lrn="caffe")
    assert "\n" not in str(err.value) and "lucid" in str(err.value)


# ------------------------------------------------------------------------------------------------
# initialisation and weights


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = iv.build_inceptionv1(seed=5), iv.build_inceptionv1(seed=5), iv.build_inceptionv1(seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    key = "mixed4a_3x3_pre_relu.weight"
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])


def test_state_dict_round_trip_through_port_names(tmp_path):
    source = iv.build_inceptionv1(seed=1).eval()
    path = tmp_path / "inception5h.pth"
    torch.save(iv.nnfeat_to_port_state_dict(source.state_dict()), path)
    state = torch.load(path, weights_only=True)
    assert set(state) == set(port_shapes())
    target = iv.build_inceptionv1(seed=2).eval()
    target.load_state_dict(iv.port_to_nnfeat_state_dict(state), strict=True)
    x = images(2) * 255 - 117
    with torch.no_grad():
        assert torch.equal(source(x), target(x))
    fresh = iv.load_weights(iv.build_inceptionv1(seed=3), path).eval()
    with torch.no_grad():
        assert torch.equal(source(x), fresh(x))


def test_pretrained_uses_a_local_inception5h_file(offline_home):
    source = iv.build_inceptionv1(seed=7)
    (offline_home / "weights").mkdir(parents=True)
    torch.save(iv.nnfeat_to_port_state_dict(source.state_dict()), offline_home / "weights" / iv.WEIGHTS_FILE)
    loaded = iv.load("pretrained", progress=False)
    wrapped = Model(source, mean=iv.INPUT_MEAN, std=iv.INPUT_STD)
    x = images(1)
    with torch.no_grad():
        assert torch.equal(loaded(x), wrapped(x))
        assert not torch.equal(loaded(x), iv.load("random")(x))
    by_path = iv.load(str(offline_home / "weights" / iv.WEIGHTS_FILE))
    with torch.no_grad():
        assert torch.equal(by_path(x), wrapped(x))


def test_pretrained_offline_without_file_is_a_one_line_error(offline_home):
    with pytest.raises(NnfeatError) as err:
        iv.load("pretrained", progress=False)
    message = str(err.value)
    assert "\n" not in message and iv.WEIGHTS_FILE in message
    assert not (offline_home / "weights" / iv.WEIGHTS_FILE).exists()


def test_wrong_weights_files_are_one_line_errors(tmp_path):
    state = iv.nnfeat_to_port_state_dict(iv.build_inceptionv1().state_dict())
    # The truncated variant of the port (up to mixed4a plus the first auxiliary head) must not load.
    truncated = {k: v for k, v in state.items() if not k.startswith(("mixed4b", "mixed4c", "mixed4d", "mixed4e", "mixed5"))}
    truncated["head0_bottleneck_pre_relu_conv.weight"] = torch.zeros(128, 508, 1, 1)
    bad = tmp_path / "truncated.pth"
    torch.save(truncated, bad)
    with pytest.raises(NnfeatError) as err:
        iv.load(str(bad))
    assert "\n" not in str(err.value) and "missing" in str(err.value) and "unexpected" in str(err.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(NnfeatError) as err:
        iv.load(str(garbage))
    assert "\n" not in str(err.value) and "garbage.pth" in str(err.value)
    with pytest.raises(NnfeatError) as err:
        iv.load("imagenet")
    assert "\n" not in str(err.value) and "pretrained" in str(err.value)


# ------------------------------------------------------------------------------------------------
# speed


def test_forward_at_224_is_fast_on_cpu(model):
    x = images(1, 224)
    with torch.no_grad():
        model(x)
        best = min(_timed(model, x) for _ in range(3))
    assert best < 1.0, f"batch-1 forward at 224 px took {best:.2f} s"


def _timed(model: Model, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start
