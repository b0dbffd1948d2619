"""`nnfeat demo`, the offline main job: the reports of the embedded digits-cnn and digits-vit (few steps) and the
text reports of dates-seq2seq (and minilm with the text extra), with every link and image of every page
resolving, and a re-run that reuses everything."""

import json
import re

import pytest

from nnfeat import cli

try:
    from tests.test_report import check_links
    from tests.test_text_report import link_problems
except ImportError:  # tests/ not importable as a package: pytest put tests/ itself on sys.path
    from test_report import check_links
    from test_text_report import link_problems


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert cli.main(["demo", "--out", str(out), "--steps", "8", "--quiet"]) == 0
    return out


def test_demo_is_the_report_of_both_digits_models(demo):
    page = (demo / "index.html").read_text()
    sources = re.findall(r"src=['\"]([^'\"]+\.png)['\"]", page)
    missing = [src for src in sources if not (demo / src).is_file()]
    assert len(sources) >= 10 + 4 and not missing, missing
    for name in ("digits-cnn", "digits-vit"):
        manifest = json.loads((demo / name / "report.json").read_text())
        assert manifest["complete"] and manifest["settings"]["n"] == 1797, name
        assert f"{name}/index.html" in page
    # the CNN's class renders come from the readable recipe, at 256 steps whatever --steps says
    cnn = json.loads((demo / "digits-cnn" / "report.json").read_text())["settings"]
    assert cnn["class_render"] == "nnfeat.ops.demo.readable_class_render" and cnn["atlas"] == ["conv3"]
    renders = json.loads((demo / "digits-cnn" / "classes" / "renders" / "render.json").read_text())
    assert renders["settings"]["steps"] == 256 and renders["settings"]["size"] == [12, 12]
    assert (demo / "digits-cnn" / "layers" / "conv3" / "atlas" / "atlas.html").is_file()
    # the ViT's classes page has its attention and rollout; the CNN's says it has no attention layer
    assert (demo / "digits-vit" / "classes" / "attention" / "attention.png").is_file()
    assert "attention" in (demo / "digits-vit" / "classes" / "index.html").read_text()
    assert not (demo / "digits-cnn" / "classes" / "attention").exists()
    assert (demo / "ensemble" / "uncertainty.png").is_file() and (demo / "ensemble" / "reliability.png").is_file()


def test_demo_has_the_text_reports(demo):
    from nnfeat.ops.demo import TEXT_N, demo_dates

    page = (demo / "index.html").read_text()
    manifest = json.loads((demo / "dates-seq2seq" / "report.json").read_text())
    assert manifest["complete"] and manifest["settings"]["n"] == TEXT_N
    attention = json.loads((demo / "dates-seq2seq" / "attention" / "attention.json").read_text())
    assert set(attention["texts"]) <= set(demo_dates())  # a sample of its own date generator
    assert "dates-seq2seq/index.html" in page and "dates-seq2seq/saliency/saliency.png" in page
    assert link_problems(demo / "dates-seq2seq") == []
    if (demo / "minilm").exists():  # the text extra is installed
        assert json.loads((demo / "minilm" / "report.json").read_text())["complete"]
        assert "minilm/index.html" in page and link_problems(demo / "minilm") == []
    else:
        assert "The minilm text report" in page and "Skipped: " in page and "pip install" in page


def test_every_link_and_image_of_the_demo_resolves(demo):
    assert len(sorted(demo.rglob("*.html"))) > 100  # both reports: every layer and unit page
    for name in ("digits-cnn", "digits-vit"):
        assert check_links(demo / name) == [], name
    refs = re.findall(r"(?:src|href)=['\"]([^'\"#]+)", (demo / "index.html").read_text())
    assert len(refs) > 20 and [r for r in refs if not (demo / r).is_file()] == []


def test_demo_rerun_reuses_both_reports(demo, capsys):
    before = {p: p.read_bytes() for p in demo.rglob("*") if p.is_file() and p.name != "demo.json"}
    assert cli.main(["demo", "--out", str(demo), "--steps", "8", "--quiet"]) == 0
    after = {p: p.read_bytes() for p in demo.rglob("*") if p.is_file() and p.name != "demo.json"}
    assert after.keys() == before.keys()
    assert [p for p in before if before[p] != after[p]] == []
