"""Projections: the shared pooled collection, the 2-D layouts and their scores, the result and the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from nnfeat.analysis.heatmap import layer_maps
from nnfeat.analysis.projection import (chance_accuracy, explained_variance, knn_accuracy, project_2d,
                                        trustworthiness)
from nnfeat.analysis.collect import collect
from nnfeat.data import ImageSet, load_images
from nnfeat.errors import NnfeatError
from nnfeat.models import load_model
from nnfeat.ops.project import parse_layers, project


@pytest.fixture(scope="module")
def digits_cnn():
    return load_model("digits-cnn", device="cpu")


@pytest.fixture(scope="module")
def digits(digits_cnn):
    return load_images("digits", size=digits_cnn.input_size)


def test_pca_recovers_dominant_direction():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=32)
    direction /= np.linalg.norm(direction)
    t = rng.normal(size=500) * 10
    x = t[:, None] * direction + rng.normal(size=(500, 32)) * 0.5 + 3.0  # offset: PCA must centre
    xy = project_2d(x, "pca")
    assert abs(np.corrcoef(xy[:, 0], t)[0, 1]) > 0.99
    assert explained_variance(x)[0] > 0.9


def test_trustworthiness_matches_sklearn():
    from sklearn.manifold import trustworthiness as sk_trust

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 12))
    for y in (x[:, :2] + 0.2 * rng.normal(size=(300, 2)), rng.normal(size=(300, 2))):
        assert trustworthiness(x, y, 7, block=64) == pytest.approx(sk_trust(x, y, n_neighbors=7), abs=1e-9)
    assert trustworthiness(x, x[:, :2], 7) > trustworthiness(x, rng.normal(size=(300, 2)), 7)


def test_knn_accuracy_known_answers():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2], 50)
    centres = np.array([[0, 0], [10, 0], [0, 10]])
    separated = centres[labels] + rng.normal(size=(150, 2))
    assert knn_accuracy(separated, labels, 10) == 1.0
    shuffled = rng.permutation(labels)
    assert knn_accuracy(separated, shuffled, 10) < 0.6
    assert chance_accuracy(np.array([0, 0, 0, 1])) == 0.75
    with pytest.raises(NnfeatError):
        knn_accuracy(separated, labels, 150)


def test_pooled_collection_matches_direct_and_resumes(digits_cnn, digits, tmp_path):
    images = digits.subset(np.arange(70))
    data = collect(digits_cnn, "bn2", images, tmp_path / "c", pool="mean", batch_size=16, progress=False)
    direct = torch.cat([layer_maps(digits_cnn, "bn2", b) for b in images.iter_batches(32, digits_cnn.input_size)])
    np.testing.assert_allclose(np.asarray(data.acts), direct.mean((2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    assert np.array_equal(data.samples[:, 0], np.arange(70)) and (np.asarray(data.samples[:, 1]) == -1).all()
    maxed = collect(digits_cnn, "bn2", images, tmp_path / "m", pool="max", batch_size=16, progress=False)
    np.testing.assert_allclose(np.asarray(maxed.acts), direct.amax((2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    # an interrupted collection resumes to the same bytes
    meta = json.loads((tmp_path / "c" / "collect.json").read_text())
    full = (tmp_path / "c" / "acts.npy").read_bytes()
    meta.update(batches_done=2, complete=False)
    (tmp_path / "c" / "collect.json").write_text(json.dumps(meta))
    acts = np.lib.format.open_memmap(tmp_path / "c" / "acts.npy", mode="r+")
    acts[32:] = 0
    acts.flush()
    del acts
    collect(digits_cnn, "bn2", images, tmp_path / "c", pool="mean", batch_size=16, progress=False)
    assert (tmp_path / "c" / "acts.npy").read_bytes() == full


class _TokenNet(nn.Module):
    """Tokens (B, 1 + 16, 4): a class token (all 7) before a 4x4 patch grid of 8-px patches of a 32-px image."""

    patch_size = 8

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 8, stride=8)
        self.blocks = nn.Identity()

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        cls = torch.full((x.shape[0], 1, 4), 7.0)
        return self.blocks(torch.cat([cls, tokens], 1)).mean(1)


def test_pooling_of_token_layers_skips_the_class_token(tmp_path):
    from nnfeat.models.base import Model

    model = Model(_TokenNet().eval(), name="tokens", input_size=32)
    images = ImageSet(name="rand", array=np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8))
    centre = collect(model, "blocks", images, tmp_path / "c", pool="center", progress=False)
    assert np.allclose(np.asarray(centre.acts), 7.0)  # the class token
    mean = collect(model, "blocks", images, tmp_path / "m", pool="mean", progress=False)
    with torch.no_grad():
        patches = model.net.embed(images.tensors(range(6), 32)).mean((2, 3)).numpy()
    np.testing.assert_allclose(np.asarray(mean.acts), patches, rtol=1e-5, atol=1e-5)


def test_project_deterministic_and_cached(digits_cnn, digits, tmp_path):
    images = digits.sample(200, 0)
    a = project(digits_cnn, "bn2", images, method="tsne", seed=3, cache=tmp_path / "a", progress=False)
    b = project(digits_cnn, "bn2", images, method="tsne", seed=3, cache=tmp_path / "b", progress=False)
    assert np.array_equal(a.xy["bn2"], b.xy["bn2"]) and not a.cached["bn2"]["collect"]
    c = project(digits_cnn, "bn2", images, method="pca", cache=tmp_path / "a", progress=False)
    assert c.cached["bn2"]["collect"] and not c.cached["bn2"]["layout"]
    # an early layer's 2-D map, clearly above chance (0.46 against 0.16 with one thread, higher with two)
    assert a.scores["bn2"]["knn_accuracy_2d"] > 2 * a.scores["bn2"]["chance"]
    assert a.images.shape[0] == 1 and a.images.shape[1] == 3


def test_parse_layers_errors():
    assert parse_layers("layer1, layer3") == ["layer1", "layer3"]
    for bad in ("layer3:0,4", "layer1,,layer3", "layer1,layer1", "layer3@1,2"):
        with pytest.raises(NnfeatError):
            parse_layers(bad)


@pytest.mark.slow
def test_classes_separate_with_depth_in_umap(cifar_resnet20, shared_dir, tmp_path):
    """k-NN label accuracy in the 2-D UMAP map: layer3 well above layer1 and chance (1,000 test images)."""
    images = load_images(shared_dir / "data" / "cifar10_test.npz", size=cifar_resnet20.input_size).sample(1000, 0)
    r = project(cifar_resnet20, "layer1,layer3", images, method="umap", cache=tmp_path, progress=False)
    low, high = r.scores["layer1"]["knn_accuracy_2d"], r.scores["layer3"]["knn_accuracy_2d"]
    assert r.scores["layer3"]["chance"] < 0.15
    assert low < high and high > 0.6
    again = project(cifar_resnet20, "layer3", images, method="umap", cache=tmp_path / "again", progress=False)
    assert np.array_equal(again.xy["layer3"], r.xy["layer3"])  # the same seed gives the same map
    other = project(cifar_resnet20, "layer3", images, method="umap", seed=1, cache=tmp_path, progress=False)
    assert not np.array_equal(other.xy["layer3"], r.xy["layer3"]) and other.cached["layer3"]["collect"]


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nnfeat", "project", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_files_cache_and_errors(tmp_path):
    out = tmp_path / "p"
    base = ["digits-cnn", "relu1,bn2", "--images", "digits", "--n", "150", "--quiet", "--out", str(out)]
    first = _run(*base, "--method", "pca")
    assert first.returncode == 0, first.stderr
    record = json.loads((out / "projection.json").read_text())
    assert record["layers"] == ["relu1", "bn2"] and record["images"] == 150
    for name in ("projection.png", "projection-relu1.png", "projection-bn2.png", "projection.npz", "projection.html"):
        assert (out / name).is_file(), name
    second = _run(*base, "--method", "tsne")
    assert second.returncode == 0, second.stderr
    assert "activations from the cache" in second.stdout
    assert json.loads((out / "projection.json").read_text())["cached"]["bn2"]["collect"] is True
    for bad in (["digits-cnn", "bn2:0,1", "--images", "digits"],
                ["digits-cnn", "bn9", "--images", "digits"],
                ["digits-cnn", "bn2", "--images", "digits", "--n", "5000"],
                ["digits-cnn", "bn2", "--images", "digits", "--method", "lda"],
                ["digits-cnn", "bn2", "--images", "digits", "--n", "40", "--k", "30"]):
        target = tmp_path / "bad"
        run = _run(*bad, "--quiet", "--out", str(target))
        assert run.returncode == 2, (bad, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
        assert not target.exists()


def test_cli_tensorboard_folder_reads_back_through_tensorboard(tmp_path):
    from test_projector import Projector, parse_metadata

    board = tmp_path / "tb"
    run = _run("digits-cnn", "relu1,bn2", "--images", "digits", "--n", "60", "--method", "pca", "--k", "5",
               "--quiet", "--out", str(tmp_path / "p"), "--tensorboard", str(board))
    assert run.returncode == 0, run.stderr
    projector = Projector(board)
    embeddings = projector.embeddings()
    assert sorted(embeddings) == ["bn2 (mean pool)", "relu1 (mean pool)"]
    saved = np.load(tmp_path / "p" / "projection.npz")
    labels = saved["labels"]
    bn2 = projector.tensor("bn2 (mean pool)")
    assert bn2.shape == (60, 32)
    header, rows = parse_metadata(projector.metadata_lines("bn2 (mean pool)"))
    assert header == ["label", "index"] and len(rows) == 60
    assert [int(r[0]) for r in rows] == labels.tolist()  # digits' class names are the digits
    assert [int(r[1]) for r in rows] == saved["indices"].tolist()
    sprite = projector.sprite("bn2 (mean pool)")
    assert sprite.size[0] == sprite.size[1] == 8 * 32  # ceil(sqrt(60)) = 8 thumbnails of 32 px per row
    # the exported tensor is the pooled activation the projection used
    model = load_model("digits-cnn", device="cpu")
    images = load_images("digits", size=model.input_size).sample(60, 0)
    direct = torch.cat([layer_maps(model, "bn2", b) for b in images.iter_batches(64, model.input_size)])
    np.testing.assert_allclose(bn2, direct.mean((2, 3)).numpy(), rtol=1e-5, atol=1e-5)


def test_examples_and_projections_read_one_collection(digits_cnn, digits, tmp_path):
    from nnfeat.ops.examples import examples

    images = digits.sample(120, 1)
    project(digits_cnn, "bn2", images, method="pca", cache=tmp_path, progress=False)
    acts = tmp_path / "collect-bn2-mean" / "acts.npy"
    stamp = acts.stat().st_mtime_ns
    found = examples(digits_cnn, "bn2:0,5", images, k=3, cache=tmp_path, progress=False)
    assert acts.stat().st_mtime_ns == stamp  # read, not recomputed
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["collect-bn2-mean"]
    pooled = np.load(acts)
    best = int(np.argmax(pooled[:, 5]))
    assert found.found[5].top[0].index == best


def test_saved_without_timing_a_cached_rerun_writes_the_same_bytes(digits_cnn, digits, tmp_path):
    images = digits.sample(80, 2)
    first = project(digits_cnn, "bn2", images, method="pca", k=5, cache=tmp_path / "cache", progress=False)
    again = project(digits_cnn, "bn2", images, method="pca", k=5, cache=tmp_path / "cache", progress=False)
    assert again.cached["bn2"] == {"collect": True, "layout": True}
    first.save(tmp_path / "a", timing=False)
    again.save(tmp_path / "b", timing=False)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and "projection.json" in names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert "elapsed_seconds" not in json.loads((tmp_path / "a" / "projection.json").read_text())
