"""The atlas at scale, on small inputs: above ``layout_sample`` rows the layout is fitted on a seeded sample and
every other row placed by the fitted model (recorded in layout.json / cells.json / atlas.json); the whitening
accumulated block by block over a memory map equals the in-memory one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnfeat.analysis.atlas.layout import fit_rows_of, layout_2d, layout_fit, pca_2d, whitening
from nnfeat.errors import NnfeatError


def test_streamed_whitening_equals_the_in_memory_inverse(tmp_path):
    rng = np.random.default_rng(0)
    acts = (rng.normal(size=(20_000, 12)) @ rng.normal(size=(12, 12))).astype(np.float32)
    np.save(tmp_path / "acts.npy", acts)
    mapped = np.load(tmp_path / "acts.npy", mmap_mode="r")
    streamed = whitening(mapped, chunk=1000)  # 20 blocks
    exact = np.linalg.inv(acts.astype(np.float64).T @ acts.astype(np.float64) / len(acts))
    assert np.allclose(streamed, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
    assert np.allclose(streamed, whitening(acts, chunk=len(acts)), rtol=1e-5, atol=1e-7)


def test_pca_above_the_threshold_fits_a_sample_and_projects_every_row():
    rng = np.random.default_rng(1)
    acts = (rng.normal(size=(900, 10)) @ rng.normal(size=(10, 10))).astype(np.float32)
    positions, info = layout_fit(acts, "pca", seed=3, fit_rows=200, chunk=128)
    assert info == {"method": "pca", "fit": "sample", "fit_samples": 200, "samples": 900}
    assert positions.shape == (900, 2) and np.isfinite(positions).all()
    rows = fit_rows_of(900, 200, 3)
    assert len(rows) == 200 and np.all(np.diff(rows) > 0)
    unit = acts / np.linalg.norm(acts, axis=1, keepdims=True)
    assert np.allclose(positions[rows], pca_2d(unit[rows]), atol=1e-5)  # the fit on the sample
    # every other row lies on the sample's axes: the same affine map sends unit rows to positions
    design = np.c_[unit[rows], np.ones(len(rows))]
    coef, *_ = np.linalg.lstsq(design, positions[rows], rcond=None)
    assert np.allclose(np.c_[unit, np.ones(len(unit))] @ coef, positions, atol=1e-4)
    # at or below the threshold: exactly the full fit
    full, info = layout_fit(acts, "pca", fit_rows=900)
    assert info["fit"] == "all" and np.array_equal(full, layout_2d(acts, "pca"))


def test_umap_above_the_threshold_transforms_the_rest():
    rng = np.random.default_rng(2)
    centres = np.eye(16)[:2] * 3 + 0.5
    labels = np.repeat([0, 1], 300)
    acts = ((centres[labels] + rng.normal(scale=0.3, size=(600, 16)))).astype(np.float32)
    positions, info = layout_fit(acts, "umap", seed=0, fit_rows=200, chunk=150)
    assert info["fit"] == "sample" and info["fit_samples"] == 200 and positions.shape == (600, 2)
    assert np.isfinite(positions).all()
    rows = fit_rows_of(600, 200, 0)
    assert np.array_equal(positions[rows], layout_2d(acts[rows], "umap", seed=0))  # the sample: a plain fit
    rest = np.setdiff1d(np.arange(600), rows)
    centre = [positions[rows][labels[rows] == k].mean(0) for k in (0, 1)]
    nearer = np.linalg.norm(positions[rest] - centre[0], axis=1) < np.linalg.norm(positions[rest] - centre[1], axis=1)
    assert (nearer == (labels[rest] == 0)).mean() > 0.95  # transformed rows land in their group's region


def test_tsne_above_the_threshold_is_a_one_line_error():
    with pytest.raises(NnfeatError, match="t-SNE cannot place"):
        layout_fit(np.ones((50, 4), np.float32), "tsne", fit_rows=10)


def test_the_pipeline_records_the_sampled_fit(tmp_path):
    from nnfeat.ops.atlas import AtlasSettings, build_atlas
    from nnfeat.data import load_images
    from nnfeat.models import load_model

    model = load_model("digits-cnn", weights="random", device="cpu")
    images = load_images("digits").sample(200, 0)
    settings = AtlasSettings(samples=400, per_image=2, layout="pca", grid=4, min_count=1, steps=2, batch=8,
                             layout_sample=150)
    lines = []
    result = build_atlas(model, "relu3", images, tmp_path, settings, progress=False, log=lines.append)
    layout = json.loads((tmp_path / "layout.json").read_text())
    assert layout["fit"] == "sample" and layout["fit_samples"] == 150 and layout["samples"] == 400
    assert np.load(tmp_path / "layout.npy").shape == (400, 2)
    header = json.loads((tmp_path / "cells.json").read_text())
    assert header["layout_fit"] == {"method": "pca", "fit": "sample", "fit_samples": 150, "samples": 400,
                                    "layout_sample": 150}
    assert header["settings"]["layout_sample"] == 150
    assert sum(c["count"] for c in header["cells"]) == 400  # min_count 1: every row has a cell
    assert any("fitted on a sample of 150" in line for line in lines)
    assert json.loads(result.save(tmp_path).read_text())["layout_fit"]["fit"] == "sample"
    # the same atlas fitted on all rows has another layout key (nothing reused from the sampled one)
    full = build_atlas(model, "relu3", images, tmp_path, AtlasSettings(**{**settings.__dict__, "layout_sample": 400}),
                       progress=False)
    assert "layout" not in full.cached and full.header["layout_fit"]["fit"] == "all"
