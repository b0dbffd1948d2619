"""TensorBoard Projector export (nnfeat.views.projector), read back through tensorboard's own projector plugin.

tensorboard is a test extra: without it the plugin tests skip, unless env ``CI`` is set, where they fail.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnfeat.errors import NnfeatError
from nnfeat.views.projector import CONFIG_NAME, MAX_SPRITE_PX, Embedding, slugify, sprite_layout, write_projector


# -- reading a folder back the way TensorBoard does -------------------------------------------------
def require_tensorboard():
    """tensorboard's projector plugin module; skips without tensorboard, fails instead when env CI is set."""
    try:
        from tensorboard.plugins.projector import projector_plugin
    except ImportError as err:
        reason = f"projector tests need tensorboard (pip install -e '.[test]'): {err}"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set but {reason}", pytrace=False)
        pytest.skip(reason)
    return projector_plugin


class Projector:
    """A werkzeug test client on TensorBoard's WSGI app serving ``logdir`` with only the projector plugin."""

    def __init__(self, logdir: Path):
        projector_plugin = require_tensorboard()
        from tensorboard.backend import application
        from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
        from tensorboard.plugins import base_plugin
        from werkzeug.test import Client

        mux = plugin_event_multiplexer.EventMultiplexer()
        mux.AddRunsFromDirectory(str(logdir))
        mux.Reload()
        provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
        context = base_plugin.TBContext(logdir=str(logdir), data_provider=provider, multiplexer=mux)
        app = application.TensorBoardWSGI([projector_plugin.ProjectorPlugin(context)], data_provider=provider)
        self.client = Client(app)

    def get(self, route: str, **args) -> bytes:
        response = self.client.get(f"/data/plugin/projector/{route}", query_string={"run": ".", **args})
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_data()

    def embeddings(self) -> dict[str, dict]:
        assert json.loads(self.get("runs")) == ["."]
        return {e["tensorName"]: e for e in json.loads(self.get("info"))["embeddings"]}

    def tensor(self, name: str) -> np.ndarray:
        shape = self.embeddings()[name]["tensorShape"]
        return np.frombuffer(self.get("tensor", name=name), dtype="<f4").reshape(shape)

    def metadata_lines(self, name: str) -> list[str]:
        return self.get("metadata", name=name).decode("utf-8").split("\n")[:-1]

    def sprite(self, name: str) -> Image.Image:
        return Image.open(io.BytesIO(self.get("sprite_image", name=name)))


def parse_metadata(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """(column names, rows) by the Projector's rule: a first line with a tab is the header; blank lines are skipped."""
    header = lines[0].split("\t") if lines and "\t" in lines[0] else ["label"]
    body = lines[1:] if len(header) > 1 else lines
    return header, [line.split("\t") for line in body if line.strip()]


def _rand(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


# -- the plugin serves back what was written ----------------------------------------------------------
def test_tensor_metadata_and_sprite_served_back(tmp_path):
    n, d = 10, 5
    vectors = _rand(n, d) * np.float32(1e-3) + np.float32(1234.5)  # values that a short decimal would round
    labels = [f"class {i % 3}" for i in range(n)]
    thumbs = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    name = 'layer3 "mean" pool ü'
    files = write_projector(tmp_path, [Embedding(name, vectors, {"label": labels, "index": [str(i) for i in range(n)]},
                                                 thumbs)], thumb_size=16)
    assert files[-1] == CONFIG_NAME and all((tmp_path / f).is_file() for f in files)
    assert "../" not in (tmp_path / CONFIG_NAME).read_text() and str(tmp_path) not in (tmp_path / CONFIG_NAME).read_text()

    tb = Projector(tmp_path)
    info = tb.embeddings()[name]
    assert info["tensorShape"] == [n, d]
    np.testing.assert_array_equal(tb.tensor(name), vectors)  # exact float32 round trip

    lines = tb.metadata_lines(name)
    assert len(lines) == n + 1 and lines[0] == "label\tindex"  # two columns: a header line
    header, rows = parse_metadata(lines)
    assert header == ["label", "index"] and rows == [[labels[i], str(i)] for i in range(n)]

    # 10 thumbnails: 4 per row, in a square 4 x 4 grid of 16 px cells; image k at row k // 4, column k % 4
    assert info["sprite"]["singleImageDim"] == [16, 16]
    sprite = np.asarray(tb.sprite(name).convert("RGB"))
    assert sprite.shape == (64, 64, 3)
    for k in (0, 5, 9):
        r, c = divmod(k, 4)
        cell = sprite[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16]
        expected = (thumbs[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8).repeat(2, 0).repeat(2, 1)
        np.testing.assert_array_equal(cell, expected)
    assert not sprite[48:, 32:].any()  # the two unused cells of the last row are empty


def test_single_column_metadata_has_no_header(tmp_path):
    n = 7
    values = ["cat", "a\tb", "two\nlines", "", "  ", "x\r", "dog"]
    write_projector(tmp_path, [Embedding("pooled", _rand(n, 3), {"label": values})])
    text = (tmp_path / "metadata.tsv").read_text(encoding="utf-8")
    assert "\t" not in text and text.count("\n") == n  # one line per point and no header line

    lines = Projector(tmp_path).metadata_lines("pooled")
    assert len(lines) == n and lines[0] == "cat"
    header, rows = parse_metadata(lines)
    assert header == ["label"] and len(rows) == n  # blank values did not vanish (the frontend skips blank lines)
    assert [r[0] for r in rows] == ["cat", "a b", "two lines", "-", "-", "x ", "dog"]


def test_real_activations_two_layers_share_metadata_and_sprite(tmp_path, digits_model):
    from nnfeat.analysis.heatmap import layer_maps
    from nnfeat.data import load_images

    images = load_images("digits")
    idx = np.arange(40)
    x = images.tensors(idx, size=digits_model.input_size, device=digits_model.device)
    with torch.no_grad():
        maps = layer_maps(digits_model, "bn2", x).cpu()
    mean, peak = maps.mean((2, 3)).numpy(), maps.amax((2, 3)).numpy()
    meta = {"label": [images.label_name(int(v)) for v in images.labels[idx]], "index": [str(i) for i in idx]}
    thumbs = images.tensors(idx)  # (40, 3, 8, 8) native digits
    files = write_projector(tmp_path, [Embedding("bn2 (mean pool)", mean, meta, thumbs),
                                       Embedding("bn2 (max pool)", peak, meta, thumbs)], thumb_size=24)
    assert sorted(files) == sorted(["bn2_mean_pool.tensor.tsv", "bn2_max_pool.tensor.tsv", "metadata.tsv",
                                    "sprite.png", CONFIG_NAME])

    tb = Projector(tmp_path)
    assert set(tb.embeddings()) == {"bn2 (mean pool)", "bn2 (max pool)"}
    for name, vectors in (("bn2 (mean pool)", mean), ("bn2 (max pool)", peak)):
        served = tb.tensor(name)
        assert served.shape == (40, maps.shape[1]) and maps.shape[1] >= 2
        np.testing.assert_array_equal(served, vectors.astype(np.float32))
        header, rows = parse_metadata(tb.metadata_lines(name))
        assert header == ["label", "index"] and [r[0] for r in rows] == [str(int(v)) for v in images.labels[idx]]
        assert tb.sprite(name).size == (7 * 24, 7 * 24)  # ceil(sqrt(40)) = 7 per row
    assert not np.allclose(mean, peak)


def test_large_request_shrinks_thumbnails_to_fit(tmp_path):
    n = 300  # 18 per row: 1000 px thumbnails shrink to 8192 // 18 = 455 px
    colours = torch.rand(n, 3, 1, 1, generator=torch.Generator().manual_seed(1))
    write_projector(tmp_path, [Embedding("big", _rand(n, 4), {}, colours.expand(n, 3, 8, 8))], thumb_size=1000)
    tb = Projector(tmp_path)
    info = tb.embeddings()["big"]
    assert info["sprite"]["singleImageDim"] == [455, 455] and "metadataPath" not in info
    sprite = tb.sprite("big")
    assert sprite.size == (18 * 455, 18 * 455) and max(sprite.size) <= MAX_SPRITE_PX
    r, c = divmod(299, 18)  # the last image, a flat colour, fills its cell
    pixel = sprite.getpixel((c * 455 + 200, r * 455 + 200))
    assert pixel[:3] == tuple((colours[299, :, 0, 0] * 255).round().to(torch.uint8).tolist())


def test_slugged_names_stay_inside_the_folder(tmp_path):
    names = ["../../etc/passwd", "a/b", "A B", "a_b", "***"]
    out = tmp_path / "tb"
    files = write_projector(out, [Embedding(nm, _rand(3, 2, i), {}) for i, nm in enumerate(names)])
    assert all("/" not in f and not f.startswith(".") for f in files) and len(set(files)) == len(files)
    assert sorted(p.name for p in out.iterdir()) == sorted(files) and set(tmp_path.iterdir()) == {out}
    tb = Projector(out)
    assert set(tb.embeddings()) == set(names)
    np.testing.assert_array_equal(tb.tensor("a/b"), _rand(3, 2, 1))
    assert slugify("Layer3 (mean pool)") == "layer3_mean_pool"


# -- layout arithmetic and one-line errors (no tensorboard needed) -------------------------------------
def test_sprite_layout_shrinks_and_refuses_what_cannot_fit():
    assert sprite_layout(1, 32) == (1, 32)
    assert sprite_layout(10, 32) == (4, 32)
    assert sprite_layout(10_000, 128) == (100, 81)  # 100 * 81 = 8100 <= 8192
    for n in (2, 17, 4097, 65_536, 1_000_001):
        per_row, px = sprite_layout(n, 10_000)
        assert (per_row - 1) ** 2 < n <= per_row ** 2 and per_row * px <= MAX_SPRITE_PX < per_row * (px + 1)
    assert sprite_layout(4096 ** 2, 32) == (4096, 2)
    with pytest.raises(NnfeatError) as err:
        sprite_layout(4096 ** 2 + 1, 32)
    message = str(err.value)
    assert "\n" not in message and "16777216" in message and "--n" in message
    with pytest.raises(NnfeatError):
        sprite_layout(0, 32)


def _bad(tmp_path, embeddings, **kwargs) -> str:
    out = tmp_path / "never"
    with pytest.raises(NnfeatError) as err:
        write_projector(out, embeddings, **kwargs)
    assert not out.exists()  # checked before anything is written
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    n = 4096 ** 2 + 1  # broadcast views: no memory is spent on this impossible request
    huge = Embedding("huge", np.broadcast_to(np.zeros(2, np.float32), (n, 2)), {},
                     torch.zeros(1, 3, 1, 1).expand(n, 3, 8, 8))
    assert "cannot fit" in _bad(tmp_path, [huge])
    assert "D=1" in _bad(tmp_path, [Embedding("thin", _rand(5, 1), {})])
    nan = _rand(5, 3)
    nan[2, 1] = np.nan
    assert "non-finite" in _bad(tmp_path, [Embedding("nan", nan, {})])
    assert "label (4)" in _bad(tmp_path, [Embedding("short", _rand(5, 3), {"label": list("abcd")})])
    assert "repeated: same" in _bad(tmp_path, [Embedding("same", _rand(5, 3), {}), Embedding("same", _rand(5, 3), {})])
    assert "thumbnails" in _bad(tmp_path, [Embedding("t", _rand(5, 3), {}, torch.rand(4, 3, 8, 8))])
    assert "too small" in _bad(tmp_path, [Embedding("t", _rand(5, 3), {}, torch.rand(5, 3, 8, 8))], thumb_size=1)
    assert "no embeddings" in _bad(tmp_path, [])
    assert "non-empty name" in _bad(tmp_path, [Embedding(" ", _rand(5, 3), {})])


def test_no_tensorboard_import_at_run_time():
    code = "import sys, nnfeat.views.projector; assert not any(m.startswith('tensorboard') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
