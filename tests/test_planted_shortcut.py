"""The planted-shortcut fixture (Bastings et al. 2022): ``shortcut-text`` trains deterministically, its label is
the planted token's presence, and an attribution that reads the model finds that token first: the test's own
gradient x embedding, and every method registered in ``TOKEN_SALIENCY`` (or it is a known miss the README names)."""

from __future__ import annotations

import pytest
import torch

from nnfeat.analysis import token_sanity as ts
from nnfeat.analysis.token_saliency import TOKEN_SALIENCY, token_attributions
from nnfeat.models import shortcut_text as st
from nnfeat.models.text import TokenModel

HELD_OUT = 400


@pytest.fixture(scope="module")
def model() -> TokenModel:
    return st.trained_model()


@pytest.fixture(scope="module")
def planted():
    data = st.held_out(HELD_OUT)
    return data, data.labels == 1


def test_sentences_hide_the_label_in_one_token_only():
    g = torch.Generator().manual_seed(3)
    ids, mask, labels, position = st.sample(4000, g)
    has = (ids == st.PLANTED_ID).any(1)
    assert torch.equal(has.long(), labels)  # the label is the planted token's presence
    assert bool((ids[torch.arange(len(ids)), position][labels == 1] == st.PLANTED_ID).all())
    assert abs(float(labels.float().mean()) - 0.5) < 0.03
    lengths = mask.sum(1).float()
    assert abs(float(lengths[labels == 1].mean() - lengths[labels == 0].mean())) < 0.15  # length says nothing
    # and the texts round-trip through the tokenizer
    data = st.held_out(16)
    tok = st.tokenizer()
    assert [tok.encode(t) for t in data.texts] == [r[m].tolist() for r, m in zip(data.ids, data.mask)]


def test_training_is_deterministic():
    a, b = st.train_shortcut(steps=15), st.train_shortcut(steps=15)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    c = st.train_shortcut(seed=1, steps=15)
    assert not torch.equal(a["state_dict"]["head.weight"], c["state_dict"]["head.weight"])


def test_the_model_reads_the_planted_token(model, planted):
    data, _ = planted
    batch = model.encode(data.texts)
    assert torch.equal(batch.ids, data.ids)
    with torch.no_grad():
        accuracy = float((model(batch.ids, batch.mask).argmax(1) == data.labels).float().mean())
    assert accuracy >= 0.98
    assert model.kind == "classifier" and model.classes == ["ordinary", "planted"] and model.embedding == "embed"
    probe = [n for n in model.layer_names() if n.endswith(".probs")]
    assert probe == ["encoder.layers.0.self_attn.probs", "encoder.layers.1.self_attn.probs"]


def gradient_times_embedding(model: TokenModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) gradient x embedding of the ``planted`` logit, summed over channels (the test's own)."""
    store = {}

    def hook(_m, _i, out):
        store["e"] = out.detach().requires_grad_(True)
        return store["e"]

    handle = model.module(model.embedding).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            model(ids, mask)[:, 1].sum().backward()
    finally:
        handle.remove()
    return (store["e"].grad * store["e"]).sum(-1).detach()


def first_share(attr: torch.Tensor, data, rows: torch.Tensor, keep: torch.Tensor) -> float:
    """Share of ``rows`` whose highest-attributed real, non-special token is the planted one."""
    scored = attr.masked_fill(~data.mask | keep, float("-inf"))
    return float((scored[rows].argmax(1) == data.position[rows]).float().mean())


def test_gradient_times_embedding_ranks_the_planted_token_first(model, planted):
    data, rows = planted
    keep = ts.special_mask(data.ids, model.tokenizer.specials.values())
    gxe = gradient_times_embedding(model, data.ids, data.mask)
    assert first_share(gxe.abs(), data, rows, keep) >= 0.95
    # a random ranking does not: the planted token is one of about 10 words
    assert first_share(ts.random_ranking(data.mask, 0), data, rows, keep) < 0.25
    # and deletion by it beats a random ranking by far, into [MASK] (the token the model learnt as "no word")
    both = ts.compare_with_random(ts.classifier_scores(model), data.ids[rows], data.mask[rows], gxe.abs()[rows],
                                  st.MASK_ID, keep=keep[rows], targets=torch.ones(int(rows.sum()), dtype=torch.long))
    assert float(both["method"]["deletion"].mean()) < 0.5 * float(both["random"]["deletion"].mean())
    assert all(v.passed for v in ts.verdicts(both))


# -- every registered token saliency method (nnfeat.analysis.token_saliency) -------------------------------

#: (method, baseline) -> why it does not rank the planted token first in >= 95 % of held-out texts (the README
#: says so); every other registered method must. Shares measured on 400 held-out texts (186 planted).
KNOWN_MISSES = {
    ("gradient-x-input", "pad"): "0 % (100 % by |value|): read signed, the planted token gets the most negative value",
    ("gradient-x-input", "mask"): "0 % (100 % by |value|): read signed, the planted token gets the most negative value",
    ("occlusion-span", "mask"): "93 %: the word before a planted second word edges it out (windows cut at [CLS])",
}
SHARES: dict[tuple[str, str], float] = {}


def planted_first_share(model: TokenModel, data, rows: torch.Tensor, method: str, baseline: str) -> float:
    """Share of planted texts whose strictly highest attribution (the method's own sign: most positive first) over
    the real, non-special tokens is the planted token's, for the ``planted`` class."""
    batch = model.encode([t for t, r in zip(data.texts, rows.tolist()) if r])
    attr = token_attributions(model, batch, method, 1, baseline=baseline)
    keep = ts.special_mask(batch.ids, model.tokenizer.specials.values()) | ~batch.mask
    pos = data.position[rows]
    mine = attr.gather(1, pos[:, None])[:, 0]
    others = attr.scatter(1, pos[:, None], float("-inf")).masked_fill(keep, float("-inf")).amax(1)
    return float((mine > others).float().mean())


@pytest.mark.parametrize("method", TOKEN_SALIENCY.names())
def test_every_method_ranks_the_planted_token_first_or_is_a_known_miss(model, planted, method):
    data, rows = planted
    for baseline in ("pad", "mask"):
        share = SHARES[(method, baseline)] = planted_first_share(model, data, rows, method, baseline)
        print(f"{method} ({baseline} baseline): planted token first in {share:.1%} of {int(rows.sum())} texts")
        if (method, baseline) in KNOWN_MISSES:
            assert share < 0.95, (f"{method} ({baseline}) now reaches {share:.1%}: drop it from KNOWN_MISSES and "
                                  "from the README")
        else:
            assert share >= 0.95, f"{method} ({baseline}) ranks the planted token first in only {share:.1%}"
