"""The front door, as a user meets it: every command on every model family, one unit string meaning the
same units in every command, one device default recorded everywhere, results that save and show themselves."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def nnfeat(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.setdefault("NNFEAT_WEIGHTS_PATH", str(SHARED / "models"))
    proc = subprocess.run([sys.executable, "-m", "nnfeat", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=900)
    assert proc.returncode == 0, f"nnfeat {' '.join(map(str, args))}\n{proc.stderr[-3000:]}"
    return proc


#: (model, weights, a conv/token layer, its channel count) for the four model families of the issue
MODELS = [
    pytest.param("cifar10-resnet20", "pretrained", "layer2", marks=pytest.mark.skipif(
        not (SHARED / "models").is_dir(), reason="../shared is absent (CI has it)")),
    pytest.param("digits-cnn", "pretrained", "bn2"),
    pytest.param("torchvision:resnet18", "random", "layer2"),
    pytest.param("timm:vit_tiny_patch16_224", "random", "blocks.5"),
]


@pytest.mark.slow
@pytest.mark.parametrize("model,weights,layer", MODELS)
def test_every_command_works_on_every_model_family(tmp_path, model, weights, layer):
    w = ["--weights", weights]
    q = ["--quiet"]
    layers = nnfeat("layers", model, *w).stdout
    assert layer in layers.split()
    records = {}
    nnfeat("render", model, f"{layer}:0..1", "--steps", "2", "--size", "64" if "timm" not in model else "224", *w, *q,
           "--out", tmp_path / "render")
    records["render"] = json.loads((tmp_path / "render" / "render.json").read_text())
    nnfeat("microscope", model, f"{layer}:0..2", "--batch", "2", "--steps", "2", "--images", "digits", "--n", "24",
           "--k", "2", *w, *q, "--out", tmp_path / "micro")
    records["microscope"] = json.loads((tmp_path / "micro" / "microscope.json").read_text())
    nnfeat("examples", model, f"{layer}:3", "--images", "digits", "--n", "24", "--k", "3", *w, *q,
           "--out", tmp_path / "examples")
    records["examples"] = json.loads((tmp_path / "examples" / "examples.json").read_text())
    nnfeat("atlas", model, layer, "--images", "digits", "--n", "40", "--samples", "40", "--grid", "2", "--min-count", "1",
           "--layout", "pca", "--steps", "2", "--icon-size", "32", *w, *q, "--out", tmp_path / "atlas")
    records["atlas"] = json.loads((tmp_path / "atlas" / "atlas.json").read_text())
    assert (tmp_path / "atlas" / "atlas.html").is_file()
    nnfeat("spectrum", "--images", "digits", "--n", "8", "--model", model, "--quiet")
    nnfeat("heatmap", model, layer, "--images", "digits", "--n", "3", "--top", "2", *w, *q, "--out", tmp_path / "heatmap")
    records["heatmap"] = json.loads((tmp_path / "heatmap" / "heatmap.json").read_text())
    nnfeat("filters", model, "--max-filters", "4", *w, *q, "--out", tmp_path / "filters")
    records["filters"] = json.loads((tmp_path / "filters" / "filters.json").read_text())
    nnfeat("project", model, layer, "--images", "digits", "--n", "30", "--method", "pca", "--k", "3", *w, *q,
           "--out", tmp_path / "project")
    records["projection"] = json.loads((tmp_path / "project" / "projection.json").read_text())
    folders = {"render": "render", "microscope": "micro", "examples": "examples", "atlas": "atlas",
               "heatmap": "heatmap", "filters": "filters", "projection": "project"}
    for kind, record in records.items():
        assert record["kind"] == kind
        assert record["device"] == "cpu", f"{kind}: the auto device on this machine is the CPU"
        assert record["command"].startswith(f"nnfeat {'project' if kind == 'projection' else kind} {model}")
        assert set(record["versions"]) == {"nnfeat", "torch", "python"}
        assert record["elapsed_seconds"] >= 0
        for name in record["files"]:
            assert (tmp_path / folders[kind] / name).exists(), name


def test_one_unit_string_means_the_same_units_in_every_command(tmp_path):
    units = "bn2:1..3"
    nnfeat("render", "digits-cnn", units, "--steps", "1", "--quiet", "--out", tmp_path / "r")
    nnfeat("microscope", "digits-cnn", units, "--steps", "1", "--quiet", "--out", tmp_path / "m")
    nnfeat("examples", "digits-cnn", units, "--images", "digits", "--n", "20", "--k", "2", "--quiet",
           "--out", tmp_path / "e")
    render = json.loads((tmp_path / "r" / "render.json").read_text())
    micro = json.loads((tmp_path / "m" / "microscope.json").read_text())
    examples = json.loads((tmp_path / "e" / "examples.json").read_text())
    assert render["settings"]["item_units"] == ["bn2:1", "bn2:2", "bn2:3"]
    assert sorted(map(int, micro["channels"])) == [1, 2, 3]
    assert [c["channel"] for c in examples["channels"]] == [1, 2, 3]
    # and the whole layer is the same everywhere too
    nnfeat("microscope", "digits-cnn", "bn2", "--steps", "1", "--batch", "32", "--quiet", "--out", tmp_path / "all")
    assert len(json.loads((tmp_path / "all" / "microscope.json").read_text())["channels"]) == 32


def test_the_recorded_command_repeats_the_result(tmp_path):
    nnfeat("render", "digits-cnn", "-bn2:4", "--steps", "3", "--seed", "7", "--quiet", "--out", tmp_path / "a")
    record = json.loads((tmp_path / "a" / "render.json").read_text())
    words = shlex.split(record["command"])
    assert words[:2] == ["nnfeat", "render"]
    assert str(tmp_path / "a") in words
    nnfeat(*[w if w != str(tmp_path / "a") else str(tmp_path / "b") for w in words[1:]])
    assert (tmp_path / "b" / "render-0.png").read_bytes() == (tmp_path / "a" / "render-0.png").read_bytes()


def test_api_result_shows_itself_and_saves(tmp_path, digits_model):
    import nnfeat

    result = nnfeat.render(digits_model, "bn2:0..3", steps=2, progress=False)
    assert result.images.shape == (4, 3, 32, 32)
    png = result._repr_png_()
    assert png.startswith(b"\x89PNG")
    from PIL import Image
    import io

    sheet = Image.open(io.BytesIO(png))
    assert sheet.width >= 2 * 96, "tiles are upscaled to a readable size"
    assert "data:image/png;base64," in result._repr_html_()
    path = result.save(tmp_path / "api")
    record = json.loads(path.read_text())
    assert record["command"] == "nnfeat render digits-cnn bn2:0..3 --batch 4 --size 32 --steps 2 --seed 0"
    assert record["settings"]["device"] == str(digits_model.device)
    # the saved sheet is captioned: it is larger than the bare grid and differs from it
    assert Image.open(tmp_path / "api" / "render.png").size == sheet.size


def test_microscope_api_and_examples_api_return_results(tmp_path, digits_model):
    import nnfeat

    micro = nnfeat.microscope(digits_model, "bn2:0..2", steps=2, batch=2, progress=False, images="digits",
                              examples_k=2)
    assert micro.images.shape == (3, 3, 32, 32) and micro.examples.shape == (3, 2, 3, 32, 32)
    assert micro._repr_png_().startswith(b"\x89PNG")
    micro.save(tmp_path / "m")
    page = (tmp_path / "m" / "index.html").read_text()
    assert "bn2:0" in page and "bn2:2" in page
    found = nnfeat.examples(digits_model, "bn2:5", nnfeat.load_images("digits", size=32), k=3, progress=False)
    assert found.images.shape == (3, 3, 32, 32)
    assert not found.field_covers_input and "16x16" in found.field_note
    deep = nnfeat.examples(digits_model, "output:1", nnfeat.load_images("digits", size=32), k=2, progress=False)
    assert deep.field_covers_input and "whole" in deep.field_note
    deep.save(tmp_path / "e")
    assert not list((tmp_path / "e").glob("*patches*")), "no patch files when the patches are the images"


def test_device_default_is_auto_everywhere():
    from nnfeat.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        devices = [a for a in sub._actions if "--device" in a.option_strings]
        if devices:
            assert devices[0].default == "auto", name
    from nnfeat.device import auto_device, resolve_device

    assert resolve_device("auto") == auto_device()
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
