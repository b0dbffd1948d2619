"""Every figure script and the quality measure run in --quick mode (what CI runs), and their outputs say
what the figure claims: PNG + JSON + one index.html line per figure, with numbers that behave."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
FIGURES = sorted(p.stem for p in EXPERIMENTS.glob("fig[0-9][0-9]_*.py"))


def _module(name: str):
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def out(tmp_path_factory, shared_dir) -> Path:
    """One output folder for all quick runs, so index.html collects every figure."""
    return tmp_path_factory.mktemp("figures_out")


def _run(name: str, out: Path, *extra: str) -> dict:
    code = _module(name).main(["--quick", "--out", str(out), *extra])
    assert code == 0
    record = json.loads((out / "figures" / f"{name}.json").read_text())
    assert record["figure"] == name and record["mode"] == "quick" and record["model"] == "cifar10-resnet20"
    with Image.open(out / "figures" / f"{name}.png") as png:
        assert png.mode == "RGB" and png.width >= 300 and png.height >= 120
        assert len(set(png.convert("L").tobytes())) > 8  # not a blank canvas
    return record


def test_ten_numbered_figure_scripts():
    assert [name[:5] for name in FIGURES] == [f"fig{i:02d}" for i in range(1, 11)]


def test_fig01_naive_has_more_high_frequencies(out):
    rows = _run("fig01_naive_vs_robust", out)["rows"]
    naive, robust = rows.values()
    assert [t["step"] for t in naive["thresholds"]] == [1, 3, 6] == [t["step"] for t in robust["thresholds"]]
    assert naive["settings"]["param"] == "pixel" and robust["settings"]["param"] == "fft"
    # pixel-space optimization is high-frequency noise; Fourier scaling keeps most energy at low frequencies
    assert naive["thresholds"][-1]["high_frequency_share"] > robust["thresholds"][-1]["high_frequency_share"] + 0.2


def test_fig02_objective_rises_over_thresholds(out):
    record = _run("fig02_progress", out)
    values = [t["objective"] for t in record["thresholds"]]
    assert [t["step"] for t in record["thresholds"]] == [1, 2, 4, 8]
    assert values[-1] > values[0] and len(record["values_per_step"]) == 8


def test_fig03_five_objective_types(out):
    objectives = _run("fig03_objectives", out)["objectives"]
    assert len(objectives) == 5
    kinds = " ".join(objectives)
    for word in ("neuron", "channel", "DeepDream", "logit", "softmax"):
        assert word in kinds
    softmax = next(v["value"] for k, v in objectives.items() if k.startswith("softmax"))
    assert 0.0 <= softmax <= 1.0 and all(math.isfinite(v["value"]) for v in objectives.values())


def test_fig04_diversity_makes_the_batch_differ(out):
    record = _run("fig04_diversity", out)
    rows = list(record["rows"].values())
    assert len(rows) == 2 and all(len(r["channel_values"]) == 4 for r in rows)
    assert record["diversity_weight"] > 0
    assert all(-1.0 <= r["gram_similarity"] <= 1.0 for r in rows)
    plain, diverse = rows
    assert diverse["gram_similarity"] < plain["gram_similarity"]  # the diversity term makes the batch differ


def test_fig05_each_image_favours_its_units(out):
    images = _run("fig05_addition", out)["images"]
    only_a, only_b, both = images
    assert only_a["a"] > only_b["a"] and only_b["b"] > only_a["b"]
    assert both["objective"] == "layer3:5 + layer3:9" and math.isfinite(both["a"] + both["b"])


def test_fig06_frames_move_from_a_to_b(out):
    record = _run("fig06_interpolation", out)
    values = record["values"]
    assert len(values) == record["frames"] == 4 and values[0]["t"] == 0.0 and values[-1]["t"] == 1.0
    assert values[0]["a"] - values[0]["b"] > values[-1]["a"] - values[-1]["b"]


def test_fig07_five_regularization_columns(out):
    columns = _run("fig07_regularization", out)["columns"]
    assert list(columns) == ["none", "L1 (toward grey)", "total variation", "blur", "transformation robustness"]
    assert all(c["weight"] > 0 for k, c in columns.items() if k not in ("none", "transformation robustness"))
    assert all(0.0 <= c["high_frequency_share"] <= 1.0 for c in columns.values())


def test_fig08_examples_and_optimization_are_ordered(out):
    record = _run("fig08_dataset_examples", out)
    top = [e["score"] for e in record["examples"]["top"]]
    bottom = [e["score"] for e in record["examples"]["bottom"]]
    assert len(top) == len(bottom) == 4 and min(top) > max(bottom)
    assert top == sorted(top, reverse=True)
    assert record["optimized"]["positive"] > record["optimized"]["negative"]


def test_fig09_atlas_and_class_atlas(out):
    record = _run("fig09_atlas", out)
    assert record["atlas"]["cells"] > 0 and record["class_atlas"]["cells"] > 0
    assert record["class"]["name"] == "cat"
    assert (out / "figures" / "fig09_atlas" / "atlas" / "cells.json").is_file()


def test_fig10_maco_against_fourier(out):
    record = _run("fig10_maco", out)
    results = record["results"]
    assert set(results) == {"fft", "maco"} and record["judges"] == ["cifar10-resnet32"]
    for kind in results.values():
        assert len(kind["units"]) == 4
        assert all(u["ratio_to_dataset_max"] is not None for u in kind["units"].values())
        assert 0.0 <= kind["transfer"]["cifar10-resnet32"]["share"] <= 1.0
    assert "cifar10_test.npz" in record["spectrum"]


def test_index_lists_every_figure_once(out):
    for name in FIGURES:
        if not (out / "figures" / f"{name}.json").is_file():
            pytest.skip("needs the figure runs above (run the whole file)")
    _run("fig05_addition", out)  # a re-run replaces its line
    text = (out / "figures" / "index.html").read_text()
    for name in FIGURES:
        assert text.count(f'<li id="fig-{name}">') == 1
        assert f'src="{name}.png"' in text
    assert text.strip().endswith("</html>")


def test_update_index_replaces_only_its_line(tmp_path):
    figures = _module("_figures")
    figures.update_index(tmp_path, "fig02_b", "B", "caption b", "meta")
    figures.update_index(tmp_path, "fig01_a", "A <old>", "caption a", "meta")
    figures.update_index(tmp_path, "fig01_a", "A new", "caption a2", "meta")
    entries = figures.index_entries(tmp_path / "index.html")
    assert list(entries) == ["fig01_a", "fig02_b"]
    assert "A new" in entries["fig01_a"] and "caption a2" in entries["fig01_a"] and "&lt;old&gt;" not in entries["fig01_a"]
    assert not list(tmp_path.glob(".index.html.*"))  # no temp file left behind


def test_quality_quick_table(out):
    code = _module("quality").main(["--quick", "--out", str(out), "--steps", "4"])
    assert code == 0
    record = json.loads((out / "quality" / "quality.json").read_text())
    quality = _module("quality")
    assert list(record["rows"]) == list(quality.CONFIGS)
    for row in record["rows"].values():
        assert row["renders"] == 10 and 0.0 <= row["judges"]["cifar10-resnet32"]["share"] <= 1.0
        assert math.isfinite(row["activation_ratio"]) and math.isfinite(row["logit_ratio"])
    table = (out / "quality" / "quality.md").read_text().splitlines()
    assert table[0].startswith("| setting |") and sum(line.startswith("| ") for line in table) == 1 + len(quality.CONFIGS)
    assert (out / "quality" / "renders-maco.png").is_file()


def test_script_entry_point_reports_user_errors_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / "fig03_objectives.py"), "--model", "no-such-model",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unknown model 'no-such-model'" in proc.stderr
    assert not (tmp_path / "figures").exists()


@pytest.mark.parametrize("name", ["inceptionv1", "torchvision:googlenet"])
def test_paper_units_exist_in_the_imagenet_models(name):
    """The full-mode units name real layers and channels (checked on randomly initialised nets: no download)."""
    from nnfeat.layouts import channel_count
    from nnfeat.models.zoo import load_model

    figures = _module("_figures")
    units = figures.PAPER_UNITS[name]
    model = load_model(name, weights="random")
    singles = [units[k] for k in ("main", "second", "diversity", "progress", "regularize", "examples")]
    wanted = [*singles, *units["addition"], *units["maco"]]
    layers = sorted({layer for layer, _ in wanted} | {units["dream"], units["atlas_layer"]})
    shapes = model.layer_shapes(layers, (128, 128))
    for layer, channel in wanted:
        assert 0 <= channel < channel_count(tuple(shapes[layer][1:])), f"{layer}:{channel}"
    classes = model.layer_shapes(["output"], (128, 128))["output"][1]
    assert all(0 <= c < classes for c in (*units["classes"], units["atlas_class"]))


def test_any_model_gets_units_from_its_layers(digits_model, tmp_path):
    """A model without paper units (digits-cnn) still runs: units come from its layer list."""
    figures = _module("_figures")
    units = figures.auto_units(digits_model)
    assert units["main"][0] in digits_model.layer_names()
    assert _module("fig03_objectives").main(["--quick", "--model", "digits-cnn", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "figures" / "fig03_objectives.json").read_text())
    assert record["model"] == "digits-cnn" and len(record["objectives"]) == 5
