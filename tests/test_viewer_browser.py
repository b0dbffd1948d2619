"""The interactive atlas viewer: the HTML it writes, and its behaviour in a real headless Chromium.

Browser tests are skipped when chromium/chromedriver/selenium are missing, except under env CI where they fail.
Install with `bash .ci/install-browser.sh` and `pip install selenium`.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnfeat.errors import NnfeatError
from nnfeat.views import write_atlas_html

try:
    from tests.browser import file_url, headless_chromium
except ImportError:  # tests/ not importable as a package: pytest put tests/ itself on sys.path
    from browser import file_url, headless_chromium

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"

GRID = 4
ICON = 64  # px per cell in the mosaic
CLASSES = ["airplane", "automobile", "bird", "cat"]
# (row, col, count, top class index); the other 6 of the 16 cells stay empty (white)
LAYOUT = [
    (0, 0, 12, 0), (0, 1, 7, 0), (0, 3, 5, 1), (1, 1, 21, 2), (1, 2, 9, 3),
    (2, 0, 6, 1), (2, 2, 33, 3), (3, 1, 8, 2), (3, 2, 14, 3), (3, 3, 4, 0),
]
EMPTY = [(r, c) for r in range(GRID) for c in range(GRID) if all((r, c) != (lr, lc) for lr, lc, _, _ in LAYOUT)]


# ---------------------------------------------------------------------------------------------------------------
# a small synthetic atlas


def _icon_colours() -> np.ndarray:
    """(GRID, GRID, 3) uint8 base colour per cell, from a seeded torch generator (mid-range, never near white)."""
    generator = torch.Generator().manual_seed(7)
    return (40 + torch.randint(0, 170, (GRID, GRID, 3), generator=generator)).to(torch.uint8).numpy()


def _mosaic() -> np.ndarray:
    """(GRID*ICON, GRID*ICON, 3) uint8: a coloured icon with a darker ring in each used cell, white elsewhere."""
    colours = _icon_colours()
    mosaic = np.full((GRID * ICON, GRID * ICON, 3), 255, np.uint8)
    yy, xx = np.mgrid[0:ICON, 0:ICON]
    radius = np.hypot(yy - ICON / 2 + 0.5, xx - ICON / 2 + 0.5)
    ring = (radius > ICON * 0.28) & (radius < ICON * 0.40)
    for row, col, _, _ in LAYOUT:
        icon = np.empty((ICON, ICON, 3), np.uint8)
        icon[:] = colours[row, col]
        icon[ring] = colours[row, col] // 3
        mosaic[row * ICON : (row + 1) * ICON, col * ICON : (col + 1) * ICON] = icon
    return mosaic


def _cells(with_attribution: bool) -> list[dict]:
    cells = []
    next_member = 0
    for i, (row, col, count, top) in enumerate(LAYOUT):
        members = list(range(next_member, next_member + min(count, 6)))
        next_member += count
        second = (top + 1) % len(CLASSES)
        cell = {
            "row": row,
            "col": col,
            "count": count,
            "icon": f"icons/{row:02d}_{col:02d}.png",
            "position": [(col + 0.5) / GRID, 1 - (row + 0.5) / GRID],
            "top_class": {"index": top, "name": CLASSES[top]},
            "labels": {CLASSES[top]: count - count // 3, CLASSES[second]: count // 3},
            "cosine": 0.5 + 0.04 * i,
            "members": members,
        }
        if with_attribution:
            # strongest for the top class; graded so that shading has intermediate levels
            attribution = [0.1 * ((i + k) % 3) - 0.05 for k in range(len(CLASSES))]
            attribution[top] = 1.0 + i
            cell["attribution"] = attribution
        cells.append(cell)
    return cells


def _thumbnails() -> dict[int, np.ndarray]:
    """(8,8,3) uint8 thumbnails for dataset indices 0..149 (every member listed above), from a torch generator."""
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (150, 8, 8, 3), generator=generator, dtype=torch.uint8).numpy()
    return {i: images[i] for i in range(150)}


def _write(path: Path, *, with_attribution: bool = False, title: str = "synthetic atlas 4x4") -> Path:
    return write_atlas_html(
        path, _mosaic(), _cells(with_attribution), classes=CLASSES, grid=GRID, title=title,
        member_thumbnails=_thumbnails(),
    )


def _payload(document: str) -> dict:
    match = re.search(r'<script id="atlas-data" type="application/json">(.*?)</script>', document, re.S)
    assert match, "inline atlas JSON not found"
    return json.loads(match.group(1))


# ---------------------------------------------------------------------------------------------------------------
# the written file (no browser needed)


def test_html_is_self_contained_and_carries_the_cells(tmp_path):
    path = _write(tmp_path / "atlas.html", with_attribution=True)
    document = path.read_text()
    # nothing fetched from anywhere: every src/href is a data URL, and no URL scheme for the network appears
    for attr, value in re.findall(r'\b(src|href)\s*=\s*"([^"]*)"', document):
        assert value.startswith("data:"), f"{attr} points outside the file: {value[:60]}"
    assert not re.search(r"https?://|//cdn|@import|url\(", document)
    payload = _payload(document)
    assert payload["grid"] == GRID and payload["classes"] == CLASSES
    assert (payload["width"], payload["height"]) == (GRID * ICON, GRID * ICON)
    assert [(c["row"], c["col"], c["count"]) for c in payload["cells"]] == [(r, c, n) for r, c, n, _ in LAYOUT]
    assert payload["has_attribution"] is True
    # only the thumbnails of listed members are embedded, each a decodable 8x8 PNG
    members = {m for c in payload["cells"] for m in c["members"]}
    assert set(map(int, payload["thumbs"])) == members
    thumb = Image.open(io.BytesIO(base64.b64decode(payload["thumbs"]["0"].split(",", 1)[1])))
    assert thumb.size == (8, 8)
    assert np.array_equal(np.asarray(thumb.convert("RGB")), _thumbnails()[0])
    # the embedded mosaic decodes to exactly the pixels passed in
    mosaic_url = re.search(r'<img id="mosaic"[^>]*src="([^"]+)"', document).group(1)
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(mosaic_url.split(",", 1)[1]))).convert("RGB"))
    assert np.array_equal(decoded, _mosaic())
    # written atomically: no temporary files left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas.html"]


def test_markup_in_names_cannot_break_out_of_the_page(tmp_path):
    evil = "</script><img src=x onerror=alert(1)>"
    cells = _cells(False)
    cells[0]["labels"] = {evil: 3}
    path = write_atlas_html(tmp_path / "a.html", _mosaic(), cells, classes=[evil, *CLASSES[1:]], grid=GRID,
                            title=evil, member_thumbnails=None)
    document = path.read_text()
    assert document.count("</script>") == 2  # the JSON block's and the code block's own closing tags
    assert "<img src=x" not in document
    payload = _payload(document)
    assert payload["classes"][0] == evil and payload["cells"][0]["labels"] == {evil: 3}
    assert payload["thumbs"] == {}


def test_mosaic_from_png_or_jpeg_file_and_nan_cosine(tmp_path):
    Image.fromarray(_mosaic()).save(tmp_path / "mosaic.png")
    Image.fromarray(_mosaic()).save(tmp_path / "mosaic.jpg", quality=95)
    cells = _cells(False)
    cells[1]["cosine"] = float("nan")
    for name in ("mosaic.png", "mosaic.jpg"):
        document = write_atlas_html(tmp_path / f"{name}.html", tmp_path / name, cells, classes=None, grid=GRID,
                                    title="from file").read_text()
        assert 'src="data:image/png;base64,' in document
        payload = _payload(document)  # json.loads would reject a bare NaN
        assert payload["cells"][1]["cosine"] is None
        # classes=None: names come from the cells' top_class entries
        assert payload["classes"] == CLASSES


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda cells: cells[0].update(row=GRID), "outside the 4x4 grid"),
        (lambda cells: cells[1].update(row=0, col=0), "both at row 0, col 0"),
        (lambda cells: cells[2].pop("col"), "has no 'col' key"),
        (lambda cells: cells[3].update(attribution=[0.1, 0.2]), "one per class"),
        (lambda cells: cells[4].update(top_class={"index": 9, "name": "x"}), "there are 4 classes"),
        (lambda cells: cells[5].update(members=["a", "b"]), "list of numbers"),
    ],
)
def test_bad_cells_raise_one_line_errors(tmp_path, change, message):
    cells = _cells(False)
    change(cells)
    with pytest.raises(NnfeatError, match=re.escape(message)) as info:
        write_atlas_html(tmp_path / "x.html", _mosaic(), cells, classes=CLASSES, grid=GRID, title="t")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x.html").exists()


def test_bad_mosaic_or_grid_raise(tmp_path):
    with pytest.raises(NnfeatError, match="mosaic file not found"):
        write_atlas_html(tmp_path / "x.html", tmp_path / "missing.png", [], classes=CLASSES, grid=GRID, title="t")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(NnfeatError, match="not a readable image"):
        write_atlas_html(tmp_path / "x.html", tmp_path / "junk.png", [], classes=CLASSES, grid=GRID, title="t")
    with pytest.raises(NnfeatError, match="grid must be a positive integer"):
        write_atlas_html(tmp_path / "x.html", _mosaic(), [], classes=CLASSES, grid=0, title="t")
    with pytest.raises(NnfeatError, match="too small"):
        write_atlas_html(tmp_path / "x.html", _mosaic()[:2, :2], [], classes=CLASSES, grid=GRID, title="t")


# ---------------------------------------------------------------------------------------------------------------
# in a real headless Chromium

@pytest.fixture(scope="module")
def browser():
    with headless_chromium(width=1280, height=800) as driver:
        yield driver


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("viewer")
    return {
        "top_class": _write(folder / "top_class.html", with_attribution=False),
        "attribution": _write(folder / "attribution.html", with_attribution=True),
    }


def _open(browser, path: Path) -> None:
    browser.get(file_url(path))
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("const m = document.getElementById('mosaic'); return m.complete && !!window.atlasViewer;")
    )


def _mosaic_rect(browser) -> dict:
    return browser.execute_script(
        "const r = document.getElementById('mosaic').getBoundingClientRect();"
        "return {left: r.left, top: r.top, width: r.width, height: r.height};"
    )


def _cell_centre(browser, row: int, col: int) -> tuple[float, float]:
    """Screen position of a cell's centre, from the rendered <img> box (independent of the viewer's own maths)."""
    rect = _mosaic_rect(browser)
    return rect["left"] + (col + 0.5) * rect["width"] / GRID, rect["top"] + (row + 0.5) * rect["height"] / GRID


def _move_mouse(browser, x: float, y: float) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(browser)
    actions.pointer_action.move_to_location(int(round(x)), int(round(y)))
    actions.perform()


def _hover_cell(browser, row: int, col: int) -> None:
    _move_mouse(browser, *_cell_centre(browser, row, col))


def _details(browser) -> dict:
    return browser.execute_script(
        "const d = document.getElementById('details');"
        "return {row: d.dataset.row, col: d.dataset.col, text: d.innerText,"
        " count: document.getElementById('detail-count').textContent,"
        " cls: document.getElementById('detail-class').textContent.trim(),"
        " cosine: document.getElementById('detail-cosine').textContent,"
        " thumbs: document.querySelectorAll('#detail-members img').length,"
        " labels: [...document.querySelectorAll('#detail-labels .bar')].map(b => b.innerText.replace(/\\s+/g, ' '))};"
    )


def _shade_alpha(browser) -> dict[tuple[int, int], int]:
    """Alpha (0..255) of the overlay canvas pixel of every grid cell."""
    pixels = browser.execute_script(
        "const c = document.getElementById('shade');"
        "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);"
    )
    alpha = np.asarray(pixels, dtype=np.int64).reshape(GRID, GRID, 4)[..., 3]
    return {(r, c): int(alpha[r, c]) for r in range(GRID) for c in range(GRID)}


def _select_class(browser, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "class-select")).select_by_value(value)


def _screenshot_array(browser) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"))


def _severe_console_messages(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.mark.browser
def test_mosaic_loads_and_is_drawn(browser, pages):
    _open(browser, pages["top_class"])
    natural = browser.execute_script(
        "const m = document.getElementById('mosaic'); return [m.naturalWidth, m.naturalHeight];"
    )
    assert natural == [GRID * ICON, GRID * ICON]
    rect = _mosaic_rect(browser)
    assert rect["width"] > 100 and rect["height"] > 100
    assert abs(rect["width"] - rect["height"]) < 1
    # the page fetched nothing: every resource it touched was a data: URL
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('data:'));"
    )
    assert fetched == []
    assert _severe_console_messages(browser) == []
    # the pixels on screen at each cell centre are that icon's colour (or white for empty cells)
    shot = _screenshot_array(browser)
    colours = _icon_colours()
    for row, col, _, _ in LAYOUT:
        x, y = _cell_centre(browser, row, col)
        assert np.abs(shot[int(y), int(x)].astype(int) - colours[row, col]).max() <= 3, (row, col)
    for row, col in EMPTY:
        x, y = _cell_centre(browser, row, col)
        assert shot[int(y), int(x)].min() >= 250, (row, col)


@pytest.mark.browser
def test_hover_shows_cell_details(browser, pages):
    _open(browser, pages["top_class"])
    cells = _cells(False)
    for index in (4, 6, 0):  # (1,2) cat 9, (2,2) cat 33, (0,0) airplane 12
        cell = cells[index]
        _hover_cell(browser, cell["row"], cell["col"])
        details = _details(browser)
        assert (details["row"], details["col"]) == (str(cell["row"]), str(cell["col"]))
        assert details["count"] == str(cell["count"])
        assert details["cls"] == cell["top_class"]["name"]
        assert details["cosine"] == f"{cell['cosine']:.3f}"
        assert details["thumbs"] == len(cell["members"])
        expected = sorted(cell["labels"].items(), key=lambda kv: -kv[1])
        assert [line.split(" ")[0] for line in details["labels"]] == [name for name, _ in expected]
        assert [line.split(" ")[-1] for line in details["labels"]] == [str(n) for _, n in expected]
    # an empty cell keeps the last details (so the user can move to the panel) and says so in the status line
    _hover_cell(browser, *EMPTY[0])
    assert _details(browser)["count"] == "12"
    assert "empty" in browser.execute_script("return document.getElementById('status').textContent;")


@pytest.mark.browser
def test_click_pins_a_cell(browser, pages):
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    _open(browser, pages["top_class"])
    x, y = _cell_centre(browser, 2, 2)
    actions = ActionBuilder(browser)
    actions.pointer_action.move_to_location(int(x), int(y)).click()
    actions.perform()
    _hover_cell(browser, 0, 1)
    details = _details(browser)
    assert (details["row"], details["col"], details["count"]) == ("2", "2", "33")
    assert "pinned" in details["text"]


@pytest.mark.browser
def test_class_select_shades_by_top_class(browser, pages):
    _open(browser, pages["top_class"])
    assert set(_shade_alpha(browser).values()) == {0}  # default: no shading
    for chosen in (3, 0):  # cat, then airplane
        _select_class(browser, str(chosen))
        alpha = _shade_alpha(browser)
        for row, col, _, top in LAYOUT:
            if top == chosen:
                assert alpha[row, col] == 0, (chosen, row, col)
            else:
                assert alpha[row, col] > 180, (chosen, row, col)
        assert all(alpha[cell] == 0 for cell in EMPTY)  # empty cells stay plain white
        assert CLASSES[chosen] in browser.execute_script("return document.getElementById('legend').innerText;")
    # the shading is visible on screen: a non-airplane cell is now much paler than its icon colour
    shot = _screenshot_array(browser)
    x, y = _cell_centre(browser, 1, 1)
    assert shot[int(y), int(x)].astype(int).sum() > _icon_colours()[1, 1].astype(int).sum() + 150
    # "top class (colours)": icons stay unfaded, every non-empty cell gets a frame in its class's colour
    _select_class(browser, "*")
    assert set(_shade_alpha(browser).values()) == {0}
    frames = np.asarray(browser.execute_script(
        "const c = document.getElementById('class-frames');"
        "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);"
    ), dtype=np.int64).reshape(GRID * 16, GRID * 16, 4)
    edge = {(r, c): tuple(frames[r * 16, c * 16 + 8]) for r in range(GRID) for c in range(GRID)}
    inside = {(r, c): frames[r * 16 + 8, c * 16 + 8, 3] for r in range(GRID) for c in range(GRID)}
    assert all(edge[r, c][3] == 255 and inside[r, c] == 0 for r, c, _, _ in LAYOUT)
    assert all(edge[cell][3] == 0 for cell in EMPTY)
    colour_of = {top: {edge[r, c] for r, c, _, t in LAYOUT if t == top} for top in range(len(CLASSES))}
    assert all(len(colours) == 1 for colours in colour_of.values())  # one colour per class...
    assert len(set.union(*colour_of.values())) == len(CLASSES)  # ...and distinct between classes
    _select_class(browser, "")
    assert set(_shade_alpha(browser).values()) == {0}


@pytest.mark.browser
def test_class_select_shades_by_attribution(browser, pages):
    _open(browser, pages["attribution"])
    cells = _cells(True)
    _select_class(browser, "3")  # cat
    alpha = _shade_alpha(browser)
    values = {(c["row"], c["col"]): c["attribution"][3] for c in cells}
    best = max(values.values())
    for (row, col), value in values.items():
        expected = 255 * 0.85 * (1 - max(value, 0) / best)
        assert abs(alpha[row, col] - expected) <= 3, (row, col, alpha[row, col], expected)
    # graded, not just on/off: the strongest cell is clear, weaker cat cells are partly faded
    cat_alphas = sorted(alpha[r, c] for r, c, _, top in LAYOUT if top == 3)
    assert cat_alphas[0] == 0 and 0 < cat_alphas[1] < 180
    # hovering shows the cell's attribution bars too
    _hover_cell(browser, 2, 2)
    assert "attribution (top classes)" in _details(browser)["text"].lower()


@pytest.mark.browser
def test_zoom_buttons_wheel_and_drag(browser, pages):
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    _open(browser, pages["top_class"])
    before = _mosaic_rect(browser)
    browser.find_element(By.ID, "zoom-in").click()
    zoomed = _mosaic_rect(browser)
    assert zoomed["width"] == pytest.approx(before["width"] * 1.5, rel=1e-3)
    # hover still lands on the right cell after zooming
    _hover_cell(browser, 1, 2)
    assert _details(browser)["count"] == "9"

    # drag pans by the mouse movement
    x, y = _cell_centre(browser, 1, 2)
    actions = ActionBuilder(browser)
    actions.pointer_action.move_to_location(int(x), int(y)).pointer_down()
    actions.pointer_action.move_to_location(int(x) - 80, int(y) + 50).pointer_up()
    actions.perform()
    panned = _mosaic_rect(browser)
    assert (panned["left"] - zoomed["left"], panned["top"] - zoomed["top"]) == (pytest.approx(-80, abs=1), pytest.approx(50, abs=1))
    assert _details(browser)["text"].count("pinned") == 0  # a drag is not a click

    # the wheel zooms about the cursor: the point under it stays put
    x, y = _cell_centre(browser, 2, 2)
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_viewport(int(x), int(y)), 0, -240).perform()
    wheeled = _mosaic_rect(browser)
    assert wheeled["width"] > panned["width"] * 1.2
    fx = (int(x) - panned["left"]) / panned["width"]
    assert wheeled["left"] + fx * wheeled["width"] == pytest.approx(int(x), abs=2)

    browser.find_element(By.ID, "zoom-fit").click()
    assert _mosaic_rect(browser)["width"] == pytest.approx(before["width"], rel=1e-3)


@pytest.mark.browser
def test_screenshot_for_people(browser, pages):
    """Leaves test-artifacts/atlas-viewer.png: class shading on, a hovered cell, the details panel filled."""
    from nnfeat.io import atomic_path

    _open(browser, pages["attribution"])
    _select_class(browser, "3")
    _hover_cell(browser, 2, 2)
    png = browser.get_screenshot_as_png()
    target = ARTIFACTS / "atlas-viewer.png"
    with atomic_path(target) as tmp:
        tmp.write_bytes(png)
    assert target.is_file() and target.stat().st_size > 1000
    shot = np.asarray(Image.open(target).convert("RGB")).astype(float)
    assert shot.shape[:2] == (800, 1280)
    assert shot.std() > 20  # not blank
    assert len(np.unique(shot.reshape(-1, 3)[::97], axis=0)) > 20  # many distinct colours: icons, text, panel
    assert _severe_console_messages(browser) == []


@pytest.mark.browser
def test_scale_by_density_shrinks_sparse_cells_only(browser, pages):
    """With "Scale by density" on, the densest cell (33 samples) keeps its full icon, a sparse cell (4 samples)
    shrinks to sqrt(4/33) of its cell around the centre (its corner turns white, its centre keeps the icon colour),
    empty cells stay white; off again, the plain mosaic is back."""
    from selenium.webdriver.common.by import By

    _open(browser, pages["top_class"])
    colours = _icon_colours()
    box = browser.find_element(By.ID, "density")
    assert not box.is_selected()
    assert browser.execute_script("return document.getElementById('density-canvas').hidden;")
    box.click()
    assert not browser.execute_script("return document.getElementById('density-canvas').hidden;")
    pixels = np.asarray(browser.execute_script(
        "const c = document.getElementById('density-canvas');"
        "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);"
    ), dtype=np.int64).reshape(GRID * ICON, GRID * ICON, 4)[..., :3]

    def at(row, col, dy, dx):
        return pixels[row * ICON + dy, col * ICON + dx]

    dense, sparse = (2, 2), (3, 3)  # counts 33 and 4
    scale = browser.execute_script("return window.atlasViewer.densityScale({count: 4});")
    assert scale == pytest.approx(max(0.25, (4 / 33) ** 0.5))
    assert np.abs(at(*dense, 3, 3) - colours[dense]).max() <= 3  # full size: the corner is icon colour
    assert at(*sparse, 3, 3).min() >= 250  # shrunk: the corner is white
    assert np.abs(at(*sparse, ICON // 2 - 1, ICON // 2 - 1) - colours[sparse]).max() <= 3
    for row, col in EMPTY:
        assert at(row, col, ICON // 2, ICON // 2).min() >= 250
    # on screen too: the sparse cell's corner region is white where the plain mosaic shows the icon
    x, y = _cell_centre(browser, *sparse)
    rect = _mosaic_rect(browser)
    corner = (int(x - 0.42 * rect["width"] / GRID), int(y - 0.42 * rect["height"] / GRID))
    assert _screenshot_array(browser)[corner[1], corner[0]].min() >= 245
    box.click()
    assert browser.execute_script("return document.getElementById('density-canvas').hidden;")
    assert np.abs(_screenshot_array(browser)[corner[1], corner[0]].astype(int) - colours[sparse]).max() <= 3
    assert _severe_console_messages(browser) == []


# ---------------------------------------------------------------------------------------------------------------
# the microscope page (nnfeat.views.write_microscope_page): relative image links, opened from disk

MICROSCOPE_UNITS = [("layer3:5", 1.25, 3), ("layer3:7", -0.5, 2), ("layer3:12", float("nan"), 0)]


def _microscope_folder(folder: Path) -> Path:
    """Writes channel PNGs (32x32), top-example PNGs (16x16) and a sheet into ``folder``; returns the page path."""
    from nnfeat.views import write_microscope_page

    generator = torch.Generator().manual_seed(11)
    units = []
    for name, value, k in MICROSCOPE_UNITS:
        channel = name.split(":")[1]
        render = torch.randint(0, 256, (32, 32, 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(render).save(folder / f"channel-{channel}.png")
        examples = []
        for j in range(k):
            examples.append(f"examples/channel-{channel}-top{j + 1}.png")
            (folder / "examples").mkdir(exist_ok=True)
            picture = torch.randint(0, 256, (16, 16, 3), generator=generator, dtype=torch.uint8).numpy()
            Image.fromarray(picture).save(folder / examples[-1])
        units.append({"name": name, "image": f"channel-{channel}.png", "value": value, "examples": examples})
    Image.fromarray(np.full((40, 120, 3), 200, np.uint8)).save(folder / "microscope.png")
    return write_microscope_page(folder / "index.html", title="digits-cnn layer3 <3 units>", sheet="microscope.png",
                                 units=units)


def test_microscope_page_links_relative_images_only(tmp_path):
    from nnfeat.views import write_microscope_page

    document = _microscope_folder(tmp_path).read_text()
    sources = re.findall(r'\bsrc="([^"]*)"', document)
    assert len(sources) == 3 + 3 + 2
    assert all(not re.match(r"^[a-z]+:|^/", src) for src in sources)
    assert all((tmp_path / src).is_file() for src in sources)
    assert not re.search(r"https?://|//cdn|@import|url\(", document)
    assert "digits-cnn layer3 &lt;3 units&gt;" in document and "<3 units>" not in document
    assert 'href="microscope.png"' in document
    for bad, message in (({"name": "x:0"}, "has no 'image' key"),
                         ({"name": "x:0", "image": "/abs/c.png", "value": 1}, "relative to the page"),
                         ({"name": "x:0", "image": "https://cdn.example/c.png", "value": 1}, "relative to the page")):
        with pytest.raises(NnfeatError, match=re.escape(message)):
            write_microscope_page(tmp_path / "bad.html", title="t", sheet="s.png", units=[bad])
    assert not (tmp_path / "bad.html").exists()


@pytest.mark.browser
def test_microscope_page_shows_every_unit_and_image(browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    page = _microscope_folder(tmp_path)
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(file_url(page))
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("return [...document.images].every(i => i.complete);")
    )
    images = browser.execute_script(
        "return [...document.images].map(i => ({src: i.getAttribute('src'), natural: i.naturalWidth,"
        " width: i.getBoundingClientRect().width, rendering: getComputedStyle(i).imageRendering,"
        " unit: i.closest('article.unit').dataset.unit, render: i.classList.contains('render')}));"
    )
    assert len(images) == 3 + 3 + 2
    assert all(image["natural"] > 0 for image in images), images
    assert all(image["rendering"] == "pixelated" for image in images)
    renders = [image for image in images if image["render"]]
    assert [image["unit"] for image in renders] == [name for name, _, _ in MICROSCOPE_UNITS]
    assert all(image["natural"] == 32 and image["width"] >= 128 for image in renders)  # upscaled, readable
    assert all(image["width"] >= 64 for image in images if not image["render"])
    text = browser.execute_script("return document.body.innerText;")
    for name, _, _ in MICROSCOPE_UNITS:
        assert name in text
    values = browser.execute_script(
        "return [...document.querySelectorAll('article.unit .value .num')].map(n => n.textContent);"
    )
    assert values == ["1.25", "-0.5", "\u2014"]
    assert browser.title == "digits-cnn layer3 <3 units>"
    assert _severe_console_messages(browser) == []
