"""The model zoo: CIFAR ResNets, weights lookup/download, load_model names, digits-cnn."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import threading

import pytest
import torch

from nnfeat.errors import NnfeatError
from nnfeat.models import Model, digits, fetch_weights, known_models, load_model, nnfeat_home
from nnfeat.models import cifar_resnet as cr
from nnfeat.models.weights import hash_prefix_from_name, sha256_of

R20 = "resnet20-12fca82f.th"
UNREACHABLE = "http://127.0.0.1:9/pretrained_models/"


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text, f"error message must be one non-empty line: {text!r}"
    return text


def accuracy(model: Model, images: torch.Tensor, labels: torch.Tensor, batch: int = 250) -> float:
    with torch.no_grad():
        hits = sum(
            (model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum().item()
            for i in range(0, len(labels), batch)
        )
    return hits / len(labels)


# --- CIFAR ResNet architecture ------------------------------------------------------------------------
@pytest.mark.parametrize("depth, params_m", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85)])
def test_cifar_resnet_param_count_and_blocks(depth, params_m):
    net = cr.CifarResNet(depth)
    count = sum(p.numel() for p in net.parameters())
    assert round(count / 1e6, 2) == params_m
    blocks = (depth - 2) // 6
    assert [len(net.layer1), len(net.layer2), len(net.layer3)] == [blocks] * 3


def test_cifar_resnet_layer_shapes():
    model = load_model("cifar10-resnet20", weights="random")
    layers = ["relu", "layer1", "layer2.0.relu1", "layer2", "layer3.2.bn2", "layer3", "avgpool", "output"]
    shapes = {k: tuple(v) for k, v in model.layer_shapes(layers).items()}
    assert shapes == {
        "relu": (1, 16, 32, 32),
        "layer1": (1, 16, 32, 32),
        "layer2.0.relu1": (1, 32, 16, 16),
        "layer2": (1, 32, 16, 16),
        "layer3.2.bn2": (1, 64, 8, 8),
        "layer3": (1, 64, 8, 8),
        "avgpool": (1, 64, 1, 1),
        "output": (1, 10),
    }
    assert model.input_size == (32, 32) and model.classes[0] == "airplane" and len(model.classes) == 10


def test_option_a_shortcut_is_subsample_plus_zero_channels():
    net = cr.CifarResNet(20)
    assert isinstance(net.layer1[0].shortcut, torch.nn.Identity)
    shortcut = net.layer2[0].shortcut
    assert isinstance(shortcut, cr.PadShortcut) and not list(shortcut.parameters())
    x = torch.randn(2, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    y = shortcut(x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


def test_random_weights_are_seeded_and_leave_global_rng_alone():
    state = torch.get_rng_state()
    a = load_model("cifar10-resnet20", weights="random")
    b = load_model("cifar10-resnet20", weights="random")
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.net.conv1.weight, b.net.conv1.weight)
    assert a.net.conv1.weight.std() > 0


# --- published checkpoints (../shared) -----------------------------------------------------------------
@pytest.mark.parametrize("filename, depth", [(R20, 20), ("resnet32-d509ac18.th", 32)])
def test_checkpoint_keys_load_strictly(shared_dir, filename, depth):
    checkpoint = torch.load(shared_dir / "models" / filename, map_location="cpu", weights_only=True)
    keys = {k.removeprefix("module.") for k in checkpoint["state_dict"]}
    net = cr.CifarResNet(depth)
    # the checkpoints predate BatchNorm's num_batches_tracked buffer, which load_state_dict fills in
    assert keys == {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    cr.load_checkpoint(net, shared_dir / "models" / filename)
    want = checkpoint["state_dict"]["module.layer3.0.conv2.weight"]
    assert torch.equal(net.layer3[0].conv2.weight, want)


def test_resnet20_accuracy(cifar_resnet20, cifar_subset):
    images, labels = cifar_subset
    acc = accuracy(cifar_resnet20, images, labels)
    assert acc >= 0.78, acc  # 81.0 % on the full JPEG test set


def test_resnet32_accuracy(shared_dir, cifar_subset):
    images, labels = cifar_subset
    acc = accuracy(load_model("cifar10-resnet32"), images, labels)
    assert acc >= 0.79, acc  # 82.6 % on the full JPEG test set


def test_loader_rejects_wrong_checkpoint(shared_dir):
    with pytest.raises(NnfeatError) as err:
        cr.load_checkpoint(cr.CifarResNet(32), shared_dir / "models" / R20)
    assert "resnet32-d509ac18.th" in one_line(err)


# --- fetch_weights ------------------------------------------------------------------------------------
def test_hash_prefix_from_name():
    assert hash_prefix_from_name(R20) == "12fca82f"
    assert hash_prefix_from_name("resnet18-f37072fd.pth") == "f37072fd"
    assert hash_prefix_from_name("digits-cnn-v1.pt") is None
    assert hash_prefix_from_name("plain.pt") is None


def test_fetch_finds_weights_on_search_path(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NNFEAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NNFEAT_WEIGHTS_PATH", f"{tmp_path / 'missing'}{os.pathsep}{shared_dir / 'models'}")
    path = fetch_weights(R20, UNREACHABLE + R20, progress=False)
    assert path == shared_dir / "models" / R20
    assert sha256_of(path).startswith("12fca82f")
    assert not (tmp_path / "home").exists()  # nothing downloaded, nothing created


def test_fetch_prefers_nnfeat_home(shared_dir, tmp_path, monkeypatch):
    home_weights = tmp_path / "home" / "weights"
    home_weights.mkdir(parents=True)
    shutil.copy(shared_dir / "models" / R20, home_weights / R20)
    monkeypatch.setenv("NNFEAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NNFEAT_WEIGHTS_PATH", str(shared_dir / "models"))
    assert nnfeat_home() == tmp_path / "home"
    assert fetch_weights(R20, UNREACHABLE + R20, progress=False) == home_weights / R20


def test_fetch_rejects_corrupt_copy(shared_dir, tmp_path, monkeypatch):
    data = bytearray((shared_dir / "models" / R20).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / R20).write_bytes(bytes(data))
    monkeypatch.setenv("NNFEAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NNFEAT_WEIGHTS_PATH", str(tmp_path))
    with pytest.raises(NnfeatError) as err:
        fetch_weights(R20, UNREACHABLE + R20, progress=False)
    text = one_line(err)
    assert str(tmp_path / R20) in text and "12fca82f" in text and "SHA-256" in text


def test_fetch_explicit_prefix_is_checked(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NNFEAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NNFEAT_WEIGHTS_PATH", str(shared_dir / "models"))
    with pytest.raises(NnfeatError):
        fetch_weights(R20, UNREACHABLE + R20, sha256_prefix="00000000", progress=False)


def test_fetch_offline_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("NNFEAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NNFEAT_WEIGHTS_PATH", "")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    url = UNREACHABLE + R20
    with pytest.raises(NnfeatError) as err:
        fetch_weights(R20, url, progress=False)
    text = one_line(err)
    assert R20 in text and url in text and "NNFEAT_WEIGHTS_PATH" in text
    assert str(tmp_path / "home" / "weights") in text
    assert list((tmp_path / "home" / "weights").iterdir()) == []  # no partial download left behind


def test_cifar_model_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NNFEAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NNFEAT_WEIGHTS_PATH", "")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(cr, "WEIGHTS_URL", UNREACHABLE + "{file}")
    with pytest.raises(NnfeatError) as err:
        load_model("cifar10-resnet44")
    assert "resnet44-014dd654.th" in one_line(err)


def test_fetch_downloads_from_file_url(shared_dir, tmp_path, monkeypatch):
    source = tmp_path / "mirror" / R20
    source.parent.mkdir()
    shutil.copy(shared_dir / "models" / R20, source)
    monkeypatch.setenv("NNFEAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NNFEAT_WEIGHTS_PATH", "")
    path = fetch_weights(R20, source.as_uri(), progress=False)
    assert path == tmp_path / "home" / "weights" / R20
    assert path.read_bytes() == source.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == [R20]  # temp file renamed away
    source.unlink()  # now found locally, the URL is not needed any more
    assert fetch_weights(R20, source.as_uri(), progress=False) == path


@pytest.fixture
def http_mirror(shared_dir, tmp_path, monkeypatch):
    """A local HTTP server on 127.0.0.1 serving a copy of resnet20 and a corrupted resnet32 name."""
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(shared_dir / "models" / R20, root / R20)
    (root / "resnet32-d509ac18.th").write_bytes(b"not the weights")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NNFEAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NNFEAT_WEIGHTS_PATH", "")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


def test_fetch_downloads_over_http_with_progress(http_mirror, shared_dir, tmp_path, capsys):
    path = fetch_weights(R20, http_mirror + R20, progress=True)
    assert path == tmp_path / "home" / "weights" / R20
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256_of(shared_dir / "models" / R20)
    net = cr.load_checkpoint(cr.CifarResNet(20), path)
    assert net.linear.weight.abs().sum() > 0


def test_fetch_rejects_bad_download_and_keeps_nothing(http_mirror, tmp_path):
    with pytest.raises(NnfeatError) as err:
        fetch_weights("resnet32-d509ac18.th", http_mirror + "resnet32-d509ac18.th", progress=False)
    assert "d509ac18" in one_line(err)
    assert list((tmp_path / "home" / "weights").iterdir()) == []


def test_fetch_http_404_is_one_line(http_mirror):
    with pytest.raises(NnfeatError) as err:
        fetch_weights("resnet56-4bfd9763.th", http_mirror + "resnet56-4bfd9763.th", progress=False)
    assert "HTTP 404" in one_line(err)


# --- load_model names ---------------------------------------------------------------------------------
def test_known_models_and_unknown_name():
    names = known_models()
    assert {"cifar10-resnet20", "cifar10-resnet56", "digits-cnn", "inceptionv1"} <= set(names)
    with pytest.raises(NnfeatError) as err:
        load_model("cifar10-resnet21")
    text = one_line(err)
    assert text.startswith("unknown model 'cifar10-resnet21'")
    for name in names:
        assert name in text
    assert "torchvision:NAME" in text and "FILE.py:FACTORY" in text


def test_unknown_weights_and_device():
    with pytest.raises(NnfeatError) as err:
        load_model("cifar10-resnet20", weights="imagenet")
    assert "pretrained" in one_line(err) and "random" in one_line(err)
    with pytest.raises(NnfeatError) as err:
        load_model("cifar10-resnet20", weights="random", device="toaster")
    assert "toaster" in one_line(err)
    model = load_model("cifar10-resnet20", weights="random", device="cpu")
    assert model.device == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for a missing GPU")
def test_missing_cuda_is_one_line():
    with pytest.raises(NnfeatError) as err:
        load_model("cifar10-resnet20", weights="random", device="cuda")
    assert "cuda" in one_line(err)


def test_unknown_layer_suggests_nearest():
    model = load_model("cifar10-resnet20", weights="random")
    with pytest.raises(NnfeatError) as err:
        model.module("layer3.1.conv")
    text = one_line(err)
    assert "layer3.1.conv1" in text or "layer3.1.conv2" in text


def test_torchvision_random_resnet18():
    model = load_model("torchvision:resnet18", weights="random")
    assert model.name == "torchvision:resnet18"
    assert model.input_size == (224, 224)
    assert len(model.classes) == 1000 and model.classes[1] == "goldfish"
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    again = load_model("torchvision:resnet18", weights="random")
    assert torch.equal(model.net.fc.weight, again.net.fc.weight)


def test_torchvision_unknown_name_lists_close_names():
    with pytest.raises(NnfeatError) as err:
        load_model("torchvision:resnet19", weights="random")
    assert "torchvision:resnet18" in one_line(err)


def test_torchvision_pretrained_googlenet_input_contract(tmp_path, monkeypatch):
    """The pretrained path, served offline from a file:// URL: without transform_input and with 0.5/0.5
    normalization our model computes what torchvision's ImageNet normalization + transform_input does."""
    import torchvision
    from torchvision.models import GoogLeNet_Weights

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        source = torchvision.models.googlenet(weights=None, init_weights=True, aux_logits=True)
    blob = tmp_path / "blob.pth"
    torch.save(source.state_dict(), blob)
    served = tmp_path / f"googlenet-{sha256_of(blob)[:8]}.pth"  # torch hub checks this hash prefix
    blob.rename(served)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(GoogLeNet_Weights.DEFAULT.value, "url", served.as_uri())

    ours = load_model("torchvision:googlenet")
    assert ours.net.transform_input is False
    assert torch.allclose(ours.mean.flatten(), torch.full((3,), 0.5))
    assert ours.classes == GoogLeNet_Weights.DEFAULT.meta["categories"]
    assert torch.equal(ours.net.conv1.conv.weight, source.conv1.conv.weight)

    theirs = torchvision.models.googlenet(weights=None, init_weights=True, aux_logits=True, transform_input=True)
    theirs.load_state_dict(source.state_dict())
    reference = Model(theirs, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-4)


def test_torchvision_pretrained_offline_is_one_line(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.DEFAULT
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(weights.value, "url", UNREACHABLE + "resnet18-f37072fd.pth")
    with pytest.raises(NnfeatError) as err:
        load_model("torchvision:resnet18")
    text = one_line(err)
    assert "resnet18" in text and str(tmp_path / "torch") in text


FACTORY_FILE = """
import torch
from torch import nn
from nnfeat.models import Model

def make_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

def make_model():
    return Model(make_net(), name="grey", in_channels=1, mean=[0.5], std=[0.25], input_size=16)

def make_nothing():
    return 42
"""


def test_file_factory(tmp_path):
    source = tmp_path / "mynet.py"
    source.write_text(FACTORY_FILE)
    model = load_model(f"{source}:make_net")
    assert isinstance(model, Model) and model.name == "mynet:make_net"
    assert model.input_size == (224, 224) and model.in_channels == 3
    assert model.layer_shapes(["0"], size=(16, 16))["0"] == (1, 4, 14, 14)
    grey = load_model(f"{source}:make_model")
    assert grey.name == "grey" and grey.in_channels == 1 and grey.input_size == (16, 16)


def test_file_factory_errors(tmp_path):
    source = tmp_path / "mynet.py"
    source.write_text(FACTORY_FILE)
    with pytest.raises(NnfeatError) as err:
        load_model(f"{tmp_path / 'nope.py'}:make_net")
    assert "not found" in one_line(err)
    with pytest.raises(NnfeatError) as err:
        load_model(f"{source}:make_nett")
    assert "make_net" in one_line(err)
    with pytest.raises(NnfeatError) as err:
        load_model(f"{source}:make_nothing")
    assert "int" in one_line(err)
    with pytest.raises(NnfeatError) as err:
        load_model(str(source))
    assert ":FACTORY" in one_line(err)
    broken = tmp_path / "broken.py"
    broken.write_text("def make(:\n")
    with pytest.raises(NnfeatError) as err:
        load_model(f"{broken}:make")
    assert "SyntaxError" in one_line(err)


# --- digits-cnn ---------------------------------------------------------------------------------------
def test_digits_dataset_shapes():
    images, labels = digits.digits_dataset()
    assert images.shape == (1797, 3, 32, 32) and labels.shape == (1797,)
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.9
    assert torch.equal(images[:, 0], images[:, 2])
    test_x, test_y = digits.digits_dataset("test", rgb=False)
    assert test_x.shape == (297, 1, 32, 32) and torch.equal(test_y, labels[-297:])
    with pytest.raises(NnfeatError):
        digits.digits_dataset("val")


def test_digits_model_accuracy(digits_model):
    assert digits_model.in_channels == 1 and digits_model.classes == [str(d) for d in range(10)]
    images, labels = digits.digits_dataset("test")  # RGB in [0,1]; Model converts to grey
    assert accuracy(digits_model, images, labels) >= 0.95
    shapes = digits_model.layer_shapes(["conv1", "pool1", "pool2", "relu3", "fc"])
    want = [(1, 16, 32, 32), (1, 16, 8, 8), (1, 32, 4, 4), (1, 64, 4, 4), (1, 10)]
    assert [tuple(s) for s in shapes.values()] == want


def test_digits_model_is_cached_and_deterministic(digits_model):
    cache = digits.cache_path()
    assert cache.parent == nnfeat_home() / "weights" and cache.is_file()
    stamp = cache.stat().st_mtime_ns
    again = load_model("digits-cnn")
    assert cache.stat().st_mtime_ns == stamp  # reused, not retrained
    for name, tensor in digits_model.net.state_dict().items():
        assert torch.equal(again.net.state_dict()[name], tensor)
    retrained = digits.train_digits_cnn()  # a fresh training gives bit-identical weights
    for name, tensor in retrained["state_dict"].items():
        assert torch.equal(again.net.state_dict()[name], tensor), name


def test_digits_random_weights():
    model = load_model("digits-cnn", weights="random")
    assert torch.equal(model.net.conv1.weight, load_model("digits-cnn", weights="random").net.conv1.weight)
    images, labels = digits.digits_dataset("test")
    assert accuracy(model, images, labels) < 0.5
