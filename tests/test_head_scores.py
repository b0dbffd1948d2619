"""Head scores and attention capture over tokens (nnfeat.analysis.head_scores, nnfeat.analysis.token_attention):
hand-built attention layers and tensors with known answers (previous-token, diagonal, uniform causal, induction,
alignment), padding, capture from probe modules with hook hygiene, rollout over padded tokens, decoding steps."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from nnfeat.analysis import head_scores as hs
from nnfeat.analysis import token_attention as ta
from nnfeat.analysis.rollout import attention_rollout
from nnfeat.errors import NnfeatError


# --- hand-built attention layers ----------------------------------------------------------------------------
class AttentionProbs(nn.Identity):
    """Stand-in for ``nnfeat.models.text_blocks.AttentionProbs``: found by its class name, not imported."""


class PositionalAttention(nn.Module):
    """Causal self-attention whose scores depend on positions only: head h's query at q scores SHARP on the key
    q + offsets[h] and 0 elsewhere (offset None: 0 everywhere, i.e. uniform over the keys it may see)."""

    SHARP = 60.0

    def __init__(self, offsets) -> None:
        super().__init__()
        self.offsets = list(offsets)
        self.probs = AttentionProbs()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k = torch.arange(t)[:, None], torch.arange(t)[None, :]
        scores = torch.stack([self.SHARP * (k == q + off).float() if off is not None else torch.zeros(t, t)
                              for off in self.offsets])                      # (H, T, T)
        scores = scores.masked_fill(k > q, float("-inf")).expand(b, -1, -1, -1)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        weights = self.probs(scores.softmax(-1))                              # (B, H, T, T)
        return x + (weights @ x[:, None]).mean(1)


class Block(nn.Module):
    def __init__(self, offsets) -> None:
        super().__init__()
        self.attn = PositionalAttention(offsets)
        self.mlp = nn.Linear(4, 4)

    def forward(self, x, mask=None):
        return x + self.mlp(self.attn(x, mask))


class TinyLM(nn.Module):
    """Two blocks: heads (previous token, itself, uniform) then (uniform, two back)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.blocks = nn.ModuleList([Block([-1, 0, None]), Block([None, -2, None])])

    def forward(self, ids, mask=None):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, mask)
        return x


class CrossAttention(nn.Module):
    """Query i attends to source key (i mod Tk) sharply."""

    def __init__(self) -> None:
        super().__init__()
        self.probs = AttentionProbs()

    def forward(self, tgt, src, positions):
        tk = src.shape[1]
        scores = 40.0 * (torch.arange(tk)[None, :] == (positions[:, None] % tk)).float()  # (Tq, Tk)
        w = self.probs(scores.softmax(-1).expand(len(tgt), 2, -1, -1))             # (B, 2, Tq, Tk)
        return tgt + (w @ src[:, None]).mean(1)


class StepDecoder(nn.Module):
    """An encoder with one self-attention probe and a decoder whose cross-attention probe runs once per step."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.self_attn = PositionalAttention([0, None])
        self.decoder = nn.Module()
        self.decoder.cross_attn = CrossAttention()
        self.fail_at = fail_at

    def forward(self, src, steps: int):
        memory = self.encoder.self_attn(src)
        tgt = torch.zeros(len(src), 1, src.shape[-1])
        for s in range(steps):
            if s == self.fail_at:
                raise RuntimeError("decoding failed")
            tgt = self.decoder.cross_attn(tgt, memory, torch.tensor([s]))
        return tgt


def no_hooks(net: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def uniform_causal(b: int, h: int, t: int) -> torch.Tensor:
    w = torch.tril(torch.ones(t, t))
    return (w / w.sum(-1, keepdim=True)).expand(b, h, t, t).clone()


# --- offset scores -------------------------------------------------------------------------------------------
def test_fixed_offset_layer_scores_one_as_previous_token_head():
    net = TinyLM()
    ids = torch.randint(0, 10, (3, 9), generator=torch.Generator().manual_seed(0))
    caught = ta.capture_probes(net, lambda: net(ids))
    assert list(caught) == ["blocks.0.attn.probs", "blocks.1.attn.probs"]
    w = caught["blocks.0.attn.probs"]
    assert w.shape == (3, 3, 9, 9) and w.dtype == torch.float32 and not w.requires_grad
    t = 9
    harmonic = [1 / (q + 1) for q in range(t)]
    prev = hs.previous_token_score(w)
    diag = hs.diagonal_score(w)
    assert prev[0].item() == pytest.approx(1.0, abs=1e-6)           # the previous-token head
    assert diag[0].item() == pytest.approx(1 / t, abs=1e-6)         # only query 0 (no previous key) self-attends
    assert prev[1].item() == pytest.approx(0.0, abs=1e-6)
    assert diag[1].item() == pytest.approx(1.0, abs=1e-6)           # the diagonal head
    assert prev[2].item() == pytest.approx(sum(harmonic[1:]) / (t - 1), abs=1e-6)  # uniform causal: 1/(q+1)
    assert diag[2].item() == pytest.approx(sum(harmonic) / t, abs=1e-6)
    two_back = hs.offset_score(caught["blocks.1.attn.probs"], -2)
    assert two_back[1].item() == pytest.approx(1.0, abs=1e-6) and two_back[0].item() < 0.2
    assert hs.offset_score(w, 1).abs().max().item() < 1e-6         # causal: nothing on the next token


def test_uniform_causal_scores_and_first_token_sink():
    t = 12
    w = uniform_causal(2, 1, t)
    expect = sum(1 / (q + 1) for q in range(1, t)) / (t - 1)
    assert hs.previous_token_score(w).item() == pytest.approx(expect, rel=1e-6)
    assert hs.first_token_score(w).item() == pytest.approx(expect, rel=1e-6)
    sink = torch.zeros(1, 1, t, t)
    sink[..., 0] = 1.0
    assert hs.first_token_score(sink).item() == pytest.approx(1.0)
    assert hs.previous_token_score(sink).item() == pytest.approx(1 / (t - 1))  # only query 1's previous is key 0


def test_padding_is_left_out():
    """A right-padded batch scores as the pooled real queries; a left-padded one finds each row's first token."""
    net = TinyLM()
    lengths = torch.tensor([7, 4])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    ids = torch.randint(1, 10, (2, 7), generator=torch.Generator().manual_seed(1)).masked_fill(~mask, 0)
    w = ta.capture_probes(net, lambda: net(ids, mask))["blocks.0.attn.probs"]
    assert w[1, :, :, 4:].abs().max().item() == 0.0                 # padded keys get exactly 0
    prev = hs.previous_token_score(w, mask)
    pooled = (sum(1 / (q + 1) for q in range(1, 7)) + sum(1 / (q + 1) for q in range(1, 4))) / (6 + 3)
    assert prev[0].item() == pytest.approx(1.0, abs=1e-6)
    assert prev[2].item() == pytest.approx(pooled, rel=1e-6)
    unmasked = hs.previous_token_score(w)[2].item()                  # padded queries counted: a different answer
    assert abs(unmasked - pooled) > 1e-3
    # left padding: the sink is each row's first real token
    left = torch.zeros(2, 1, 6, 6)
    left[0, 0, :, 0] = 1.0
    left[1, 0, :, 2] = 1.0
    left_mask = torch.tensor([[True] * 6, [False, False] + [True] * 4])
    assert hs.first_token_score(left, left_mask).item() == pytest.approx(1.0)
    assert hs.first_token_score(left).item() == pytest.approx(0.5)  # without the mask row 1 misses


# --- induction -------------------------------------------------------------------------------------------------
def induction_pattern(ids: torch.Tensor, bos_sink: bool = True) -> torch.Tensor:
    """Content rule, blind to positions: query q attends to every key k <= q whose PREVIOUS token equals token q
    (the induction rule); a query with no such key attends to key 0. (B, T) ids -> (B, 1, T, T)."""
    b, t = ids.shape
    match = torch.zeros(b, t, t, dtype=torch.bool)
    match[:, :, 1:] = ids[:, :, None] == ids[:, None, :-1]              # tok[k-1] == tok[q]
    match &= torch.tril(torch.ones(t, t, dtype=torch.bool))
    none = ~match.any(-1)
    match[:, :, 0] |= none
    w = match.float()
    return (w / w.sum(-1, keepdim=True))[:, None]


def test_repeated_random_tokens():
    a = hs.repeated_random_tokens(50, 8, 5, seed=3, exclude=(0, 1, 2))
    assert a.shape == (5, 16) and a.dtype == torch.long
    assert torch.equal(a, hs.repeated_random_tokens(50, 8, 5, seed=3, exclude=(0, 1, 2)))
    assert not torch.equal(a, hs.repeated_random_tokens(50, 8, 5, seed=4, exclude=(0, 1, 2)))
    assert torch.equal(a[:, :8], a[:, 8:])
    assert not torch.isin(a, torch.tensor([0, 1, 2])).any() and int(a.max()) < 50
    assert all(len(set(row[:8].tolist())) == 8 for row in a)        # distinct inside each copy
    with pytest.raises(NnfeatError, match="allowed token"):
        hs.repeated_random_tokens(6, 8, 1, seed=0, exclude=(0,))
    assert hs.repeated_random_tokens(6, 8, 2, seed=0, exclude=(0,), distinct=False).shape == (2, 16)


@pytest.mark.parametrize("bos", [False, True])
def test_induction_pattern_scores_one(bos):
    period = 7
    ids = hs.repeated_random_tokens(30, period, 4, seed=0, exclude=(0,))
    if bos:
        ids = torch.cat([torch.zeros(4, 1, dtype=torch.long), ids], 1)
    start = int(bos)
    w = induction_pattern(ids)
    assert hs.induction_score(w, period, start=start).item() == pytest.approx(1.0)
    assert hs.duplicate_score(w, period, start=start).item() == pytest.approx(0.0)
    assert hs.previous_token_score(w).item() < 0.1
    if bos:  # start 0 on a bos sequence counts the last first-copy query (no earlier occurrence) and drops one
        assert hs.induction_score(w, period, start=0).item() == pytest.approx((period - 1) / period)
    else:    # start 1 without a bos runs past the end
        with pytest.raises(NnfeatError, match="start"):
            hs.induction_score(w, period, start=1)
    prev_head = torch.diag_embed(torch.ones(ids.shape[1] - 1), -1)[None, None].expand(4, 1, -1, -1).clone()
    prev_head[..., 0, 0] = 1.0
    assert hs.induction_score(prev_head, period, start=start).item() == pytest.approx(0.0)
    with pytest.raises(NnfeatError, match="period"):
        hs.induction_score(w, period + 5, start=start)


# --- alignment -------------------------------------------------------------------------------------------------
def test_alignment_share_on_hand_built_cross_attention():
    cross = torch.full((2, 2, 3, 6), 0.01)
    # batch 0: fields at source spans [0,2), [2,4), [4,6); head 0 peaks inside each, head 1 inside the first only
    for q, key in enumerate([1, 3, 4]):
        cross[0, 0, q, key] = 0.9
    for q, key in enumerate([0, 0, 0]):
        cross[0, 1, q, key] = 0.9
    cross[1, 0, 0, 5] = 0.9                                          # batch 1, one field in [4, 6)
    cross[1, 1, 0, 4] = 0.9
    spans = [(0, 0, 0, 2), (0, 1, 2, 4), (0, 2, 4, 6), (1, 0, 4, 6)]
    share = hs.alignment_share(cross, spans)
    assert share.tolist() == pytest.approx([1.0, 0.5])
    by_field = hs.alignment_by_field(cross, spans, ["year", "month", "day", "day"])
    assert list(by_field) == ["year", "month", "day"]
    assert by_field["year"].tolist() == [1.0, 1.0] and by_field["month"].tolist() == [1.0, 0.0]
    assert by_field["day"].tolist() == [1.0, 0.5]
    with pytest.raises(NnfeatError, match="outside"):
        hs.alignment_share(cross, [(0, 3, 0, 2)])
    with pytest.raises(NnfeatError, match="outside"):
        hs.alignment_share(cross, [(0, 0, 2, 2)])


def test_head_score_table_is_json_ready():
    net = TinyLM()
    ids = hs.repeated_random_tokens(10, 4, 3, seed=0)
    caught = ta.capture_probes(net, lambda: net(ids))
    cross = torch.zeros(1, 2, 2, 3)
    cross[0, :, 0, 1] = 1.0
    cross[0, 0, 1, 2] = 1.0
    cross[0, 1, 1, 0] = 1.0
    table = hs.head_score_table(caught, induction_by_layer=caught, period=4,
                                cross_by_layer={"decoder.cross": cross}, spans=[(0, 0, 1, 2), (0, 1, 2, 3)])
    assert list(table) == ["blocks.0.attn.probs", "blocks.1.attn.probs", "decoder.cross"]
    row = table["blocks.0.attn.probs"]
    assert list(row) == [*hs.SELF_SCORES, "induction", "duplicate"]
    assert row["previous_token"][0] == 1.0 and all(len(v) == 3 for v in row.values())
    assert table["decoder.cross"] == {"alignment": [1.0, 0.5]}
    assert json.loads(json.dumps(table)) == table
    assert all(v == round(v, 4) for r in table.values() for vs in r.values() for v in vs)
    with pytest.raises(NnfeatError, match="T_query == T_key"):
        hs.head_score_table({"decoder.cross": cross})
    with pytest.raises(NnfeatError, match="period"):
        hs.head_score_table(caught, induction_by_layer=caught)


# --- capture, kinds, rollout, steps ----------------------------------------------------------------------------
def test_capture_records_each_call_and_removes_hooks_on_error():
    net = StepDecoder()
    src = torch.randn(2, 5, 4)
    assert ta.probe_layers(net) == ["encoder.self_attn.probs", "decoder.cross_attn.probs"]
    caught = ta.capture_probes(net, lambda: net(src, steps=3))
    assert list(caught) == ["encoder.self_attn.probs", "decoder.cross_attn.probs",
                            "decoder.cross_attn.probs#1", "decoder.cross_attn.probs#2"]
    assert no_hooks(net)
    for s in range(3):
        step = caught["decoder.cross_attn.probs" + (f"#{s}" if s else "")]
        assert step.shape == (2, 2, 1, 5) and step[0, 0, 0].argmax().item() == s
    calls = ta.probe_calls(caught, "decoder.cross_attn.probs")
    stacked = ta.cross_attention_steps(calls)
    assert stacked.shape == (2, 2, 3, 5)
    assert stacked[1, 1].argmax(-1).tolist() == [0, 1, 2]
    failing = StepDecoder(fail_at=1)
    with pytest.raises(RuntimeError, match="decoding failed"):
        ta.capture_probes(failing, lambda: failing(src, steps=3))
    assert no_hooks(failing)
    with pytest.raises(NnfeatError, match="no attention probes"):
        ta.capture_probes(nn.Sequential(nn.Linear(2, 2)), lambda: None)
    only_encoder = ta.capture_probes(net, lambda: net(src, steps=0),
                                     is_probe=lambda m: isinstance(m, AttentionProbs))
    assert list(only_encoder) == ["encoder.self_attn.probs"]       # an unreached probe has no entry


def test_nnfeat_text_block_is_captured_by_default():
    """nnfeat's own MultiHeadAttention (its AttentionProbs found by the default predicate): with zero queries and
    keys it attends uniformly over the keys it may see, so the known causal and padded answers hold."""
    text_blocks = pytest.importorskip("nnfeat.models.text_blocks")
    attn = text_blocks.MultiHeadAttention(8, 2)
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj):
            proj.weight.zero_()
            proj.bias.zero_()
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    assert ta.probe_layers(attn) == ["probs"]
    w = ta.capture_probes(attn, lambda: attn(x, x, mask, causal=True))["probs"]
    assert no_hooks(attn) and w.shape == (2, 2, 6, 6)
    pooled = (sum(1 / (q + 1) for q in range(1, 6)) + sum(1 / (q + 1) for q in range(1, 3))) / (5 + 2)
    assert hs.previous_token_score(w, mask).tolist() == pytest.approx([pooled] * 2, rel=1e-5)
    assert hs.first_token_score(w, mask).tolist() == pytest.approx([pooled] * 2, rel=1e-5)
    assert ta.attention_kind("decoder.layers.0.cross_attn.probs") == ("cross", "decoder")


def test_cross_attention_steps_without_cache_takes_last_rows():
    full = torch.softmax(torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(0)), -1)
    steps = [full[:, :, :s + 1] for s in range(4)]                  # step s re-runs the prefix of s + 1 queries
    assert torch.equal(ta.cross_attention_steps(steps), full)
    with pytest.raises(NnfeatError, match="disagree"):
        ta.cross_attention_steps([full[:, :, :1], full[:, :, :1, :5]])


def test_attention_kind_from_names():
    assert ta.attention_kind("encoder.layers.0.self_attn.probs") == ("self", "encoder")
    assert ta.attention_kind("decoder.layers.1.self_attn.probs") == ("self", "decoder")
    assert ta.attention_kind("decoder.layers.1.cross_attn.probs#2") == ("cross", "decoder")
    assert ta.attention_kind("blocks.0.attn.probs") == ("self", "decoder-only")
    assert ta.attention_kind("model.decoder.layers.0.encoder_attn") == ("cross", "decoder")
    assert ta.attention_kind("bert.encoder.layer.3.attention.self") == ("self", "encoder")


def test_token_rollout_over_padding_equals_the_unpadded_rollout():
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, 3, 6, 6, generator=gen) for _ in range(3)]
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    padded = {f"encoder.layers.{i}.self_attn.probs": lg.softmax(-1) for i, lg in enumerate(logits)}
    rolled = ta.token_rollout(padded, mask)
    assert rolled.shape == (2, 6, 6)
    alone = attention_rollout([lg[1:, :, :4, :4].softmax(-1) for lg in logits])
    assert torch.allclose(rolled[1, :4, :4], alone[0], atol=1e-6)
    assert rolled[1, 4:].abs().max().item() == 0 and rolled[1, :, 4:].abs().max().item() == 0
    assert torch.allclose(rolled[1, :4].sum(-1), torch.ones(4), atol=1e-6)
    full = attention_rollout([lg.softmax(-1) for lg in logits])
    assert torch.allclose(rolled[0], full[0], atol=1e-6)           # an unpadded row is plain rollout
    assert torch.allclose(ta.token_rollout(list(padded.values())), full)
    with pytest.raises(NnfeatError, match="self-attention"):
        ta.token_rollout([torch.ones(1, 1, 2, 3)])
    assert math.isclose(float(rolled[0].sum()), 6.0, rel_tol=1e-5)
