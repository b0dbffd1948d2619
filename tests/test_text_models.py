"""nnfeat's own text models (dates-seq2seq, tiny-lm), their data and attention blocks: known answers.

The trained weights come from the session's NNFEAT_HOME (conftest), trained once on first use and cached.
"""

from __future__ import annotations

import datetime

import pytest
import torch

from nnfeat.models import dates_data as dd
from nnfeat.models import dates_seq2seq as ds
from nnfeat.models import nnfeat_home
from nnfeat.models import tiny_lm as lm
from nnfeat.models.text_blocks import AttentionProbs, MultiHeadAttention


@pytest.fixture(scope="module")
def dates_net() -> ds.DatesSeq2Seq:
    net = ds.load_trained(ds.DatesSeq2Seq(), ds.cache_path())  # trains on first use (under a minute, 1 thread)
    return net.eval()


@pytest.fixture(scope="module")
def lm_net() -> lm.TinyLM:
    return lm.load_trained(lm.TinyLM(), lm.cache_path()).eval()


# -- the data ---------------------------------------------------------------------------------------------------
def test_dates_generator_is_seeded_and_knows_its_spans():
    first, again, other = dd.make_examples(300, 3), dd.make_examples(300, 3), dd.make_examples(300, 4)
    assert first == again and first != other
    for example in first:
        year, month, day = (int(x) for x in example.target.split("-"))
        date = datetime.date(year, month, day)  # a real date
        assert dd.FIRST_DATE <= date <= dd.LAST_DATE and not dd.is_heldout(date)
        written = {f: example.source[a:b].lower() for f, (a, b) in example.spans.items()}
        assert written["year"] in (f"{year:04d}", f"{year % 100:02d}")
        assert written["month"] in (str(month), f"{month:02d}") or dd.MONTHS[month - 1].startswith(written["month"])
        assert written["day"].rstrip("stndrh") in (str(day), f"{day:02d}")
    assert len({e.source for e in first}) > 250 and len({e.source.split()[0] for e in first}) > 20  # many formats


def test_heldout_dates_are_never_trained_on_and_two_digit_years_follow_the_rule():
    heldout = set(dd.split_dates("heldout"))
    train = set(dd.split_dates("train"))
    assert not heldout & train and len(heldout) + len(train) == (dd.LAST_DATE - dd.FIRST_DATE).days + 1
    assert 0.08 < len(heldout) / (len(heldout) + len(train)) < 0.12
    assert all(datetime.date.fromisoformat(e.target) in heldout for e in dd.make_examples(200, 0, "heldout"))
    assert [dd.two_digit_year(y) for y in (0, 9, 49, 50, 99)] == [2000, 2009, 2049, 1950, 1999]
    ex = dd._render("{dd}.{mm}.{y}", datetime.date(2009, 6, 25), "lower")
    assert (ex.source, ex.target, ex.spans) == ("25.06.09", "2009-06-25", {"day": (0, 2), "month": (3, 5),
                                                                             "year": (6, 8)})


def test_field_positions_follow_the_tokenizers_wraps():
    ex = dd._render("{A}, {d} {B} {Y}", datetime.date(2009, 6, 25), "title")
    assert ex.source == "Thursday, 25 June 2009"
    rows = dd.field_positions(ex, ds.source_tokenizer(), ds.target_tokenizer())
    assert [(q, f) for q, f, _ in rows] == [(0, "year"), (1, "year"), (2, "year"), (3, "year"), (5, "month"),
                                            (6, "month"), (8, "day"), (9, "day")]
    src_ids, tgt_ids = ds.source_tokenizer().encode(ex.source), ds.target_tokenizer().encode(ex.target)
    spelled = ds.source_tokenizer().spell(src_ids)
    for query, field, (start, end) in rows:  # the query position predicts target character `query`
        assert ds.target_tokenizer().spell([tgt_ids[query + 1]])[0] == ex.target[query]
        assert "".join(spelled[start:end]) == {"year": "2009", "month": "june", "day": "25"}[field]


# -- the attention probe ------------------------------------------------------------------------------------------
def test_probe_weights_are_exactly_zero_on_padding_and_the_future():
    gen = torch.Generator().manual_seed(0)
    attn = MultiHeadAttention(16, 4)
    x = torch.randn(3, 7, 16, generator=gen)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 2 + [0] * 5], dtype=torch.bool)
    seen = []
    attn.probs.register_forward_hook(lambda _m, _i, out: seen.append(out))
    out = attn(x, x, mask, causal=True)
    weights = seen[0]
    assert isinstance(attn.probs, AttentionProbs) and weights.shape == (3, 4, 7, 7)
    assert torch.all(weights[:, :, torch.ones(7, 7, dtype=torch.bool).triu(1)] == 0)  # the future: exactly 0
    assert torch.all(weights[1, :, :, 5:] == 0) and torch.all(weights[2, :, :, 2:] == 0)  # padded keys: exactly 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 7))
    alone = attn(x[2:, :2], x[2:, :2], None, causal=True)  # padding changes nothing for the real tokens
    torch.testing.assert_close(out[2:, :2], alone)
    cross = attn(x[:, :3], x, mask)  # cross attention, no causality: only padding is hidden
    assert seen[-1].shape == (3, 4, 3, 7) and torch.all(seen[-1][2, :, :, 2:] == 0) and seen[-1][0].min() > 0
    assert cross.shape == (3, 3, 16)


def test_layer_names_follow_the_design():
    names = dict(ds.build_random().named_modules())
    for i in range(ds.ENCODER_DEPTH):
        assert isinstance(names[f"encoder.layers.{i}.self_attn.probs"], AttentionProbs)
    for i in range(ds.DECODER_DEPTH):
        assert isinstance(names[f"decoder.layers.{i}.self_attn.probs"], AttentionProbs)
        assert isinstance(names[f"decoder.layers.{i}.cross_attn.probs"], AttentionProbs)
    assert {"src_embed", "tgt_embed", "out"} <= set(names)
    names = dict(lm.build_random().named_modules())
    assert {"embed", "unembed", "blocks.0.attn.probs", "blocks.1.attn.probs"} <= set(names)


# -- determinism ----------------------------------------------------------------------------------------------------
def test_builds_and_training_are_deterministic():
    for build in (ds.build_random, lm.build_random):
        a, b = build().state_dict(), build().state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    for train in (lambda: ds.train_dates_seq2seq(steps=3), lambda: lm.train_tiny_lm(steps=3)):
        first, second = train()["state_dict"], train()["state_dict"]
        assert all(torch.equal(first[k], second[k]) for k in first)


# -- dates-seq2seq ----------------------------------------------------------------------------------------------------
def test_dates_seq2seq_translates_heldout_dates_and_is_cached(dates_net):
    cache = ds.cache_path()
    assert cache.parent == nnfeat_home() / "weights" and cache.is_file()
    checkpoint = ds.load_checkpoint(train_if_missing=False)
    heldout = dd.make_examples(500, 0, "heldout")
    accuracy = ds.exact_match(dates_net, heldout)
    assert accuracy >= 0.97 and abs(accuracy - checkpoint["heldout_accuracy"]) < 1e-6
    assert ds.exact_match(ds.build_random(), heldout[:100]) == 0.0
    src, mask, _ = ds.encode_examples([dd._render("{do} of {B}, {Y}", datetime.date(2009, 6, 25), "title")])
    out = ds.greedy(dates_net, src, mask)
    assert ds.target_tokenizer().decode(out[0].tolist()) == "2009-06-25" and out[0, 0] == dates_net.bos_id
    stamp = cache.stat().st_mtime_ns
    ds.load_checkpoint()
    assert cache.stat().st_mtime_ns == stamp  # reused, not retrained


def test_dates_cross_attention_aligns_with_the_source_fields(dates_net):
    heldout = dd.make_examples(200, 0, "heldout")
    trained = ds.alignment_scores(dates_net, heldout)  # (layers, heads)
    random = ds.alignment_scores(ds.build_random(), heldout)
    assert trained.shape == (ds.DECODER_DEPTH, ds.HEADS)
    assert trained.max() >= 0.90 and random.max() < 0.5


# -- tiny-lm ---------------------------------------------------------------------------------------------------------
def test_tiny_lm_has_an_induction_head_and_a_random_copy_does_not(lm_net):
    trained, random = lm.induction_scores(lm_net), lm.induction_scores(lm.build_random())
    assert trained.max() >= lm.INDUCTION_AT_LEAST and random.max() < 0.15
    first, second = lm.repeat_losses(lm_net)
    assert second < 0.25 * first
    rand_first, rand_second = lm.repeat_losses(lm.build_random())
    assert rand_second > 0.8 * rand_first
    assert lm.previous_token_scores(lm_net).max() > lm.previous_token_scores(lm.build_random()).max() + 0.3
    assert lm.tokenizer().encode("The cat and the dog") == [1, 2, 4, 60, 2, 5]
