"""Damaged and stale files: a file a re-run would reuse is checked (:func:`nnfeat.io.is_whole`: its recorded
digest, else it reads back by its kind) and redone when damaged, never trusted because it exists nor a
traceback; the hidden temporaries a killed run left are removed by the next run (only its own kind of name, only
older than the run); a model that gives NaN or Inf stops ``report`` before any work with one line.

The runs are real: the trained digits-cnn, its images, and a tiny user model file that gives NaN.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnfeat.io import file_digest, is_whole, remove_stale_temporaries, save_image, track_writes, write_json

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(layers="conv2,output", units_per_layer=2, steps=4, batch=2, thresholds=2, diversity=2, examples_k=3,
             heatmap_n=2, projection_n=20, saliency_n=2, uncertain_n=16, progress=False)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _digests(folder: Path) -> dict[str, str]:
    """{path: sha256} of every file under a final name (hidden temporaries left out)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def _stale(path: Path, age: float = 3600.0) -> Path:
    """A hidden temporary as :func:`nnfeat.io.atomic_path` names it, left by a kill ``age`` seconds ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG half")
    past = time.time() - age
    os.utime(path, (past, past))
    return path


# -- the one check, and the clean-up -------------------------------------------------------------------------
def test_is_whole_tells_whole_files_from_damaged_ones(tmp_path):
    png = save_image(tmp_path / "a.png", np.arange(48 * 48 * 3, dtype=np.uint8).reshape(48, 48, 3))
    record = write_json(tmp_path / "a.json", {"values": list(range(50))})
    array = tmp_path / "a.npy"
    np.save(array, np.arange(1000, dtype=np.float32))
    packed = tmp_path / "a.npz"
    np.savez(packed, x=np.arange(1000), y=np.ones((10, 10)))
    page = tmp_path / "a.html"
    page.write_text("<p>ünïcode</p>", encoding="utf-8")
    whole = (png, record, array, packed, page)
    assert all(is_whole(p) for p in whole)
    assert all(is_whole(p, file_digest(p)) for p in whole)
    assert not is_whole(tmp_path / "missing.png") and not is_whole(tmp_path)
    digest = file_digest(png)
    for path in whole[:4]:
        _truncate(path)
        assert not is_whole(path), path  # read back by kind: truncated
    page.write_bytes(page.read_bytes()[:4])  # text: only a cut inside a character shows without a digest
    assert not is_whole(page)
    garbage = tmp_path / "b.npy"
    garbage.write_bytes(os.urandom(300))
    json_garbage = tmp_path / "b.json"
    json_garbage.write_bytes(b"\xff\xfe\x00garbage")
    assert not is_whole(garbage) and not is_whole(json_garbage)
    # a digest catches what decodes but is not the file written: another image of the same kind
    other = save_image(tmp_path / "c.png", np.zeros((48, 48, 3), np.uint8))
    assert is_whole(other) and not is_whole(other, digest)


def test_track_writes_lists_finished_files_of_its_block(tmp_path):
    save_image(tmp_path / "before.png", np.zeros((4, 4, 3), np.uint8))
    with track_writes() as outer:
        write_json(tmp_path / "a.json", {})
        with track_writes() as inner:
            save_image(tmp_path / "sub" / "b.png", np.zeros((4, 4, 3), np.uint8))
    write_json(tmp_path / "after.json", {})
    assert [p.name for p in outer] == ["a.json", "b.png"] and [p.name for p in inner] == ["b.png"]


def test_stale_temporaries_removed_only_ours_and_only_old(tmp_path):
    start = time.time()
    old = [_stale(tmp_path / ".microscope.png.k3_9zq1a.png"), _stale(tmp_path / "sub" / ".batch-0.json.abcdefgh.json"),
           _stale(tmp_path / ".notes.q1w2e3r4")]
    fresh = tmp_path / ".channel-0.png.zzzzzzzz.png"  # a write in flight (another rank's): newer than the run
    fresh.write_bytes(b"x")
    os.utime(fresh, (start + 5, start + 5))
    kept = [_stale(tmp_path / ".gitignore"), _stale(tmp_path / ".microscope.png.short.png"),  # not our names
            _stale(tmp_path / ".microscope.png.abcdefgh.jpg"), _stale(tmp_path / "visible.png.abcdefgh.png"),
            fresh]
    assert remove_stale_temporaries(tmp_path, older_than=start) == sorted([old[0], old[2]])  # not below, not recursive
    assert remove_stale_temporaries(tmp_path, older_than=start, recursive=True) == [old[1]]
    assert all(p.exists() for p in kept) and not any(p.exists() for p in old)
    layout = _stale(tmp_path / ".layout-conv2-mean-pca.npy.abcdefgh.npy")
    other = _stale(tmp_path / ".acts.npy.abcdefgh.npy")
    assert remove_stale_temporaries(tmp_path, older_than=start, prefix="layout-") == [layout]
    assert other.exists()


# -- report --------------------------------------------------------------------------------------------------
def _images(model, n=40):
    from nnfeat.data import load_images

    return load_images("digits", size=model.input_size).sample(n, 0)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, digits_model):
    """A finished small report and the digests of its files."""
    from nnfeat.ops.report import report

    out = tmp_path_factory.mktemp("report") / "full"
    report(digits_model, _images(digits_model), out, **SMALL)
    return out, _digests(out)


def test_report_redoes_damaged_views_and_removes_stale_temporaries(finished, digits_model, tmp_path):
    import shutil

    from nnfeat.ops.report import report

    reference, digests = finished
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    again = report(digits_model, _images(digits_model), out, **SMALL)
    assert again.timings == {}  # a finished report whose files are whole: nothing to do
    _truncate(out / "layers/conv2/heatmap/heatmap.png")  # the two cases
    _truncate(out / "layers/conv2/examples/examples.json", 0.3)
    (out / "layers/conv2/units/1/filters/filters.png").unlink()  # a missing file
    tile = out / "layers/output/microscope/channel-1.png"  # a whole PNG, but not the one written
    tile.write_bytes((out / "layers/output/microscope/channel-0.png").read_bytes())
    page = out / "classes/saliency/saliency.json"  # a record replaced by other, valid JSON
    page.write_text(json.dumps({"nothing": "here"}))
    stale = [_stale(out / "layers/conv2/microscope/.microscope.png.k3_9zq1a.png"),
             _stale(out / ".report.json.abcdefgh.json"), _stale(out / "cache/.collect.json.abcdefgh.json")]
    resumed = report(digits_model, _images(digits_model), out, **SMALL)
    assert sorted(resumed.timings) == sorted(["examples:conv2", "heatmap:conv2", "unit:conv2:1", "microscope:output",
                                              "saliency"])
    assert not any(p.exists() for p in stale)
    assert _digests(out) == digests  # every file as an uninterrupted run wrote it


def test_report_record_of_an_older_nnfeat_without_files_is_redone(finished, digits_model, tmp_path):
    import shutil

    from nnfeat.ops.report import report
    from nnfeat.ops.report.manifest import record_path

    reference, digests = finished
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    record = record_path(out, "heatmap:conv2")
    old = json.loads(record.read_text())
    assert "layers/conv2/heatmap/heatmap.png" in old["files"]
    assert not any(name.startswith("cache/") for name in old["files"])  # caches verify themselves
    del old["files"]
    record.write_text(json.dumps(old))
    resumed = report(digits_model, _images(digits_model), out, **SMALL)
    assert list(resumed.timings) == ["heatmap:conv2"]
    assert _digests(out) == digests


NAN_MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def make():
    return Net()


def make_nan():
    net = Net()
    with torch.no_grad():
        net.conv.bias[1] = float("nan")
    return net


def make_inf_logits():
    net = Net()
    with torch.no_grad():
        net.head.bias[2] = float("inf")  # the layers are finite, the output is not
    return net
'''


@pytest.mark.parametrize("factory,where", [("make_nan", "layer 'conv'"), ("make_inf_logits", "its output")])
def test_report_of_a_nan_model_one_line_before_work(tmp_path, factory, where):
    (tmp_path / "net.py").write_text(NAN_MODEL)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "good.npz", images=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    run = subprocess.run([sys.executable, "-m", "nnfeat", "report", f"{tmp_path}/net.py:{factory}", "--images",
                          f"{tmp_path}/good.npz", "--layers", "conv", "--steps", "2", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    lines = [line for line in run.stderr.strip().splitlines() if line.startswith("nnfeat: error:")]
    assert run.returncode == 2, run.stderr[-3000:]
    assert len(lines) == 1 and f"gives NaN or Inf at {where} on a test image" in lines[0], run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


# -- project's layout cache ----------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["npy-truncated", "npy-garbage", "json-truncated", "json-garbage",
                                    "npy-other-shape", "npy-missing"])
def test_project_recomputes_a_damaged_layout(digits_model, tmp_path, damage):
    from nnfeat.ops.project import project

    images = _images(digits_model, 30)
    cache = tmp_path / "cache"
    first = project(digits_model, "conv2", images, method="pca", k=3, cache=cache, progress=False)
    (npy,) = cache.glob("layout-*.npy")
    meta = npy.with_suffix(".json")
    assert set(json.loads(meta.read_text())) == {"key", "digest"}
    target = npy if damage.startswith("npy") else meta
    if damage.endswith("truncated"):
        _truncate(target)
    elif damage.endswith("garbage"):
        target.write_bytes(os.urandom(200) + b"\xff\xfe")
    elif damage == "npy-other-shape":
        np.save(npy, np.zeros((30, 3), np.float32))
    else:
        npy.unlink()
    stale = _stale(cache / f".{npy.name}.abcdefgh.npy")
    again = project(digits_model, "conv2", images, method="pca", k=3, cache=cache, progress=False)
    assert not again.cached["conv2"]["layout"] and again.cached["conv2"]["collect"]
    assert np.array_equal(again.xy["conv2"], first.xy["conv2"])
    assert not stale.exists()
    third = project(digits_model, "conv2", images, method="pca", k=3, cache=cache, progress=False)
    assert third.cached["conv2"]["layout"]  # the redone layout is whole again: reused


# -- microscope --------------------------------------------------------------------------------------------
def test_microscope_rerun_removes_its_stale_temporaries(digits_model, tmp_path):
    from nnfeat.ops.microscope import microscope

    out = tmp_path / "out"
    microscope(digits_model, "conv2:0..1", out=out, batch=2, steps=2, progress=False).save(out, timing=False)
    stale = [_stale(out / ".microscope.png.k3_9zq1a.png"), _stale(out / "batches" / ".batch-0.json.abcdefgh.json"),
             _stale(out / "cache" / "collect-conv2-mean" / ".acts.npy.abcdefgh.npy")]
    foreign = _stale(out / "notes" / ".keep.abcdefgh")  # a folder microscope does not write: left alone
    before = _digests(out)
    microscope(digits_model, "conv2:0..1", out=out, batch=2, steps=2, progress=False).save(out, timing=False)
    assert not any(p.exists() for p in stale) and foreign.exists()
    assert _digests(out) == before
    with Image.open(out / "microscope.png") as image:
        image.load()
