"""The planted-shortcut fixture (Bastings et al. 2022): ``shortcut-text`` trains deterministically, its label is
the planted token's presence, and an attribution that reads the model finds that token first."""

from __future__ import annotations

import torch

from nnfeat.analysis import token_sanity as ts
from nnfeat.models import shortcut_text as st
from nnfeat.models.text import TokenModel

import pytest

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
