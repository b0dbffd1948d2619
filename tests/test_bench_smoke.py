"""The render benchmark's code path (``experiments/bench_render.py --quick``), and the engine speed levers it
measures keeping render's behaviour: the redirected-ReLU fast backward, automatic channels-last input."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nnfeat import objectives as O
from nnfeat.models.base import Model
from nnfeat.engine.relu import redirected_relu
from nnfeat.device import default_channels_last
from nnfeat.ops.render import render

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    path = REPO / "experiments" / "bench_render.py"
    spec = importlib.util.spec_from_file_location("bench_render", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_render"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_render", None)


def test_quick_benchmark_writes_every_row(bench, tmp_path, capsys):
    threads = torch.get_num_threads()
    rc = bench.main(["--quick", "--rows", "1,2,3,4,5,L", "--cifar-weights", "random", "--out", str(tmp_path),
                     "--lucent-python", str(tmp_path / "no-lucent" / "python")])
    assert rc == 0
    assert torch.get_num_threads() == threads, "the benchmark must restore the thread setting"
    report = json.loads((tmp_path / "bench" / "bench_render.json").read_text())
    table = (tmp_path / "bench" / "bench_render.md").read_text()
    rows = report["rows"]
    assert set(rows) == {"overhead", "early_exit", "lucent", "whole_layer", "scaling", "levers"}
    for cell in rows["overhead"]:
        for key in ("nnfeat_step_s", "bare_step_s", "same_net_step_s"):
            assert 0 < cell[key] < 60
        runs = cell["runs"]
        assert math.isclose(cell["overhead"], runs["nnfeat"]["wall_s"][0] / runs["bare"]["wall_s"][0], rel_tol=1e-9)
        assert 0 < cell["overhead_cpu"] < 100 and 0 < cell["nnfeat_cpu_step_s"] < 60
    assert rows["early_exit"][0]["shallow_step_s"] > 0 and rows["early_exit"][0]["logit_step_s"] > 0
    assert "skipped" in rows["lucent"] and "setup_lucent.sh" in rows["lucent"]["skipped"]
    assert [c["batch"] for c in rows["whole_layer"]] == [2, 4]
    assert [c["renders"] for c in rows["whole_layer"]] == [2, 1]
    assert all(c["peak_mb"] >= 0 and c["seconds"] > 0 for c in rows["whole_layer"])
    assert {c["case"]["batch"] for c in rows["scaling"]} == {1, 2}
    names = [v["variant"] for v in rows["levers"][0]["variants"]]
    assert names[0] == "default" and "redirected ReLU step" in names
    for heading in ("## 1. Overhead", "## 2. Early exit", "## 3. Against lucent", "## 4. Whole layer",
                    "## 5. Scaling", "## L. Levers"):
        assert heading in table
    assert "setup_lucent.sh" in table
    assert table.strip() in capsys.readouterr().out


def test_lucent_row_when_the_lucent_venv_exists(bench, tmp_path):
    if bench.lucent_status(bench.LUCENT_PYTHON) is not None:
        pytest.skip("no lucent venv (bash experiments/setup_lucent.sh makes one)")
    assert bench.main(["--quick", "--rows", "3", "--cifar-weights", "random", "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "bench" / "bench_render.json").read_text())["rows"]["lucent"]
    assert "skipped" not in row and row["versions"]["kornia"] == "0.4.1"
    assert [t["tool"].split()[0] for t in row["tools"]] == ["nnfeat", "nnfeat", "lucent"]
    lucent = row["tools"][-1]
    assert lucent["wall_s"] > 0 and lucent["speedup"] == 1.0 and math.isfinite(lucent["act"])
    assert row["speedup"] == row["tools"][0]["speedup"] > 0


def test_cuda_request_without_cuda_is_one_line(bench, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert bench.main(["--quick", "--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA" in err
    assert not (tmp_path / "bench" / "bench_render.json").exists()


def test_step_clock_times_every_step_of_a_real_render(bench):
    plan = bench.make_plan(bench.parse_args(["--quick"]))
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    clocks = []

    def make(params):
        clocks.append(bench.StepClock(params, torch.device("cpu")))
        return clocks[-1]

    render(Model(net, input_size=16), O.channel("1", 0), steps=5, optimizer=make, progress=False)
    stamps = clocks[0].stamps
    assert len(stamps) == 5 and all(b > a for a, b in zip(stamps, stamps[1:]))
    assert bench.step_time(stamps, 1, torch.device("cpu")) == sorted(b - a for a, b in zip(stamps[1:], stamps[2:]))[1]
    assert plan.timed_steps >= 2


def _reference_redirected_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Redirected ReLU's backward, written out plainly: ReLU's gradient for items that have any; for items
    with none, gradient everywhere except where it would push a negative input further down."""
    relu_grad = grad * (x > 0)
    redirected = torch.where((x < 0) & (grad > 0), torch.zeros_like(grad), grad)
    has = relu_grad.flatten(1).abs().amax(1) > 0
    return torch.where(has.view(-1, *([1] * (x.dim() - 1))), relu_grad, redirected)


@pytest.mark.parametrize("shape", [(5, 4, 6, 6), (5, 7), (5, 3, 4)])
def test_redirected_relu_backward_matches_its_definition(shape):
    gen = torch.Generator().manual_seed(1)
    for case in range(3):
        x = torch.randn(shape, generator=gen)
        grad = torch.randn(shape, generator=gen)
        if case == 0:
            x = x.abs() + 0.1  # every item has ReLU gradient: the CPU fast path
        else:
            x[0] = -x[0].abs() - 0.1  # item 0 is dead: redirected
            x[1] = 0.0  # item 1 sits exactly at the kink
        leaf = x.clone().requires_grad_(True)
        out = redirected_relu(leaf)
        (out * grad).sum().backward()
        assert torch.equal(out, x.clamp_min(0))
        assert torch.equal(leaf.grad, _reference_redirected_grad(x, grad)), f"case {case}"
        if case:
            assert leaf.grad[0].abs().sum() > 0, "a dead item still gets gradient"
            assert (leaf.grad[0] <= 0).all(), "but never the part that pushes it further down"


class _ViewHead(nn.Module):
    """A conv net whose head calls ``.view`` on a conv output: it rejects channels-last input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        h = self.conv(x)
        return self.fc(h.view(h.shape[0], -1))


def test_automatic_channels_last_falls_back_for_nets_that_reject_it():
    torch.manual_seed(0)
    model = Model(_ViewHead(), input_size=8)
    with pytest.raises(RuntimeError):
        model.net(torch.rand(1, 3, 8, 8).contiguous(memory_format=torch.channels_last))
    assert default_channels_last(torch.device("cpu"), model)
    auto = render(model, O.logit(1), steps=4, progress=False)
    plain = render(model, O.logit(1), steps=4, progress=False, channels_last=False)
    assert torch.equal(auto.images, plain.images) and torch.equal(auto.values, plain.values)


def test_channels_last_renders_match_contiguous_ones_and_leave_the_model_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU())
    model = Model(net, input_size=16)
    weight = net[0].weight
    results = {cl: render(model, O.channel("4", [0, 1]), steps=6, progress=False, channels_last=cl)
               for cl in (None, False, True)}
    for cl in (None, True):
        torch.testing.assert_close(results[cl].values, results[False].values, rtol=1e-4, atol=1e-5)
    assert net[0].weight is weight and weight.is_contiguous()  # channels_last=True works on a cached copy
    assert not default_channels_last(torch.device("cpu"), Model(nn.Sequential(nn.Flatten(), nn.Linear(3, 2))))


def _load_experiment(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_heatmap_benchmark_counts_one_forward_per_batch(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "h.json"
    assert _load_experiment("bench_heatmap").main(["--quick", "--weights", "random", "--data", "digits",
                                                   "--batch", "16", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["forward_calls_in_heatmap"] == report["batches"] == 4
    assert report["ratio_heatmap_vs_bare"] > 0
    assert torch.get_num_threads() == threads


def test_quick_projection_benchmark_reuses_the_cached_activations(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "p.json"
    assert _load_experiment("bench_project").main(["--quick", "--weights", "random", "--data", "digits", "--model",
                                                   "digits-cnn", "--layers", "relu1,bn2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [c["method"] for c in report["calls"]] == ["pca", "umap"]
    assert report["calls"][0]["cached"]["collect"] is False and report["calls"][1]["cached"]["collect"] is True
    assert set(report["depth"]["scores"]) == {"relu1", "bn2"}
    assert torch.get_num_threads() == threads
