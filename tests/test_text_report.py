"""``nnfeat report`` for token models (nnfeat.ops.text_report): the folder's parts on dates-seq2seq (the logit
lens left out with its reason) and tiny-lm (the logit lens, units' contexts collected in the cache), resume after
a stop byte-identical to an uninterrupted run, a damaged file redoing only its stage, every link and image of
every page resolving (a static check), the pages in headless Chromium, and one-line errors with nothing written.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from nnfeat.errors import NnfeatError

try:
    from tests.browser import broken_images, file_url, headless_chromium
    from tests.test_report import _parse
except ImportError:  # tests/ not importable as a package: pytest put tests/ itself on sys.path
    from browser import broken_images, file_url, headless_chromium
    from test_report import _parse

SMALL = dict(units_per_layer=2, attention_n=2, saliency_n=3, methods="gradient", examples_k=3, embeddings_top=40,
             neighbours=2, progress=False)


def _dates(n: int = 16) -> list[str]:
    from nnfeat.models.dates_data import make_examples

    return [e.source for e in make_examples(n, seed=3, split="heldout")]


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def link_problems(folder: Path) -> list[str]:
    """Every link or image of every page of the report (not the cache) whose target is not a file inside the
    folder, or an ``#anchor`` missing from the index."""
    problems = []
    pages = [p for p in sorted(folder.rglob("*.html")) if "cache" not in p.relative_to(folder).parts]
    for page in pages:
        for tag, ref in _parse(page).refs:
            parts = urlsplit(ref)
            if parts.scheme or parts.netloc:
                problems.append(f"{page.relative_to(folder)}: external {tag} {ref}")
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page.resolve()
            if not target.is_file() or folder.resolve() not in target.parents:
                problems.append(f"{page.relative_to(folder)}: {tag} {ref} does not resolve")
            elif parts.fragment and target.name == "index.html" and parts.fragment not in _parse(target).ids:
                problems.append(f"{page.relative_to(folder)}: {ref}: no anchor '{parts.fragment}'")
    return problems


@pytest.fixture(scope="module")
def dates_model():
    from nnfeat.models import load_model

    return load_model("dates-seq2seq")  # trained on first use into the session's NNFEAT_HOME, then cached


@pytest.fixture(scope="module")
def dates_report(tmp_path_factory, dates_model):
    from nnfeat.ops.text_report import text_report

    return text_report(dates_model, _dates(), tmp_path_factory.mktemp("text_report") / "full", **SMALL)


def test_dates_report_has_every_part(dates_report):
    out = dates_report.out
    layers = dates_report.settings["layers"]
    assert layers == ["encoder.layers.0", "encoder.layers.1"]  # the first and last block
    for part in ("index.html", "report.json", "graph/graph.html", "graph/graph.png", "attention/attention.png",
                 "attention/model-view-0.html", "attention/cross-view-1.html", "embeddings/projection.html",
                 "embeddings/projection.png", "units/encoder.layers.1/examples.html", "saliency/index.html",
                 "saliency/saliency.png", "saliency/saliency.json"):
        assert (out / part).is_file(), part
    manifest = json.loads((out / "report.json").read_text())
    assert manifest["complete"] and list(manifest["stages"]) == [
        "graph", "attention", "embeddings", "units:encoder.layers.0", "units:encoder.layers.1", "saliency",
        "logit-lens", "pages"]
    # the logit lens does not apply to an encoder-decoder model: its reason, in one line, on the index
    assert "encoder-decoder" in dates_report.notes["logit-lens"] and not (out / "logit-lens").exists()
    page = (out / "index.html").read_text()
    assert "Left out: " in page and "logit lens reads decoder-only" in page
    # attention: 2 texts sampled from the seed; the head scores on the index
    attention = json.loads((out / "attention/attention.json").read_text())
    assert len(attention["texts"]) == 2 and set(attention["texts"]) <= set(_dates())
    assert "strongest alignment head: decoder.layers" in page
    # saliency: its numbers (verdicts) on the index, as saliency.json has them
    checks = json.loads((out / "saliency/saliency.json").read_text())["checks"]
    assert checks["gradient"]["verdicts"] and checks["gradient"]["verdicts"][0] in page.replace("&#x27;", "'")
    # embeddings: the most frequent tokens' neighbours
    projection = json.loads((out / "embeddings/projection.json").read_text())
    assert [n["query"] for n in projection["neighbours"]] and "nearest to" in page
    # units: each layer's 2 units over a sample (seq2seq: the units view)
    units = json.loads((out / "units/encoder.layers.0/examples.json").read_text())
    assert units["channels"] == [0, 1] and units["view"] == "units"
    # the architecture links each units layer's node to its page
    graph_page = (out / "graph/graph.html").read_text()
    assert "../units/encoder.layers.1/examples.html" in graph_page


def test_every_link_and_image_resolves(dates_report):
    out = dates_report.out
    refs = _parse(out / "index.html").refs
    assert len([r for r in refs if r[0] == "img"]) == 6 and len(refs) > 20
    assert link_problems(out) == []


def test_link_check_finds_a_broken_link(dates_report, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dates_report.out, copy)
    (copy / "saliency" / "saliency.png").unlink()
    assert link_problems(copy) == ["index.html: img saliency/saliency.png does not resolve"]


def test_resume_after_a_stop_is_byte_identical(dates_report, dates_model, tmp_path, monkeypatch):
    from nnfeat.ops.report import STOP_ENV, StopRequested
    from nnfeat.ops.text_report import text_report

    out = tmp_path / "resumed"
    monkeypatch.setenv(STOP_ENV, "3")
    with pytest.raises(StopRequested):
        text_report(dates_model, _dates(), out, **SMALL)
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["attention.json", "embeddings.json", "graph.json"]
    assert not (out / "index.html").exists()
    monkeypatch.delenv(STOP_ENV)
    again = text_report(dates_model, _dates(), out, **SMALL)
    assert list(again.timings) == ["units:encoder.layers.0", "units:encoder.layers.1", "saliency", "logit-lens",
                                   "pages"]  # only the rest
    assert _digests(out) == _digests(dates_report.out)
    # nothing left to do: a third run does no stage and changes no byte
    assert text_report(dates_model, _dates(), out, **SMALL).timings == {}
    assert _digests(out) == _digests(dates_report.out)


def test_damaged_file_redoes_its_stage(dates_report, dates_model, tmp_path):
    from nnfeat.ops.text_report import text_report

    out = tmp_path / "damaged"
    shutil.copytree(dates_report.out, out)
    png = out / "saliency" / "saliency.png"
    png.write_bytes(png.read_bytes()[:100])  # truncated
    again = text_report(dates_model, _dates(), out, **SMALL)
    assert list(again.timings) == ["saliency"]
    assert _digests(out) == _digests(dates_report.out)


def test_other_texts_or_settings_are_another_report(dates_report, dates_model, tmp_path):
    from nnfeat.ops.text_report import text_report

    out = tmp_path / "other"
    shutil.copytree(dates_report.out, out)
    again = text_report(dates_model, _dates()[:-1], out, **SMALL)
    assert "saliency" in again.timings and again.settings["n"] == 15


def test_bad_settings_are_one_line_and_write_nothing(dates_model, tmp_path):
    from nnfeat.ops.text_report import text_report

    out = tmp_path / "never"
    for kwargs, words in ((dict(pair="june 3 2001"), "--pair is for sentence encoders"),
                          (dict(layers="encoder.layers.9"), "encoder.layers.9"),
                          (dict(layers="encoder.layers.0.self_attn.probs"), "no vector per token"),
                          (dict(methods="nope"), "nope"), (dict(units_per_layer=0), "--units-per-layer"),
                          (dict(projection_method="x"), "projection method")):
        with pytest.raises(NnfeatError, match=words.replace(".", r"\.")) as err:
            text_report(dates_model, _dates(4), out, progress=False, **kwargs)
        assert "\n" not in str(err.value)
    assert not out.exists()


def _tiny_texts(n: int = 24) -> list[str]:
    """Seeded sentences of tiny-lm's vocabulary, some repeating their first half (what its induction heads read)."""
    from nnfeat.models.tiny_lm import WORDS

    rng = random.Random(5)
    texts = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 8))]
        texts.append(" ".join(words + words if i % 2 else words))
    return texts


def test_tiny_lm_report_has_the_logit_lens_and_collected_contexts(tmp_path):
    from nnfeat.models import load_model
    from nnfeat.ops.text_report import text_report

    model = load_model("tiny-lm")
    result = text_report(model, _tiny_texts(), tmp_path / "lm", **SMALL)
    out = result.out
    assert result.notes == {}, result.notes
    assert (out / "logit-lens/logit-lens.html").is_file() and (out / "logit-lens/lens-0.png").is_file()
    assert result.settings["layers"] == ["blocks.0", "blocks.1"]
    units = json.loads((out / "units/blocks.1/examples.json").read_text())
    assert units["view"] == "contexts" and units["texts"] == 24 and len(units["units_found"]) == 2
    assert any(p.name.startswith("token-examples-") for p in (out / "cache").iterdir())  # collected, resumable
    page = (out / "index.html").read_text()
    assert "lens&#x27;s top token" in page or "lens's top token" in page
    assert link_problems(out) == []


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnfeat", "report", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("args, words", [
    (["dates-seq2seq", "--text", "june 3 2001", "--steps", "5"], "--steps is for image models"),
    (["dates-seq2seq", "--text", "june 3 2001", "--atlas", "encoder.layers.0", "--diversity", "0"],
     "--diversity, --atlas are for image models"),
    (["dates-seq2seq", "--images", "digits"], "is a token model: give it text"),
    (["dates-seq2seq"], "is a token model: give it text with --text"),
    (["dates-seq2seq", "--text", "june 3 2001", "--pair", "may 1 1999"], "--pair is for sentence encoders"),
    (["dates-seq2seq", "--text", "june 3 2001", "--layers", "encoder.layers.7"], "encoder.layers.7"),
    (["digits-cnn", "--images", "digits", "--pair", "a text"], "--pair is for token models given text"),
    (["digits-cnn", "--text", "a text"], "takes images, not text"),
    (["digits-cnn"], "report needs --images SRC"),
])
def test_cli_one_line_error_writes_nothing(tmp_path, dates_model, args, words):  # (trained once, first)
    out = tmp_path / "cli"
    run = _cli([*args, "--out", str(out)])
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and words in run.stderr, run.stderr
    assert not out.exists()


def test_cli_text_report(tmp_path, dates_model):
    from nnfeat import cli

    texts = tmp_path / "dates.txt"
    texts.write_text("\n".join(_dates(12)) + "\n")
    out = tmp_path / "cli"
    assert cli.main(["report", "dates-seq2seq", "--text-file", str(texts), "--n", "8", "--units-per-layer", "1",
                     "--layers", "encoder.layers.1", "--method", "gradient", "--quiet", "--out", str(out)]) == 0
    manifest = json.loads((out / "report.json").read_text())
    assert manifest["complete"] and manifest["settings"]["n"] == 8 and manifest["settings"]["source"] == str(texts)
    assert manifest["settings"]["layers"] == ["encoder.layers.1"] and manifest["settings"]["methods"] == ["gradient"]
    assert link_problems(out) == []


@pytest.mark.browser
def test_every_page_in_headless_chromium(dates_report):
    out = dates_report.out
    pages = [p for p in sorted(out.rglob("*.html")) if "cache" not in p.relative_to(out).parts]
    assert len(pages) > 10
    with headless_chromium() as browser:
        for page in pages:
            browser.get_log("browser")
            browser.get(file_url(page))
            assert broken_images(browser) == [], page
            severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert severe == [], (page, severe)
            for href in browser.execute_script(
                    "return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);"):
                if href.startswith("file:"):
                    assert Path(unquote(urlsplit(href).path)).is_file(), (page, href)
