"""``nnfeat examples`` on token models: a hand-built network whose unit 3 fires only on the planted word 'zap',
with a value that grows with the word's position (known answer: the top contexts are exactly the planted
occurrences, latest position first); the corpus stage is cached (a re-run makes no forward pass), a truncated
record is redone, any chunking and two ranks give the same bytes; a brute-force scan of a real model agrees;
the units view; the CLI end to end on tiny-lm and minilm; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnfeat import distributed
from nnfeat.analysis.token_examples import SIDES, chunk_candidates, merge_candidates
from nnfeat.cli import main
from nnfeat.errors import NnfeatError
from nnfeat.models.zoo import load_model
from nnfeat.ops.token_examples import token_examples, token_units
from nnfeat.ops.token_heatmap import capture_token_layer
from nnfeat.texts import load_texts

REPO = Path(__file__).resolve().parents[1]

PLANTED_FILE = '''
import torch
from torch import nn
import nnfeat

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(20)] + ["zap"]


class Ramp(nn.Module):
    """Channel 3 times the token's position + 1, the other channels as they are."""

    def forward(self, x):
        pos = torch.arange(1, x.shape[1] + 1, dtype=x.dtype)
        one = torch.ones(x.shape[-1], dtype=x.dtype)
        return x * torch.where(torch.arange(x.shape[-1]) == 3, pos[:, None], one)[None]


class Planted(nn.Module):
    """Channel 3 of a token: 1 on 'zap' times its position + 1, else 0; channel c of word w: 0.01 * w * (c + 1)."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.embed = nn.Embedding(len(WORDS), 8)
        with torch.no_grad():
            self.embed.weight.copy_(0.01 * torch.arange(len(WORDS)).float()[:, None] * torch.arange(1, 9).float())
            self.embed.weight[:, 3] = 0
            self.embed.weight[WORDS.index("zap"), 3] = 1.0
        self.features = Ramp()
        self.head = nn.Linear(8, 2)

    fail_after = None  # a test sets it: the network dies (as a killed run would) after that many calls

    def forward(self, ids):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("killed")
        return self.head(self.features(self.embed(ids)).mean(1))


def make():
    return nnfeat.TokenModel(Planted(), name="planted", tokenizer=nnfeat.WordTokenizer(WORDS, wrap=("cls", "sep")),
                             kind="classifier", max_length=32, classes=["a", "b"])
'''


def _corpus(n: int = 23) -> list[str]:
    """``n`` texts of w-words, 'zap' planted in most at a varying place (some twice, some never)."""
    g = torch.Generator().manual_seed(7)
    texts = []
    for i in range(n):
        words = [f"w{int(x)}" for x in torch.randint(0, 20, (int(torch.randint(2, 14, (1,), generator=g)),),
                                                     generator=g)]
        if i % 5 != 4:
            words.insert(int(torch.randint(0, len(words) + 1, (1,), generator=g)), "zap")
        if i % 7 == 3:
            words.append("zap")
        texts.append(" ".join(words))
    return texts


CORPUS = _corpus()


@pytest.fixture()
def planted_file(tmp_path):
    path = tmp_path / "planted.py"
    path.write_text(PLANTED_FILE)
    return str(path)


@pytest.fixture()
def planted(planted_file):
    return load_model(f"{planted_file}:make")


def _occurrences(texts: list[str]) -> list[tuple[int, int]]:
    """(text, token position) of every 'zap' ([CLS] is position 0), latest position first, then corpus order."""
    found = [(t, p + 1) for t, text in enumerate(texts) for p, w in enumerate(text.split()) if w == "zap"]
    return sorted(found, key=lambda tp: (-tp[1], tp[0]))


def test_the_top_contexts_are_the_planted_word_in_the_known_order(planted):
    expected = _occurrences(CORPUS)
    k = len(expected) + 3  # more than there are: the rest are the 0s of other words, corpus order
    result = token_examples(planted, "features:3", CORPUS, k=k, window=2, batch_size=4)
    top = result.entries[0]["top"]
    assert [(e["text"], e["position"]) for e in top[:len(expected)]] == expected
    assert [e["value"] for e in top[:len(expected)]] == [float(p + 1) for _, p in expected]
    assert all(e["token"] == "zap" and e["tokens"][e["centre"]] == "zap" for e in top[:len(expected)])
    assert [e["value"] for e in top[len(expected):]] == [0.0] * 3
    first = expected[0]
    words = ["[CLS]", *CORPUS[first[0]].split(), "[SEP]"]
    assert top[0]["tokens"] == words[first[1] - 2:first[1] + 3]
    assert top[0]["values"][2] == float(first[1] + 1) and top[0]["values"][:2] == [0.0, 0.0]
    bottom = result.entries[0]["bottom"]  # all 0 but 'zap': the first non-special tokens in corpus order
    order = [(t, p + 1) for t, text in enumerate(CORPUS) for p, w in enumerate(text.split()) if w != "zap"]
    assert [(e["text"], e["position"]) for e in bottom] == order[:k]
    assert all(e["token"] not in ("[CLS]", "[SEP]") for e in top + bottom)  # specials are never candidates


def test_a_window_past_the_text_ends_is_cut(planted):
    result = token_examples(planted, "features:3", ["zap w1", "w2 w3 w4 w5 zap"], k=1, window=3)
    entry = result.entries[0]["top"][0]
    assert (entry["text"], entry["position"]) == (1, 5)
    assert entry["tokens"] == ["w3", "w4", "w5", "zap", "[SEP]"] and entry["centre"] == 3
    assert len(entry["values"]) == 5


def test_a_text_past_the_maximum_is_truncated_and_said(planted):
    long = " ".join(["w1"] * 29 + ["zap"] + ["w2"] * 10)  # 32 kept: [CLS], 29 w1, zap, [SEP] (the w2s cut)
    result = token_examples(planted, "features:3", ["w3 zap", long], k=1, window=2, batch_size=1)
    entry = result.entries[0]["top"][0]
    assert (entry["text"], entry["position"], entry["value"]) == (1, 30, 31.0)
    assert entry["tokens"] == ["w1", "w1", "zap", "[SEP]"]
    assert result.notes == ["1 of 2 texts are longer than the model's maximum of 32 tokens: truncated (text 1 "
                            "lost 10 tokens)"]


def _saved(result, out: Path) -> dict[str, bytes]:
    result.save(out, timing=False)
    return {name: (out / name).read_bytes() for name in ("examples.json", "examples.html", "examples.png")}


def test_any_chunking_gives_the_same_bytes(planted, tmp_path):
    runs = [_saved(token_examples(planted, "features:0..7", CORPUS, k=5, window=3, batch_size=b),
                   tmp_path / f"b{b}") for b in (1, 3, 4, 100)]
    assert all(run == runs[0] for run in runs[1:])
    record = json.loads(runs[0]["examples.json"])
    assert record["channels"] == list(range(8)) and record["view"] == "contexts"
    html = runs[0]["examples.html"].decode()
    assert "<script" not in html and "http" not in html.replace("http-equiv", "")


def test_the_cache_is_reused_and_a_damaged_record_is_redone(planted, tmp_path):
    cache = tmp_path / "cache"
    first = token_examples(planted, "features:3,5", CORPUS, k=4, window=2, batch_size=5, cache=cache)
    assert first.computed == 5 and planted.net.calls > 0
    records = sorted(cache.rglob("c-*.npz"))
    assert len(records) == 5
    planted.net.calls = 0
    again = token_examples(planted, "features:3,5", CORPUS, k=4, window=2, batch_size=5, cache=cache)
    assert planted.net.calls == 0 and again.computed == 0 and again.reused == 5
    assert _saved(again, tmp_path / "a") == _saved(first, tmp_path / "b")
    data = records[2].read_bytes()
    records[2].write_bytes(data[:len(data) // 2])
    redone = token_examples(planted, "features:3,5", CORPUS, k=4, window=2, batch_size=5, cache=cache)
    assert redone.computed == 1 and planted.net.calls > 0 and records[2].read_bytes() == data
    assert _saved(redone, tmp_path / "c") == _saved(first, tmp_path / "b")
    other = token_examples(planted, "features:3,5", CORPUS[:-1], k=4, window=2, batch_size=5, cache=cache)
    assert other.computed == 5  # another corpus: another key, nothing reused


def test_a_run_killed_midway_resumes_to_the_same_bytes(planted, tmp_path):
    whole = token_examples(planted, "features:0..7", CORPUS, k=4, window=2, batch_size=5)
    cache = tmp_path / "cache"
    planted.net.calls, planted.net.fail_after = 0, 9  # dies in the middle of the corpus
    with pytest.raises(RuntimeError, match="killed"):
        token_examples(planted, "features:0..7", CORPUS, k=4, window=2, batch_size=5, cache=cache)
    kept = len(list(cache.rglob("c-*.npz")))
    assert 0 < kept < 5
    planted.net.fail_after = None
    resumed = token_examples(planted, "features:0..7", CORPUS, k=4, window=2, batch_size=5, cache=cache)
    assert resumed.computed == 5 - kept and resumed.reused == kept
    assert _saved(resumed, tmp_path / "r") == _saved(whole, tmp_path / "w")


def sharded_worker(model_file: str, out: str) -> None:
    model = load_model(f"{model_file}:make")
    result = token_examples(model, "features:0..7", CORPUS, k=5, window=3, batch_size=4, cache=Path(out) / "cache")
    if distributed.current().writer:
        result.save(Path(out) / "result", timing=False)


def test_two_ranks_write_the_bytes_of_one(planted_file, tmp_path):
    sharded_worker(planted_file, str(tmp_path / "one"))
    distributed.spawn(sharded_worker, 2, planted_file, str(tmp_path / "two"))
    for name in ("examples.json", "examples.html", "examples.png"):
        assert (tmp_path / "one" / "result" / name).read_bytes() == (tmp_path / "two" / "result" / name).read_bytes()
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one" / "cache").rglob("*.npz"))
    assert one == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two" / "cache").rglob("*.npz"))
    assert all((tmp_path / "one" / p).read_bytes() == (tmp_path / "two" / p).read_bytes() for p in one)


def test_a_real_model_equals_a_brute_force_scan():
    model = load_model("tiny-lm", weights="random")
    texts = ["the cat and the dog", "a red sun in the sky", "one two six ten", "the sea and the moon and the sun",
             "big old tree", "cold rain and snow"]
    result = token_examples(model, "blocks.1:0,7,31", texts, k=4, window=2, batch_size=4)
    batch = model.encode(texts)
    act = capture_token_layer(model, "blocks.1", batch).cpu()
    special = set(model.tokenizer.specials.values())
    for c, entry in zip([0, 7, 31], result.entries):
        scan = [(float(act[t, p, c]), t, p) for t in range(len(texts)) for p in range(int(batch.mask[t].sum()))
                if int(batch.ids[t, p]) not in special]
        top = sorted(scan, key=lambda v: (-v[0], v[1], v[2]))[:4]
        bottom = sorted(scan, key=lambda v: (v[0], v[1], v[2]))[:4]
        for side, want in (("top", top), ("bottom", bottom)):
            assert [(e["text"], e["position"]) for e in entry[side]] == [(t, p) for _, t, p in want]
            assert [e["value"] for e in entry[side]] == pytest.approx([v for v, _, _ in want], abs=1e-5)


def test_chunk_candidates_pad_a_short_chunk_and_merge_keeps_corpus_order():
    act = torch.zeros(2, 3, 2)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    parts = chunk_candidates(act, mask, [1], k=5, window=1, offset=10)
    assert parts["top"].text.tolist() == [[10, 10, 11, -1, -1]] and np.isnan(parts["top"].value[0, 3:]).all()
    later = chunk_candidates(act, mask, [1], k=5, window=1, offset=0)
    merged = merge_candidates([later["top"], parts["top"]], "top", 4)
    assert merged.text.tolist() == [[0, 0, 1, 10]] and merged.position.tolist() == [[0, 1, 0, 0]]
    assert set(SIDES) == set(parts)


def test_the_units_view_colours_every_token(planted, tmp_path):
    result = token_units(planted, "features:3,5", ["w1 zap w2", "zap"])
    assert result.view == "units" and result.channels == [3, 5]
    rows = result.entries[0]["texts"]
    assert rows[0]["tokens"] == ["[CLS]", "w1", "zap", "w2", "[SEP]"]
    assert rows[0]["values"] == [0.0, 0.0, 3.0, 0.0, 0.0] and rows[1]["values"] == [0.0, 2.0, 0.0]
    assert result.entries[1]["texts"][0]["values"][1] == pytest.approx(0.01 * 5 * 6)  # w1 = word 5, channel 5
    files = _saved(result, tmp_path / "u")
    assert b"zap<small>3.00</small>" in files["examples.html"]
    assert result.sheet().shape[2] == 3


def test_cli_contexts_and_units_end_to_end(planted_file, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS[:8]) + "\n\n")
    out = tmp_path / "ex"
    args = ["examples", f"{planted_file}:make", "features:3", "--text-file", str(corpus), "--k", "3", "--window", "2",
            "--batch", "3", "--out", str(out)]
    assert main(args) == 0
    record = json.loads((out / "examples.json").read_text())
    expected = _occurrences(CORPUS[:8])[:3]
    assert [(e["text"], e["position"]) for e in record["units_found"][0]["top"]] == expected
    assert "--text-file" in record["command"] and (out / "examples.html").is_file()
    assert len(list((out / "cache").rglob("c-*.npz"))) == 3
    capsys.readouterr()
    assert main(args) == 0
    assert "3 of 3 corpus chunks came from the cache" in capsys.readouterr().out
    units = tmp_path / "units"
    assert main(["examples", f"{planted_file}:make", "features:3", "--text", "w1 zap", "--out", str(units)]) == 0
    assert json.loads((units / "examples.json").read_text())["units_found"][0]["texts"][0]["values"] == [0, 0, 3, 0]


def test_tiny_lm_runs_end_to_end(tmp_path):
    corpus = tmp_path / "lm.txt"
    corpus.write_text("the cat and the dog\na red sun in the sky\n\nthe sea and the moon\ncold rain and snow\n")
    out = tmp_path / "tiny"
    assert main(["examples", "tiny-lm", "blocks.1:0..1", "--text-file", str(corpus), "--k", "2", "--window", "2",
                 "--weights", "random", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "examples.json").read_text())
    assert [len(u["top"]) for u in record["units_found"]] == [2, 2]


def test_minilm_runs_end_to_end():
    model = load_model("minilm")
    texts = load_texts(["The cat sat on the mat.", "Stock prices fell sharply on Monday.", "The river flows."])
    result = token_examples(model, "encoder.layer.1.intermediate:5,17", texts, k=3, window=2)
    top = result.entries[0]["top"]
    assert len(top) == 3 and top[0]["value"] >= top[1]["value"] >= top[2]["value"]
    assert all(e["token"] not in ("[CLS]", "[SEP]") for e in top)
    batch = model.encode(texts.texts)
    act = capture_token_layer(model, "encoder.layer.1.intermediate", batch).cpu()
    assert top[0]["value"] == pytest.approx(float(act[top[0]["text"], top[0]["position"], 5]), abs=1e-5)


@pytest.mark.parametrize("extra, words", [
    (["features:99"], "channel 99 out of range"),
    (["nolayer:3"], "unknown layer 'nolayer'"),
    (["features:3", "--window", "-1"], "--window must be 0..256"),
    (["features:3", "--k", "0"], "--k must be at least 1"),
    (["features:3@2"], "without @POSITION"),
    (["features:3", "--images", "digits"], "is a token model"),
    (["features:3", "--text", "w1"], "not both"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(planted_file, tmp_path, capsys, extra, words):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("w1 zap\n")
    out = tmp_path / "bad"
    assert main(["examples", f"{planted_file}:make", *extra, "--text-file", str(corpus), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert not out.exists()


def test_bad_input_from_the_shell_exits_2(planted_file, tmp_path):
    out = tmp_path / "bad"
    code = subprocess.run([sys.executable, "-m", "nnfeat", "examples", f"{planted_file}:make", "features:3", "--text",
                           "w1", "--window", "3", "--out", str(out)], capture_output=True, text=True, cwd=REPO,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert code.returncode == 2 and code.stderr.strip().splitlines() == [
        "nnfeat: error: --k and --window are for contexts over a --text-file corpus; with --text every token of each "
        "text is shown"]
    assert not out.exists()


def test_bad_input_in_python(planted):
    with pytest.raises(NnfeatError, match="empty"):
        token_examples(planted, "features:3", ["w1", " "])
    with pytest.raises(NnfeatError, match="--k must be at least 1"):
        token_examples(planted, "features:3", ["w1"], k=0)
    with pytest.raises(NnfeatError, match="not one vector per token"):
        token_units(planted, "head:0", ["w1 zap"])
    with pytest.raises(NnfeatError, match="not one vector per token"):
        token_examples(planted, "head:0", ["w1 zap"])
