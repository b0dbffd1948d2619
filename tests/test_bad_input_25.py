"""Issue 25 §1, bad input that still ended in a traceback or a wrong file: a model whose output, or whose input
gradient, is NaN/Inf (on every image or only on some real ones), labels that are not class ids, ``graph --onnx``
to a path that cannot be written, options that contradict each other, and a disk that fills up during a save.

Every case runs the real CLI in this process on real models (tiny user model files written here, digits-cnn, the
digits images); the full disk is a fault injected into the lowest file writes (PIL's image save and the JSON text
write raise ``OSError(ENOSPC)`` from the k-th write on), not a mock of the engine.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnfeat.cli import main
from nnfeat.data import load_images
from nnfeat.errors import NnfeatError

MODEL_FILE = '''
import os

import torch
from torch import nn


def _count(x):
    """Each forward appends its batch size to $NNFEAT_TEST_FORWARDS (to see where a dataset pass stopped)."""
    log = os.environ.get("NNFEAT_TEST_FORWARDS")
    if log:
        with open(log, "a") as handle:
            handle.write(f"{len(x)}\\n")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        _count(x)
        return self.head(self.drop(self.conv(x).mean((2, 3))))


class NanOut(Net):
    """Every layer finite; the output multiplied by NaN."""

    def forward(self, x):
        return super().forward(x) * float("nan")


class InfOut(Net):
    def forward(self, x):
        return super().forward(x) * float("inf")


def _black(x):
    """(B, 1): 0 where the top-left pixel is black (every digit), else 1 (every random probe image)."""
    corner = x[:, :1, 0, 0]
    return corner / corner


class NanOnBlack(Net):
    """The conv layer (and so everything after it) NaN only for images whose top-left pixel is black."""

    def forward(self, x):
        _count(x)
        return self.head(self.conv(x / x[:, :1, :1, :1]).mean((2, 3)))


class GradNan(Net):
    """A finite forward whose input gradient is NaN on every image (sqrt at 0)."""

    def forward(self, x):
        return super().forward(x) + torch.sqrt(x * 0).mean((1, 2, 3))[:, None]


class GradNanOnBlack(Net):
    """A finite forward whose input gradient is Inf only where the top-left pixel is black (sqrt at 0)."""

    def forward(self, x):
        return super().forward(x) + torch.sqrt(x[:, :1, 0, 0].abs())


class NanWithoutDropout(Net):
    """Finite with dropout on (MC dropout's samples); NaN with it off, only for images with a black corner."""

    def forward(self, x):
        out = super().forward(x)
        return out if self.drop.training else out * _black(x)


def make():
    return Net()


def make_nan_out():
    return NanOut()


def make_inf_out():
    return InfOut()


def make_nan_on_black():
    return NanOnBlack()


def make_grad_nan():
    return GradNan()


def make_grad_nan_on_black():
    return GradNanOnBlack()


def make_nan_without_dropout():
    return NanWithoutDropout()
'''


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Model files and npz sources made once; tests must leave them unchanged."""
    d = tmp_path_factory.mktemp("inputs25")
    (d / "net.py").write_text(MODEL_FILE)
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.savez(d / "good.npz", images=pictures, labels=np.array([0, 1, 2, 0, 1, 2]))
    np.savez(d / "negative.npz", images=pictures, labels=np.array([0, 1, -1, 2, 0, -3]))
    np.savez(d / "sparse.npz", images=pictures[:3], labels=np.array([0, 7, 1000000]))
    np.savez(d / "past-classes.npz", images=pictures[:3], labels=np.array([0, 1, 5]), classes=np.array(["a", "b", "c"]))
    (d / "afile").write_text("a file, not a folder")
    return d


def run(argv: list[str], capsys) -> tuple[int, list[str], str]:
    """(exit status, stderr lines, stdout) of ``nnfeat ARGV`` run in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_one_line(code: int, lines: list[str], *words: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("nnfeat: error: "), lines
    for word in words:
        assert word in lines[0], lines[0]


# -- 1. a model that yields NaN or Inf ------------------------------------------------------------------------
NAN_CASES = [
    # the layer is finite, the output is not: refused by the probe (was: exit 0, heatmap and projection written)
    ("heatmap-output-nan", ["heatmap", "{d}/net.py:make_nan_out", "conv", "--images", "digits", "--n", "4"],
     ["gives NaN or Inf at its output on a test image"]),
    ("project-output-inf", ["project", "{d}/net.py:make_inf_out", "conv", "--images", "digits", "--n", "30",
                            "--method", "pca"], ["gives NaN or Inf at its output on a test image"]),
    # a finite forward with a NaN input gradient (was: IndexError -9223372036854775808 and per-image.csv left)
    ("uncertainty-gradient-nan", ["uncertainty", "{d}/net.py:make_grad_nan", "--method", "tta", "--images", "digits",
                                  "--n", "8"], ["NaN or Inf in the gradient of its output", "a test image"]),
    ("uncertainty-ensemble-gradient-nan", ["uncertainty", "{d}/net.py:make,{d}/net.py:make_grad_nan", "--images",
                                           "digits", "--n", "8"], ["'net:make_grad_nan'", "gradient of its output"]),
    # ... only on real images: the saliency maps are checked (was: the same IndexError)
    ("uncertainty-gradient-nan-on-images", ["uncertainty", "{d}/net.py:make_grad_nan_on_black", "--method", "tta",
                                            "--images", "digits", "--n", "8"],
     ["gave NaN or Inf in its gradient saliency maps (first at image"]),
    # MC dropout's own dropout-off pass (its reliability panel) is checked too
    ("uncertainty-dropout-off-nan", ["uncertainty", "{d}/net.py:make_nan_without_dropout", "--method", "mc-dropout",
                                     "--samples", "2", "--images", "digits", "--n", "8"],
     ["gave NaN or Inf in its predicted probabilities (first at image"]),
]


@pytest.mark.parametrize("argv, words", [c[1:] for c in NAN_CASES], ids=[c[0] for c in NAN_CASES])
def test_non_finite_model_is_one_line_and_writes_nothing(argv, words, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    code, lines, _ = run([a.replace("{d}", str(inputs)) for a in argv] + ["--out", out, "--quiet"], capsys)
    assert_one_line(code, lines, *words)
    assert files_in(out) == []  # no per-image.csv, no sheet, no cache


@pytest.mark.parametrize("argv, passes", [
    (["heatmap", "{d}/net.py:make_nan_on_black", "conv", "--images", "digits", "--n", "9", "--batch", "3"], 3),
    (["uncertainty", "{d}/net.py:make_nan_on_black", "--method", "tta", "--samples", "2", "--batch", "6",
      "--images", "digits", "--n", "9"], 6),
], ids=["heatmap", "uncertainty-tta"])
def test_first_non_finite_batch_stops_the_pass(argv, passes, inputs, tmp_path, capsys, monkeypatch):
    """NaN on every digit (never on the random probe images): the first batch of the dataset pass is the last one
    run (was: every batch ran, the check came after the whole pass)."""
    log = tmp_path / "forwards.txt"
    monkeypatch.setenv("NNFEAT_TEST_FORWARDS", str(log))
    out = tmp_path / "out"
    code, lines, _ = run([a.replace("{d}", str(inputs)) for a in argv] + ["--out", out, "--quiet"], capsys)
    assert_one_line(code, lines, "gave NaN or Inf", "(first at image")
    sizes = [int(s) for s in log.read_text().split()]
    assert sizes.count(passes) == 1, sizes  # three batches of `passes` images in the pass; one ran
    assert files_in(out) == []


def test_finite_model_still_runs(inputs, tmp_path, capsys):
    """The probes refuse only what is broken: the same tiny model without NaN writes its heatmap and its
    uncertainty (MC dropout through the dropout-off pass and the saliency maps)."""
    code, lines, _ = run(["heatmap", f"{inputs}/net.py:make", "conv", "--images", "digits", "--n", "4", "--out",
                          tmp_path / "h", "--quiet"], capsys)
    assert code == 0, lines
    code, lines, _ = run(["uncertainty", f"{inputs}/net.py:make", "--method", "mc-dropout", "--samples", "2",
                          "--images", "digits", "--n", "8", "--out", tmp_path / "u", "--quiet"], capsys)
    assert code == 0, lines
    assert (tmp_path / "u" / "per-image.csv").is_file() and (tmp_path / "u" / "uncertainty.json").is_file()


# -- 2. labels that are not class ids --------------------------------------------------------------------------
@pytest.mark.parametrize("name, words", [
    ("negative", ["labels -3, -1 (2 of 6 images, first at image 2)", "class ids 0..K-1", "numpy.unique"]),
    ("sparse", ["labels 1000000 (1 of 3 images, first at image 2)", "K at most 1000 without names"]),
    ("past-classes", ["labels 5 (1 of 3 images", "one per name of its 3 classes"]),
])
def test_labels_must_be_class_ids(name, words, inputs, tmp_path, capsys):
    """Checked on load, one line naming the labels (was: ValueError from bincount; a misleading out of memory)."""
    with pytest.raises(NnfeatError) as caught:
        load_images(inputs / f"{name}.npz")
    for word in words:
        assert word in str(caught.value)
    out = tmp_path / "out"
    code, lines, _ = run(["project", "digits-cnn", "conv2", "--images", inputs / f"{name}.npz", "--method", "pca",
                          "--out", out, "--quiet"], capsys)
    assert_one_line(code, lines, *words)
    assert files_in(out) == []


def test_dense_labels_load(inputs):
    images = load_images(inputs / "good.npz")
    assert images.labels.tolist() == [0, 1, 2, 0, 1, 2]


# -- 3. graph --onnx to a path that cannot be written ------------------------------------------------------------
@pytest.mark.parametrize("target, words", [
    ("{d}/afile/model.onnx", ["--onnx", "lies under", "afile', which is a file", "choose another --onnx"]),
    ("{d}/afile/deeper/model.onnx", ["lies under", "afile', which is a file"]),
    ("/proc/nnfeat-test/model.onnx", ["cannot be written", "'/proc' is not writable", "choose another --onnx"]),
    ("{d}", ["is a folder", "model.onnx"]),
], ids=["under-a-file", "deeper-under-a-file", "unwritable", "a-folder"])
def test_graph_onnx_path_checked_before_work(target, words, inputs, tmp_path, capsys):
    """The checks --out gets, before any work (was: FileExistsError / FileNotFoundError after graph.* were written)."""
    out = tmp_path / "out"
    code, lines, _ = run(["graph", "digits-cnn", "--onnx", target.replace("{d}", str(inputs)), "--out", out], capsys)
    assert_one_line(code, lines, *words)
    assert files_in(out) == []
    assert (inputs / "afile").read_text() == "a file, not a folder"


# -- 4. conflicting options ----------------------------------------------------------------------------------------
def test_heatmap_channels_with_top_refused(inputs, tmp_path, capsys):
    """``layer:0..3 --top 2`` drew all 4 maps; now one line says which to drop."""
    out = tmp_path / "out"
    code, lines, _ = run(["heatmap", "digits-cnn", "conv1:0..3", "--top", "2", "--images", inputs / "good.npz",
                          "--out", out], capsys)
    assert_one_line(code, lines, "--top 2", "'conv1:0..3' names 4 channels", "drop --top", "'conv1' with --top 2")
    assert files_in(out) == []
    import nnfeat
    with pytest.raises(NnfeatError, match="drop --top"):
        nnfeat.heatmap(nnfeat.load_model("digits-cnn"), "conv1:0..3", torch.rand(2, 3, 32, 32), top=2)


def test_heatmap_top_with_reduce_refused(inputs, tmp_path, capsys):
    """``--reduce sum --top 2`` drew one map of every channel, the 2 ignored; now one line says which to drop."""
    out = tmp_path / "out"
    code, lines, _ = run(["heatmap", "digits-cnn", "conv1", "--top", "2", "--reduce", "sum", "--images",
                          inputs / "good.npz", "--out", out], capsys)
    assert_one_line(code, lines, "--top 2", "--reduce sum draws one map of every channel", "drop --top",
                    "drop --reduce")
    assert files_in(out) == []
    import nnfeat
    with pytest.raises(NnfeatError, match="--reduce norm"):
        nnfeat.heatmap(nnfeat.load_model("digits-cnn"), "conv1", torch.rand(2, 3, 32, 32), top=2, reduce="norm")
    assert nnfeat.heatmap(nnfeat.load_model("digits-cnn"), "conv1", torch.rand(2, 3, 32, 32), reduce="norm").maps.shape[1] == 1


def test_ensemble_of_one_model_twice_refused(inputs, tmp_path, capsys):
    """Its mutual information is 0 by construction: refused by name (CLI) and by weights (API)."""
    out = tmp_path / "out"
    code, lines, _ = run(["uncertainty", "digits-cnn,digits-cnn", "--images", inputs / "good.npz", "--out", out],
                         capsys)
    assert_one_line(code, lines, "names 'digits-cnn' twice", "mutual information would be 0")
    assert files_in(out) == []
    import nnfeat
    first, second = nnfeat.load_model("digits-cnn"), nnfeat.load_model("digits-cnn")  # two objects, the same weights
    with pytest.raises(NnfeatError, match="members 1 and 2 .* have the same weights"):
        nnfeat.uncertainty([first, second], torch.rand(4, 3, 32, 32))
    with torch.no_grad():
        second.net.conv1.weight.add_(0.01)  # other weights: an ensemble again
    assert nnfeat.uncertainty([first, second], torch.rand(4, 3, 32, 32), top=0).method == "ensemble"


# -- 5. a full disk during a save ------------------------------------------------------------------------------
def _fill_disk_after(monkeypatch, writes: int) -> list[int]:
    """From the (writes + 1)-th file write on, PIL's image save and the JSON text write raise ENOSPC."""
    done = [0]
    real_save, real_write_text = Image.Image.save, Path.write_text

    def count() -> None:
        done[0] += 1
        if done[0] > writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def save(self, fp, *args, **kwargs):
        count()
        return real_save(self, fp, *args, **kwargs)

    def write_text(self, *args, **kwargs):
        count()
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    monkeypatch.setattr(Path, "write_text", write_text)
    return done


RENDER = ["render", "digits-cnn", "conv2:0..5", "--steps", "2", "--quiet"]


@pytest.mark.parametrize("writes", [0, 3, 6, 7])
def test_full_disk_during_render_is_one_line_and_no_half_set(writes, tmp_path, capsys, monkeypatch):
    """Six renders, the sheet and the JSON: the disk fills after ``writes`` files (6: the issue's case, six PNGs and
    no JSON; 7: only the JSON fails). One line naming the folder, and the folder is not left half written."""
    out = tmp_path / "new" / "out"
    _fill_disk_after(monkeypatch, writes)
    code, lines, _ = run([*RENDER, "--out", out], capsys)
    assert_one_line(code, lines, "the disk is full", f"'{out}'", "MB free there", "free some space")
    assert not out.exists() and not out.parent.exists()  # the folders this run made went too


def test_full_disk_over_an_earlier_run_leaves_no_mixed_set(tmp_path, capsys, monkeypatch):
    """An earlier run's folder: a failed save removes what it overwrote and the old record (which no longer
    describes the folder), and keeps the user's other files."""
    out = tmp_path / "out"
    code, lines, _ = run([*RENDER, "--out", out, "--seed", "1"], capsys)
    assert code == 0, lines
    (out / "notes.txt").write_text("mine")
    _fill_disk_after(monkeypatch, 3)
    code, lines, _ = run([*RENDER, "--out", out], capsys)
    assert_one_line(code, lines, "the disk is full", f"'{out}'")
    left = {p.name for p in files_in(out)}
    assert "render.json" not in left and "notes.txt" in left
    assert not {"render-0.png", "render-1.png", "render-2.png"} & left  # this run's own files are gone
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no hidden temporaries


def test_disk_full_error_only_for_enospc():
    from nnfeat.cli import disk_full_error

    class Args:
        out = "somewhere"

    assert disk_full_error(OSError(errno.EACCES, "denied"), Args()) is None
    assert disk_full_error(ValueError("x"), Args()) is None
    line = str(disk_full_error(OSError(errno.ENOSPC, "full", "/tmp/x/.render.png.abc.png"), Args()))
    assert "'/tmp/x'" in line and "the disk is full" in line
