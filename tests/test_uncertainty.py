"""Uncertainty (issue 11, section 3): entropy / mutual information, MC dropout, TTA, calibration, AUROC, the
result and the ``nnfeat uncertainty`` command. Known answers from hand-built models and hand-computed sets."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nnfeat.analysis.calibration import auroc, calibration, entropy, rankdata, set_metrics
from nnfeat.analysis.uncertainty import (check_dropout, dropout_active, ensemble_probs, flip_safe, map_agreement,
                                         mc_dropout_probs, summarize, tta_matrices, tta_probs)
from nnfeat.errors import NnfeatError
from nnfeat.models.base import Model
from nnfeat.ops.uncertainty import uncertainty

ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "nnfeat.cli", "uncertainty", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def one_line_error(returncode, stderr, *fragments):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("nnfeat: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


class Uniform(nn.Module):
    """Logits all zero: p = 1/K for every image."""

    def __init__(self, k: int = 7) -> None:
        super().__init__()
        self.k = k

    def forward(self, x):
        return x.new_zeros(x.shape[0], self.k)


class DropoutNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> pool -> Dropout(0.5) -> linear (4 classes), random weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(32, 4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)
        return self.fc(self.drop(x)) * 5


def images(n=6, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- per-image quantities --------------------------------------------------------------------------------
def test_identical_ensemble_has_zero_mutual_information(digits_model):
    x = images(12, 32)
    member = ensemble_probs([digits_model, digits_model, digits_model], x)
    assert member.shape == (3, 12, 10)
    s = summarize(member)
    assert torch.equal(s.mutual_information, torch.zeros(12))
    assert torch.allclose(s.entropy, entropy(member[0]), atol=1e-6)
    assert float(s.entropy.max()) > 0.01  # not a degenerate case: the model is unsure of random images
    assert torch.equal(s.std, torch.zeros_like(s.std))


def test_different_members_have_positive_mutual_information_bounded_by_entropy():
    member = torch.softmax(torch.randn(5, 30, 6, generator=torch.Generator().manual_seed(1)) * 3, -1)
    s = summarize(member)
    assert bool((s.mutual_information > 0).all())
    assert bool((s.mutual_information <= s.entropy + 1e-6).all())
    # by hand: H[mean] - mean H
    by_hand = -(member.mean(0) * member.mean(0).log()).sum(-1) + (member * member.log()).sum(-1).mean(0)
    assert torch.allclose(s.mutual_information, by_hand, atol=1e-5)


def test_uniform_model_has_maximal_entropy():
    x = images(5)
    model = Model(Uniform(7), name="uniform", input_size=16)
    s = summarize(ensemble_probs([model, model], x))
    assert torch.allclose(s.entropy, torch.full((5,), math.log(7)), atol=1e-6)
    assert torch.equal(s.mutual_information, torch.zeros(5))
    peaked = summarize(torch.softmax(torch.randn(1, 5, 7) * 4, -1))
    assert bool((peaked.entropy < math.log(7) - 1e-3).all())


# -- MC dropout ------------------------------------------------------------------------------------------
def test_mc_dropout_without_dropout_is_one_line_error_naming_the_model(digits_model):
    with pytest.raises(NnfeatError) as err:
        mc_dropout_probs(digits_model, images(2, 32), samples=4)
    text = str(err.value)
    assert "\n" not in text and "'digits-cnn'" in text and "no dropout" in text
    model = Model(nn.Sequential(nn.Conv2d(3, 2, 1), nn.Dropout(0.0), nn.Flatten()), name="zero-p", input_size=4)
    with pytest.raises(NnfeatError, match="'zero-p' has no dropout"):  # p = 0 drops nothing
        check_dropout(model)


def test_mc_dropout_gives_spread_keeps_batchnorm_in_eval_and_restores_modes():
    model = Model(DropoutNet(), name="dropnet", input_size=16)
    bn, drop = model.net.bn, model.net.drop
    stats = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    x = images(6)
    with dropout_active(model):
        assert drop.training and not bn.training and not model.net.conv.training
    p = mc_dropout_probs(model, x, samples=16, seed=3)
    assert p.shape == (16, 6, 4)
    assert float(summarize(p).mutual_information.min()) > 1e-4
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert int(bn.num_batches_tracked) == stats[2]
    assert not drop.training and not bn.training  # back to eval afterwards
    assert torch.equal(p, mc_dropout_probs(model, x, samples=16, seed=3))  # seeded
    assert not torch.equal(p, mc_dropout_probs(model, x, samples=16, seed=4))
    # BatchNorm really was in eval: the mean over many masks approaches the deterministic eval output
    plain = torch.softmax(model(x), 1)
    many = mc_dropout_probs(model, x, samples=400, seed=0).mean(0)
    rng_before = torch.get_rng_state()
    mc_dropout_probs(model, x, samples=2)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is untouched
    assert float((many.argmax(1) == plain.argmax(1)).float().mean()) >= 5 / 6


# -- calibration and AUROC -------------------------------------------------------------------------------
def test_ece_of_perfectly_calibrated_set_is_zero():
    # per bin, exactly the confidence's fraction correct: 0.75 -> 300 of 400; 0.95 -> 190 of 200; 0.5 -> 50 of 100
    conf = torch.cat([torch.full((400,), 0.75), torch.full((200,), 0.95), torch.full((100,), 0.5)])
    correct = torch.cat([torch.arange(400) < 300, torch.arange(200) < 190, torch.arange(100) < 50])
    cal = calibration(conf, correct)
    assert cal.ece == pytest.approx(0.0, abs=1e-7)  # float32 confidences
    assert int(cal.counts.sum()) == 700 and len(cal.counts) == 15
    # a sampled calibrated set: ECE near 0
    g = torch.Generator().manual_seed(0)
    c = 0.3 + 0.7 * torch.rand(20000, generator=g)
    assert calibration(c, torch.rand(20000, generator=g) < c).ece < 0.02


def test_ece_of_miscalibrated_set_equals_hand_value():
    # 100 at 0.9 with 60 correct (gap 0.3); 300 at 0.55 with 210 correct (gap 0.15); 100 at 1.0 all correct
    conf = torch.tensor([0.9] * 100 + [0.55] * 300 + [1.0] * 100, dtype=torch.float64)
    correct = torch.cat([torch.arange(100) < 60, torch.arange(300) < 210, torch.ones(100, dtype=torch.bool)])
    hand = (100 / 500) * 0.3 + (300 / 500) * 0.15 + 0
    cal = calibration(conf, correct)
    assert cal.ece == pytest.approx(hand, abs=1e-9)
    assert cal.mce == pytest.approx(0.3, abs=1e-9)
    assert int(cal.counts[14]) == 100  # confidence 1.0 lies in the last bin (upper edges closed)
    assert int(cal.counts[0]) == 0
    edge = calibration(torch.tensor([1 / 15], dtype=torch.float64), torch.tensor([True]))
    assert int(edge.counts[0]) == 1  # a confidence on an edge belongs to the bin below it
    # through probabilities: two classes, label 0
    probs = torch.stack([conf, 1 - conf], 1)
    probs[:, 0] = torch.where(conf == 0.5, 0.5, probs[:, 0])
    labels = torch.where(correct, 0, 1)
    assert set_metrics(probs.float(), labels)["ece"] == pytest.approx(hand, abs=1e-6)
    assert set_metrics(probs, labels)["accuracy"] == pytest.approx(370 / 500)


def test_auroc_and_ranks_equal_sklearn_and_scipy_with_ties():
    from scipy.stats import rankdata as scipy_rank
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(2)
    for scores in (torch.randint(0, 5, (300,), generator=g).float(), torch.rand(300, generator=g)):
        labels = torch.rand(300, generator=g) < 0.3
        assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)
    x = torch.randint(0, 4, (3, 40), generator=g).float()
    assert np.allclose(rankdata(x).numpy(), scipy_rank(x.numpy(), axis=-1))
    assert auroc(torch.tensor([0.1, 0.9, 0.8]), torch.tensor([False, True, True])) == 1.0
    assert math.isnan(auroc(torch.rand(5), torch.zeros(5, dtype=torch.bool)))


# -- TTA and saliency agreement --------------------------------------------------------------------------
def test_tta_first_sample_is_the_plain_image_and_draws_are_seeded(digits_model):
    x = images(5, 32)
    p = tta_probs(digits_model, x, samples=4, seed=0, flip=False)
    assert torch.allclose(p[0], torch.softmax(digits_model(x), 1), atol=1e-5)
    assert torch.equal(tta_matrices(5, (32, 32), 4, 7), tta_matrices(5, (32, 32), 4, 7))
    assert not torch.equal(tta_matrices(5, (32, 32), 4, 7), tta_matrices(5, (32, 32), 4, 8))
    m = tta_matrices(64, (32, 32), 3, 0)
    assert torch.equal(m[0], torch.eye(3).expand(64, 3, 3))
    assert bool((m[1:, :, 0, 0] < 0).any())  # some flips
    assert bool((tta_matrices(64, (32, 32), 3, 0, flip=False)[:, :, 0, 0] > 0).all())
    assert not flip_safe([str(d) for d in range(10)]) and flip_safe(["cat", "dog"])


def test_map_agreement_identical_and_independent_maps():
    g = torch.Generator().manual_seed(0)
    same = torch.rand(1, 3, 8, 8, generator=g).expand(4, -1, -1, -1)
    rho, std = map_agreement(same)
    assert torch.allclose(rho, torch.ones(3), atol=1e-6) and float(std.abs().max()) < 1e-6
    rho, std = map_agreement(torch.rand(4, 3, 8, 8, generator=g))
    assert float(rho.abs().max()) < 0.3 and float(std.min()) > 0


# -- the result, the CLI ---------------------------------------------------------------------------------
def test_mc_dropout_result_records_numbers_and_saves(tmp_path):
    model = Model(DropoutNet(), name="dropnet", input_size=16, classes=["a", "b", "c", "d"])
    x = images(20)
    y = torch.randint(0, 4, (20,), generator=torch.Generator().manual_seed(1))
    r = uncertainty(model, x, "mc-dropout", samples=5, labels=y, top=3)
    assert r.maps.shape == (5, 3, 16, 16) and r.images.shape[0] == 3 * (4 + 3)
    assert torch.equal(r.top, r.summary.entropy.argsort(descending=True, stable=True)[:3])
    record = json.loads(r.save(tmp_path).read_text())
    assert set(record["metrics"]) == {"dropnet (dropout off)", "mc-dropout, 5 samples"}
    acc = float((r.summary.prediction == y).float().mean())
    assert record["metrics"]["mc-dropout, 5 samples"]["accuracy"] == pytest.approx(acc)
    assert len(record["most_uncertain"]) == 3 and record["samples"] == 5
    rows = np.loadtxt(tmp_path / "per-image.csv", delimiter=",", skiprows=1)
    assert rows.shape == (20, 8) and np.allclose(rows[:, 5], r.summary.entropy.numpy(), atol=1e-5)
    assert {"uncertainty.png", "reliability.png", "per-image.csv"} <= set(record["files"])


def test_cli_tta_on_digits_writes_files(tmp_path, digits_model):
    out = tmp_path / "u"
    proc = cli("digits-cnn", "--images", "digits", "--n", "60", "--method", "tta", "--samples", "3", "--top", "2",
               "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "uncertainty.json").read_text())
    assert (out / "uncertainty.png").stat().st_size > 1000 and (out / "reliability.png").exists()
    combined = record["metrics"][record["combined"]]
    assert combined["accuracy"] > 0.8 and 0 <= combined["ece"] <= 1 and record["tta_flip"] is False
    assert record["n"] == 60 and record["command"].startswith("nnfeat uncertainty digits-cnn")


@pytest.mark.parametrize("args,fragments", [
    (["digits-cnn", "--method", "mc-dropout"], ["'digits-cnn' has no dropout", "--method tta"]),
    (["digits-cnn,cifar10-resnet2O", "--method", "ensemble"], ["unknown model 'cifar10-resnet2O'", "cifar10-resnet20"]),
])
def test_cli_bad_input_subprocess(tmp_path, args, fragments):
    out = tmp_path / "never"
    proc = cli(*args, "--images", "digits", "--n", "10", "--device", "cpu", "--out", str(out))
    one_line_error(proc.returncode, proc.stderr, *fragments)
    assert not out.exists()


@pytest.mark.parametrize("args,fragments", [
    (["digits-cnn", "--method", "ensemble"], ["two or more models"]),
    (["digits-cnn"], ["--method mc-dropout or --method tta"]),
    (["digits-cnn", "--method", "tta", "--samples", "1"], ["--samples must be at least 2"]),
    (["digits-cnn,,digits-cnn"], ["empty model name"]),
    (["digits-cnn,digits-cnn", "--samples", "4"], ["--samples is for mc-dropout and tta"]),
    (["digits-cnn,digits-cnn", "--method", "tta"], ["takes one model"]),
])
def test_cli_bad_input_in_process(tmp_path, capsys, args, fragments):
    from nnfeat.cli import main

    out = tmp_path / "never"
    code = main(["uncertainty", *args, "--images", "digits", "--device", "cpu", "--out", str(out)])
    one_line_error(code, capsys.readouterr().err, *fragments)
    assert not out.exists()


def test_cli_models_with_different_classes(tmp_path, capsys, shared_dir, digits_model):
    from nnfeat.cli import main

    out = tmp_path / "never"
    code = main(["uncertainty", "digits-cnn,cifar10-resnet20", "--images", "digits", "--device", "cpu",
                 "--out", str(out)])
    one_line_error(code, capsys.readouterr().err, "'digits-cnn' and 'cifar10-resnet20' have different classes")
    assert not out.exists()


def test_cifar_resnet_ensemble_beats_chance(cifar_resnet20, cifar_subset):
    from nnfeat.models import load_model

    x, y = cifar_subset[0][::5], cifar_subset[1][::5]  # 200 images, 20 per class
    r = uncertainty([cifar_resnet20, load_model("cifar10-resnet32", device="cpu")], x, "ensemble", labels=y, top=2)
    m = r.metrics["ensemble of 2"]
    assert m["n"] == 200 and m["accuracy"] > 0.5 and 0 <= m["ece"] <= 1 and m["error_auroc"] > 0.6
    for name in ("cifar10-resnet20", "cifar10-resnet32"):
        assert r.metrics[name]["accuracy"] > 0.5
    assert float(r.summary.mutual_information.mean()) > 0  # two different networks disagree somewhere
    assert r.maps.shape == (2, 2, 32, 32)


DROPOUT_FILE = '''
import torch
from torch import nn
from nnfeat.models.base import Model


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 2).flatten(1)
        return self.fc(self.drop(x)) * 5


def make():
    return Model(Net(), name="dropnet", input_size=16, classes=["a", "b", "c", "d"])
'''


def test_cli_mc_dropout_on_a_file_model_leaves_foreign_labels_out(tmp_path, capsys):
    from nnfeat.cli import main

    (tmp_path / "net.py").write_text(DROPOUT_FILE)
    out = tmp_path / "u"
    code = main(["uncertainty", f"{tmp_path / 'net.py'}:make", "--images", "digits", "--n", "12", "--method",
                 "mc-dropout", "--samples", "4", "--top", "2", "--device", "cpu", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "uncertainty.json").read_text())
    assert record["method"] == "mc-dropout" and record["samples"] == 4
    assert record["metrics"] == {} and "are not the model's" in record["labels_note"]  # digits 0..9 vs a..d
    assert record["mean_mutual_information"] > 0
    assert record["saliency"]["maps"] == [f"dropout {t}" for t in range(4)]


def test_benchmark_quick_run(tmp_path, shared_dir, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_uncertainty", ROOT / "experiments" / "bench_uncertainty.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    assert bench.main(["--quick", "--n", "96", "--bootstrap", "5", "--out", str(tmp_path / "b.json")]) == 0
    assert torch.get_num_threads() == threads
    report = json.loads((tmp_path / "b.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert names == ["cifar10-resnet20", "cifar10-resnet32", "ensemble of 2"] and report["n"] == 96
    for row in report["rows"]:
        assert row["error_auroc"] == pytest.approx(row["error_auroc_sklearn"], abs=1e-9)
        assert 0.1 < row["accuracy"] <= 1 and 0 <= row["ece"] <= 1
    assert "ensemble of 2" in capsys.readouterr().out
