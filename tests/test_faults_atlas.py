"""Fault injection for ``nnfeat atlas`` (the :mod:`nnfeat.io` hooks): the CLI is SIGKILLed right after its k-th
file write, or just before its k-th rename (``k:before``), at a point inside every stage (a collection batch, the
merge, whitening, layout, grid, an icon batch, the stitch). After each kill no file under its final name is
partial (every PNG decodes, every JSON parses, every .npy / .npz loads), and a plain re-run ends byte-identical
to an uninterrupted run (``timings.json`` and the timing fields of ``atlas.json`` aside). A damaged cached file
(a truncated layout, icon, collection batch or stage file, a corrupted activation file) is detected and redone,
not trusted because it exists.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

try:
    from tests.faults import broken_files, hidden_files, nnfeat, visible_files
except ImportError:  # tests/ not importable as a package: pytest put tests/ itself on sys.path
    from faults import broken_files, hidden_files, nnfeat, visible_files

ATLAS = ["atlas", "digits-cnn", "relu3", "--images", "digits", "--n", "200", "--samples", "400", "--per-image", "2",
         "--layout", "pca", "--grid", "4", "--min-count", "1", "--steps", "4", "--batch", "4",
         "--weights", "random", "--device", "cpu", "--quiet", "--out", "out"]
TIMING_FILES = {"timings.json"}
TIMING_FIELDS = {"elapsed_seconds", "timings", "cached"}


def differences(a: Path, b: Path) -> list[str]:
    """Files that differ or exist on one side only (timing files and fields aside)."""
    fa, fb = visible_files(a), visible_files(b)
    out = sorted((set(fa) ^ set(fb)) - TIMING_FILES)
    for name in (set(fa) & set(fb)) - TIMING_FILES:
        x, y = fa[name], fb[name]
        if name == "atlas.json":
            x, y = ({k: v for k, v in json.loads(t).items() if k not in TIMING_FIELDS} for t in (x, y))
        if x != y:
            out.append(name)
    return sorted(out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, list[str]]:
    """An uninterrupted run's folder and the paths of its writes (relative to it), in order."""
    folder = tmp_path_factory.mktemp("reference")
    log = folder / "writes.log"
    run = nnfeat(folder, ATLAS, NNFEAT_WRITE_LOG=str(log))
    assert run.returncode == 0, run.stderr
    out = folder / "out"
    return out, written(log, out)


def written(log: Path, out: Path) -> list[str]:
    """The paths a run's write log lists, relative to its output folder ``out`` (the log holds them as given:
    relative to the run's working folder)."""
    paths = [Path(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return [(p.relative_to(out.resolve()) if p.is_absolute() else p.relative_to(out.name)).as_posix() for p in paths]


def kill_point(writes: list[str], name: str, when: str = "") -> str:
    """``NNFEAT_KILL_AFTER_WRITES`` for the write of ``name`` (its 1-based place in the run's writes)."""
    k = writes.index(name) + 1
    return f"{k}:before" if when == "before" else str(k)


def test_write_points_cover_every_stage(reference):
    out, writes = reference
    stages = ["collect/batches/b-00000.npz", "collect/batches/b-00001.npz", "collect/acts.npy", "collect/samples.npy",
              "collect/attr.npy", "collect/collect.json", "whitening.npy", "whitening.json", "layout.npy",
              "layout.json", "grid.npz", "grid.json"]
    assert writes[:len(stages)] == stages
    icons = [w for w in writes if w.startswith("icons/")]
    assert icons[4] == "icons/batch-00000.json" and len(icons) == len(writes) - len(stages) - 5
    assert writes[-5:] == ["atlas.png", "cells.json", "atlas.html", "timings.json", "atlas.json"]
    assert not (out / "collect" / "batches").exists()  # merged: the per-batch records are gone
    assert json.loads((out / "layout.json").read_text())["fit"] == "all"


def _kill_and_resume(reference_out: Path, folder: Path, kill: str, damage: str | None = None) -> dict:
    """Kill a fresh run at ``kill``, check what it left, optionally truncate ``damage``, re-run plainly, compare."""
    killed = nnfeat(folder, ATLAS, NNFEAT_KILL_AFTER_WRITES=kill)
    out = folder / "out"
    facts = {"kill": kill, "returncode": killed.returncode, "broken": broken_files(out) if out.exists() else [],
             "hidden": len(hidden_files(out)) if out.exists() else 0}
    log = folder / "resumed.log"
    if damage:
        path = out / damage
        facts["damaged"] = path.is_file()
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    resumed = nnfeat(folder, ATLAS, NNFEAT_WRITE_LOG=str(log))
    facts["resumed"] = resumed.returncode
    facts["stderr"] = resumed.stderr[-2000:]
    facts["rewrote"] = written(log, out)
    facts["differ"] = differences(reference_out, out) if resumed.returncode == 0 else ["<no result>"]
    return facts


def test_atlas_survives_a_kill_in_every_stage(reference, tmp_path):
    out, writes = reference
    second_icon = [w for w in writes if w.startswith("icons/") and w.endswith(".png")][1]
    cases = [  # (kill point, file truncated before the re-run)
        (kill_point(writes, "collect/batches/b-00000.npz"), "collect/batches/b-00000.npz"),  # a collection batch
        (kill_point(writes, "collect/samples.npy", "before"), None),  # the merge, acts.npy already in place
        (kill_point(writes, "whitening.npy"), None),
        (kill_point(writes, "layout.npy", "before"), None),
        (kill_point(writes, "grid.npz"), None),
        (kill_point(writes, second_icon), None),  # inside an icon batch (its record not yet written)
        (kill_point(writes, "cells.json", "before"), None),  # the stitch, atlas.png already in place
    ]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda case: _kill_and_resume(out, tmp_path / case[0].replace(":", "-"), *case),
                                cases))
    for facts in results:
        assert facts["returncode"] == -9, facts  # died by SIGKILL
        assert facts["broken"] == [], facts
        assert facts["hidden"] == (1 if facts["kill"].endswith(":before") else 0), facts
        assert facts["resumed"] == 0 and facts["differ"] == [], facts
    first = results[0]
    assert first["damaged"] and first["rewrote"][0] == "collect/batches/b-00000.npz"  # the truncated batch, redone
    assert "collect/acts.npy" not in results[-1]["rewrote"]  # a kill in the stitch redoes only the stitch
    assert results[-1]["rewrote"][0] == "atlas.png"


# -- damaged cache files, in process --------------------------------------------------------------------------
SETTINGS = dict(samples=400, per_image=2, layout="pca", grid=4, min_count=1, steps=4, batch=4, collect_batch=64)


def _build(out: Path):
    from nnfeat.ops.atlas import AtlasSettings, build_atlas
    from nnfeat.data import load_images
    from nnfeat.models import load_model

    model = load_model("digits-cnn", weights="random", device="cpu")
    return build_atlas(model, "relu3", load_images("digits").sample(200, 0), out, AtlasSettings(**SETTINGS),
                       progress=False)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "atlas"
    _build(out)
    return out


def _icon(out: Path) -> str:
    return json.loads((out / "cells.json").read_text())["cells"][-1]["icon"]


@pytest.mark.parametrize("damage, redone", [
    ("layout.npy", "layout"), ("whitening.npy", "whitening"), ("grid.npz", "grid"), ("icon", "icons"),
    ("icons/batch-00000.json", "icons"), ("collect/acts.npy", "collect"), ("collect/collect.json", "collect"),
])
def test_a_truncated_cache_file_is_redone(clean, tmp_path, damage, redone):
    out = tmp_path / "atlas"
    shutil.copytree(clean, out)
    path = out / (_icon(out) if damage == "icon" else damage)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = _build(out)
    assert redone not in result.cached
    assert differences(clean, out) == []


def test_a_corrupted_activation_file_of_the_same_length_is_redone(clean, tmp_path):
    out = tmp_path / "atlas"
    shutil.copytree(clean, out)
    acts = np.load(out / "collect" / "acts.npy", mmap_mode="r+")
    acts[5] += 1.0  # same size, same header: only the digest recorded in collect.json sees it
    acts.flush()
    del acts
    result = _build(out)
    assert "collect" not in result.cached and {"whitening", "layout", "grid", "icons"} <= set(result.cached)
    assert differences(clean, out) == []
