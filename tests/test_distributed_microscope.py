"""``nnfeat microscope`` and ``nnfeat report`` sharded over ranks (:mod:`nnfeat.distributed`, gloo on the CPU):
2 or 3 ranks write the same bytes as one process, a run stopped half way resumes with another rank count to
the same bytes (microscope: killed on one process, finished on three; report: stopped on two, finished on
one), and a real ``torchrun --nproc-per-node 2 -m nnfeat microscope`` (killed on every rank, then
run again) equals ``python -m nnfeat microscope``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnfeat import distributed

REPO = Path(__file__).resolve().parents[1]
MICRO = dict(units="conv2:0..7", batch=2, steps=8)
REPORT = dict(layers="conv2,output", units_per_layer=3, steps=8, batch=2, thresholds=2, diversity=2, examples_k=3,
              heatmap_n=2, projection_n=12, saliency_n=2, uncertain_n=8, progress=False)


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def _files(folder: Path) -> dict[str, bytes]:
    """Every non-hidden file under ``folder`` (relative path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def assert_same_files(a: Path, b: Path, ignore_json_keys: tuple[str, ...] = ()) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb), (sorted(set(fa) ^ set(fb)))
    differ = []
    for name in fa:
        x, y = fa[name], fb[name]
        if ignore_json_keys and name.endswith(".json"):
            x, y = ({k: v for k, v in json.loads(t).items() if k not in ignore_json_keys} for t in (x, y))
        if x != y:
            differ.append(name)
    assert differ == [], differ


# -- workers (module level: spawned processes import them) ---------------------------------------------------
def _model():
    from nnfeat.models import load_model

    return load_model("digits-cnn", weights="random", device="cpu")


def _images(model, n: int):
    from nnfeat.data import load_images

    return load_images("digits", size=model.input_size).sample(n, 0)


def microscope_worker(out: str, images_n: int = 0) -> None:
    from nnfeat.ops.microscope import microscope

    model = _model()
    images = _images(model, images_n) if images_n else None
    settings = dict(MICRO)
    result = microscope(model, settings.pop("units"), out=out, images=images, progress=False, **settings)
    result.save(out, timing=False)


def report_worker(out: str) -> None:
    from nnfeat.ops.report import report

    model = _model()
    report(model, _images(model, 60), out, **REPORT)


def report_worker_stopped(out: str) -> None:
    from nnfeat.ops.report import StopRequested

    try:
        report_worker(out)
    except StopRequested:
        pass
    else:
        raise AssertionError("the stop hook did not stop the run")


def _run_killed(code: str, kill: str, log: Path | None = None) -> subprocess.CompletedProcess:
    env = _env(NNFEAT_KILL_AFTER_WRITES=kill, **({"NNFEAT_WRITE_LOG": str(log)} if log else {}))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)


# -- microscope --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def micro_one(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("micro") / "one"
    microscope_worker(str(out))
    return out


def test_microscope_two_ranks_write_the_bytes_of_one(micro_one, tmp_path):
    out = tmp_path / "two"
    distributed.spawn(microscope_worker, 2, str(out))
    assert sorted(p.name for p in (out / "batches").iterdir()) == [f"batch-{c}.json" for c in (0, 2, 4, 6)]
    assert_same_files(micro_one, out)


def test_microscope_with_examples_on_two_ranks(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    microscope_worker(str(one), 60)
    distributed.spawn(microscope_worker, 2, str(two), 60)
    assert (one / "examples" / "channel-7-top4.png").is_file()
    assert_same_files(one, two)


def test_microscope_killed_half_way_resumes_on_three_ranks(micro_one, tmp_path):
    out = tmp_path / "resumed"
    code = f"from tests.test_distributed_microscope import microscope_worker as w; w({str(out)!r})"
    killed = _run_killed(code, "7")  # batch 0 and 1 (2 PNGs + record each), then batch 2's first PNG
    assert killed.returncode == -9, killed.stderr
    assert sorted(p.name for p in (out / "batches").iterdir()) == ["batch-0.json", "batch-2.json"]
    kept = (out / "channel-0.png").stat().st_mtime_ns
    distributed.spawn(microscope_worker, 3, str(out))
    assert (out / "channel-0.png").stat().st_mtime_ns == kept, "a finished batch was rendered again"
    assert_same_files(micro_one, out)


def test_torchrun_microscope_killed_and_resumed_equals_one_process(tmp_path):
    torchrun = REPO / ".venv" / "bin" / "torchrun"
    if not torchrun.is_file():
        torchrun = Path(sys.executable).with_name("torchrun")
    args = ["microscope", "digits-cnn", MICRO["units"], "--batch", str(MICRO["batch"]), "--steps", str(MICRO["steps"]),
            "--weights", "random", "--device", "cpu", "--quiet"]
    one, two = tmp_path / "one", tmp_path / "two"
    plain = subprocess.run([sys.executable, "-m", "nnfeat", *args, "--out", str(one)], env=_env(),
                           capture_output=True, text=True, cwd=REPO)
    assert plain.returncode == 0, plain.stderr
    launch = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "nnfeat", *args, "--out", str(two)]
    killed = subprocess.run(launch, env=_env(NNFEAT_KILL_AFTER_WRITES="4"), capture_output=True, text=True, cwd=REPO)
    assert killed.returncode != 0
    records = sorted(p.name for p in (two / "batches").iterdir())
    # each rank is killed after its first batch (0 or 2) and its next PNG; torchrun may end the other rank first
    assert records in (["batch-0.json"], ["batch-2.json"], ["batch-0.json", "batch-2.json"]), records
    assert not (two / "microscope.json").exists()
    sharded = subprocess.run(launch, env=_env(), capture_output=True, text=True, cwd=REPO)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert_same_files(one, two, ignore_json_keys=("elapsed_seconds", "command"))  # the command names its --out
    record = json.loads((two / "microscope.json").read_text())
    assert record["command"].startswith("nnfeat microscope digits-cnn") and record["command"].endswith(str(two))


# -- report ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report_one(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "one"
    report_worker(str(out))
    return out


def test_report_two_ranks_write_the_bytes_of_one(report_one, tmp_path):
    out = tmp_path / "two"
    distributed.spawn(report_worker, 2, str(out))
    manifest = json.loads((out / "report.json").read_text())
    assert manifest["complete"] and len(list((out / "stages").iterdir())) == len(manifest["stages"])
    assert_same_files(report_one, out)


def test_report_stopped_on_two_ranks_resumes_on_one(report_one, tmp_path, monkeypatch):
    from nnfeat.ops.report import STOP_ENV

    out = tmp_path / "resumed"
    monkeypatch.setenv(STOP_ENV, "4")  # each rank stops at the first sync point after its 4th stage
    distributed.spawn(report_worker_stopped, 2, str(out))
    manifest = json.loads((out / "report.json").read_text())
    assert not manifest["complete"] and 4 <= len(manifest["stages"]) < 20
    monkeypatch.delenv(STOP_ENV)
    report_worker(str(out))  # one process finishes what two began
    assert_same_files(report_one, out)


def test_stage_owners_split_renders_diversity_and_units_only():
    from nnfeat.ops.report import stage_owners

    names = ["graph", "render:a:0", "render:a:2", "microscope:a", "collect:a", "examples:a", "collect:a:sample",
             "atlas:a", "diversity:a:0", "unit:a:0", "pages"]
    owners = stage_owners(names, 3)
    assert owners == {"graph": 0, "render:a:0": 0, "render:a:2": 1, "microscope:a": 0, "collect:a": None,
                      "examples:a": 0, "collect:a:sample": None, "atlas:a": None, "diversity:a:0": 2, "unit:a:0": 0,
                      "pages": 0}
    assert set(stage_owners(names, 1).values()) == {0, None}
    from nnfeat.ops.report import sync_points

    # wait before the first render (after graph), the sheet, each collective, the units and the pages
    assert sync_points(names) == {1, 3, 4, 6, 7, 8, 10}


def test_device_auto_is_this_ranks_gpu_under_torchrun(monkeypatch):
    import torch

    from nnfeat.device import auto_device, resolve_device

    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "3")
    if not torch.cuda.is_available():
        assert auto_device() == torch.device("cpu") and resolve_device("auto") == torch.device("cpu")
    # the policy itself (no tensor is made): with 8 GPUs, rank 3 of a node takes cuda:3, and a bare "cuda" too
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert auto_device() == torch.device("cuda", 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:5") == torch.device("cuda", 5)
    monkeypatch.setenv("WORLD_SIZE", "1")  # a plain process: the first GPU
    assert auto_device() == torch.device("cuda", 0)
