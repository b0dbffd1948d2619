"""A user's own model (``FILE.py:FACTORY`` returning a plain ``nn.Module``) gets an input spec that is found or
asked for, never assumed: channels from its first layer, images at their own size, no normalization unless
``--normalize`` says so, class names from ``--classes``; every command prints the spec line and records it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nnfeat.cli import main
from nnfeat.models import as_model
from nnfeat.models.cifar_resnet import CifarResNet
from nnfeat.models.spec import NORMALIZE_PRESETS, parse_classes, parse_normalize
from nnfeat.models.zoo import load_model

MODEL_FILE = '''
import torch
from torch import nn

from nnfeat.models.cifar_resnet import CifarResNet


def cifar():
    return CifarResNet(20)


class Gray(nn.Module):
    """1-channel 28 px digits CNN: its flatten head takes 8x7x7 features, so only 28x28 input runs."""

    def __init__(self, channels=1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def gray():
    torch.manual_seed(0)
    return Gray()


def four():
    torch.manual_seed(0)
    return Gray(channels=4)
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("spec")
    (d / "nets.py").write_text(MODEL_FILE)
    rng = np.random.default_rng(0)
    np.savez(d / "cifar.npz", images=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    np.savez(d / "rgb28.npz", images=rng.integers(0, 256, (12, 28, 28, 3), dtype=np.uint8))
    np.savez(d / "grey28.npz", images=rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8))
    torch.manual_seed(3)
    torch.save(CifarResNet(20).state_dict(), d / "resnet20.pt")
    return d


def run(*argv) -> int:
    return main([str(a) for a in argv])


def pictures(out: Path) -> dict[str, bytes]:
    """The maps' pictures (not the sheet, whose title names the model)."""
    return {p.name: p.read_bytes() for p in sorted(out.rglob("*.png")) if p.name != "heatmap.png"}


def test_cifar_resnet_from_a_file_runs_at_the_images_size_and_matches_the_zoo(files, tmp_path, capsys):
    common = ["layer1", "--images", files / "cifar.npz", "--weights", files / "resnet20.pt"]
    # the zoo's CIFAR ResNets were trained on ImageNet-normalized images
    assert run("heatmap", f"{files}/nets.py:cifar", *common, "--normalize", "imagenet", "--out", tmp_path / "file") == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("input:"))
    assert "size as the images (32x32)" in line and "imagenet normalization from --normalize" in line
    record = json.loads((tmp_path / "file" / "heatmap.json").read_text())["input"]
    assert record["size"] == "any" and record["working_size"] == [32, 32] and record["sources"]["size"] == "images"
    assert record["mean"] == list(NORMALIZE_PRESETS["imagenet"][0]) and record["sources"]["normalize"] == "--normalize"
    assert run("heatmap", "cifar10-resnet20", *common, "--out", tmp_path / "zoo") == 0
    assert "input" not in json.loads((tmp_path / "zoo" / "heatmap.json").read_text())  # zoo records stay as they were
    assert pictures(tmp_path / "file") == pictures(tmp_path / "zoo") and pictures(tmp_path / "zoo")


def test_normalize_presets_are_the_zoo_cards_and_the_datasets_statistics(shared_dir):
    zoo = load_model("cifar10-resnet20", weights="random", device="cpu")
    assert zoo.spec.mean == NORMALIZE_PRESETS["imagenet"][0] and zoo.spec.std == NORMALIZE_PRESETS["imagenet"][1]
    # the cifar preset is CIFAR-10's own per-channel statistics: a sample of the shared test set agrees within 0.01
    images = np.load(shared_dir / "data" / "cifar10_test.npz")["images"][::10].astype(np.float64) / 255
    mean, std = images.mean((0, 1, 2)), images.std((0, 1, 2))
    assert np.abs(mean - NORMALIZE_PRESETS["cifar"][0]).max() < 0.01, mean
    assert np.abs(std - NORMALIZE_PRESETS["cifar"][1]).max() < 0.01, std
    assert zoo.spec.from_card()


def test_bare_module_spec_is_found():
    gray = as_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 5)))
    assert gray.in_channels == 1 and gray.input_size == (28, 28) and gray.spec.sources["size"] == "found"
    assert gray.spec.mean is None and gray.spec.classes is None
    rgb = as_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)))
    assert rgb.in_channels == 3 and rgb.spec.size is None and rgb.input_size == (224, 224)
    assert "any size (224x224 without images)" in rgb.spec.describe()


@pytest.mark.parametrize("images", ["rgb28.npz", "grey28.npz"])
def test_one_channel_model_runs_every_command_on_rgb_and_grey_images(files, tmp_path, capsys, images):
    model, src = f"{files}/nets.py:gray", files / images
    assert run("heatmap", model, "conv2", "--images", src, "--out", tmp_path / "h", "--quiet") == 0
    assert run("saliency", model, "--images", src, "--out", tmp_path / "s", "--quiet") == 0
    assert run("project", model, "conv2", "--images", src, "--method", "pca", "--k", "2", "--out", tmp_path / "p",
               "--quiet") == 0
    assert run("render", model, "conv2:0", "--steps", "2", "--out", tmp_path / "r", "--quiet") == 0
    printed = capsys.readouterr()
    assert "your code" not in printed.err
    assert "input: 1 channel (found; RGB images become grey), size 28x28 (found)" in printed.out
    for out, kind in (("h", "heatmap"), ("s", "saliency"), ("p", "projection"), ("r", "render")):
        record = json.loads((tmp_path / out / f"{kind}.json").read_text())["input"]
        assert record["channels"] == 1 and record["size"] == [28, 28], kind


def test_unfixable_channel_count_is_nnfeats_finding(files, tmp_path, capsys):
    assert run("heatmap", f"{files}/nets.py:four", "conv2", "--images", files / "rgb28.npz", "--out", tmp_path) == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert "your code" not in line and "first layer 'conv1' takes 4" in line and "1 or 3 channels" in line


def test_size_the_network_cannot_take_names_the_size_that_works(files, tmp_path, capsys):
    assert run("heatmap", f"{files}/nets.py:gray", "conv2", "--images", files / "rgb28.npz", "--size", "32",
               "--out", tmp_path) == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert "does not run on 32x32 px input" in line and "use --size 28" in line
    assert not tmp_path.joinpath("heatmap.json").exists()


def test_layers_prints_the_spec(files, capsys):
    assert run("layers", f"{files}/nets.py:gray", "--classes", ",".join("abcdefghij")) == 0
    first, header, *_ = capsys.readouterr().out.splitlines()
    assert first == "input: 1 channel (found; RGB images become grey), size 28x28 (found), no normalization, " \
                    "10 classes from --classes"
    assert header.split()[0] == "layer"


def test_classes_from_image_sub_folders(files, tmp_path, capsys):
    from PIL import Image

    for i, name in enumerate("abcdefghij"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        Image.fromarray(np.full((28, 28, 3), i * 20, np.uint8)).save(tmp_path / "imgs" / name / "x.png")
    assert run("saliency", f"{files}/nets.py:gray", "--images", tmp_path / "imgs", "--out", tmp_path / "s",
               "--quiet") == 0
    assert "10 classes from the image folders" in capsys.readouterr().out
    record = json.loads((tmp_path / "s" / "saliency.json").read_text())["input"]
    assert record["classes"] == list("abcdefghij") and record["sources"]["classes"] == "images"


def test_parse_normalize_and_classes(tmp_path):
    assert parse_normalize("0.5/0.25", 3) == ((0.5,) * 3, (0.25,) * 3)
    assert parse_normalize("0.1,0.2,0.3/1,2,3", 3) == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    assert parse_normalize("none", 1) is None
    (tmp_path / "names.txt").write_text("cat\ndog\n\n")
    assert parse_classes(str(tmp_path / "names.txt")) == ("cat", "dog")
    assert parse_classes("cat, dog") == ("cat", "dog")


def test_an_ensemble_records_each_members_own_spec(files, tmp_path, capsys):
    """Two models from files, one grey at 28 px and one CIFAR ResNet at 32 px: the JSON keeps both specs."""
    out = tmp_path / "u"
    assert run("uncertainty", f"{files}/nets.py:gray,{files}/nets.py:cifar", "--images", f"{files}/rgb28.npz",
               "--method", "ensemble", "--size", 28, "--top", 0, "--quiet", "--out", out) == 0
    members = json.loads((out / "uncertainty.json").read_text())["input"]["members"]
    assert [m["channels"] for m in members.values()] == [1, 3]
