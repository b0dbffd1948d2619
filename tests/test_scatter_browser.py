"""The projection scatter page (nnfeat.views.scatter_page): the files it writes, and its behaviour in a real
headless Chromium (hover card with the right thumbnail pixels, label filter, wheel zoom, pan, reset).

Browser tests are skipped when chromium/chromedriver/selenium are missing, except under env CI where they fail.
Install with `bash .ci/install-browser.sh` and `pip install selenium`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnfeat.errors import NnfeatError
from nnfeat.views import scatter_page
from nnfeat.views.scatter_page import ScatterPanel, write_scatter_page

try:
    from tests.browser import file_url, headless_chromium
except ImportError:  # tests/ not importable as a package: pytest put tests/ itself on sys.path
    from browser import file_url, headless_chromium

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"

# three well-separated clusters, each a lattice of points one unit apart (so every point is unambiguous to hover)
CLUSTERS = [("cat", (0.0, 0.0), 5, 5), ("ship", (12.0, 9.0), 5, 4), ("frog", (12.0, 0.0), 3, 5)]
CHANNELS = 16
TOP_K = 3
THUMB = 8  # thumbnail side in px


def _points() -> tuple[np.ndarray, list[str]]:
    """(N, 2) lattice positions and N labels, cluster by cluster."""
    xy, labels = [], []
    for name, (cx, cy), cols, rows in CLUSTERS:
        for r in range(rows):
            for c in range(cols):
                xy.append((cx + c, cy + r))
                labels.append(name)
    return np.asarray(xy, dtype=np.float64), labels


XY, LABELS = _points()
N = len(LABELS)
COUNTS = {name: cols * rows for name, _, cols, rows in CLUSTERS}
INDICES = [1000 + 7 * i for i in range(N)]  # image indices in a (pretend) source, not 0..N-1


def _activations(seed: int) -> torch.Tensor:
    """(N, CHANNELS) pooled activations: the 2-D position in two channels, seeded noise in the others."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(N, CHANNELS, generator=generator)
    features[:, 3] = torch.as_tensor(XY[:, 0], dtype=torch.float32) / 4
    features[:, 11] = torch.as_tensor(XY[:, 1], dtype=torch.float32) / 4
    return features


def _top_channels(features: torch.Tensor) -> list[list[tuple[int, float]]]:
    values, channels = features.topk(TOP_K, dim=1)
    return [list(zip(c, v)) for c, v in zip(channels.tolist(), values.tolist())]


def _thumbnails() -> torch.Tensor:
    """(N, 3, THUMB, THUMB) seeded random images, quantized to 8 bits so PNG round trips are exact."""
    generator = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (N, 3, THUMB, THUMB), generator=generator).float() / 255


def _panels() -> list[ScatterPanel]:
    from sklearn.manifold import trustworthiness

    panels = []
    # panel 1's layout is the same map rotated a quarter turn and in another unit range: the page must rescale it
    layouts = [("layer1 · umap · mean pool", XY, 1), ("layer3 · pca · mean pool", np.stack([-XY[:, 1], XY[:, 0]], 1) * 250 + 40, 2)]
    for name, xy, seed in layouts:
        features = _activations(seed)
        scores = {"trustworthiness": float(trustworthiness(features.numpy(), xy, n_neighbors=5)),
                  "knn_accuracy": 0.875, "chance": COUNTS["cat"] / N, "k": 5}
        panels.append(ScatterPanel(name=name, xy=xy, labels=LABELS, indices=INDICES,
                                   top_channels=_top_channels(features), scores=scores))
    return panels


def _payload(document: str) -> dict:
    match = re.search(r'<script id="scatter-data" type="application/json">(.*?)</script>', document, re.S)
    assert match, "inline scatter JSON not found"
    return json.loads(match.group(1))


# ---------------------------------------------------------------------------------------------------------------
# the written files (no browser needed)


def test_writes_page_and_sprite_with_every_thumbnail_in_place(tmp_path):
    thumbs = _thumbnails()
    names = write_scatter_page(tmp_path, _panels(), title="two layers", thumbnails=thumbs, notes=["a note"])
    assert names == ["scatter.html", "scatter-sprite.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # atomic: no temporary files left
    document = (tmp_path / "scatter.html").read_text()
    payload = _payload(document)
    sprite = payload["sprite"]
    cols = int(np.ceil(np.sqrt(N)))
    assert sprite == {"cols": cols, "rows": int(np.ceil(N / cols)), "w": THUMB, "h": THUMB, "file": "scatter-sprite.png"}
    image = np.asarray(Image.open(tmp_path / "scatter-sprite.png").convert("RGB"))
    assert image.shape == (sprite["rows"] * THUMB, cols * THUMB, 3)
    expected = np.round(thumbs.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    for j in (0, 1, cols, N - 1):  # row-major tiles: point j at (j // cols, j % cols)
        r, c = divmod(j, cols)
        assert np.array_equal(image[r * THUMB:(r + 1) * THUMB, c * THUMB:(c + 1) * THUMB], expected[j]), j
    # the points, rescaled into [0, 1] with one scale for both axes (the aspect ratio is kept)
    assert payload["n"] == N and payload["indices"] == INDICES
    assert payload["labels"] == ["cat", "frog", "ship"]
    assert [payload["labels"][k] for k in payload["label"]] == LABELS
    for panel in payload["panels"]:
        x, y = np.asarray(panel["x"]), np.asarray(panel["y"])
        assert min(x.min(), y.min()) >= 0 and max(x.max(), y.max()) <= 1
        assert max(x.max() - x.min(), y.max() - y.min()) == pytest.approx(1, abs=1e-4)
    x, y = np.asarray(payload["panels"][0]["x"]), np.asarray(payload["panels"][0]["y"])
    span = XY.max(0) - XY.min(0)
    assert (x.max() - x.min()) / (y.max() - y.min()) == pytest.approx(span[0] / span[1], rel=1e-3)
    assert payload["panels"][0]["top"][4] == [[c, pytest.approx(v, rel=1e-3)] for c, v in _panels()[0].top_channels[4]]
    # offline: nothing links outside the folder, and the CSP admits exactly the one inline script, by hash
    assert not re.search(r"https?://|//cdn|@import|\bsrc=|\bhref=", document)  # the sprite is the only file used
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', document).group(1)
    script = re.findall(r"<script>(.*?)</script>", document, re.S)
    assert len(script) == 1
    digest = base64.b64encode(hashlib.sha256(script[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "img-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1]


def test_markup_and_quotes_in_labels_and_names_cannot_break_out(tmp_path):
    evil = "</script><img src=x onerror=alert(1)> \"quoted\" 'single' \u2028"
    labels = [evil if name == "ship" else name for name in LABELS]
    panels = [ScatterPanel(evil, XY, labels, INDICES, [[(1, 0.5)]] * N, {"trustworthiness": 0.5, evil: 1.0})]
    names = write_scatter_page(tmp_path / "evil.html", panels, title=evil, notes=[evil])
    assert names == ["evil.html"]  # no thumbnails: no sprite
    document = (tmp_path / "evil.html").read_text()
    assert document.count("</script>") == 2  # the JSON block's and the code block's own closing tags
    assert "<img src=x" not in document
    payload = _payload(document)
    assert evil in payload["labels"] and payload["title"] == evil and payload["panels"][0]["name"] == evil
    assert [payload["labels"][k] for k in payload["label"]] == labels
    assert payload["sprite"] is None


def test_html_path_names_the_sprite_after_the_page(tmp_path):
    names = write_scatter_page(tmp_path / "sub" / "proj.html", _panels()[:1], title="t", thumbnails=_thumbnails())
    assert names == ["proj.html", "proj-sprite.png"]
    assert _payload((tmp_path / "sub" / "proj.html").read_text())["sprite"]["file"] == "proj-sprite.png"


def test_sprite_shrinks_to_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(scatter_page, "MAX_SPRITE_SIDE", 100)
    thumbs = torch.zeros(N, 1, 32, 32)  # grayscale: expanded to RGB
    thumbs[:, :, :16] = 1.0  # top half white
    write_scatter_page(tmp_path, _panels(), title="t", thumbnails=thumbs)
    sprite = _payload((tmp_path / "scatter.html").read_text())["sprite"]
    image = np.asarray(Image.open(tmp_path / "scatter-sprite.png").convert("RGB"))
    assert max(image.shape[:2]) <= 100 and sprite["w"] == sprite["h"] == 100 // sprite["cols"]
    assert image.shape[:2] == (sprite["rows"] * sprite["h"], sprite["cols"] * sprite["w"])
    tile = image[: sprite["h"], : sprite["w"]]
    assert tile[0].min() == 255 and tile[-1].max() == 0  # the shrunk thumbnail is still white above, black below


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ps: ps.__setitem__(1, ScatterPanel("b", XY[:-1], LABELS[:-1], INDICES[:-1], [[]] * (N - 1))),
         "all panels show the same images"),
        (lambda ps: setattr(ps[0], "xy", np.where(np.arange(N)[:, None] == 3, np.nan, XY)), "xy[3] is not finite"),
        (lambda ps: setattr(ps[0], "xy", XY[:, :1]), "expected (N, 2)"),
        (lambda ps: setattr(ps[1], "labels", LABELS[::-1]), "labels differ"),
        (lambda ps: setattr(ps[1], "indices", INDICES[::-1]), "indices differ"),
        (lambda ps: setattr(ps[0], "top_channels", [[]] * 2), "one list of (channel, value) pairs per point"),
        (lambda ps: setattr(ps[0], "scores", {"k": "ten"}), "scores['k'] must be a number"),
        (lambda ps: ps.clear(), "non-empty list"),
    ],
)
def test_bad_input_raises_one_line_error_and_writes_nothing(tmp_path, change, message):
    panels = _panels()
    change(panels)
    with pytest.raises(NnfeatError, match=re.escape(message)) as info:
        write_scatter_page(tmp_path / "out", panels, title="t", thumbnails=_thumbnails())
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_bad_thumbnails_raise(tmp_path):
    for bad in (torch.rand(N - 1, 3, 8, 8), torch.rand(N, 2, 8, 8), np.zeros((N, 3, 8, 8))):
        with pytest.raises(NnfeatError, match="thumbnails"):
            write_scatter_page(tmp_path, _panels(), title="t", thumbnails=bad)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# in a real headless Chromium


@pytest.fixture(scope="module")
def browser():
    with headless_chromium(width=1280, height=800) as driver:
        yield driver


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scatter")
    write_scatter_page(folder, _panels(), title="synthetic <two layers>", thumbnails=_thumbnails(),
                       notes=["nnfeat project cifar10-resnet20 layer1,layer3 --method umap"])
    return folder / "scatter.html"


def _open(browser, path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(file_url(path))
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("const s = window.nnfeatScatter; return !!s && s.ready && (!s.hasSprite || s.spriteLoaded || s.spriteError);")
    )


def _js(browser, script: str, *args):
    return browser.execute_script("const S = window.nnfeatScatter; " + script, *args)


def _to_screen(browser, panel: int, i: int) -> tuple[float, float]:
    x, y = _js(browser, "return S.panels[arguments[0]].toScreen(arguments[1]);", panel, i)
    return x, y


def _move_mouse(browser, x: float, y: float) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(browser)
    actions.pointer_action.move_to_location(int(round(x)), int(round(y)))
    actions.perform()


_CANVAS = "document.querySelectorAll('section.panel')[arguments[0]].querySelector('canvas.' + arguments[1])"


def _canvas_at(browser, panel: int, which: str, x: float, y: float, half: int = 0) -> np.ndarray:
    """(2*half+1, 2*half+1, 4) RGBA of a panel's canvas ("points" or "overlay") around client point (x, y)."""
    pixels = browser.execute_script(
        f"const c = {_CANVAS}, r = c.getBoundingClientRect(), k = c.width / r.width;"
        "const x = Math.floor((arguments[2] - r.left) * k), y = Math.floor((arguments[3] - r.top) * k), h = arguments[4];"
        "return Array.from(c.getContext('2d').getImageData(x - h, y - h, 2 * h + 1, 2 * h + 1).data);",
        panel, which, x, y, half,
    )
    return np.asarray(pixels, dtype=np.int64).reshape(2 * half + 1, 2 * half + 1, 4)


def _canvas_alpha(browser, panel: int, which: str = "points") -> dict:
    """How many pixels of a panel's canvas are not transparent, and their largest and total alpha."""
    return browser.execute_script(
        f"const c = {_CANVAS}, d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let covered = 0, max = 0, sum = 0;"
        "for (let i = 3; i < d.length; i += 4) { if (d[i]) covered++; if (d[i] > max) max = d[i]; sum += d[i]; }"
        "return {covered: covered, max: max, sum: sum};",
        panel, which,
    )


def _screenshot(browser) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")).astype(np.int64)


def _severe(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def _swatch_rgb(browser) -> dict[str, tuple[int, int, int]]:
    found = browser.execute_script(
        "return [...document.querySelectorAll('#legend .item')].map(item => [item.querySelector('input').dataset.label,"
        " getComputedStyle(item.querySelector('.swatch')).backgroundColor]);"
    )
    return {name: tuple(int(v) for v in re.findall(r"\d+", rgb)[:3]) for name, rgb in found}


def _first(label: str, offset: int = 0) -> int:
    return [i for i, name in enumerate(LABELS) if name == label][offset]


@pytest.mark.browser
def test_page_loads_and_draws_every_point_in_its_label_colour(browser, page):
    _open(browser, page)
    assert _severe(browser) == []
    assert _js(browser, "return S.spriteLoaded && !S.spriteError;")
    assert _js(browser, "return S.panels.map(p => [p.visibleCount(), p.drawnPoints()]);") == [[N, N], [N, N]]
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert all(name.startswith("file:") for name in fetched), fetched  # nothing remote
    swatches = _swatch_rgb(browser)
    assert len(set(swatches.values())) == 3  # distinct colours per label
    legend = browser.execute_script("return document.getElementById('legend-items').innerText;")
    for name, count in COUNTS.items():
        assert re.search(rf"{name}\s+{count}", legend)
    for p in (0, 1):
        assert _canvas_alpha(browser, p)["covered"] > N * 10  # every point covers some pixels
        for i in (0, _first("ship", 7), _first("frog", 3), N - 1):
            rgba = _canvas_at(browser, p, "points", *_to_screen(browser, p, i))[0, 0]
            assert rgba[3] > 150, (p, i)
            assert np.abs(rgba[:3] - swatches[LABELS[i]]).max() <= 3, (p, i, rgba, LABELS[i])
    # the rotated panel really is rotated: cat's lattice runs up the screen there, across it in panel 0
    a0, b0 = _to_screen(browser, 0, 0), _to_screen(browser, 0, 4)
    a1, b1 = _to_screen(browser, 1, 0), _to_screen(browser, 1, 4)
    assert abs(b0[0] - a0[0]) > 50 and abs(b0[1] - a0[1]) < 1
    assert abs(b1[1] - a1[1]) > 50 and abs(b1[0] - a1[0]) < 1
    # scores and their meaning beside each panel
    scores = browser.execute_script("return [...document.querySelectorAll('.panel .scores')].map(s => s.innerText);")
    for panel, text in zip(_panels(), scores):
        assert f"trustworthiness {panel.scores['trustworthiness']:.3f}" in text
        assert "k-NN accuracy 87.5%" in text and f"chance {100 * COUNTS['cat'] / N:.1f}%" in text
    about = browser.execute_script("return document.getElementById('about-scores').innerText;")
    assert "trustworthiness" in about and "nearest neighbours" in about
    assert browser.title == "synthetic <two layers>"


@pytest.mark.browser
def test_hover_shows_card_with_thumbnail_label_index_and_channels(browser, page):
    _open(browser, page)
    thumbs = np.round(_thumbnails().permute(0, 2, 3, 1).numpy() * 255).astype(np.int64)
    panels = _panels()
    for p, i in ((0, _first("ship", 5)), (1, _first("frog", 2)), (0, 0)):
        _move_mouse(browser, *_to_screen(browser, p, i))
        assert _js(browser, "return S.panels.map(p => p.hovered());") == [i if q == p else -1 for q in (0, 1)]
        card = browser.execute_script(
            "const c = document.getElementById('card'), t = document.getElementById('card-thumb'), r = t.getBoundingClientRect();"
            "return {hidden: c.hidden, label: document.getElementById('card-label').textContent,"
            " index: document.getElementById('card-index').textContent, panel: document.getElementById('card-panel').textContent,"
            " channels: [...document.querySelectorAll('#card-channels tr')].map(r => r.innerText.replace(/\\s+/g, ' ').trim()),"
            " bg: getComputedStyle(t).backgroundImage, rendering: getComputedStyle(t).imageRendering,"
            " left: r.left + t.clientLeft, top: r.top + t.clientTop, width: t.clientWidth};"
        )
        assert not card["hidden"]
        assert card["label"] == LABELS[i] and card["index"] == f"#{INDICES[i]}" and card["panel"] == panels[p].name
        channel, value = panels[p].top_channels[i][0]
        shown_channel, shown_value = card["channels"][0].rsplit(" ", 1)
        assert shown_channel == f"ch {channel}" and float(shown_value) == pytest.approx(value, rel=5e-3)
        assert len(card["channels"]) == TOP_K
        assert "scatter-sprite.png" in card["bg"] and card["rendering"] == "pixelated"
        # the card shows this point's own thumbnail, upscaled: screen pixels = the thumbnail's pixels
        texel = card["width"] / THUMB
        assert texel >= 8
        shot = _screenshot(browser)
        for v, u in ((0, 0), (3, 5), (7, 7), (5, 1)):
            sx, sy = card["left"] + (u + 0.5) * texel, card["top"] + (v + 0.5) * texel
            assert np.abs(shot[int(sy), int(sx)] - thumbs[i, v, u]).max() <= 2, (p, i, v, u)
        # the same image is ringed in the other panel
        other = 1 - p
        ring = _canvas_at(browser, other, "overlay", *_to_screen(browser, other, i), half=12)
        assert ring[..., 3].max() > 200 and ring[12, 12, 3] == 0  # a ring around the point, not a blob on it
        assert _canvas_alpha(browser, other, "overlay")["sum"] == pytest.approx(ring[..., 3].sum())  # only there
    # away from every point, the card goes
    x0, y0 = _to_screen(browser, 0, 0)
    x1, y1 = _to_screen(browser, 0, _first("ship"))
    _move_mouse(browser, (x0 + x1) / 2 - 40, (y0 + y1) / 2 - 100)  # empty space between clusters
    assert browser.execute_script("return document.getElementById('card').hidden;")
    assert _severe(browser) == []


@pytest.mark.browser
def test_label_checkboxes_filter_every_panel(browser, page):
    from selenium.webdriver.common.by import By

    _open(browser, page)
    box = browser.find_element(By.CSS_SELECTOR, 'input.label-toggle[data-label="ship"]')
    box.click()
    assert not box.is_selected()
    assert _js(browser, "return S.panels.map(p => [p.visibleCount(), p.drawnPoints()]);") == [[N - COUNTS["ship"]] * 2] * 2
    assert f"{N - COUNTS['ship']} of {N} shown" in browser.find_element(By.ID, "visible-count").text
    ship = _first("ship", 6)
    for p in (0, 1):  # the point is no longer drawn, and hovering there shows nothing
        x, y = _to_screen(browser, p, ship)
        assert _canvas_at(browser, p, "points", x, y)[0, 0, 3] == 0
        _move_mouse(browser, x, y)
        assert _js(browser, "return S.panels[arguments[0]].hovered();", p) == -1
        assert browser.execute_script("return document.getElementById('card').hidden;")
    browser.find_element(By.CSS_SELECTOR, 'input.label-toggle[data-label="frog"]').click()
    assert _js(browser, "return S.visibleCount();") == COUNTS["cat"]
    browser.find_element(By.ID, "show-none").click()
    assert _js(browser, "return S.panels.map(p => p.visibleCount());") == [0, 0]
    assert _canvas_alpha(browser, 0)["max"] == 0
    browser.find_element(By.ID, "show-all").click()
    assert _js(browser, "return S.panels.map(p => p.drawnPoints());") == [N, N]
    assert box.is_selected()
    assert _severe(browser) == []


@pytest.mark.browser
def test_wheel_zooms_about_the_cursor_drag_pans_and_reset_restores(browser, page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By

    _open(browser, page)
    anchor, other = 12, _first("frog", 4)  # the middle of cat's lattice, and a frog point
    start_anchor, start_other = _to_screen(browser, 0, anchor), _to_screen(browser, 0, other)
    untouched = _to_screen(browser, 1, other)
    scale = _js(browser, "return S.panels[0].view().a;")
    cursor = int(start_anchor[0]), int(start_anchor[1])
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_viewport(*cursor), 0, -300).perform()
    zoomed_anchor, zoomed_other = _to_screen(browser, 0, anchor), _to_screen(browser, 0, other)
    # zoom about the cursor: the spot under it stays put, so the point's offset from it grows by the zoom factor
    factor = _js(browser, "return S.panels[0].view().a;") / scale
    assert factor > 1.3
    for axis in (0, 1):
        assert zoomed_anchor[axis] - cursor[axis] == pytest.approx((start_anchor[axis] - cursor[axis]) * factor, abs=0.05)
    before = np.hypot(start_other[0] - start_anchor[0], start_other[1] - start_anchor[1])
    after = np.hypot(zoomed_other[0] - zoomed_anchor[0], zoomed_other[1] - zoomed_anchor[1])
    assert after > before * 1.3
    assert _to_screen(browser, 1, other) == pytest.approx(untouched)  # each panel has its own view
    # hover still finds the right point at the new zoom
    neighbour = anchor + 1
    _move_mouse(browser, *_to_screen(browser, 0, neighbour))
    assert _js(browser, "return S.panels[0].hovered();") == neighbour
    # drag pans by the mouse movement
    x, y = _to_screen(browser, 0, anchor)
    actions = ActionBuilder(browser)
    actions.pointer_action.move_to_location(int(x), int(y)).pointer_down()
    actions.pointer_action.move_to_location(int(x) + 60, int(y) - 40).pointer_up()
    actions.perform()
    panned = _to_screen(browser, 0, anchor)
    assert (panned[0] - x, panned[1] - y) == (pytest.approx(60, abs=1), pytest.approx(-40, abs=1))
    browser.find_elements(By.CSS_SELECTOR, "section.panel button.reset")[0].click()
    assert _to_screen(browser, 0, anchor) == pytest.approx(start_anchor, abs=1e-3)
    assert _to_screen(browser, 0, other) == pytest.approx(start_other, abs=1e-3)
    assert _severe(browser) == []


@pytest.mark.browser
def test_screenshot_for_people(browser, page):
    """Leaves test-artifacts/scatter-page.png: two panels, one label filtered out, a hovered point's card."""
    from nnfeat.io import atomic_path
    from selenium.webdriver.common.by import By

    _open(browser, page)
    browser.find_element(By.CSS_SELECTOR, 'input.label-toggle[data-label="frog"]').click()
    _move_mouse(browser, *_to_screen(browser, 1, _first("ship", 9)))
    png = browser.get_screenshot_as_png()
    target = ARTIFACTS / "scatter-page.png"
    with atomic_path(target) as tmp:
        tmp.write_bytes(png)
    shot = np.asarray(Image.open(target).convert("RGB")).astype(float)
    assert shot.shape[:2] == (800, 1280) and shot.std() > 15
    assert _severe(browser) == []


@pytest.mark.browser
def test_unlabelled_points_without_thumbnails(browser, tmp_path):
    panel = ScatterPanel("pooled features", XY, None, INDICES, [[]] * N, {})
    assert write_scatter_page(tmp_path, [panel], title="plain") == ["scatter.html"]
    _open(browser, tmp_path / "scatter.html")
    assert _js(browser, "return [S.panels.length, S.visibleCount(), S.panels[0].drawnPoints(), S.labels];") == [
        1, N, N, ["all points"]]
    i = _first("frog", 1)
    _move_mouse(browser, *_to_screen(browser, 0, i))
    card = browser.execute_script(
        "return {index: document.getElementById('card-index').textContent, label: document.getElementById('card-label')"
        ".textContent, thumb: getComputedStyle(document.getElementById('card-thumb')).display,"
        " rows: document.querySelectorAll('#card-channels tr').length, scores: document.querySelector('.scores').innerText};"
    )
    assert card == {"index": f"#{INDICES[i]}", "label": "", "thumb": "none", "rows": 0, "scores": ""}
    assert _severe(browser) == []
