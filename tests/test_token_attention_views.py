"""Views of attention over tokens, from plain data: the model-view grid PNG, the source x target (NMT) PNG, the
per-step strips, the head-view SVG and the offline head-view page (in a real headless Chromium at 512 tokens)."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch
from PIL import Image

from nnfeat.analysis.heatmap import COLORMAPS
from nnfeat.errors import NnfeatError
from nnfeat.views.head_view import DEFAULT_THRESHOLD, ROW_PX, head_view_html, head_view_svg, line_table
from nnfeat.views.token_attention_page import (cross_attention_figure, cross_attention_png, model_view_figure,
                                               model_view_png, steps_figure, steps_png)

try:
    from tests.browser import file_url, headless_chromium
except ImportError:  # run from inside tests/
    from browser import file_url, headless_chromium

TOP = tuple(int(v) for v in (COLORMAPS["viridis"][-1] * 255).round())     # the colour of the scale's max
BOTTOM = tuple(int(v) for v in (COLORMAPS["viridis"][0] * 255).round())   # the colour of 0
MIDDLE = tuple(int(v) for v in (COLORMAPS["viridis"][128] * 255).round())  # 0.5 of the max (index 127.5 -> 128)


def _previous_token(t: int, heads: int = 1) -> torch.Tensor:
    """(heads, T, T): query i attends only key i-1 (query 0 attends nothing)."""
    w = torch.zeros(heads, t, t)
    w[:, torch.arange(1, t), torch.arange(t - 1)] = 1.0
    return w


def _tokens(t: int, stem: str = "tok") -> list[str]:
    return [f"{stem}{i}" for i in range(t)]


def _realistic(layers: int, heads: int, t: int, seed: int = 0) -> torch.Tensor:
    """(L, H, T, T) softmax attention with the usual shapes: previous-token, first-token sink and local heads
    over noise (a Generator, no global RNG)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(layers, heads, t, t, generator=g) * 1.5
    idx = torch.arange(t)
    for h in range(heads):  # loops over heads only
        if h % 3 == 0:
            logits[:, h, idx[1:], idx[:-1]] += 7.0
        elif h % 3 == 1:
            logits[:, h, :, 0] += 6.0
        else:
            logits[:, h] += 4.0 * ((idx[:, None] - idx[None, :]).abs() <= 2).float()
    return torch.softmax(logits, -1)


def _pixel(image: np.ndarray, box, px: int, q: int, k: int) -> tuple[int, ...]:
    x, y, _, _ = box
    return tuple(int(v) for v in image[y + q * px + px // 2, x + k * px + px // 2])


# ---------------------------------------------------------------------------------------------------------------
# model view PNG

def test_model_view_bytes_identical_and_cells_show_known_weights(tmp_path):
    w = torch.zeros(2, 3, 6, 6)
    w[1, 2] = _previous_token(6)[0]          # layer 1 head 2: ones at offset -1
    w[0, 1, :, 0] = 0.5                      # layer 0 head 1: 0.5 on the first key
    names = ["blocks.0.attn.probs", "blocks.1.attn.probs"]
    a = model_view_png(w, _tokens(6), _tokens(6), tmp_path / "a.png", layer_names=names)
    b = model_view_png(w.numpy(), _tokens(6), _tokens(6), tmp_path / "b.png", layer_names=names)
    assert a.read_bytes() == b.read_bytes()
    fig = model_view_figure(list(w), _tokens(6), _tokens(6), layer_names=names)  # a list of (H, Tq, Tk) too
    saved = np.asarray(Image.open(a).convert("RGB"))
    assert saved.shape == fig.image.shape and np.array_equal(saved, fig.image)
    assert sorted(fig.boxes) == [(l, h) for l in range(2) for h in range(3)]
    box = fig.boxes[(1, 2)]
    assert box[2] == box[3] == 6 * fig.px and fig.block == 1
    for q in range(6):
        for k in range(6):
            assert _pixel(saved, box, fig.px, q, k) == (TOP if q - k == 1 else BOTTOM), (q, k)
    # one figure scale: 0.5 of the max is the middle colour
    assert _pixel(saved, fig.boxes[(0, 1)], fig.px, 3, 0) == MIDDLE
    assert _pixel(saved, fig.boxes[(0, 1)], fig.px, 3, 1) == BOTTOM
    # per head: that head's own max (0.5) is the top colour
    head = model_view_figure(w, _tokens(6), _tokens(6), layer_names=names, scale="per-map")
    assert _pixel(head.image, head.boxes[(0, 1)], head.px, 3, 0) == TOP
    assert np.allclose(head.vmax[0, 1], 0.5)


def test_model_view_labels_scores_and_cross_attention_shapes(tmp_path):
    w = torch.softmax(torch.randn(1, 2, 5, 9, generator=torch.Generator().manual_seed(1)), -1)
    plain = model_view_figure(w, _tokens(5, "q"), _tokens(9, "k"), layer_names=["dec.cross"])
    scored = model_view_figure(w, _tokens(5, "q"), _tokens(9, "k"), layer_names=["dec.cross"],
                               scores={"prev": [[0.9, 0.1]], "sink": torch.tensor([[0.2, 0.3]])})
    assert scored.image.shape[0] == plain.image.shape[0] + 2 * 15  # a caption line per score
    by_layer = model_view_figure(w, _tokens(5, "q"), _tokens(9, "k"), layer_names=["dec.cross"],
                                 scores={"dec.cross": {"prev": [0.9, 0.1], "sink": [0.2, 0.3]}})
    assert np.array_equal(by_layer.image, scored.image)           # head_score_table's {layer: {score: [H]}} too
    x, y, mw, mh = plain.boxes[(0, 0)]
    assert (mw, mh) == (9 * plain.px, 5 * plain.px)                 # (Tq, Tk): rows queries, columns keys
    long = model_view_figure(torch.softmax(torch.randn(1, 2, 30, 30), -1), _tokens(30), _tokens(30),
                             layer_names=["x"])
    lx, ly, _, _ = long.boxes[(0, 0)]
    assert lx == 6 and x >= lx + 15 and y >= ly + 15                # labels (T <= 24) take room; none above 24
    with pytest.raises(NnfeatError, match="give one value per head"):
        model_view_figure(w, _tokens(5), _tokens(9), layer_names=["x"], scores={"prev": [0.1, 0.2, 0.3]})
    with pytest.raises(NnfeatError, match="tokens_k has 8 tokens"):
        model_view_figure(w, _tokens(5), _tokens(8), layer_names=["x"])
    with pytest.raises(NnfeatError, match="unknown scale 'map'"):
        model_view_figure(w, _tokens(5), _tokens(9), layer_names=["x"], scale="map")
    with pytest.raises(NnfeatError, match="finite and >= 0"):
        model_view_figure(w * float("nan"), _tokens(5), _tokens(9), layer_names=["x"])


def test_model_view_6x12_fast_and_bounded_up_to_512_tokens(tmp_path):
    names = [f"encoder.layer.{i}.attention.self" for i in range(6)]
    w = _realistic(6, 12, 128)
    start = time.perf_counter()
    path = model_view_png(w, _tokens(128), _tokens(128), tmp_path / "grid.png", layer_names=names,
                          scores={"prev": torch.rand(6, 12, generator=torch.Generator().manual_seed(0))})
    seconds = time.perf_counter() - start
    print(f"model view 6x12 heads at T=128: {seconds:.2f} s, {path.stat().st_size} bytes")
    assert seconds < 4.0
    width, height = Image.open(path).size
    assert width <= 2400 and height <= 1600
    # 512 tokens: cells are max-pooled to the same budget, and a lone 1.0 weight stays the top colour
    big = torch.zeros(6, 12, 512, 512)
    big[2, 5, 511, 0] = 1.0
    fig = model_view_figure(big, _tokens(512), _tokens(512), layer_names=names)
    assert fig.block == 4 and fig.boxes[(2, 5)][2] == 128
    x, y, mw, mh = fig.boxes[(2, 5)]
    assert tuple(int(v) for v in fig.image[y + mh - 1, x]) == TOP
    assert tuple(int(v) for v in fig.image[y, x + mw - 1]) == BOTTOM
    assert fig.image.shape[1] <= 2400


def test_cross_attention_matrix_and_steps(tmp_path):
    src, tgt = _tokens(7, "s"), ["2009", "-", "06", "-", "25"]
    order = [4, 0, 1, 6, 2]
    w = torch.zeros(5, 7)
    w[torch.arange(5), torch.tensor(order)] = 1.0
    a = cross_attention_png(w, src, tgt, tmp_path / "a.png", title="dates")
    assert a.read_bytes() == cross_attention_png(w.numpy(), src, tgt, tmp_path / "b.png", title="dates").read_bytes()
    fig = cross_attention_figure(w, src, tgt, title="dates")
    saved = np.asarray(Image.open(a).convert("RGB"))
    assert np.array_equal(saved, fig.image)
    box = fig.boxes[(0, 0)]
    assert box[2:] == (7 * fig.px, 5 * fig.px)
    for q in range(5):
        for k in range(7):
            assert _pixel(saved, box, fig.px, q, k) == (TOP if order[q] == k else BOTTOM), (q, k)
    # long sides are reduced, never crash
    big = cross_attention_figure(torch.softmax(torch.randn(300, 1500), -1), _tokens(1500), _tokens(300))
    assert big.block == 3 and big.image.shape[1] < 1200
    # steps: (S, Tk) is the one-head case of (S, H, Tk), and the bytes do not depend on the path
    one = steps_png(w, src, tgt, tmp_path / "s1.png")
    assert one.read_bytes() == steps_png(w[None], src, tgt, tmp_path / "s2.png").read_bytes()
    multi = steps_figure(torch.stack([w, w.roll(1, -1)]), src, tgt, head_names=["H0", "H3"], title="L1")
    assert multi.shape[0] > np.asarray(Image.open(one)).shape[0]
    with pytest.raises(NnfeatError, match="target_tokens has 4 tokens"):
        cross_attention_png(w, src, tgt[:4], tmp_path / "c.png")
    with pytest.raises(NnfeatError, match="one"):
        cross_attention_png(torch.zeros(2, 5, 7), src, tgt, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


# ---------------------------------------------------------------------------------------------------------------
# head view: SVG and page (bytes)

_SEGMENT = re.compile(r"M(\d+) (\d+)L(\d+) (\d+)")


def _svg_lines(text: str) -> list[tuple[int, int, int]]:
    """(head, query, key) of every line segment of a head-view SVG without a title (rows from the y of each end:
    row i's centre is 28 + ROW_PX * i + ROW_PX / 2)."""
    out = []
    for head, d in re.findall(r'<path data-head="(\d+)"[^>]* d="([^"]*)"', text):
        for _, y1, _, y2 in _SEGMENT.findall(d):
            out.append((int(head), (int(y1) - 28) // ROW_PX, (int(y2) - 28) // ROW_PX))
    return out


def test_svg_previous_token_lines_only_at_offset_minus_one(tmp_path):
    t = 40
    w = _previous_token(t, heads=3)
    w[1] = w[1] * 0.9 + 0.1 / t       # a little mass everywhere, far below the threshold
    w[2] = 0.0
    w[2, :, 0] = 0.5                  # head 2: a first-token sink
    a = head_view_svg(w, _tokens(t), _tokens(t), tmp_path / "a.svg", heads=[0, 1])
    assert a.read_bytes() == head_view_svg(w, _tokens(t), _tokens(t), tmp_path / "b.svg", heads=[0, 1]).read_bytes()
    lines = _svg_lines(a.read_text())
    assert len(lines) == 2 * (t - 1)
    assert {q - k for _, q, k in lines} == {1} and {h for h, _, _ in lines} == {0, 1}
    assert 'stroke-opacity="1.00"' in a.read_text() and 'stroke-opacity="0.90"' in a.read_text()
    sink = _svg_lines(head_view_svg(w, _tokens(t), _tokens(t), tmp_path / "c.svg", heads=[2]).read_text())
    assert {k for _, _, k in sink} == {0} and len(sink) == t
    assert f"&gt;= {DEFAULT_THRESHOLD:g}" in a.read_text()
    with pytest.raises(NnfeatError, match="heads"):
        head_view_svg(w, _tokens(t), _tokens(t), tmp_path / "d.svg", heads=[3])


def test_head_view_page_is_self_contained_and_byte_identical(tmp_path):
    w = _realistic(2, 4, 16)
    layers = {"blocks.0.attn.probs": w[0], "blocks.1.attn.probs": w[1]}
    scores = {"prev": torch.rand(2, 4, generator=torch.Generator().manual_seed(2))}
    tokens = _tokens(15) + ["</script><b>x"]
    a = head_view_html(layers, tokens, tokens, tmp_path / "a.html", title="t <1>", scores=scores)
    b = head_view_html(w, tokens, tokens, tmp_path / "b.html", layer_names=list(layers), title="t <1>", scores=scores)
    assert a.read_bytes() == b.read_bytes()
    text = a.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    assert "</script><b>" not in text and "t &lt;1&gt;" in text
    assert "script-src 'sha256-" in text and "default-src 'none'" in text
    assert f"&gt;= {DEFAULT_THRESHOLD:g}" in text
    with pytest.raises(NnfeatError, match=r"in \[0, 1\]"):
        head_view_html(w * 2, tokens, tokens, tmp_path / "c.html", layer_names=["a", "b"])
    with pytest.raises(NnfeatError, match="heads"):
        head_view_html(w, tokens, tokens, tmp_path / "c.html", layer_names=["a", "b"], heads=[4])
    with pytest.raises(NnfeatError, match="layer_names is missing"):
        head_view_html(w, tokens, tokens, tmp_path / "c.html")
    assert not (tmp_path / "c.html").exists()


# ---------------------------------------------------------------------------------------------------------------
# head view in a real headless Chromium, 512 tokens x 12 heads x 6 layers

@pytest.fixture(scope="module")
def big_page(tmp_path_factory):
    t, layers, heads = 512, 6, 12
    w = _realistic(layers, heads, t, seed=3)
    tokens = [f"\u2581w{i}" for i in range(t)]
    path = head_view_html(w, tokens, tokens, tmp_path_factory.mktemp("hv") / "head_view.html",
                          layer_names=[f"encoder.layer.{i}" for i in range(layers)], title="512 tokens",
                          scores={"prev": torch.rand(layers, heads, generator=torch.Generator().manual_seed(0))})
    return path, w


def _hover(driver, element_id: str, event: str = "mouseover") -> None:
    driver.execute_script(
        f"document.getElementById('{element_id}').dispatchEvent(new MouseEvent('{event}', {{bubbles: true}}));")


@pytest.mark.browser
def test_head_view_512_tokens_loads_offline_and_hover_filters(big_page):
    path, w = big_page
    size = path.stat().st_size
    expected = [line_table(w[l])[0].astype(np.int64) for l in range(w.shape[0])]  # (H, Tq) lines per row
    with headless_chromium(width=1280, height=800) as driver:
        start = time.perf_counter()
        driver.get(file_url(path))
        loaded = time.perf_counter() - start
        assert driver.execute_script("return !!(window.headView && window.headView.ready);")
        script_ms = driver.execute_script("return window.headView.loadMs;")
        print(f"head view 512 tokens x 12 heads x 6 layers: {size / 1e6:.2f} MB, load {loaded:.2f} s "
              f"(script {script_ms:.0f} ms)")
        assert size < 8e6 and loaded < 10
        assert driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name);") == []
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
        lines = lambda: driver.execute_script("return +document.getElementById('lines-svg').dataset.lines;")  # noqa
        assert lines() == int(expected[0].sum()) > 1000
        _hover(driver, "q100")
        assert lines() == int(expected[0][:, 100].sum()) > 0
        assert driver.execute_script("return document.getElementById('q100').classList.contains('active');")
        _hover(driver, "q100", "mouseout")
        assert lines() == int(expected[0].sum())
        _hover(driver, "k0")                          # a key: every query's line into it
        assert lines() == int((line_table(w[0])[1] == 0).sum()) > 0
        _hover(driver, "k0", "mouseout")
        driver.execute_script("window.headView.setLayer(4);")
        assert lines() == int(expected[4].sum())
        driver.execute_script("document.getElementById('head3').click();")
        assert lines() == int(expected[4].sum() - expected[4][3].sum())
        driver.execute_script("document.getElementById('head5').dispatchEvent(new MouseEvent('dblclick'));")
        assert lines() == int(expected[4][5].sum())
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
        # a page that opens on one head of one layer
        one = head_view_html(w[:, :, :64, :64], [f"t{i}" for i in range(64)], [f"t{i}" for i in range(64)],
                             path.with_name("one.html"), layer_names=[f"l{i}" for i in range(6)], layer=2, heads=[7])
        driver.get(file_url(one))
        assert lines() == int((w[2, 7, :64, :64] >= DEFAULT_THRESHOLD).sum()) > 0
        assert driver.execute_script("return document.getElementById('layer').value;") == "2"
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
