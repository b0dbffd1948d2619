"""The atlas sharded over ranks (``nnfeat.distributed.spawn``: gloo CPU processes, as torchrun would start them):
collection batch b and icon batch b on rank b % world, whitening / layout / grid / stitch on rank 0. Every
output file is byte-identical to a one-process run, for any rank count, also when a run stopped half-way
(or SIGKILLed) is resumed with another rank count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnfeat.distributed import spawn

REPO = Path(__file__).resolve().parents[1]
# collect_batch 64: 200 images are 4 collection batches; batch 4: a few icon batches per rank
SETTINGS = dict(samples=400, per_image=2, layout="pca", grid=4, min_count=1, steps=8, batch=4, collect_batch=64)
CLI = ["atlas", "digits-cnn", "relu3", "--images", "digits", "--n", "200", "--samples", "400", "--per-image", "2",
       "--layout", "pca", "--grid", "4", "--min-count", "1", "--steps", "8", "--batch", "4", "--weights", "random",
       "--device", "cpu", "--quiet"]


class Stop(Exception):
    """Raised from the icon-batch callback to stop a run half-way."""


def build(out: str, settings: dict, stop_after_icon_batches: int | None = None):
    """The digits-cnn (random weights) atlas of relu3 over 200 digits into ``out`` (module level: ``spawn``
    runs it on every rank). ``stop_after_icon_batches``: raise after this many icon batches of this rank."""
    from nnfeat.ops.atlas import AtlasSettings, build_atlas
    from nnfeat.data import load_images
    from nnfeat.models import load_model

    done = []

    def on_batch(index, count):
        done.append(index)
        if stop_after_icon_batches is not None and len(done) >= stop_after_icon_batches:
            raise Stop(f"stopped after icon batch {index}")

    model = load_model("digits-cnn", weights="random", device="cpu")
    images = load_images("digits").sample(200, 0)
    return build_atlas(model, "relu3", images, Path(out), AtlasSettings(**settings), progress=False,
                       on_icon_batch=on_batch)


def files(folder: Path) -> dict[str, bytes]:
    """Every visible output file but the timings, by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "timings.json"
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def same_files(a: Path, b: Path) -> list[str]:
    fa, fb = files(a), files(b)
    return sorted((set(fa) ^ set(fb)) | {k for k in set(fa) & set(fb) if fa[k] != fb[k]})


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "atlas"
    result = build(str(out), SETTINGS)
    assert len(result.cells) >= 6  # at least two icon batches, so both ranks render
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_atlas_equals_one_process_byte_for_byte(single, tmp_path, world):
    out = tmp_path / "atlas"
    spawn(build, world, str(out), SETTINGS)
    assert same_files(single, out) == []
    assert len(files(out)) >= 10 and not (out / "collect" / "batches").exists()


def test_a_stopped_sharded_run_resumes_with_another_rank_count(single, tmp_path):
    out = tmp_path / "atlas"
    with pytest.raises(Exception):  # each of the 2 ranks stops after its first icon batch
        spawn(build, 2, str(out), SETTINGS, 1)
    records = sorted(p.name for p in (out / "icons").glob("batch-*.json"))
    assert records and "batch-00000.json" in records and not (out / "cells.json").exists()
    result = build(str(out), SETTINGS)  # one process finishes it
    assert {"collect", "whitening", "layout", "grid"} <= set(result.cached)
    assert same_files(single, out) == []


def test_a_killed_one_process_run_resumes_on_two_ranks(tmp_path):
    """The CLI SIGKILLed after its first collection batch; 2 ranks finish it; equal to an uninterrupted CLI run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    clean = subprocess.run([sys.executable, "-m", "nnfeat", *CLI, "--out", str(tmp_path / "clean")], env=env,
                           capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    killed = subprocess.run([sys.executable, "-m", "nnfeat", *CLI, "--out", str(tmp_path / "split")],
                            env={**env, "NNFEAT_KILL_AFTER_WRITES": "1"}, capture_output=True, text=True)
    assert killed.returncode == -9
    assert [p.name for p in (tmp_path / "split" / "collect" / "batches").iterdir()] == ["b-00000.npz"]
    cli_settings = {**SETTINGS, "collect_batch": 128}  # the CLI's default
    spawn(build, 2, str(tmp_path / "split"), cli_settings)
    clean_files = {k: v for k, v in files(tmp_path / "clean").items() if k != "atlas.json"}  # the CLI's record
    assert sorted(k for k in set(clean_files) | set(files(tmp_path / "split"))
                  if clean_files.get(k) != files(tmp_path / "split").get(k)) == []
