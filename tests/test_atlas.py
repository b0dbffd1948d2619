"""Activation atlas: every stage on the digits model, caching, resume, class atlas, CLI."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from nnfeat.ops.atlas import AtlasSettings, build_atlas
from nnfeat.analysis.collect import collect
from nnfeat.analysis.atlas.grid import cell_of, make_grid
from nnfeat.analysis.atlas.icons import centre_cosine, icon_objective
from nnfeat.analysis.atlas.layout import layout_2d, normalize_layout, pca_2d, whitening
from nnfeat.analysis.atlas.classes import class_selection, resolve_class
from nnfeat.data import load_images
from nnfeat.errors import NnfeatError
from nnfeat.hooks import ActivationCapture
from nnfeat.layouts import positions_view

# small, fast settings: 32 px icons (the model's size), few steps
FAST = dict(samples=400, per_image=2, layout="pca", grid=4, min_count=3, steps=4, batch=4, icon_size=32)


@pytest.fixture(scope="module")
def model(digits_model):
    """The trained digits-cnn (conftest trains it once per session)."""
    return digits_model


@pytest.fixture(scope="module")
def digits():
    return load_images("digits")


# -- units ---------------------------------------------------------------------------------------
def test_whitening_inverts_second_moment():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(2000, 6)).astype(np.float32) @ rng.normal(size=(6, 6)).astype(np.float32)
    s = whitening(acts)
    moment = acts.astype(np.float64).T @ acts / len(acts)
    assert np.allclose(s @ moment, np.eye(6), atol=1e-3)
    dead = np.concatenate([acts, np.zeros((len(acts), 1), np.float32)], 1)  # a dead channel stays finite
    assert np.isfinite(whitening(dead)).all()


def test_pca_layout_matches_principal_axes():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))
    ours = pca_2d(x)
    reference = PCA(n_components=2).fit_transform(x)
    assert np.allclose(np.abs(ours), np.abs(reference), atol=1e-4)  # equal up to the sign of each axis
    assert ours[:, 0].var() >= ours[:, 1].var()


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_layouts_separate_directions(method):
    """Two groups of vectors pointing in different directions (any length) land in two separate regions."""
    rng = np.random.default_rng(4)
    centres = np.eye(16)[:2] * 3 + 0.5
    labels = np.repeat([0, 1], 60)
    vectors = (centres[labels] + rng.normal(scale=0.3, size=(120, 16))) * rng.uniform(0.5, 4.0, size=(120, 1))
    positions = layout_2d(vectors.astype(np.float32), method, seed=0)
    assert positions.shape == (120, 2) and np.isfinite(positions).all()
    gap = np.linalg.norm(positions[labels == 0].mean(0) - positions[labels == 1].mean(0))
    spread = max(positions[labels == k].std(0).max() for k in (0, 1))
    assert gap > 2 * spread


def test_normalize_layout_clips_percentiles():
    rng = np.random.default_rng(1)
    positions = rng.normal(size=(1000, 2))
    positions[0] = (1e6, -1e6)  # an outlier must not squash the rest
    normalized = normalize_layout(positions)
    assert normalized.min() >= 0 and normalized.max() <= 1
    assert tuple(normalized[0]) == (1.0, 0.0)
    inside = normalized[1:]
    assert inside.std(0).min() > 0.1
    lo, hi = np.percentile(positions, [1, 99], axis=0)
    widened_lo = lo - 0.1 * (hi - lo)
    assert np.allclose((lo - widened_lo) / (1.2 * (hi - lo)), 0.1 / 1.2)


def test_grid_cells_are_means_of_their_samples():
    rng = np.random.default_rng(2)
    positions = rng.uniform(size=(300, 2)).astype(np.float32)
    acts = rng.normal(size=(300, 5)).astype(np.float32)
    attr = rng.normal(size=(300, 3)).astype(np.float32)
    image_index = np.arange(300) // 2
    labels = rng.integers(0, 4, size=150)
    grid = make_grid(positions, acts, size=3, min_count=30, attr=attr, image_index=image_index, labels=labels,
                     num_labels=4, members=3, chunk=64)
    flat = cell_of(positions, 3)
    counts = np.bincount(flat, minlength=9)
    assert len(grid) == int((counts >= 30).sum())
    for i in range(len(grid)):
        rows = flat == grid.rows[i] * 3 + grid.cols[i]
        assert grid.counts[i] == rows.sum()
        assert np.allclose(grid.vectors[i], acts[rows].mean(0), atol=1e-5)
        assert np.allclose(grid.attr[i], attr[rows].mean(0), atol=1e-5)
        assert np.allclose(grid.positions[i], positions[rows].mean(0), atol=1e-5)
        assert (grid.label_counts[i] == np.bincount(labels[image_index[rows]], minlength=4)).all()
        members = grid.members[i]
        assert len(set(members.tolist())) == 3 and set(members.tolist()) <= set(image_index[rows].tolist())
    dropped = ~np.isin(flat, grid.rows * 3 + grid.cols)
    assert (grid.sample_cell[dropped] == -1).all()


def test_class_selection_top_attribution_or_top_k():
    attr = np.array([[5, 1, 0], [0, 4, 1], [3, 2.5, 0], [0, 0, 9], [1, 2, 3], [0, 3, 5]], dtype=np.float32)
    # class 1 is the top of row 1; its 2 largest values are rows 1 (4) and 5 (3); N//K = 2 caps the top-k
    assert class_selection(attr, 1, top=100).tolist() == [1, 5]
    assert class_selection(attr, 1, top=1).tolist() == [1]
    assert class_selection(attr, 0, top=1).tolist() == [0, 2]


def test_resolve_class():
    names = ["cat", "dog", "frog"]
    assert resolve_class("dog", names, 3) == 1 and resolve_class("2", names, 3) == 2
    with pytest.raises(NnfeatError, match="nearest: dog"):
        resolve_class("dgo", names, 3)
    with pytest.raises(NnfeatError, match="out of range"):
        resolve_class(7, names, 3)


def test_icon_objective_and_centre_cosine(model, digits):
    rng = torch.Generator().manual_seed(0)
    acts = {"relu3": torch.rand(2, 64, 8, 8, generator=rng)}
    directions = torch.randn(2, 64, generator=rng)
    plain = icon_objective("relu3", directions, 3.0)(acts)
    h = acts["relu3"][:, :, 4, 4]
    dot = (h * directions).mean(1)
    assert torch.allclose(plain, dot * (dot / (1e-4 + h.norm(dim=1))).clamp_min(0.1) ** 3)
    spread = icon_objective("relu3", directions, 3.0, spatial_weight=0.5)(acts)
    everywhere = torch.einsum("bchw,bc->b", acts["relu3"], directions) / 64
    assert torch.allclose(spread, plain + 0.5 * everywhere / 64, atol=1e-6)
    images = digits.tensors([0, 1], 32)
    with torch.no_grad(), ActivationCapture(model, ["relu3"]) as capture:
        act = capture(images)["relu3"]
        centre = act[:, :, act.shape[2] // 2, act.shape[3] // 2]
    assert torch.allclose(centre_cosine(model, "relu3", images, directions),
                          torch.nn.functional.cosine_similarity(centre, directions, dim=1), atol=1e-6)


# -- collection ----------------------------------------------------------------------------------
def test_collect_attribution_of_a_linear_head_is_logit_minus_bias(model, digits, tmp_path):
    """At ``avgpool`` the head is linear, so sum_c act_c * dlogit_k/dact_c = logit_k - bias_k exactly."""
    data = collect(model, "avgpool", digits.subset(np.arange(64)), tmp_path, n=64, progress=False)
    images = digits.tensors(data.samples[:, 0], 32)
    with torch.no_grad(), ActivationCapture(model, ["avgpool", "output"]) as capture:
        acts = capture(images)
    assert np.allclose(data.acts, acts["avgpool"].flatten(1).numpy(), atol=1e-5)
    expected = (acts["output"] - model.net.fc.bias).numpy()
    assert np.allclose(data.attr, expected, atol=1e-4)


def test_collect_positions_resume_and_memmap(model, digits, tmp_path):
    images = digits.subset(np.arange(50))
    data = collect(model, "relu3", images, tmp_path / "a", n=150, per_image=3, batch_size=16, progress=False)
    assert data.acts.shape == (150, 64) and isinstance(data.acts, np.memmap)
    samples = np.asarray(data.samples)
    for image in np.unique(samples[:, 0]):  # distinct positions per image
        assert len(set(samples[samples[:, 0] == image, 1].tolist())) == 3
    # the stored vectors are the activations at the stored positions
    with torch.no_grad(), ActivationCapture(model, ["relu3"]) as capture:
        act = capture(images.tensors(samples[:5, 0], 32))["relu3"]
    for row in range(5):
        y, x = data.position_yx(row)
        assert np.allclose(data.acts[row], act[row, :, y, x].numpy(), atol=1e-5)
    # an interrupted collection (2 of 4 batches done) resumes to the same result
    meta = json.loads((tmp_path / "a" / "collect.json").read_text())
    partial = tmp_path / "b"
    collect(model, "relu3", images, partial, n=150, per_image=3, batch_size=16, progress=False)
    arrays = np.load(partial / "acts.npy", mmap_mode="r+")
    arrays[2 * 16 * 3:] = 0
    arrays.flush()
    del arrays
    (partial / "collect.json").write_text(json.dumps({**meta, "batches_done": 2, "complete": False}))
    resumed = collect(model, "relu3", images, partial, n=150, per_image=3, batch_size=16, progress=False)
    assert np.array_equal(resumed.acts, data.acts) and np.array_equal(resumed.samples, data.samples)


# -- layout shows classes as regions -------------------------------------------------------------
def test_digits_atlas_cells_are_mostly_label_pure(model, digits, tmp_path):
    digits = digits.subset(np.arange(1000))
    data = collect(model, "avgpool", digits, tmp_path, n=len(digits), progress=False)
    positions = normalize_layout(layout_2d(data.acts, "umap", seed=0))
    grid = make_grid(positions, data.acts, size=8, min_count=4, attr=data.attr, image_index=data.samples[:, 0],
                     labels=digits.labels, num_labels=10)
    share = grid.label_counts.max(1) / grid.label_counts.sum(1)
    assert len(grid) >= 10
    assert share.mean() >= 0.6
    # the attribution's top class agrees with the dataset majority in most cells
    assert (grid.attr.argmax(1) == grid.label_counts.argmax(1)).mean() >= 0.7
    # a random layout would not be pure: same grid on shuffled positions
    shuffled = positions[np.random.default_rng(0).permutation(len(positions))]
    control = make_grid(shuffled, data.acts, size=8, min_count=4, image_index=data.samples[:, 0],
                        labels=digits.labels, num_labels=10)
    assert (control.label_counts.max(1) / control.label_counts.sum(1)).mean() < 0.4


# -- the whole pipeline --------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["pca", "umap"])
def test_pipeline_outputs(model, digits, tmp_path, layout):
    settings = AtlasSettings(**{**FAST, "layout": layout})
    result = build_atlas(model, "relu3", digits, tmp_path, settings, progress=False)
    record = json.loads((tmp_path / "cells.json").read_text())
    assert record["model"] == "digits-cnn" and record["layer"] == "relu3" and record["grid"] == 4
    assert record["classes"] == [str(i) for i in range(10)] and record["settings"]["layout"] == layout
    cells = record["cells"]
    assert cells == result.cells and 1 <= len(cells) <= 16
    assert sum(c["count"] for c in cells) <= record["samples"] == 400
    mosaic = np.asarray(Image.open(tmp_path / "atlas.png"))
    assert mosaic.shape[0] > 4 * 32 and mosaic.shape[1] >= 4 * 32  # the class legend under it: test_atlas_legend.py
    mosaic = mosaic[:4 * 32, :4 * 32]
    occupied = {(c["row"], c["col"]) for c in cells}
    for cell in cells:
        assert cell["count"] >= 3
        assert set(cell) >= {"row", "col", "count", "icon", "position", "top_class", "labels", "cosine", "members"}
        icon = np.asarray(Image.open(tmp_path / cell["icon"]).convert("RGB"))
        y, x = cell["row"] * 32, cell["col"] * 32
        assert np.array_equal(mosaic[y:y + 32, x:x + 32], icon)
        assert -1.0 <= cell["cosine"] <= 1.0
        assert sum(cell["labels"].values()) == cell["count"]
        assert 0 <= cell["top_class"]["index"] < 10 and cell["top_class"]["name"] == str(cell["top_class"]["index"])
        assert all(0 <= m < len(digits) for m in cell["members"])
    for row in range(4):
        for col in range(4):
            if (row, col) not in occupied:
                assert (mosaic[row * 32:(row + 1) * 32, col * 32:(col + 1) * 32] == 255).all()
    assert result.mean_cosine == pytest.approx(np.mean([c["cosine"] for c in cells]))
    if importlib.util.find_spec("nnfeat.views.atlas_viewer") is not None:
        assert result.html == tmp_path / "atlas.html" and result.html.is_file()


def test_rerun_is_cached_and_grid_change_keeps_layout(model, digits, tmp_path):
    settings = AtlasSettings(**FAST)
    build_atlas(model, "relu3", digits, tmp_path, settings, progress=False)
    again = build_atlas(model, "relu3", digits, tmp_path, settings, progress=False)
    assert set(again.cached) == {"collect", "whitening", "layout", "grid", "icons"}
    regrid = build_atlas(model, "relu3", digits, tmp_path, AtlasSettings(**{**FAST, "grid": 3}), progress=False)
    assert {"collect", "whitening", "layout"} <= set(regrid.cached) and "grid" not in regrid.cached
    assert json.loads((tmp_path / "cells.json").read_text())["grid"] == 3


def test_interrupted_icon_stage_resumes_to_the_same_atlas(model, digits, tmp_path):
    settings = AtlasSettings(**{**FAST, "samples": 300, "grid": 3, "batch": 3})
    whole = build_atlas(model, "relu3", digits, tmp_path / "whole", settings, progress=False)
    batches = -(-len(whole.cells) // 3)
    assert batches >= 2

    def stop_after_first(index, count):
        if index == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_atlas(model, "relu3", digits, tmp_path / "split", settings, progress=False, on_icon_batch=stop_after_first)
    assert not (tmp_path / "split" / "atlas.png").exists()
    first = tmp_path / "split" / "icons" / "batch-00000.json"
    assert first.is_file() and not (tmp_path / "split" / "icons" / "batch-00001.json").exists()
    stamp = first.stat().st_mtime_ns
    rendered = []
    resumed = build_atlas(model, "relu3", digits, tmp_path / "split", settings, progress=False,
                          on_icon_batch=lambda i, n: rendered.append(i))
    assert first.stat().st_mtime_ns == stamp  # batch 0 was not rendered again
    assert rendered == list(range(batches))
    assert (tmp_path / "split" / "atlas.png").read_bytes() == (tmp_path / "whole" / "atlas.png").read_bytes()
    assert (tmp_path / "split" / "cells.json").read_text() == (tmp_path / "whole" / "cells.json").read_text()
    assert resumed.cells == whole.cells


def test_class_atlas_keeps_samples_favouring_the_class(model, digits, tmp_path):
    settings = AtlasSettings(samples=len(digits), layout="pca", class_="3", steps=2, batch=16, icon_size=32)
    result = build_atlas(model, "avgpool", digits, tmp_path, settings, progress=False)
    assert result.header["class"] == {"index": 3, "name": "3"}
    assert result.header["grid"] == 10 and result.header["settings"]["min_count"] == 4
    attr = np.load(tmp_path / "collect" / "attr.npy")
    assert result.header["samples"] == len(class_selection(attr, 3, 2500)) < len(digits) / 3
    counts = {}
    for cell in result.cells:
        for name, count in cell["labels"].items():
            counts[name] = counts.get(name, 0) + count
    assert max(counts, key=counts.get) == "3" and counts["3"] / sum(counts.values()) > 0.5


def test_class_atlas_needs_a_known_class(model, digits, tmp_path):
    with pytest.raises(NnfeatError, match="unknown class 'seven'"):
        build_atlas(model, "avgpool", digits, tmp_path, AtlasSettings(samples=200, layout="pca", class_="seven"),
                    progress=False)
    assert not (tmp_path / "collect").exists()  # checked before any work


def test_bad_settings_are_one_line_errors(model, digits, tmp_path):
    with pytest.raises(NnfeatError, match="unknown layout"):
        build_atlas(model, "relu3", digits, tmp_path, AtlasSettings(layout="mds"), progress=False)
    with pytest.raises(NnfeatError, match="--per-image"):
        build_atlas(model, "relu3", digits, tmp_path, AtlasSettings(per_image=0), progress=False)
    with pytest.raises(NnfeatError, match="unknown layer"):
        build_atlas(model, "relu33", digits, tmp_path, AtlasSettings(), progress=False)


def test_atlas_command(tmp_path):
    from nnfeat.cli import build_parser

    parser = build_parser()
    out = tmp_path / "cli"
    args = parser.parse_args(["atlas", "digits-cnn", "relu3", "--images", "digits", "--samples", "300", "--per-image", "2",
                              "--layout", "pca", "--grid", "3", "--min-count", "2", "--no-whiten", "--icon-size", "32",
                              "--steps", "2", "--batch", "8", "--seed", "1", "--spatial-weight", "0.5", "--device", "cpu",
                              "--out", str(out)])
    assert args.whiten is False
    args.command_line = "nnfeat atlas ..."
    assert args.func(args) == 0
    record = json.loads((out / "cells.json").read_text())
    assert record["settings"]["whiten"] is False and record["settings"]["seed"] == 1 and record["grid"] == 3
    assert record["settings"]["spatial_weight"] == 0.5
    assert (out / "atlas.png").is_file()
    record = json.loads((out / "atlas.json").read_text())
    assert record["kind"] == "atlas" and record["settings"]["seed"] == 1 and "atlas.html" in record["files"]


class _NoJvpSquare(torch.autograd.Function):
    """x**2 with a backward rule but no forward-mode (jvp) rule."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class _HeadWithoutJvp(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return _NoJvpSquare.apply(self.net(x))


@pytest.mark.parametrize("case", ["digits-bn2", "resnet18-layer2", "no-jvp-head", "vit-block"])
def test_attribution_by_forward_mode_equals_one_backward_per_class(model, case):
    """The one-pass-per-position JVP attribution equals act . d logit_k / d act by K backward passes, through
    BatchNorm, pooling, in-place ReLUs and residual adds; a network with an op that has no forward-mode rule
    falls back to the backward passes and gives the same numbers."""
    from nnfeat.analysis import collect as C
    from nnfeat.models.zoo import load_model

    torch.manual_seed(0)
    if case == "digits-bn2":
        net, layer, images = model, "bn2", torch.rand(6, 3, 32, 32)
    elif case == "resnet18-layer2":
        net, layer, images = load_model("torchvision:resnet18", weights="random"), "layer2", torch.rand(3, 3, 64, 64)
    elif case == "vit-block":  # fused attention has no forward-mode rule; the math kernel is used instead
        net, layer, images = load_model("timm:vit_tiny_patch16_224", weights="random"), "blocks.10", \
            torch.rand(2, 3, 224, 224)
        torch.nn.init.normal_(net.net.head.weight, std=0.02)  # timm starts the head near zero: give it a scale
    else:
        from nnfeat.models.base import Model

        net = Model(_HeadWithoutJvp(model.net), mean=model.mean.flatten().tolist(), std=model.std.flatten().tolist(),
                    input_size=32, in_channels=1)
        layer, images = "net.bn2", torch.rand(6, 3, 32, 32)
    with ActivationCapture(net, [layer, "output"]) as capture:
        with torch.no_grad():
            acts = capture(images)
        view = positions_view(acts[layer])
        pick = torch.rand(view.shape[0], view.shape[1]).argsort(1)[:, :3]
        if case == "vit-block":
            pick[:, 0] = 0  # the class token, which the head reads: attributions well above float noise
        picked, attributions = C._sample_batch(capture, images, layer, pick, acts["output"].shape[1], "forward")
        expected = C._attributions_backward(capture, images, layer, pick, picked, acts["output"].shape[1])
        if case != "no-jvp-head":
            forward = C._attributions_forward(capture, images, layer, acts[layer], pick, picked)
            assert torch.allclose(forward, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
        else:
            with pytest.raises((RuntimeError, NotImplementedError)):
                C._attributions_forward(capture, images, layer, acts[layer], pick, picked)
    assert attributions.shape == expected.shape == (images.shape[0], 3, acts["output"].shape[1])
    assert float(expected.abs().max()) > 0
    assert torch.allclose(attributions, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_attribution_mode_picks_the_cheaper_pass_from_flop_counts(model):
    """Few classes and only a linear head after the layer: K backward passes are cheaper; a shallow layer with one
    position per image, or 1000 classes: one forward-mode pass is."""
    from nnfeat.analysis.collect import attribution_mode
    from nnfeat.models.zoo import load_model

    assert attribution_mode(model, "conv3", (32, 32), 4, 10) == "backward"
    assert attribution_mode(model, "conv1", (32, 32), 1, 10) == "forward"
    googlenet = load_model("torchvision:googlenet", weights="random")
    assert attribution_mode(googlenet, "inception4c", (128, 128), 1, 1000) == "forward"


def test_collect_uses_the_attribution_mode_it_chose(tmp_path, monkeypatch):
    """A 1000-class network: the FLOP count picks forward mode, and collect must then really run forward mode
    (a name clash once sent every batch down the 1000-backward-pass path)."""
    from nnfeat.analysis import collect as C
    from nnfeat.models import load_model

    net = load_model("torchvision:resnet18", weights="random")
    images = load_images("digits", limit=4, size=64)
    assert C.attribution_mode(net, "layer3", (64, 64), 1, 1000) == "forward"

    def no_backward(*args, **kwargs):
        raise AssertionError("collect ran one backward pass per class although it chose forward mode")

    monkeypatch.setattr(C, "_attributions_backward", no_backward)
    data = C.collect(net, "layer3", images, tmp_path, n=4, per_image=1, progress=False)
    assert data.attr.shape == (4, 1000) and np.isfinite(np.asarray(data.attr)).all()
    assert json.loads((tmp_path / "collect.json").read_text())["attribution"] == "forward"


def test_whitening_and_pca_bits_do_not_depend_on_the_thread_setting():
    """An earlier test (or the user) may leave torch on 2 threads; a sharded rank runs on 1. The whitening and the
    PCA layout must give the same bytes either way (eigh and the matrix products split their sums by thread)."""
    from nnfeat.analysis.atlas.layout import pca_2d, whitening

    # half zeros and a dead channel in four, as a ReLU layer's activations (the near-singular case that split)
    acts = (torch.randn((400, 64), generator=torch.Generator().manual_seed(0)).relu()
            * (torch.arange(64) % 4 != 0)).numpy()
    threads = torch.get_num_threads()
    outputs = {}
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            outputs[count] = (whitening(acts).tobytes(), pca_2d(acts).tobytes())
            assert torch.get_num_threads() == count  # the setting is restored after each
    finally:
        torch.set_num_threads(threads)
    assert outputs[1] == outputs[2] == outputs[3]
