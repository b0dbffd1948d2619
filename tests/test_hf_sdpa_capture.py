"""Attention weights of Hugging Face models captured beside the fused SDPA pass: equal to transformers' own eager
``output_attentions=True`` (minilm on padded texts; tiny random causal GPT-2 and grouped-key Llama folders built
here), the SDPA kernel really running (not eager), the weights' formula against SDPA's own output, the eager
fallback, and refusal in training mode."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded here; local_files_only everywhere
transformers = pytest.importorskip("transformers")

from nnfeat.analysis import hf_attention  # noqa: E402
from nnfeat.analysis.hf_attention import SDPAWeights, attend, attention_route, hf_attentions, sdpa_weights  # noqa: E402
from nnfeat.analysis.token_capture import capture_token_attention  # noqa: E402
from nnfeat.errors import NnfeatError  # noqa: E402
from nnfeat.models import load_model  # noqa: E402
from nnfeat.models.hf import load_hf, minilm_path  # noqa: E402

TEXTS = ["The king spoke to the queen about the river.", "hello", "A man is eating food in a small kitchen"]
WORDS = ["the", "king", "spoke", "to", "queen", "a", "man", "is", "eating", "food", "river", "market"]
SENTENCES = ["the king spoke to the queen", "a man", "the market is a river to the king and the queen"]


class SDPACalls:
    """Keeps each scaled-dot-product-attention call nnfeat's capture read (its is_causal / mask dtype /
    enable_gqa), by wrapping the module's ``sdpa_weights`` while the block runs: the SDPA route really ran (an eager
    pass makes no such call)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self._real = hf_attention.sdpa_weights

    def _record(self, query, key, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
        self.calls.append({"is_causal": bool(is_causal), "gqa": bool(enable_gqa),
                           "mask": None if attn_mask is None else attn_mask.dtype})
        return self._real(query, key, attn_mask, is_causal, scale, enable_gqa)

    def __enter__(self) -> "SDPACalls":
        hf_attention.sdpa_weights = self._record
        return self

    def __exit__(self, *exc) -> None:
        hf_attention.sdpa_weights = self._real


def _eager_reference(folder, auto, batch) -> tuple[torch.Tensor, ...]:
    ref = getattr(transformers, auto).from_pretrained(str(folder), local_files_only=True,
                                                      attn_implementation="eager").eval()
    with torch.no_grad():
        return ref(input_ids=batch.ids, attention_mask=batch.mask.long(), output_attentions=True).attentions


def _captured(model, batch) -> tuple[dict[str, torch.Tensor], SDPACalls]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the eager fallback warns: here it must not happen
        with SDPACalls() as calls:
            got = capture_token_attention(model, batch)
    return got, calls


def _assert_equal(got: dict[str, torch.Tensor], expected, batch, heads: int) -> None:
    b, t = batch.ids.shape
    assert len(got) == len(expected)
    for (name, w), want in zip(got.items(), expected):
        assert w.shape == (b, heads, t, t) and w.dtype == torch.float32, name
        diff = float((w - want).abs().max())
        assert diff <= 1e-5, (name, diff)
        pad = ~batch.mask  # (B, T): padded keys get exactly 0 in every row
        assert bool((w.permute(0, 3, 1, 2)[pad] == 0).all()), name
        assert torch.allclose(w.sum(-1), torch.ones(b, heads, t), atol=1e-5)


# -- the formula, against SDPA's own output ----------------------------------------------------------------------
@pytest.mark.parametrize("case", ["none", "bool", "float", "causal", "causal-wide", "gqa", "gqa-bool"])
def test_weights_times_values_is_sdpa_output(case):
    g = torch.Generator().manual_seed(0)
    b, h, tq, tk, d = 2, 4, 5, (7 if case == "causal-wide" else 5), 8
    q = torch.randn(b, h, tq, d, generator=g)
    hk = 2 if case.startswith("gqa") else h
    k, v = torch.randn(b, hk, tk, d, generator=g), torch.randn(b, hk, tk, d, generator=g)
    kw = {"scale": 0.3}
    if case in ("bool", "gqa-bool"):
        kw["attn_mask"] = torch.rand(b, 1, tq, tk, generator=g) > 0.3
        kw["attn_mask"][..., 0] = True  # no fully masked row
    elif case == "float":
        kw["attn_mask"] = torch.randn(b, 1, tq, tk, generator=g)
    elif case.startswith("causal"):
        kw["is_causal"] = True
    if case.startswith("gqa"):
        kw["enable_gqa"] = True
    w = sdpa_weights(q, k, kw.get("attn_mask"), kw.get("is_causal", False), kw["scale"], kw.get("enable_gqa", False))
    out = F.scaled_dot_product_attention(q, k, v, **kw)
    vv = v.repeat_interleave(h // hk, dim=1)
    assert w.shape == (b, h, tq, tk)
    assert torch.allclose(w @ vv, out, atol=1e-5), float((w @ vv - out).abs().max())
    mine = attend(w, v, kw.get("enable_gqa", False))  # what a captured pass returns in the kernel's place
    assert mine.shape == out.shape and torch.allclose(mine, out, atol=1e-5), float((mine - out).abs().max())
    assert torch.allclose(w.sum(-1), torch.ones(b, h, tq), atol=1e-6)
    if case.startswith("causal"):
        assert float(w.triu(1).abs().max()) == 0.0  # query i sees keys 0..i (upper-left aligned)
    if case in ("bool", "gqa-bool"):
        assert float(w[~kw["attn_mask"].expand_as(w)].abs().max()) == 0.0


# -- minilm --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    try:
        return load_model("minilm")
    except NnfeatError as err:
        pytest.skip(str(err))


def test_captured_pass_output_equals_the_fused_pass(minilm):
    """Under the capture the SDPA calls return weights @ values: the network's output is the fused pass's to float
    rounding (padded texts), and every layer's weights were kept."""
    batch = minilm.encode(TEXTS)
    with torch.no_grad():
        plain = minilm.net(input_ids=batch.ids, attention_mask=batch.mask.long()).last_hidden_state
        mode = SDPAWeights()
        with mode:
            captured = minilm.net(input_ids=batch.ids, attention_mask=batch.mask.long()).last_hidden_state
    assert len(mode.weights) == 6
    rows = batch.mask  # padded query rows are whatever the model computes there
    diff = float((captured - plain)[rows].abs().max())
    assert diff <= 1e-4, diff


def test_minilm_runs_sdpa_and_equals_eager(minilm):
    assert attention_route(minilm) == "sdpa" and minilm.net.config._attn_implementation == "sdpa"
    batch = minilm.encode(TEXTS)
    assert len(set(batch.lengths)) == 3  # three lengths: padding matters
    got, calls = _captured(minilm, batch)
    assert len(calls.calls) == 6 and all(c["mask"] == torch.bool for c in calls.calls)  # the fused kernel ran
    assert list(got) == [f"encoder.layer.{i}.attention.self" for i in range(6)]
    expected = _eager_reference(minilm_path(), "AutoModel", batch)
    _assert_equal(got, expected, batch, 12)
    # layer 0 sees the same input in both passes: the same arithmetic as eager, to the last bit here
    first = float((got["encoder.layer.0.attention.self"] - expected[0]).abs().max())
    assert first <= 1e-6, first
    # one text alone (no padding: SDPA gets no mask) equals its row in the padded batch
    alone = minilm.encode(TEXTS[1:2])
    solo, calls = _captured(minilm, alone)
    assert all(c["mask"] is None for c in calls.calls)
    n = alone.lengths[0]
    for name, w in solo.items():
        assert torch.allclose(w[0], got[name][1, :, :n, :n], atol=1e-5), name


def test_training_mode_is_refused(minilm):
    batch = minilm.encode(TEXTS[:1])
    minilm.net.train()
    try:
        with pytest.raises(NnfeatError) as err:
            hf_attentions(minilm, batch)
    finally:
        minilm.net.eval()
    text = str(err.value)
    assert "\n" not in text and "training mode" in text and ".eval()" in text


# -- tiny random causal models, built offline ----------------------------------------------------------------------
def _word_tokenizer(folder) -> None:
    """A WordLevel tokenizer over WORDS (+ [PAD] [UNK]) saved in ``folder`` (what load_hf reads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    fast.save_pretrained(folder)


def _tiny(tmp_path, kind: str):
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(WORDS) + 2, n_positions=32,
                                         pad_token_id=0)
        net_class, heads = transformers.GPT2LMHeadModel, 2
    else:  # grouped keys: 4 query heads share 2 key/value heads
        config = transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          hidden_size=32, intermediate_size=64, vocab_size=len(WORDS) + 2,
                                          max_position_embeddings=32, pad_token_id=0)
        net_class, heads = transformers.LlamaForCausalLM, 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net_class(config).eval().save_pretrained(tmp_path)
    _word_tokenizer(tmp_path)
    return load_hf(tmp_path, name=f"tiny-{kind}"), heads


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_tiny_causal_models_equal_eager(tmp_path, kind):
    model, heads = _tiny(tmp_path, kind)
    assert model.kind == "lm" and attention_route(model) == "sdpa"
    for texts in (SENTENCES, SENTENCES[:1]):  # padded (bool causal masks), then one text (is_causal, no mask)
        batch = model.encode(texts)
        got, calls = _captured(model, batch)
        assert len(calls.calls) == 2 and len(got) == 2
        if len(texts) == 1:
            assert all(c["is_causal"] and c["mask"] is None for c in calls.calls)
            if kind == "llama":
                assert all(c["gqa"] for c in calls.calls)  # SDPA's own grouped heads
        else:
            assert all(c["mask"] == torch.bool for c in calls.calls)
        _assert_equal(got, _eager_reference(tmp_path, "AutoModelForCausalLM", batch), batch, heads)
        for w in got.values():
            assert float(w.triu(1).abs().max()) == 0.0  # no later token is seen


def test_no_sdpa_call_falls_back_to_eager_once(tmp_path, monkeypatch):
    model, heads = _tiny(tmp_path, "gpt2")
    batch = model.encode(SENTENCES)
    want = capture_token_attention(model, batch)

    def other_kernel(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        return sdpa_weights(query, key, attn_mask, is_causal, scale) @ value  # a kernel that is not PyTorch's SDPA

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", other_kernel)
    with pytest.warns(UserWarning, match="made no scaled-dot-product attention call") as record:
        got = hf_attentions(model, batch)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert model.net.config._attn_implementation == "sdpa"  # switched to eager for that pass only
    assert list(got) == list(want) == ["transformer.h.0.attn", "transformer.h.1.attn"]
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5), name
    model.net.set_attn_implementation("eager")  # loaded eager: output_attentions directly, no warning
    assert attention_route(model) == "eager"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eager = hf_attentions(model, batch)
    for name in want:
        assert torch.allclose(eager[name], want[name], atol=1e-5), name
