"""``weights=FILE`` / ``--weights FILE``: a user's weights file loaded into any model nnfeat builds.

The source network is the zoo's ``digits-cnn`` with its seeded random weights, perturbed (parameters and
BatchNorm statistics) so the file's weights differ from what ``weights="random"`` builds: a loader that silently
kept the random weights would give other logits. It is saved in every format nnfeat reads and each file is loaded
back through :func:`nnfeat.models.zoo.load_model` to the same logits, bit for bit.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import pickle
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from nnfeat.cli import main
from nnfeat.errors import NnfeatError
from nnfeat.models import load_model
from nnfeat.models.checkpoint import read_state_dict, weights_option

X = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))  # (B, 3, H, W) RGB in [0, 1]


def perturbed(state: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """``state`` with every float tensor moved by noise (running variances kept positive)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            noise = 0.1 * torch.randn(value.shape, generator=g)
            value = value * (1 + noise.abs()) if key.endswith("running_var") else value + noise
        out[key] = value.clone()
    return out


def digits_state() -> dict[str, torch.Tensor]:
    return perturbed(load_model("digits-cnn", weights="random", device="cpu").net.state_dict())


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[dict[str, Path], torch.Tensor]:
    """Every format of the same perturbed digits-cnn -> ({format: file}, its logits on X (4, 10))."""
    d = tmp_path_factory.mktemp("weights")
    model = load_model("digits-cnn", weights="random", device="cpu")
    state = perturbed(model.net.state_dict())
    model.net.load_state_dict(state)
    files = {name: d / f"{name}.pt" for name in ("plain", "under-state_dict", "under-model", "dataparallel",
                                                 "compiled", "torchscript")}
    torch.save(state, files["plain"])
    torch.save({"state_dict": state, "epoch": 7, "best_acc": 0.9}, files["under-state_dict"])
    torch.save({"epoch": 7, "ema": perturbed(state, 2), "model": state, "optimizer": {"lr": 0.1}},
               files["under-model"])  # "model" comes before "ema" in CHECKPOINT_KEYS
    torch.save({f"module.{k}": v for k, v in state.items()}, files["dataparallel"])
    torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, files["compiled"])
    from safetensors.torch import save_file

    files["safetensors"] = d / "net.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, files["safetensors"])
    files["safetensors-other-suffix"] = d / "net.weights"
    files["safetensors-other-suffix"].write_bytes(files["safetensors"].read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        torch.jit.script(model.net).save(str(files["torchscript"]))
    files["pt2"] = d / "net.pt2"
    torch.export.save(torch.export.export(model.net, (model.preprocess(X[:1]),)), files["pt2"])
    with torch.no_grad():
        return files, model(X)


FORMATS = ["plain", "under-state_dict", "under-model", "dataparallel", "compiled", "safetensors",
           "safetensors-other-suffix", "torchscript", "pt2"]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_gives_the_source_logits(source, kind):
    files, expected = source
    model = load_model("digits-cnn", weights=str(files[kind]), device="cpu")
    with torch.no_grad():
        assert torch.equal(model(X), expected)
    digest = hashlib.sha256(files[kind].read_bytes()).hexdigest()
    assert model.weights == f"file:{files[kind]} sha256:{digest[:16]}"
    assert weights_option(model.weights) == str(files[kind])
    assert not model.net.training and not any(p.requires_grad for p in model.parameters())


def test_the_file_really_replaces_the_random_weights(source):
    files, expected = source
    with torch.no_grad():
        assert not torch.allclose(load_model("digits-cnn", weights="random", device="cpu")(X), expected)


def test_what_each_file_held(source):
    files, _ = source
    kinds = {name: read_state_dict(files[name])[1] for name in FORMATS}
    assert kinds["plain"] == "state_dict"
    assert kinds["under-state_dict"] == "checkpoint['state_dict']"
    assert kinds["under-model"] == "checkpoint['model']"
    assert kinds["safetensors"] == kinds["safetensors-other-suffix"] == "safetensors"
    assert kinds["torchscript"] == "TorchScript"
    assert kinds["pt2"] == "torch.export program"


def test_a_path_object_and_absent_batchnorm_counters(tmp_path):
    state = digits_state()
    file = tmp_path / "old.pt"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, file)
    model = load_model("digits-cnn", weights=file, device="cpu")
    assert all(torch.equal(model.net.state_dict()[k], v) for k, v in state.items() if v.is_floating_point())


def test_torchvision_with_module_prefixes(tmp_path):
    net = load_model("torchvision:resnet18", weights="random", device="cpu").net
    state = perturbed(net.state_dict())
    file = tmp_path / "resnet18_cifar.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}}, file)
    model = load_model("torchvision:resnet18", weights=str(file), device="cpu")
    net.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model.net(model.preprocess(X)), net(model.preprocess(X)))
    assert model.name == "torchvision:resnet18" and model.weights.startswith(f"file:{file} sha256:")


def test_timm(tmp_path):
    pytest.importorskip("timm")
    net = load_model("timm:test_resnet", weights="random", device="cpu").net
    state = perturbed(net.state_dict())
    file = tmp_path / "t.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, file)
    model = load_model("timm:test_resnet", weights=str(file), device="cpu")
    assert all(torch.equal(model.net.state_dict()[k], v) for k, v in state.items())


def test_model_file_factory(tmp_path):
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\ndef make():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(1))\n")
    built = load_model(f"{tmp_path}/net.py:make", device="cpu")
    state = perturbed(built.net.state_dict())
    torch.save({"net": state}, tmp_path / "w.pt")
    model = load_model(f"{tmp_path}/net.py:make", weights=str(tmp_path / "w.pt"), device="cpu")
    assert torch.equal(model.net[0].weight, state["0.weight"])
    assert built.weights is None and model.weights.startswith("file:")


# ---------------------------------------------------------------------------------------------------
def one_line_error(name: str, weights) -> str:
    with pytest.raises(NnfeatError) as caught:
        load_model(name, weights=weights, device="cpu")
    text = str(caught.value)
    assert "\n" not in text and len(text) < 600, text
    return text


def test_another_architecture_names_keys_and_shapes(tmp_path):
    file = tmp_path / "resnet18.pt"
    torch.save(load_model("torchvision:resnet18", weights="random", device="cpu").net.state_dict(), file)
    text = one_line_error("digits-cnn", str(file))
    assert text.startswith(f"weights file {file} does not fit digits-cnn: missing ")
    assert "unexpected layer1.0.conv1.weight, layer1.0.bn1.weight, layer1.0.bn1.bias and " in text
    assert "conv1.weight: file (64, 3, 7, 7), model (16, 1, 5, 5)" in text
    assert "another network's weights" in text


def test_a_variant_names_the_shape_clash(tmp_path):
    state = digits_state()
    state["conv1.weight"] = torch.zeros(16, 3, 5, 5)  # an RGB variant of the grey net
    torch.save(state, tmp_path / "rgb.pt")
    text = one_line_error("digits-cnn", str(tmp_path / "rgb.pt"))
    assert "shapes differ at conv1.weight: file (16, 3, 5, 5), model (16, 1, 5, 5)" in text
    assert "missing" not in text and "unexpected" not in text and "variant" in text


def test_a_wrapped_network_says_which_part_to_save(tmp_path):
    torch.save({f"backbone.{k}": v for k, v in digits_state().items()}, tmp_path / "wrapped.pt")
    text = one_line_error("digits-cnn", str(tmp_path / "wrapped.pt"))
    assert "names all start with 'backbone.'" in text and "model.backbone.state_dict()" in text


class Payload:
    """Unpickling this runs ``exec``, which writes ``marker``: the code a weights file must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_with_code_is_refused_and_runs_nothing(tmp_path, how):
    marker = tmp_path / "marker"
    file = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"state_dict": digits_state(), "extra": Payload(marker)}, file)
    else:
        file.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    text = one_line_error("digits-cnn", str(file))
    assert "holds a pickled Python object (exec)" in text and "never loads" in text and "state_dict" in text
    assert not marker.exists()
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(Payload(live), protocol=2))  # the payload is real: unpickled unsafely, it runs
    assert live.read_text() == "ran"


def test_a_pt2_with_a_pickled_code_weight_is_refused(source, tmp_path):
    """torch.export.load would unpickle a weight marked ``use_pickle`` with the unrestricted loader; nnfeat reads
    the archive itself and sends such a payload through the safe loader only."""
    files, _ = source
    marker = tmp_path / "marker"
    payload = tmp_path / "payload.pt"
    torch.save(Payload(marker), payload)
    with zipfile.ZipFile(files["pt2"]) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    table = next(n for n in members if n.endswith("/data/weights/model_weights_config.json"))
    config = json.loads(members[table])
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True  # the first weight is now a pickle: the payload
    members[table] = json.dumps(config).encode()
    members[table.rpartition("/")[0] + "/" + first["path_name"]] = payload.read_bytes()
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(evil, "w") as out:
        for name, data in members.items():
            out.writestr(name, data)
    text = one_line_error("digits-cnn", str(evil))
    assert "holds a pickled Python object (exec)" in text
    assert not marker.exists()


def test_files_that_are_not_weights(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "is empty (0 bytes)" in one_line_error("digits-cnn", str(tmp_path / "empty.pt"))
    (tmp_path / "notes.txt").write_text("not weights at all\n" * 20)
    assert "is not a weights file" in one_line_error("digits-cnn", str(tmp_path / "notes.txt"))
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "notensors.pt")
    assert "no tensor dict in it (keys 'epoch', 'optimizer')" in one_line_error("digits-cnn",
                                                                                 str(tmp_path / "notensors.pt"))
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    assert "holds a list, not a state_dict" in one_line_error("digits-cnn", str(tmp_path / "list.pt"))


@pytest.mark.parametrize("weights", ["imagenet", "no/such/file.pt"])
def test_missing_path_names_the_choices_and_the_path(weights):
    text = one_line_error("digits-cnn", weights)
    assert text.startswith(f"unknown weights '{weights}'; expected one of pretrained, random, or a weights file")
    assert text.endswith(f"there is no file '{weights}'")


def test_a_folder_is_not_a_weights_file(tmp_path):
    assert one_line_error("digits-cnn", str(tmp_path)).endswith(f"'{tmp_path}' is a folder")


def test_safetensors_missing_names_the_install(source, monkeypatch):
    files, _ = source
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import fails as if not installed
    assert "pip install safetensors" in one_line_error("digits-cnn", str(files["safetensors"]))


# ---------------------------------------------------------------------------------------------------
def test_cli_heatmap_with_a_weights_file(source, tmp_path, capsys):
    files, _ = source
    out = tmp_path / "out"
    assert main(["heatmap", "digits-cnn", "conv2", "--images", "digits", "--n", "4", "--weights",
                 str(files["under-model"]), "--quiet", "--out", str(out)]) == 0
    assert [p for p in out.rglob("*") if p.is_file()]


def test_cli_bad_weights_file_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    out = tmp_path / "out"
    code = main(["heatmap", "digits-cnn", "conv2", "--images", "digits", "--n", "4", "--weights", str(bad),
                 "--quiet", "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"nnfeat: error: weights file {bad} does not fit digits-cnn"), lines
    assert "fc.weight: file (3, 3), model (10, 64)" in lines[0]
    assert not out.exists()


def test_a_result_from_python_names_its_weights_file_in_its_command(source):
    """The equivalent command of a result made in Python replays the same weights: the file, not the default."""
    import nnfeat

    files, _ = source
    path = str(files["under-model"])
    model = load_model("digits-cnn", weights=path, device="cpu")
    images = nnfeat.load_images("digits").sample(4, 0)
    result = nnfeat.heatmap(model, "conv2", images)
    assert f"--weights {path}" in result.command
    random = nnfeat.heatmap(load_model("digits-cnn", weights="random", device="cpu"), "conv2", images)
    assert "--weights random" in random.command


# ---------------------------------------------------------------------------------------------------
def _cifar_folder(root: Path) -> Path:
    """Two labelled sub-folders of 32 px PNGs (the README's worked example's shape of data)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(root / label / f"{i}.png")
    return root


def test_a_torchvision_network_fine_tuned_to_ten_classes(tmp_path):
    """torchvision:resnet18 --weights FILE with a 10-class head: the head is rebuilt to the file's count, the
    logits equal the saved network's, and the spec is the user's (no 1000 ImageNet names, no 224 px)."""
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.resnet18(num_classes=10).eval()
    file = tmp_path / "resnet18_cifar.pt"
    torch.save(net.state_dict(), file)
    model = load_model("torchvision:resnet18", weights=str(file), device="cpu")
    assert model.net.fc.out_features == 10 and model.classes is None
    assert model.spec.size is None and model.spec.mean is None
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    other = tmp_path / "wrong_width.pt"
    state = net.state_dict()
    state["fc.weight"] = torch.zeros(10, 256)  # not the same layer retrained: its input width differs
    torch.save(state, other)
    assert "shapes differ at fc.weight: file (10, 256), model (1000, 512)" in one_line_error("torchvision:resnet18",
                                                                                             str(other))


def test_the_readme_worked_example_from_the_command_line(tmp_path, capsys):
    import torchvision

    torch.manual_seed(2)
    file = tmp_path / "resnet18_cifar.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), file)
    names = "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck"
    out = tmp_path / "out"
    assert main(["saliency", "torchvision:resnet18", "--weights", str(file), "--normalize", "cifar", "--classes",
                 names, "--images", str(_cifar_folder(tmp_path / "imgs")), "--quiet", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "input: 3 channels, size as the images (32x32), cifar normalization from --normalize, 10 classes from " \
           "--classes" in said
    record = json.loads((out / "saliency.json").read_text())
    assert record["input"]["working_size"] == [32, 32] and record["input"]["classes"] == names.split(",")
    assert record["input"]["mean"] == [0.4914, 0.4822, 0.4465]
    assert "--weights" in record["command"]
