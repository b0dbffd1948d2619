"""Token sanity numbers (nnfeat.analysis.token_sanity) against known answers: deletion / insertion of a scorer
whose probability is a known function of one token, seeded random rankings, Kendall's tau-b and Spearman against
scipy, and the cascading randomization test on a trained model."""

from __future__ import annotations

import pytest
import torch

from nnfeat.analysis import token_sanity as ts
from nnfeat.errors import NnfeatError
from nnfeat.models import shortcut_text as st

KEY, BASE, CLS, SEP, PAD = 9, 1, 2, 3, 0
HIGH, LOW = 0.9, 0.2


def key_score(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Probability HIGH when the key token is anywhere in the text, else LOW."""
    return LOW + (HIGH - LOW) * (ids == KEY).any(1).double()


def texts(n_tokens: list[int], key_at: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[CLS] n ordinary tokens (ids 10..) [SEP], padded; the key token at ``key_at`` (0-based among the words).
    -> ids, mask, keep (the specials)."""
    width = max(n_tokens) + 2
    ids = torch.full((len(n_tokens), width), PAD)
    for i, (n, k) in enumerate(zip(n_tokens, key_at)):  # building a small test batch
        ids[i, 0], ids[i, 1:n + 1], ids[i, n + 1] = CLS, torch.arange(10, 10 + n), SEP
        ids[i, 1 + k] = KEY
    mask = ids != PAD
    return ids, mask, ts.special_mask(ids, [CLS, SEP, PAD])


def key_first(ids: torch.Tensor) -> torch.Tensor:
    """A ranking that puts the key token first and the others in falling order of position."""
    return (ids == KEY).float() * 100 - torch.arange(ids.shape[1]).float()[None, :] / 100


def test_deletion_insertion_known_auc_and_the_reversed_ranking_is_worse():
    ids, mask, keep = texts([4, 8, 5], [2, 0, 4])
    good = key_first(ids)
    out = ts.token_deletion_insertion(key_score, ids, mask, good, BASE, keep=keep)
    n = torch.tensor([4.0, 8.0, 5.0])
    torch.testing.assert_close(out["deletion"], LOW + (HIGH - LOW) / 2 / n)
    torch.testing.assert_close(out["insertion"], HIGH - (HIGH - LOW) / 2 / n)
    assert out["tokens"].tolist() == [4, 8, 5] and out["calls"] == 1
    bad = ts.token_deletion_insertion(key_score, ids, mask, -good, BASE, keep=keep)
    torch.testing.assert_close(bad["deletion"], HIGH - (HIGH - LOW) / 2 / n)
    torch.testing.assert_close(bad["insertion"], LOW + (HIGH - LOW) / 2 / n)
    assert bool((bad["deletion"] > out["deletion"]).all()) and bool((bad["insertion"] < out["insertion"]).all())
    # the curves: deletion at HIGH before the first step, LOW after it; fractions run 0..1 per text
    assert out["curves"]["deletion"][:, 0].tolist() == pytest.approx([HIGH] * 3)
    assert out["curves"]["deletion"][:, 1].tolist() == pytest.approx([LOW] * 3)
    assert out["curves"]["fractions"][:, -1].tolist() == [1.0, 1.0, 1.0]


def test_specials_and_padding_are_never_replaced():
    ids, mask, keep = texts([3, 6], [1, 1])
    seen = []

    def spy(x, m):
        seen.append(x.clone())
        return key_score(x, m)

    ts.token_deletion_insertion(spy, ids, mask, key_first(ids), BASE, keep=keep, batch_size=5)
    every = torch.cat(seen)
    assert len(seen) == 5  # (4 + 7 steps) x 2 kinds = 22 (text, step) pairs, 5 per call
    specials = (every == CLS).sum(1) + (every == SEP).sum(1)
    assert bool((specials == 2).all())


def test_steps_give_the_trapezoid_over_those_fractions():
    ids, mask, keep = texts([4], [3])
    out = ts.token_deletion_insertion(key_score, ids, mask, key_first(ids), BASE, keep=keep, steps=2)
    # counts 0, 2, 4 at fractions 0, .5, 1: HIGH, LOW, LOW
    assert float(out["deletion"][0]) == pytest.approx(0.5 * (HIGH + LOW) / 2 + 0.5 * LOW)
    assert out["curves"]["fractions"][0].tolist() == [0.0, 0.5, 1.0]


def test_targets_pick_each_texts_column_and_abs_ranking():
    ids, mask, keep = texts([5, 5], [1, 3])

    def two(x, m):
        p = key_score(x, m)
        return torch.stack([1 - p, p], 1)

    # text 0 tracks the key class, text 1 the other: its deletion rises instead of falling
    out = ts.token_deletion_insertion(two, ids, mask, -key_first(ids), BASE, keep=keep, rank_by="abs",
                                      targets=torch.tensor([1, 0]))
    assert float(out["deletion"][0]) == pytest.approx(LOW + (HIGH - LOW) / 10)
    assert float(out["deletion"][1]) == pytest.approx(1 - LOW - (HIGH - LOW) / 10)


def test_random_ranking_is_seeded_and_lies_between():
    ids, mask, keep = texts([8] * 64, [i % 8 for i in range(64)])
    a, b, c = ts.random_ranking(mask, 3), ts.random_ranking(mask, 3), ts.random_ranking(mask, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool((a[~mask] == 0).all())
    both = ts.compare_with_random(key_score, ids, mask, key_first(ids), BASE, keep=keep, seed=0, repeats=2)
    m, r = both["method"], both["random"]
    # expected deletion AUC of a uniformly random key rank among n = 8: LOW + (H-L)/2n + (H-L)(n-1)/2n
    expect = LOW + (HIGH - LOW) / 16 + (HIGH - LOW) * 7 / 16
    assert float(r["deletion"].mean()) == pytest.approx(expect, abs=0.05)
    assert float(m["deletion"].mean()) < float(r["deletion"].mean())
    assert float(m["insertion"].mean()) > float(r["insertion"].mean())
    assert both["calls"] >= 1 and m["deletion"].shape == (64,)
    words = ts.verdicts(both)
    assert [v.passed for v in words] == [True, True]
    reverse = ts.compare_with_random(key_score, ids, mask, -key_first(ids), BASE, keep=keep, seed=0)
    bad = ts.verdicts(reverse)
    assert [v.passed for v in bad] == [False, False]
    assert "worse than random on deletion" in bad[0].text and "FAILED" in bad[0].text


def test_kendall_tau_b_matches_scipy_with_ties_and_masks():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (20, 12), generator=g).float()  # many ties
    b = a + torch.randint(-2, 3, (20, 12), generator=g).float()
    lengths = torch.randint(3, 13, (20,), generator=g)
    mask = torch.arange(12)[None, :] < lengths[:, None]
    tau = ts.kendall_tau(a, b, mask, block=300)  # several blocks of rows
    rho = ts.masked_spearman(a, b, mask)
    for i in range(20):  # the reference, one text at a time
        n = int(lengths[i])
        want = stats.kendalltau(a[i, :n].numpy(), b[i, :n].numpy(), variant="b").statistic
        assert float(tau[i]) == pytest.approx(want, abs=1e-9)
        assert float(rho[i]) == pytest.approx(stats.spearmanr(a[i, :n].numpy(), b[i, :n].numpy()).statistic,
                                              abs=1e-9)
    const = ts.kendall_tau(torch.ones(1, 4), torch.arange(4.0)[None], torch.ones(1, 4, dtype=torch.bool))
    assert torch.isnan(const).all()


def test_bad_input_is_one_line():
    ids, mask, keep = texts([4], [0])
    with pytest.raises(NnfeatError, match="rank_by"):
        ts.token_deletion_insertion(key_score, ids, mask, key_first(ids), BASE, rank_by="size")
    with pytest.raises(NnfeatError, match=r"\(B, T\)"):
        ts.token_deletion_insertion(key_score, ids, mask, key_first(ids)[:, :3], BASE)
    with pytest.raises(NnfeatError, match="finite"):
        ts.token_deletion_insertion(key_score, ids, mask, key_first(ids) * float("nan"), BASE)


@pytest.fixture(scope="module")
def shortcut():
    return st.trained_model()


def grad_norm(model, ids, mask):
    """|d planted logit / d embedding| per token (the test's own, 10 lines)."""
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
    return store["e"].grad.norm(dim=-1)


def test_cascading_randomization_passes_a_gradient_and_fails_a_model_blind_ranking(shortcut):
    data = st.held_out(24, seed=5)
    keep = ts.special_mask(data.ids, shortcut.tokenizer.specials.values())
    passed = ts.cascading_randomization(shortcut, data.ids, data.mask, grad_norm, keep=keep, ks=[1, 3])
    assert passed.layers[0] == "head" and passed.layers[-1] == "embed"
    assert passed.depths[-1] == len(passed.layers) and passed.passes and passed.final_median < 0.3
    blind = ts.cascading_randomization(shortcut, data.ids, data.mask,
                                       lambda _m, ids, _mask: torch.arange(ids.shape[1]).float().expand_as(ids),
                                       keep=keep, ks=[2])
    assert not blind.passes and blind.final_median == pytest.approx(1.0)
    text = ts.verdicts(randomization=blind)[0].text
    assert "fails randomization" in text and "≥ 0.3" in text
    # the model itself is untouched
    again = grad_norm(shortcut, data.ids, data.mask)
    torch.testing.assert_close(again, grad_norm(shortcut, data.ids, data.mask))
    assert shortcut(data.ids, data.mask).argmax(1).eq(data.labels).all()
