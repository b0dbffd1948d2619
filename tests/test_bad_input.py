"""Every bad input a user can give the CLI: exit status 2, exactly one ``nnfeat: error:`` line on stderr that
names what was wrong and what would be right, checked before any work, and nothing written.

Each row of :data:`CASES` is one row of the README's bad-input table. The inputs are real: digits-cnn (trained
once and cached), tiny npz files and folders, a user model file whose forward raises or gives NaN, recipe files,
truncated and empty weights files, all made in a temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnfeat.cli import main

MODEL_FILE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


class Raises(Net):
    def forward(self, x):
        raise ValueError("boom inside forward")


def make():
    return Net()


def make_nan():
    net = Net()
    with torch.no_grad():
        net.conv.bias[1] = float("nan")  # channel 1 and everything after it is NaN
    return net


def make_raises():
    return Raises()


class NanOnBlack(Net):
    """NaN or Inf only for an image whose top-left pixel is black (every digit; never a random test image)."""

    def forward(self, x):
        return self.head(self.conv(x / x[:, :1, :1, :1]).mean((2, 3)))


def make_nan_on_black():
    return NanOnBlack()


def make_int():
    return 3


def make_fails():
    raise RuntimeError("factory exploded")
'''

RECIPE_FILE = '''
from nnfeat.engine.objectives import Objective, channel


def good(model):
    return channel("conv1", 0)


def raises(model):
    raise KeyError("oops")


def wrong(model):
    return 42


def _broken_score(acts):
    raise ZeroDivisionError("recipe score broke")


def score_raises(model):
    return Objective(_broken_score, ["conv1"], "broken score")
'''


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of bad (and good) inputs; tests must leave it unchanged."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "net.py").write_text(MODEL_FILE)
    (d / "recipe.py").write_text(RECIPE_FILE)
    (d / "broken.py").write_text("import not_a_module_anywhere\n")
    rng = np.random.default_rng(0)
    np.savez(d / "good.npz", images=rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8))
    np.savez(d / "wrongkey.npz", pics=np.zeros((4, 32, 32, 3), np.uint8))
    np.savez(d / "float255.npz", images=rng.random((4, 32, 32, 3), dtype=np.float32) * 255)
    np.savez(d / "nan.npz", images=np.full((4, 32, 32, 3), np.nan, np.float32))
    np.savez(d / "int16.npz", images=np.full((4, 32, 32, 3), 300, np.int16))
    np.savez(d / "chw.npz", images=np.zeros((4, 3, 32, 32), np.uint8))
    np.savez(d / "bool.npz", images=np.zeros((4, 32, 32, 3), bool))
    np.savez(d / "empty.npz", images=np.zeros((0, 32, 32, 3), np.uint8))
    (d / "truncated.npz").write_bytes((d / "good.npz").read_bytes()[:100])
    (d / "emptydir").mkdir()
    (d / "corrupt" / "cat").mkdir(parents=True)
    (d / "corrupt" / "cat" / "x.png").write_bytes(b"not a png")
    (d / "afile").write_text("a file, not a folder")
    (d / "empty.txt").write_text("\n")
    # weights for cifar10-resnet20 (the file name carries the SHA-256 prefix 12fca82f)
    name = "resnet20-12fca82f.th"
    for kind in ("empty", "truncated", "wrongarch"):
        (d / "weights" / kind).mkdir(parents=True)
    (d / "weights" / "empty" / name).write_bytes(b"")
    state = {"state_dict": torch.nn.Conv2d(3, 4, 3).state_dict()}
    torch.save(state, d / "weights" / "wrongarch" / name)
    (d / "weights" / "truncated" / name).write_bytes((d / "weights" / "wrongarch" / name).read_bytes()[:200])
    # user weights files for digits-cnn (--weights FILE)
    (d / "userweights").mkdir()
    (d / "userweights" / "empty.pt").write_bytes(b"")
    (d / "userweights" / "notes.txt").write_text("not weights")
    torch.save({"conv9.weight": torch.zeros(4, 3, 7, 7)}, d / "userweights" / "other.pt")
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, d / "userweights" / "notensors.pt")
    torch.save({"state_dict": torch.nn.Conv2d(3, 4, 3).state_dict(), "note": Path("a path is a pickled object")},
               d / "userweights" / "object.pt")
    (d / "home").mkdir()
    (d / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (d / "token_net.py").write_text(TOKEN_FILE)
    return d


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


#: a bare token network from a user's file (its first layer is an nn.Embedding; no tokenizer given)
TOKEN_FILE = '''
from torch import nn


def bare():
    return nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
'''
TA = ["attention", "tiny-lm", "--weights", "random"]  # a token model (random weights: nothing to train)
R = ["render", "digits-cnn", "conv1:0"]  # a valid render (every case fails before it starts)
HM = ["heatmap", "{d}/net.py:make", "conv", "--images", "{d}/good.npz"]  # a valid heatmap of a user's model
LONG = "a" * 90_000

#: (id, argv ({d}: the inputs folder; --out {out} is added), words the one line must hold, extra env)
CASES = [
    # names
    ("unknown-model", ["render", "digits-cnnn", "conv1:0"], ["unknown model 'digits-cnnn'", "did you mean digits-cnn"], {}),
    ("unknown-layer", ["render", "digits-cnn", "conv9:0"], ["unknown layer 'conv9'", "nearest: conv3"], {}),
    ("unit-out-of-range", ["render", "digits-cnn", "conv1:99"], ["channel 99", "valid channels are 0..15"], {}),
    ("microscope-unit-out-of-range", ["microscope", "digits-cnn", "conv1:16..20"], ["out of range", "0..15"], {}),
    ("unknown-option", [*R, "--stepz", "3"], ["unrecognized arguments: --stepz", "did you mean --steps"], {}),
    ("minus-unit-outside-render", ["microscope", "digits-cnn", "-conv1:0", "--steps", "2"],
     ["is not an option of `nnfeat microscope`", "nnfeat render MODEL -conv1:0"], {}),
    # numbers
    ("steps-zero", [*R, "--steps", "0"], ["--steps must be at least 1", "got 0"], {}),
    ("steps-absurd", [*R, "--steps", str(10**11)], ["--steps", "out of range", "at most 100000"], {}),
    ("size-zero", [*R, "--size", "0"], ["--size must be at least 2"], {}),
    ("size-absurd", [*R, "--size", "100000"], ["--size 100000", "at most 4096"], {}),
    ("batch-zero", [*R, "--batch", "0"], ["--batch must be at least 1"], {}),
    ("batch-absurd", [*R, "--batch", str(10**9)], ["--batch 1000000000", "at most 4096"], {}),
    ("batch-times-size", [*R, "--size", "4096", "--batch", "16"], ["too large", "use --batch 4 or less"], {}),
    ("lr-nan", [*R, "--lr", "nan"], ["--lr must be a finite number", "nan"], {}),
    ("lr-inf", [*R, "--lr", "inf"], ["--lr must be a finite number", "inf"], {}),
    ("lr-negative", [*R, "--lr", "-1"], ["--lr must be a positive learning rate", "at most 10"], {}),
    ("lr-absurd", [*R, "--lr", "1e9"], ["--lr", "at most 10"], {}),
    ("seed-negative", [*R, "--seed", "-1"], ["--seed -1", "0..4294967295"], {}),
    ("seed-absurd", [*R, "--seed", str(10**30)], ["--seed", "0..4294967295"], {}),
    ("thresholds-past-steps", [*R, "--steps", "2", "--thresholds", "1,5"], ["--thresholds must lie in 1..2"], {}),
    ("thresholds-zero", [*R, "--steps", "2", "--thresholds", "0"], ["--thresholds must lie in 1..2"], {}),
    ("thresholds-not-numbers", [*R, "--steps", "2", "--thresholds", "a,b"], ["bad --thresholds 'a,b'", "e.g. 32,128,256"], {}),
    ("microscope-thresholds", ["microscope", "digits-cnn", "conv1:0", "--steps", "2", "--thresholds", "5"],
     ["--thresholds must lie in 1..2"], {}),
    ("saliency-samples-absurd", ["saliency", "digits-cnn", "--images", "{d}/good.npz", "--samples", str(10**9)],
     ["--samples 1000000000", "at most 4096"], {}),
    ("atlas-weight-not-finite", ["atlas", "digits-cnn", "conv1", "--images", "{d}/good.npz", "--spatial-weight",
                                 "inf"], ["--spatial-weight must be a finite number"], {}),
    ("unknown-command", ["rendr", "digits-cnn"], ["unknown command 'rendr' (did you mean render?)", "microscope"], {}),
    ("layers-size-too-small", ["layers", "digits-cnn", "--size", "1"], ["does not run on 1x1", "native size is 32"], {}),
    # objective files
    ("objective-file-and-expression", ["render", "digits-cnn", "--objective-file", "{d}/recipe.py:good", "conv1:0"],
     ["give an objective expression or --objective-file, not both"], {}),
    ("expression-and-objective-file", ["render", "digits-cnn", "conv1:0", "--objective-file", "{d}/recipe.py:good"],
     ["give an objective expression or --objective-file, not both"], {}),
    ("objective-file-missing", ["render", "digits-cnn", "--objective-file", "{d}/nope.py:good"],
     ["objective file", "nope.py' not found", "FILE.py:NAME"], {}),
    ("objective-file-no-name", ["render", "digits-cnn", "--objective-file", "{d}/recipe.py"],
     ["expected FILE.py:NAME"], {}),
    ("objective-file-import-fails", ["render", "digits-cnn", "--objective-file", "{d}/broken.py:good"],
     ["broken.py' failed to load", "ModuleNotFoundError"], {}),
    ("objective-file-unknown-name", ["render", "digits-cnn", "--objective-file", "{d}/recipe.py:god"],
     ["'god' not found", "good"], {}),
    ("objective-file-raises", ["render", "digits-cnn", "--objective-file", "{d}/recipe.py:raises"],
     ["recipe.py:raises(model) failed", "KeyError"], {}),
    ("objective-file-wrong-type", ["render", "digits-cnn", "--objective-file", "{d}/recipe.py:wrong"],
     ["is not an Objective"], {}),
    ("objective-raises-in-render", ["render", "digits-cnn", "--objective-file", "{d}/recipe.py:score_raises",
                                    "--steps", "2", "--quiet"],
     ["your code in", "recipe.py", "(_broken_score) raised ZeroDivisionError: recipe score broke"], {}),
    # model files
    ("model-file-missing", ["render", "{d}/nope.py:make", "conv:0"], ["nope.py' not found", "FILE.py:FACTORY"], {}),
    ("model-file-no-factory", ["render", "{d}/net.py", "conv:0"], ["needs a factory", "net.py:FACTORY"], {}),
    ("model-file-unknown-factory", ["render", "{d}/net.py:mak", "conv:0"], ["has no function 'mak'", "make"], {}),
    ("model-file-import-fails", ["render", "{d}/broken.py:make", "conv:0"],
     ["importing model file", "ModuleNotFoundError"], {}),
    ("model-file-factory-raises", ["render", "{d}/net.py:make_fails", "conv:0"],
     ["make_fails() failed", "RuntimeError: factory exploded"], {}),
    ("model-file-wrong-type", ["render", "{d}/net.py:make_int", "conv:0"],
     ["returned int", "expected a torch.nn.Module"], {}),
    ("model-forward-raises", ["render", "{d}/net.py:make_raises", "conv:0", "--steps", "2"],
     ["your code in", "net.py", "(forward) raised ValueError: boom inside forward", "NNFEAT_DEBUG=1"], {}),
    ("model-forward-nan", ["render", "{d}/net.py:make_nan", "conv:1", "--steps", "3", "--quiet"],
     ["non-finite objective (NaN or Inf) at step 1 of 3", "check the model's forward"], {}),
    ("microscope-model-nan", ["microscope", "{d}/net.py:make_nan", "conv:0..3", "--steps", "2", "--batch", "1"],
     ["gives NaN or Inf at layer 'conv'"], {}),
    # NaN / Inf found by the probe before any work (two random images through the layers a command reads)
    ("heatmap-model-nan", ["heatmap", "{d}/net.py:make_nan", "conv", "--images", "{d}/good.npz"],
     ["gives NaN or Inf at layer 'conv' on a test image"], {}),
    ("saliency-model-nan", ["saliency", "{d}/net.py:make_nan", "--images", "{d}/good.npz"],
     ["gives NaN or Inf at its output on a test image"], {}),
    ("uncertainty-model-nan", ["uncertainty", "{d}/net.py:make_nan", "--method", "tta", "--images", "{d}/good.npz"],
     ["gives NaN or Inf at its output on a test image"], {}),
    ("examples-model-nan", ["examples", "{d}/net.py:make_nan", "conv:1", "--images", "{d}/good.npz"],
     ["gives NaN or Inf at layer 'conv' on a test image"], {}),
    ("project-model-nan", ["project", "{d}/net.py:make_nan", "conv", "--images", "{d}/good.npz"],
     ["gives NaN or Inf at layer 'conv' on a test image"], {}),
    ("atlas-model-nan", ["atlas", "{d}/net.py:make_nan", "conv", "--images", "{d}/good.npz", "--steps", "2"],
     ["gives NaN or Inf at layer 'conv' on a test image"], {}),
    ("report-model-nan", ["report", "{d}/net.py:make_nan", "--images", "{d}/good.npz", "--layers", "conv", "--steps", "2"],
     ["gives NaN or Inf at layer 'conv' on a test image"], {}),
    # NaN / Inf on real images only: found in the dataset pass, before anything is written
    ("heatmap-nan-on-images", ["heatmap", "{d}/net.py:make_nan_on_black", "conv", "--images", "digits", "--n", "3"],
     ["gave NaN or Inf in the maps of layer 'conv' (first at image"], {}),
    ("saliency-nan-on-images", ["saliency", "{d}/net.py:make_nan_on_black", "--images", "digits", "--n", "3"],
     ["gave NaN or Inf in its gradient saliency maps (first at image"], {}),
    # saliency targets beyond a class logit (nnfeat.targets)
    ("saliency-target-bad-region", ["saliency", "digits-cnn", "--images", "{d}/good.npz", "--target", "3@maks"],
     ["bad region 'maks' in target '3@maks'", "expected @mask or @Y0:Y1,X0:X1"], {}),
    ("saliency-target-empty-box", ["saliency", "digits-cnn", "--images", "{d}/good.npz", "--target", "3@5:2,0:4"],
     ["empty or huge box '5:2,0:4'", "Y0 < Y1 and X0 < X1"], {}),
    ("saliency-target-part-of-logits", ["saliency", "digits-cnn", "--images", "{d}/good.npz", "--target",
                                        "out:3@mask"], ["names output part 'out'", "one tensor", "drop 'out:'"], {}),
    ("saliency-target-value-of-logits", ["saliency", "digits-cnn", "--images", "{d}/good.npz", "--target", "value"],
     ["asks for a value", "(B,) or (B, 1)", "give a class index instead"], {}),
    ("uncertainty-nan-on-images", ["uncertainty", "{d}/net.py:make_nan_on_black", "--method", "tta", "--images",
                                   "digits", "--n", "3"], ["gave NaN or Inf in its predicted probabilities"], {}),
    ("examples-nan-on-images", ["examples", "{d}/net.py:make_nan_on_black", "conv:0", "--images", "digits", "--n",
                                "3", "--k", "2"], ["gave NaN or Inf in the activations of layer 'conv'"], {}),
    ("project-nan-on-images", ["project", "{d}/net.py:make_nan_on_black", "conv", "--images", "digits", "--n", "40"],
     ["gave NaN or Inf in the activations of layer 'conv'"], {}),
    ("atlas-nan-on-images", ["atlas", "{d}/net.py:make_nan_on_black", "conv", "--images", "digits", "--samples", "20",
                             "--steps", "2"], ["gave NaN or Inf in the activations of layer 'conv'"], {}),
    # weights files (cifar10-resnet20 from NNFEAT_WEIGHTS_PATH; the NNFEAT_HOME there holds none)
    ("weights-empty", ["render", "cifar10-resnet20", "layer1:0"], ["is empty (0 bytes)", "fetch it again"],
     {"NNFEAT_WEIGHTS_PATH": "{d}/weights/empty", "NNFEAT_HOME": "{d}/home"}),
    ("weights-truncated", ["render", "cifar10-resnet20", "layer1:0"], ["is corrupt or not the expected file",
                                                                        "expected 12fca82f"],
     {"NNFEAT_WEIGHTS_PATH": "{d}/weights/truncated", "NNFEAT_HOME": "{d}/home"}),
    ("weights-wrong-architecture", ["render", "cifar10-resnet20", "layer1:0"],
     ["is corrupt or not the expected file", "expected 12fca82f"], {"NNFEAT_WEIGHTS_PATH": "{d}/weights/wrongarch", "NNFEAT_HOME": "{d}/home"}),
    ("weights-unknown", [*R, "--weights", "imagenet"], ["unknown weights 'imagenet'", "pretrained, random"], {}),
    ("weights-folder", [*R, "--weights", "{d}/userweights"], ["is a folder", "a weights file"], {}),
    ("weights-file-empty", [*R, "--weights", "{d}/userweights/empty.pt"], ["is empty (0 bytes)", "state_dict"], {}),
    ("weights-file-not-weights", [*R, "--weights", "{d}/userweights/notes.txt"], ["is not a weights file"], {}),
    ("weights-file-other-network", [*R, "--weights", "{d}/userweights/other.pt"],
     ["does not fit digits-cnn", "missing conv1.weight", "unexpected conv9.weight"], {}),
    ("weights-file-no-tensors", [*R, "--weights", "{d}/userweights/notensors.pt"], ["no tensor dict", "'epoch'"], {}),
    ("weights-file-pickled-object", [*R, "--weights", "{d}/userweights/object.pt"], ["never loads"], {}),
    # image sources
    ("images-missing", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/nope.npz"],
     ["image source", "not found", "expected a folder, an .npz file"], {}),
    ("images-empty-folder", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/emptydir"],
     ["no images in folder", "expected files ending in .png"], {}),
    ("images-empty-npz", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/empty.npz"], ["holds no images"], {}),
    ("images-corrupt-file", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/corrupt", "--k", "1"],
     ["cannot read image", "x.png"], {}),
    ("images-not-images", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/afile"],
     ["cannot read images from", "expected a folder, an .npz file or an image file"], {}),
    ("npz-truncated", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/truncated.npz"],
     ["cannot read npz", "BadZipFile"], {}),
    ("npz-wrong-keys", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/wrongkey.npz"],
     ["has no 'images' array (keys: pics)", "expected images N×H×W×C uint8"], {}),
    ("npz-floats-0-255", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/float255.npz"],
     ["looks like 0..255", "divide by 255 or store uint8"], {}),
    ("npz-non-finite", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/nan.npz"],
     ["NaN or Inf", "finite values in [0, 1]"], {}),
    ("npz-ints-past-255", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/int16.npz"],
     ["int16 images must lie in 0..255", "300..300"], {}),
    ("npz-bool", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/bool.npz"],
     ["must be uint8 0..255", "dtype bool"], {}),
    ("npz-channels-first", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/chw.npz"],
     ["N×H×W×C", "got shape (4, 3, 32, 32)"], {}),
    ("microscope-images-missing", ["microscope", "digits-cnn", "conv1:0", "--steps", "2", "--images", "{d}/nope"],
     ["image source", "not found"], {}),
    # counts past the source
    ("k-past-source", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/good.npz", "--k", "50"],
     ["--k 50 is more than the 6 images", "use --k 6 or less"], {}),
    ("microscope-k-past-source", ["microscope", "digits-cnn", "conv1:0", "--steps", "2", "--images",
                                  "{d}/good.npz", "--k", "7"], ["--k 7 is more than the 6 images"], {}),
    ("filters-k-past-source", ["filters", "digits-cnn", "conv1", "--images", "{d}/good.npz", "--k", "7"],
     ["--k 7 is more than the 6 images"], {}),
    ("heatmap-top-past-channels", ["heatmap", "digits-cnn", "conv1", "--images", "{d}/good.npz", "--top", "17"],
     ["--top 17 is out of range", "16 channels", "use --top 1..16"], {}),
    ("n-past-source", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/good.npz", "--n", "50"],
     ["--n 50 is more than the 6 images", "use --n 6 or less"], {}),
    ("n-zero", ["examples", "digits-cnn", "conv1:0", "--images", "{d}/good.npz", "--n", "0"],
     ["--n must be at least 1"], {}),
    # output folders
    ("out-is-a-file", [*R, "--out", "{d}/afile"], ["output folder", "afile' is a file", "choose another --out"], {}),
    ("out-inside-a-file", [*R, "--out", "{d}/afile/sub"], ["inside", "which is a file"], {}),
    ("out-not-writable", [*R, "--out", "/proc/nnfeat-test-out"], ["cannot be created", "'/proc' is not writable"], {}),
    ("microscope-out-is-a-file", ["microscope", "digits-cnn", "conv1:0", "--steps", "2", "--images", "{d}/nope",
                                  "--out", "{d}/afile"], ["afile' is a file"], {}),
    # long input is echoed shortened
    ("long-thresholds", [*R, "--thresholds", LONG], ["bad --thresholds", "(90000 characters)"], {}),
    ("long-images", ["examples", "digits-cnn", "conv1:0", "--images", LONG], ["(90000 characters)", "not found"], {}),
    ("long-model-name", ["render", LONG, "conv1:0"], ["unknown model", "(90000 characters)"], {}),
    ("long-model-file", ["render", LONG + ".py:make", "conv1:0"], ["not found", "characters)"], {}),
    # input spec options (--normalize, --classes, --size for a model nnfeat does not know)
    ("normalize-unknown", [*HM, "--normalize", "imagenett"],
     ["bad --normalize 'imagenett'", "imagenet, cifar, none or MEAN/STD", "0.5/0.25"], {}),
    ("normalize-std-zero", [*HM, "--normalize", "0.5/0"], ["bad --normalize '0.5/0'", "every std must be positive"], {}),
    ("normalize-value-count", [*HM, "--normalize", "0.5,0.5/0.2,0.2"], ["takes 3 channels", "give 3 values (or one)"],
     {}),
    ("normalize-preset-grey-model", [*R, "--normalize", "imagenet"],
     ["--normalize imagenet is for 3-channel (RGB) models", "use --normalize MEAN/STD"], {}),
    ("classes-not-file-or-list", [*HM, "--classes", "{d}/nope.txt"], ["is neither a file nor a comma list", "a,b,c"], {}),
    ("classes-empty-name", [*HM, "--classes", "a,,c"], ["bad --classes 'a,,c'", "an empty class name"], {}),
    ("classes-empty-file", [*HM, "--classes", "{d}/empty.txt"], ["holds no class names", "one name a line"], {}),
    ("classes-count", [*HM, "--classes", "a,b"], ["2 class names from --classes", "gives 3 outputs", "give 3 names"], {}),
    ("input-size-zero", [*HM, "--size", "0"], ["--size must be at least 2"], {}),
    # text for token models
    ("text-to-image-model", ["attention", "digits-vit", "--weights", "random", "--text", "hello"],
     ["takes images, not text", "--images SRC"], {}),
    ("images-to-token-model", [*TA, "--images", "{d}/good.npz"], ["is a token model: give it text", "not --images"], {}),
    ("no-text", TA, ["is a token model: give it text with --text"], {}),
    ("text-empty", [*TA, "--text", "the cat", "--text", " "], ["--text number 2 is empty"], {}),
    ("text-file-missing", [*TA, "--text-file", "{d}/nope.txt"], ["--text-file", "not found", "one text a line"], {}),
    ("text-file-not-utf8", [*TA, "--text-file", "{d}/latin1.txt"], ["is not UTF-8 (line 1", "save it as UTF-8"], {}),
    ("word-not-in-vocabulary", [*TA, "--text", "the zebra"], ["word 'zebra'", "not in the vocabulary"], {}),
    ("target-text-not-seq2seq", [*TA, "--text", "the cat", "--target-text", "x"],
     ["--target-text is for encoder-decoder (seq2seq) models"], {}),
    ("target-text-count", ["attention", "dates-seq2seq", "--weights", "random", "--text", "june 5 2009",
                           "--target-text", "2009-06-05", "--target-text", "2009-06-06"],
     ["2 --target-text for 1 texts", "one target text per text"], {}),
    ("bare-token-network", ["layers", "{d}/token_net.py:bare"],
     ["takes token ids (its first layer is an nn.Embedding)", "nnfeat.TokenModel("], {}),
]


@pytest.mark.parametrize("argv, words, env", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, words, env, inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(d=inputs))
    argv = [a.replace("{d}", str(inputs)) for a in argv]
    if "--out" not in argv and argv[0] not in ("layers",):
        argv += ["--out", str(out)]
    before = snapshot(inputs)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors exit from inside the parser
        code = exit_.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("nnfeat: error: "), captured.err
    assert len(lines[0]) < 600, lines[0][:200]
    for word in words:
        assert word in lines[0], lines[0]
    # nothing written: no out folder, or (an error found in a dataset pass) only empty cache folders in it
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], sorted(out.rglob("*"))
    assert snapshot(inputs) == before


def test_cases_have_unique_ids():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_user_code_error_has_no_traceback_and_debug_reraises(inputs, tmp_path):
    """As a subprocess: the user's forward raising is one line (no traceback); NNFEAT_DEBUG=1 shows the traceback."""
    argv = [sys.executable, "-m", "nnfeat", "render", f"{inputs}/net.py:make_raises", "conv:0", "--steps", "2",
            "--quiet", "--out", str(tmp_path / "out")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("NNFEAT_DEBUG", None)
    plain = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [plain.stderr.strip()]
    assert "Traceback" not in plain.stderr and "boom inside forward" in plain.stderr
    debug = subprocess.run(argv, capture_output=True, text=True, env=dict(env, NNFEAT_DEBUG="1"), timeout=120)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "ValueError: boom inside forward" in debug.stderr
    assert not (tmp_path / "out").exists()


def test_nnfeat_bug_keeps_its_traceback(monkeypatch, tmp_path, capsys):
    """An exception raised outside the user's files is nnfeat's own bug: it is not dressed up as a user error."""
    import nnfeat.cli.render

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("an nnfeat bug")

    monkeypatch.setattr(nnfeat.cli.render, "render", broken)  # the render operation as the command calls it
    with pytest.raises(ZeroDivisionError):
        main([*R, "--steps", "2", "--quiet", "--out", str(tmp_path / "out")])


def test_finite_render_is_not_refused(inputs, tmp_path, capsys):
    """The NaN check does not fire on a healthy model: conv:0 of the NaN model's file is finite (channel 1 is not)."""
    out = tmp_path / "out"
    assert main(["render", f"{inputs}/net.py:make_nan", "conv:0", "--steps", "3", "--quiet", "--out", str(out)]) == 0
    assert (out / "render.json").is_file()


@pytest.mark.parametrize("command", [
    ["render", "digits-cnn", "-conv1:0", "--steps", "2", "--quiet"],
    ["render", "digits-cnn", "--steps", "2", "--seed", "1", "-conv1:0 + 0.5*conv1:1", "--quiet"],
], ids=["alone", "after-options"])
def test_leading_minus_objective_renders(command, tmp_path, capsys):
    import json

    out = tmp_path / "out"
    assert main([*command, "--out", str(out)]) == 0
    assert json.loads((out / "render.json").read_text())["objective"].startswith("-")


def test_leading_minus_from_the_shell(tmp_path):
    """The README's `nnfeat render MODEL -layer3:5`, as a real command line."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "nnfeat", "render", "digits-cnn", "-conv1:3", "--steps", "2",
                           "--quiet", "--out", str(out)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    assert (out / "render.json").is_file()


def test_weights_missing_and_no_network(inputs, tmp_path, capsys, monkeypatch):
    """No local copy and the download fails (the network is cut here): one line saying where to put the file."""
    import urllib.error
    import urllib.request

    def no_network(*_args, **_kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("NNFEAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NNFEAT_WEIGHTS_PATH", str(tmp_path / "no-weights-here"))
    out = tmp_path / "out"
    assert main(["render", "cifar10-resnet20", "layer1:0", "--out", str(out)]) == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("nnfeat: error: weights file resnet20-12fca82f.th not found locally and download failed")
    assert "network is unreachable" in line and "NNFEAT_WEIGHTS_PATH" in line and "get it from https://" in line
    assert not out.exists()
    assert [p.name for p in (tmp_path / "home" / "weights").iterdir()] == []  # no partial download left behind
