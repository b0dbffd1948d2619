"""``nnfeat report`` (nnfeat.ops.report): the default layers, the folder it writes, resume after a kill ending
byte-identical to an uninterrupted run, every link and image of every page resolving (a static checker, itself
tested on a broken link), the pages in headless Chromium (images load, no console errors, search filters, the
architecture page links to the layer pages), and one-line CLI errors with nothing written.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from nnfeat.errors import NnfeatError

try:
    from tests.browser import broken_images, file_url, headless_chromium
except ImportError:  # tests/ not importable as a package: pytest put tests/ itself on sys.path
    from browser import broken_images, file_url, headless_chromium

SMALL = dict(layers="conv2,output", units_per_layer=2, steps=6, batch=2, thresholds=3, diversity=2, examples_k=3,
             heatmap_n=2, projection_n=20, saliency_n=2, uncertain_n=16, progress=False)


def _images(model, n=40):
    from nnfeat.data import load_images

    return load_images("digits", size=model.input_size).sample(n, 0)


def _build(model, out: Path):
    from nnfeat.ops.report import report

    return report(model, _images(model), out, **SMALL)


@pytest.fixture(scope="module")
def small(tmp_path_factory, digits_model):
    out = tmp_path_factory.mktemp("report") / "full"
    return _build(digits_model, out)


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- a static checker of every page's links and images ------------------------------------------------------
class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.refs.append(("a", a["href"]))
        if tag == "img" and a.get("src") is not None:
            self.refs.append(("img", a["src"]))


def _parse(path: Path) -> _Refs:
    parser = _Refs()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def check_links(folder: Path) -> list[str]:
    """Every problem with a link or image of the report's own pages (its index, layer, unit and classes
    pages): a target that is not a file inside the folder, or an ``#anchor`` missing from a report page."""
    problems = []
    pages = [folder / "index.html", folder / "classes" / "index.html", *sorted((folder / "layers").glob("*/index.html")),
             *sorted((folder / "layers").glob("*/units/*/index.html"))]
    for page in pages:
        if not page.is_file():
            problems.append(f"missing page {page.relative_to(folder)}")
            continue
        for tag, ref in _parse(page).refs:
            parts = urlsplit(ref)
            if parts.scheme or parts.netloc:
                problems.append(f"{page.relative_to(folder)}: external {tag} {ref}")
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page.resolve()
            if not target.is_file() or folder.resolve() not in target.parents:
                problems.append(f"{page.relative_to(folder)}: {tag} {ref} does not resolve")
            elif parts.fragment and target.suffix == ".html" and target.name != "graph.html" \
                    and parts.fragment not in _parse(target).ids:
                problems.append(f"{page.relative_to(folder)}: {ref}: no anchor '{parts.fragment}'")
    return problems


# -- tests -------------------------------------------------------------------------------------------------
def test_default_layers_are_block_outputs_and_logits():
    from nnfeat.models import load_model
    from nnfeat.ops.report import default_layers

    resnet = load_model("cifar10-resnet20", weights="random")
    assert default_layers(resnet) == [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(3)] + ["output"]
    assert default_layers(load_model("digits-cnn", weights="random")) == ["conv1", "conv2", "conv3", "output"]


def test_report_folder_has_every_part(small, digits_model):
    out = small.out
    for part in ("index.html", "graph/graph.html", "classes/index.html", "layers/conv2/index.html",
                 "layers/conv2/units/1/index.html", "layers/conv2/microscope/index.html",
                 "layers/conv2/examples/ch0001-bottom.png", "layers/conv2/heatmap/heatmap.png",
                 "layers/conv2/projection/projection.html", "layers/conv2/units/0/filters/filters.png",
                 "layers/conv2/units/0/diversity/render-1.png", "layers/conv2/units/0/heatmap/heatmap.png",
                 "classes/saliency/saliency.png", "classes/uncertainty/uncertainty.png", "report.json"):
        assert (out / part).is_file(), part
    # thresholds: the render kept at 2, 4 and 6 of 6 steps, the last equal to the layer's render
    assert sorted(p.name for p in (out / "layers/conv2/units/0").glob("step-*.png")) == \
        ["step-2.png", "step-4.png", "step-6.png"]
    assert (out / "layers/conv2/units/0/step-6.png").read_bytes() == \
        (out / "layers/conv2/render/channel-0.png").read_bytes()
    assert not (out / "layers/output/units/0/filters").exists()  # filters only for conv layers
    # one collection of every image per layer (shared by the examples), the projection sample's apart from it
    from nnfeat.analysis.collect import load_collected

    assert len(load_collected(out / "cache" / "collect-conv2-mean").samples) == 40
    # the projection's 20 rows are taken from that collection: no second pass, and the same rows a pass over the
    # sample gives
    assert not (out / "cache" / "projection" / "collect-conv2-mean").exists()
    from nnfeat.ops.report.stages import projection_sample
    from nnfeat.ops.project import project
    import numpy as np

    class _Ctx:  # the report's sample rule, applied to the report's images
        images, settings = _images(digits_model), {"projection_n": 20, "seed": 0}

    direct = project(digits_model, "conv2", projection_sample(_Ctx), method="pca", k=5, progress=False)
    # one sprite for the sample, on the first layer's page; the next layer's page links to it
    assert (out / "layers/conv2/projection/projection-sprite.png").is_file()
    assert not (out / "layers/output/projection/projection-sprite.png").exists()
    assert '"file":"../../conv2/projection/projection-sprite.png"' in \
        (out / "layers/output/projection/projection.html").read_text()
    with np.load(out / "layers/conv2/projection/projection.npz") as saved:
        assert np.array_equal(saved["indices"], direct.indices)
        assert np.allclose(saved["xy_0"], direct.xy["conv2"], atol=1e-4)
    assert list(small.notes) == ["heatmap:output", "attention"]  # logits have no spatial map, a CNN no attention: notes
    assert "attention" in small.notes["attention"]
    assert "no spatial map" in (out / "layers/output/index.html").read_text()
    assert "deletion auc" in (out / "classes/index.html").read_text()  # the saliency sanity numbers
    assert 'href="../../index.html">layer page' in (out / "layers/conv2/units/0/index.html").read_text()
    index = (out / "index.html").read_text()
    assert 'data-name="conv2:1"' in index and 'id="search"' in index
    graph_page = (out / "graph" / "graph.html").read_text()
    assert '"conv2":"../layers/conv2/index.html"' in graph_page
    assert small.images.shape[0] == 2 and small.images.shape[1] == 3
    shares = small.time_shares()
    assert set(shares) == {"render", "collect", "views", "report"} and shares["render"] > 0
    assert abs(sum(shares.values()) - small.elapsed) < 1e-6 + 0.01 * small.elapsed
    # no times or dates in any written file
    for path in out.rglob("*.json"):
        assert "elapsed" not in path.read_text(), path


def test_every_link_resolves_and_checker_catches_a_broken_one(small, tmp_path):
    assert check_links(small.out) == []
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(small.out, broken)
    page = broken / "layers" / "conv2" / "index.html"
    page.write_text(page.read_text().replace("ch0001-top.png", "ch0001-top-missing.png"))
    problems = check_links(broken)
    assert len(problems) == 1 and "ch0001-top-missing.png" in problems[0]
    (broken / "layers" / "conv2" / "units" / "1" / "index.html").unlink()
    assert any("units/1/index.html" in p for p in check_links(broken))


def test_killed_report_resumes_byte_identical(small, digits_model, tmp_path, monkeypatch):
    from nnfeat.io import read_json
    from nnfeat.ops.report import MANIFEST, STOP_ENV, StopRequested

    out = tmp_path / "resumed"
    monkeypatch.setenv(STOP_ENV, "6")
    with pytest.raises(StopRequested):
        _build(digits_model, out)
    manifest = read_json(out / MANIFEST)
    assert len(manifest["stages"]) == 6 and not manifest["complete"]
    assert not (out / "index.html").exists()
    monkeypatch.setenv(STOP_ENV, "9")  # killed a second time, further on
    with pytest.raises(StopRequested):
        _build(digits_model, out)
    monkeypatch.delenv(STOP_ENV)
    resumed = _build(digits_model, out)
    assert "graph" not in resumed.timings and "render:conv2:0" not in resumed.timings  # only the missing parts
    assert read_json(out / MANIFEST)["complete"]
    a, b = _digests(small.out), _digests(out)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    again = _build(digits_model, out)  # a finished report: nothing to do
    assert again.timings == {}


def test_report_rejects_bad_input_before_work(digits_model, tmp_path):
    from nnfeat.ops.report import report

    images = _images(digits_model, 8)
    for kwargs, text in ((dict(layers="conv9"), "conv9"), (dict(layers="conv2:3"), "units"),
                         (dict(units_per_layer=0), "units-per-layer"), (dict(layers="conv2", atlas="conv1"), "atlas")):
        with pytest.raises(NnfeatError, match=text):
            report(digits_model, images, tmp_path / "bad", **kwargs)
        assert not (tmp_path / "bad").exists()


def test_cli_one_line_error_writes_nothing(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, "-m", "nnfeat", "report", "digits-cnn", "--images", "digits", "--layers",
                          "conv2", "--units-per-layer", "0", "--out", str(out)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "--units-per-layer" in run.stderr
    assert not out.exists()


@pytest.mark.browser
def test_every_page_in_headless_chromium(small):
    from selenium.webdriver.common.by import By

    out = small.out
    pages = sorted(out.glob("**/index.html")) + [out / "graph" / "graph.html"]
    pages = [p for p in pages if "cache" not in p.parts]
    with headless_chromium() as browser:
        for page in pages:
            browser.get_log("browser")
            browser.get(file_url(page))
            broken = broken_images(browser)
            assert broken == [], (page, broken)
            severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert severe == [], (page, severe)
            for href in browser.execute_script(
                    "return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);"):
                if href.startswith("file:"):
                    target = Path(unquote(urlsplit(href).path))
                    assert target.is_file(), (page, href)
        # the search box filters the list of layer and unit names
        browser.get(file_url(out / "index.html"))
        box = browser.find_element(By.ID, "search")
        box.send_keys("conv2:")
        shown = browser.execute_script(
            "return Array.from(document.querySelectorAll('#names li')).filter(li => !li.hidden)"
            ".map(li => li.dataset.name);")
        assert shown == ["conv2:0", "conv2:1"]
        assert browser.find_element(By.ID, "search-count").text == "2 of 6"
        # the architecture page: selecting a layer's node links to that layer's page
        browser.get(file_url(out / "graph" / "graph.html") + "#node-conv2")
        link = browser.execute_script("const a = document.getElementById('panel-report-link');"
                                      "return document.getElementById('panel-report').hidden ? null : a.href;")
        assert link is not None and Path(unquote(urlsplit(link).path)) == (out / "layers/conv2/index.html").resolve()
        # the second layer's projection page shows the thumbnails of the sprite it shares with the first
        from selenium.webdriver.support.ui import WebDriverWait

        browser.get(file_url(out / "layers/output/projection/projection.html"))
        WebDriverWait(browser, 20).until(lambda d: d.execute_script(
            "const s = window.nnfeatScatter; return !!s && s.ready && (s.spriteLoaded || s.spriteError);"))
        assert browser.execute_script("const s = window.nnfeatScatter; return s.hasSprite && s.spriteLoaded && !s.spriteError;")
