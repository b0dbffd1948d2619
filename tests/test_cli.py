"""The command line, run as a user runs it: a real subprocess, real files, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def nnfeat(*args, env_extra=None, cwd=ROOT):
    env = dict(os.environ)
    env.setdefault("NNFEAT_WEIGHTS_PATH", str(SHARED / "models"))
    env["PYTHONPATH"] = str(ROOT)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "nnfeat.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


needs_shared = pytest.mark.skipif(not (SHARED / "models").exists(), reason="../shared is absent (CI has it)")


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{proc.stderr}"
    assert lines[0].startswith("nnfeat: error: ")
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@needs_shared
@pytest.mark.parametrize("args,fragments", [
    (["render", "resnet-20", "layer3:1"], ["unknown model 'resnet-20'", "cifar10-resnet20", "torchvision:NAME"]),
    (["render", "cifar10-resnet20", "layer3.1.conv:1"], ["unknown layer 'layer3.1.conv'", "layer3.1.conv2"]),
    (["render", "cifar10-resnet20", "layer3:64"], ["channel 64", "valid channels are 0..63"]),
    (["render", "cifar10-resnet20", "layer3:1 + foo(2)"], ["unknown function 'foo'", "⟨here⟩"]),
    (["render", "cifar10-resnet20", "__import__('os').getcwd()"], ["not allowed"]),
    (["render", "cifar10-resnet20", "channel('layer3', 1, batch=3)", "--batch", "2"],
     ["uses batch item 3", "use batch 4 or more"]),
    (["render", "cifar10-resnet20", "layer3:1", "--precision", "fp16"], ["--precision", "fp32", "bf16"]),
    (["render", "cifar10-resnet20", "layer3:1", "--device", "cuda"], ["no CUDA GPU", "--device cpu"]),
    (["microscope", "cifar10-resnet20", "layer3:60..70"], ["channel 64", "0..63"]),
    (["render", "cifar10-resnet20", "layer3:0-3"], ["A..B", "layer3:0..3"]),
    (["render", "cifar10-resnet20", "layer3:1", "--out", "README.md"], ["'README.md' is a file"]),
    (["microscope", "cifar10-resnet20", "layer3:1", "--images", "no/such/dir"], ["'no/such/dir' not found"]),
    (["render", "cifar10-resnet20", "layer3:1", "--objective-file", "objectives/cifar.py:cat_vs_dog"],
     ["not both"]),
    (["render", "cifar10-resnet20", "--objective-file", "objectives/nope.py:x"], ["not found"]),
    (["render", "cifar10-resnet20", "--objective-file", "objectives/cifar.py:nope"], ["'nope' not found", "cat_vs_dog"]),
])
def test_bad_input_gets_one_clear_line(args, fragments):
    assert_one_line_error(nnfeat(*args, "--steps", "2", "--quiet"), *fragments)


def test_missing_weights_offline_names_file_place_and_source(tmp_path):
    proc = nnfeat("render", "cifar10-resnet44", "layer3:1", "--steps", "2",
                  env_extra={"NNFEAT_HOME": str(tmp_path), "NNFEAT_WEIGHTS_PATH": ""})
    assert_one_line_error(proc, "resnet44-014dd654.th", str(tmp_path / "weights"), "NNFEAT_WEIGHTS_PATH", "https://")


@needs_shared
def test_render_writes_grid_items_and_json_and_same_seed_same_bytes(tmp_path):
    args = ["render", "cifar10-resnet20", 'layer3:5 - 0.5*diversity("layer2")', "--batch", "2", "--steps", "8",
            "--thresholds", "4,8", "--quiet"]
    first = nnfeat(*args, "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    second = nnfeat(*args, "--out", str(tmp_path / "b"))
    assert second.returncode == 0, second.stderr
    for name in ("render.png", "render-0.png", "render-1.png", "render-step4.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    meta = json.loads((tmp_path / "a" / "render.json").read_text())
    assert meta["model"] == "cifar10-resnet20" and meta["seed"] == 0
    assert len(meta["final_values"]) == 2 and meta["elapsed_seconds"] > 0
    assert meta["settings"]["steps"] == 8 and "torch" in meta["versions"]
    third = nnfeat(*args, "--seed", "1", "--out", str(tmp_path / "c"))
    assert third.returncode == 0
    assert (tmp_path / "c" / "render.png").read_bytes() != (tmp_path / "a" / "render.png").read_bytes()


@needs_shared
def test_precision_flag_is_recorded_deterministic_and_changes_the_arithmetic(tmp_path):
    args = ["render", "cifar10-resnet20", "layer3:5", "--steps", "8", "--quiet"]
    pngs = {}
    for precision in ("fp32", "bf16", "bf16"):
        out = tmp_path / f"{precision}-{len(pngs)}"
        proc = nnfeat(*args, "--precision", precision, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        assert json.loads((out / "render.json").read_text())["settings"]["precision"] == precision
        pngs.setdefault(precision, []).append((out / "render.png").read_bytes())
    assert pngs["bf16"][0] == pngs["bf16"][1]
    assert pngs["fp32"][0] != pngs["bf16"][0]


@needs_shared
def test_objective_file_recipe(tmp_path):
    proc = nnfeat("render", "cifar10-resnet20", "--objective-file", "objectives/cifar.py:cat_vs_dog", "--steps", "16",
                  "--quiet", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "render.json").read_text())
    assert meta["objective"].startswith("logit(3)")
    assert meta["final_values"][0] > 0


@needs_shared
def test_microscope_renders_each_channel_and_resumes(tmp_path):
    args = ["microscope", "cifar10-resnet20", "layer3:0..5", "--batch", "4", "--steps", "6", "--quiet",
            "--out", str(tmp_path)]
    assert nnfeat(*args).returncode == 0
    manifest = json.loads((tmp_path / "microscope.json").read_text())
    assert sorted(map(int, manifest["channels"])) == list(range(6))
    assert (tmp_path / "microscope.png").exists() and (tmp_path / "index.html").exists()
    before = {c: (tmp_path / f"channel-{c}.png").read_bytes() for c in range(6)}
    (tmp_path / "channel-5.png").unlink()  # as if the run had stopped while writing the last batch
    mtime = (tmp_path / "channel-0.png").stat().st_mtime_ns
    assert nnfeat(*args).returncode == 0
    assert (tmp_path / "channel-0.png").stat().st_mtime_ns == mtime, "finished channels are not rendered again"
    after = {c: (tmp_path / f"channel-{c}.png").read_bytes() for c in range(6)}
    assert after == before, "a resumed run must give the same images"


@needs_shared
def test_layers_lists_dotted_names_shapes_and_channels():
    proc = nnfeat("layers", "cifar10-resnet20")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[1:]}
    assert rows["layer3"] == ["64x8x8", "64"]
    assert rows["layer3.1.conv2"] == ["64x8x8", "64"]
    assert rows["output"] == ["10", "10"]
