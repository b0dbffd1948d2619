"""How far to trust a token attribution: deletion / insertion over tokens, the cascading randomization test, and
the agreement of two token rankings (attention vs attribution).

* :func:`token_deletion_insertion` -- RISE's causal metrics (Petsiuk et al. 2018) over tokens. The attribution
  ranks a text's tokens, most salient first (``rank_by``: ``value``, most positive first, or ``abs``); ties are
  broken at random (seeded). *Deletion* replaces them one at a time (or ``steps`` equal fractions at a time) by
  the baseline token; *insertion* starts from the text with every token replaced by the baseline and puts them
  back in the same order. Special tokens (``keep``) and padding are never replaced and do not count. Each AUC is
  the trapezoid area under the score (a probability, from ``score_fn``) vs the fraction of the text's tokens
  replaced / put back (0..1): a faithful attribution has a low deletion and a high insertion AUC. Every step of
  every text runs as batched calls of ``score_fn`` (a (text, step) pair scored once, ``batch_size`` pairs a
  call). :func:`random_ranking` is the seeded chance level; :func:`compare_with_random` scores both in one
  stream of calls.
* :func:`cascading_randomization` -- Adebayo et al. 2018 ("Sanity checks for saliency maps") for a token model:
  on a deep copy, re-initialize the modules that hold parameters one more at a time from the output down (the
  reverse of the order a forward pass calls them), and compute the Spearman correlation of |attribution| before
  and after, per text, over its real tokens. A method whose median after full randomization is >= ``threshold``
  (0.3) *fails*: its attributions do not depend on what the model learned.
* :func:`kendall_tau` -- Kendall's tau-b per text over its real tokens (ties counted as in tau-b), the measure
  Jain & Wallace 2019 ("Attention is not explanation") use to compare attention with attributions.
* :func:`verdicts` -- each check named as passed or failed, in words a reader cannot take for "fine".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from nnfeat.analysis.attribution import chunks
from nnfeat.analysis.sanity import THRESHOLD, average_ranks, reinitialize
from nnfeat.errors import NnfeatError
from nnfeat.hooks import layer_root

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
RANK_BY = ("value", "abs")


# -- rankings ---------------------------------------------------------------------------------------------
def special_mask(ids: torch.Tensor, special_ids: Iterable[int]) -> torch.Tensor:
    """(B, T) ids -> (B, T) bool, True at special tokens (``special_ids``, e.g. ``tokenizer.specials.values()``)."""
    specials = torch.tensor(sorted({int(i) for i in special_ids}), dtype=ids.dtype, device=ids.device)
    return torch.isin(ids, specials)


def classifier_scores(model: nn.Module) -> ScoreFn:
    """A ``score_fn`` for a classifier token model: ``(ids (N, T), mask (N, T)) -> (N, K)`` softmax
    probabilities (pass ``targets`` to :func:`token_deletion_insertion` to track each text's class)."""
    return lambda ids, mask: model(ids, mask).float().softmax(-1)


def random_ranking(mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A seeded uniform-noise attribution (B, T) over the real tokens of ``mask`` (0 at padding): the chance level."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand(tuple(mask.shape), generator=g).to(mask.device).masked_fill(~mask.bool(), 0.0)


def token_ranks(scores: torch.Tensor, eligible: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(B, T) scores -> (B, T) long rank of each eligible token (0 = highest score); ties broken at random
    (seeded); tokens not ``eligible`` get rank T (never perturbed)."""
    b, t = scores.shape
    g = torch.Generator().manual_seed(int(seed))
    shuffle = torch.argsort(torch.rand((b, t), generator=g), 1).to(scores.device)
    values = scores.float().masked_fill(~eligible, float("-inf"))
    order = shuffle.gather(1, torch.sort(values.gather(1, shuffle), dim=1, descending=True, stable=True).indices)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(t, device=scores.device).expand_as(order).contiguous())
    return ranks.masked_fill(~eligible, t)


def _check(ids: torch.Tensor, mask: torch.Tensor, ranking: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Validate shapes; -> (B, T) bool eligible tokens (real and not kept)."""
    if ids.dim() != 2 or tuple(mask.shape) != tuple(ids.shape) or tuple(ranking.shape) != tuple(ids.shape):
        raise NnfeatError(f"ids, mask and ranking must all be (B, T); got {tuple(ids.shape)}, {tuple(mask.shape)}, "
                          f"{tuple(ranking.shape)}")
    eligible = mask.bool()
    if keep is not None:
        if tuple(keep.shape) != tuple(ids.shape):
            raise NnfeatError(f"keep must be (B, T) = {tuple(ids.shape)}; got {tuple(keep.shape)}")
        eligible = eligible & ~keep.bool().to(ids.device)
    if not bool(torch.isfinite(ranking.float()[eligible]).all()):
        raise NnfeatError("the ranking has NaN or infinite attributions at real tokens: give finite values")
    return eligible


# -- deletion / insertion ---------------------------------------------------------------------------------
@torch.no_grad()
def token_deletion_insertion(score_fn: ScoreFn, ids: torch.Tensor, mask: torch.Tensor, ranking: torch.Tensor,
                             baseline_id: int, *, steps: int | None = None, keep: torch.Tensor | None = None,
                             targets: torch.Tensor | None = None, rank_by: str = "value", seed: int = 0,
                             batch_size: int = 256, with_rows: bool = False) -> dict:
    """Deletion and insertion AUC of (B, T) attributions ``ranking`` for (B, T) ``ids`` / ``mask``.

    Args:
        score_fn: ``(ids (N, T), mask (N, T)) -> (N,)`` probabilities (or (N, K) with ``targets``); with
            ``with_rows`` it also takes (N,) long, which of the B texts each of the N rows is.
        baseline_id: the token that replaces deleted tokens and fills the insertion start (pad, ``[MASK]``, ...).
        steps: ``None``: one token at a time (exact); else ``steps`` equal fractions of each text's tokens.
        keep: (B, T) bool, tokens never replaced (special tokens: :func:`special_mask`).
        targets: (B,) long: ``score_fn`` gives (N, K) and each text's own column is tracked.
        rank_by: ``value`` (most positive first) or ``abs`` (largest |attribution| first).
        seed: breaks ties in the ranking.
        batch_size: (text, step) pairs per ``score_fn`` call.

    Returns:
        ``deletion``, ``insertion``: (B,) AUCs (NaN for a text with no token to perturb); ``curves``: dict of
        ``deletion``, ``insertion`` (B, S + 1) scores and ``fractions`` (B, S + 1) fractions of the text's tokens
        (S = ``steps`` or the most tokens of any text); ``tokens`` (B,) tokens perturbed; ``calls`` (score_fn calls).
    """
    if rank_by not in RANK_BY:
        raise NnfeatError(f"rank_by must be 'value' or 'abs'; got '{rank_by}'")
    if steps is not None and int(steps) < 1:
        raise NnfeatError(f"deletion/insertion needs steps >= 1 (or None: one token a step); got {steps}")
    eligible = _check(ids, mask, ranking, keep)
    scores = ranking.to(ids.device).float()
    ranks = token_ranks(scores.abs() if rank_by == "abs" else scores, eligible, seed)
    n = eligible.sum(1)  # (B,)
    s_count = int(steps) if steps is not None else max(1, int(n.max()))
    grid = torch.arange(s_count + 1, device=ids.device)[None, :]
    if steps is None:
        counts = torch.minimum(grid, n[:, None])
    else:
        counts = torch.round(grid.double() / s_count * n[:, None].double()).long()
    counts = counts.expand(len(ids), -1).contiguous()  # (B, S + 1) tokens perturbed at each step
    new = torch.ones_like(counts, dtype=torch.bool)
    new[:, 1:] = counts[:, 1:] != counts[:, :-1]  # a (text, count) pair is scored once
    rows, cols = new.nonzero(as_tuple=True)
    pairs = torch.cat([torch.stack([rows, cols, torch.zeros_like(rows)], 1),
                       torch.stack([rows, cols, torch.ones_like(rows)], 1)])  # (P, 3): text, step, insertion?
    probs = torch.empty(len(pairs), dtype=torch.float64, device=ids.device)
    calls = 0
    for part in chunks(len(pairs), batch_size):  # chunks of (text, step) pairs, not single texts
        r, c, ins = pairs[part].unbind(1)
        chosen = ranks[r] < counts[r, c][:, None]
        replace = torch.where(ins.bool()[:, None], eligible[r] & ~chosen, chosen)
        x = torch.where(replace, torch.full_like(ids[r], int(baseline_id)), ids[r])
        out = score_fn(x, mask[r], r) if with_rows else score_fn(x, mask[r])
        if targets is not None:
            out = out.gather(1, targets.to(out.device)[r][:, None])[:, 0]
        if out.shape != (len(r),):
            raise NnfeatError(f"score_fn must return ({len(r)},) scores (or (N, K) with targets); got "
                              f"{tuple(out.shape)}")
        probs[part] = out.detach().double().to(ids.device)
        calls += 1
    curves = []
    last = torch.cummax(torch.arange(s_count + 1, device=ids.device)[None, :] * new, 1).values  # forward fill
    for kind in (0, 1):
        grid_p = torch.zeros(counts.shape, dtype=torch.float64, device=ids.device)
        grid_p[rows, cols] = probs[kind * len(rows):(kind + 1) * len(rows)]
        curves.append(grid_p.gather(1, last))
    fractions = counts.double() / n[:, None].double()
    auc = [torch.trapezoid(curve, fractions, dim=1) for curve in curves]
    return {"deletion": auc[0].float(), "insertion": auc[1].float(),
            "curves": {"deletion": curves[0].float(), "insertion": curves[1].float(), "fractions": fractions.float()},
            "tokens": n, "calls": calls, "steps": s_count, "rank_by": rank_by, "baseline_id": int(baseline_id)}


def compare_with_random(score_fn: ScoreFn, ids: torch.Tensor, mask: torch.Tensor, ranking: torch.Tensor,
                        baseline_id: int, *, keep: torch.Tensor | None = None, steps: int | None = None,
                        targets: torch.Tensor | None = None, rank_by: str = "value", seed: int = 0,
                        repeats: int = 1, batch_size: int = 256, with_rows: bool = False) -> dict:
    """:func:`token_deletion_insertion` of ``ranking`` and of ``repeats`` seeded random rankings
    (:func:`random_ranking`, seeds ``seed`` .. ``seed + repeats - 1``), in one stream of ``score_fn`` calls.
    Returns ``{"method": ..., "random": ...}``; the random AUCs (B,) are averaged over the repeats. With
    ``with_rows``, ``score_fn`` gets each row's text index in 0..B-1 (as :func:`token_deletion_insertion`)."""
    if repeats < 1:
        raise NnfeatError(f"random repeats must be at least 1; got {repeats}")
    b = len(ids)
    rand = [random_ranking(mask, seed + r) for r in range(repeats)]
    every = torch.cat([ranking.to(ids.device).float()] + rand)
    tile = 1 + repeats
    tiled_fn = (lambda x, m, r: score_fn(x, m, r % b)) if with_rows else score_fn
    both = token_deletion_insertion(
        tiled_fn, ids.repeat(tile, 1), mask.repeat(tile, 1), every, baseline_id, steps=steps,
        keep=None if keep is None else keep.repeat(tile, 1), targets=None if targets is None else targets.repeat(tile),
        rank_by=rank_by, seed=seed, batch_size=batch_size, with_rows=with_rows)

    def part(lo: int, hi: int) -> dict:
        reps = (hi - lo) // b
        mean = lambda t: t[lo:hi].reshape(reps, b, *t.shape[1:]).mean(0)  # noqa: E731
        return {"deletion": mean(both["deletion"]), "insertion": mean(both["insertion"]),
                "curves": {k: mean(v) for k, v in both["curves"].items()}, "tokens": both["tokens"][:b],
                "steps": both["steps"], "rank_by": rank_by, "baseline_id": int(baseline_id)}

    return {"method": part(0, b), "random": part(b, tile * b), "calls": both["calls"], "repeats": repeats}


# -- rank agreement ---------------------------------------------------------------------------------------
def masked_spearman(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of (B, T) ``a`` and ``b`` per row over the tokens of ``mask`` -> (B,) (ties get
    their average rank; NaN where either row is constant or has fewer than 2 tokens)."""
    mask = mask.bool().to(a.device)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=a.device)
    ra = average_ranks(torch.where(mask, a.double(), inf))  # padding ranks after every real token
    rb = average_ranks(torch.where(mask, b.double().to(a.device), inf))
    n = mask.sum(1, keepdim=True).clamp_min(1)
    ra = (ra - (ra * mask).sum(1, keepdim=True) / n) * mask
    rb = (rb - (rb * mask).sum(1, keepdim=True) / n) * mask
    denom = ra.square().sum(1).sqrt() * rb.square().sum(1).sqrt()
    return torch.where(denom > 1e-12, (ra * rb).sum(1) / denom.clamp_min(1e-300), torch.full_like(denom, float("nan")))


def kendall_tau(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, *, block: int = 1 << 22) -> torch.Tensor:
    """Kendall's tau-b of (B, T) ``a`` and ``b`` per row over the tokens of ``mask`` -> (B,) float64:
    (concordant - discordant pairs) / sqrt(pairs untied in a * pairs untied in b); NaN where a row is constant
    or has fewer than 2 tokens. Rows are done ``block`` // T^2 at a time (all pairs of a row at once)."""
    if a.shape != b.shape or a.shape != mask.shape or a.dim() != 2:
        raise NnfeatError(f"kendall_tau needs (B, T) a, b and mask of one shape; got {tuple(a.shape)}, "
                          f"{tuple(b.shape)}, {tuple(mask.shape)}")
    t = a.shape[1]
    out = []
    for part in chunks(len(a), max(1, block // max(1, t * t))):  # blocks of rows, not single rows
        x, y, m = a[part].double(), b[part].double().to(a.device), mask[part].bool().to(a.device)
        w = (m[:, :, None] & m[:, None, :]).double()
        sa = torch.sign(x[:, :, None] - x[:, None, :]) * w
        sb = torch.sign(y[:, :, None] - y[:, None, :]) * w
        denom = (sa.abs().sum((1, 2)) * sb.abs().sum((1, 2))).sqrt()
        num = (sa * sb).sum((1, 2))
        out.append(torch.where(denom > 0, num / denom.clamp_min(1e-300), torch.full_like(num, float("nan"))))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


# -- cascading randomization ------------------------------------------------------------------------------
@torch.no_grad()
def token_parameter_layers(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None,
                           decoder_ids: torch.Tensor | None = None) -> list[str]:
    """Names of the modules of ``model``'s network that hold parameters themselves, top (nearest the output)
    first: the reverse of the order one forward pass on ``ids[:1]`` calls them (modules never called last)."""
    root = layer_root(model)
    owners = [n for n, m in root.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    if not owners:
        raise NnfeatError("the model has no layer with parameters: nothing to randomize")
    modules = dict(root.named_modules())
    order: list[str] = []
    handles = [modules[name].register_forward_hook(
        lambda _m, _i, _o, name=name: order.append(name) if name not in order else None) for name in owners]
    try:
        args = (ids[:1], None if mask is None else mask[:1])
        model(*args) if decoder_ids is None else model(*args, decoder_ids[:1])
    finally:
        for handle in handles:
            handle.remove()
    order += [n for n in owners if n not in order]
    return order[::-1]


@dataclass
class TokenRandomization:
    """The cascading randomization test of one method over B texts. ``layers``: re-initialized modules, top first;
    ``correlations`` (K, repeats * B) Spearman of |attribution| after re-initializing the top ``depths[i]``;
    ``medians`` (K,) (NaN-ignoring); ``final_median``; ``passes`` (final median < ``threshold``); ``constant`` (K,)
    how many randomized attributions were constant (left out)."""

    layers: list[str]
    depths: list[int]
    correlations: torch.Tensor
    medians: torch.Tensor
    final_median: float
    threshold: float
    passes: bool
    constant: list[int] = field(default_factory=list)
    repeats: int = 1

    def summary(self) -> dict:
        r4 = lambda v: None if v != v else round(float(v), 4)  # noqa: E731
        return {"layers_top_down": self.layers, "depths": self.depths,
                "median_spearman": [r4(m) for m in self.medians.tolist()], "final_median_spearman":
                r4(self.final_median), "threshold": self.threshold, "passes": self.passes, "repeats": self.repeats,
                "constant": self.constant}


def cascading_randomization(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                            attribute_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor], *,
                            attributions: torch.Tensor | None = None, keep: torch.Tensor | None = None,
                            ks: Sequence[int] | None = None, seed: int = 0, repeats: int = 1,
                            threshold: float = THRESHOLD, decoder_ids: torch.Tensor | None = None
                            ) -> TokenRandomization:
    """Adebayo et al. 2018's cascading randomization for token attributions (module docstring).

    Args:
        model: a token model (``model(ids, mask)`` runs it; it is never changed: deep copies are randomized).
        attribute_fn: ``(model, ids, mask) -> (B, T)`` attributions (targets fixed inside it, e.g. the original
            model's predictions).
        attributions: the original model's (B, T) attributions, if already computed.
        keep: (B, T) bool tokens left out of the correlation (special tokens); padding always is.
        ks: cascade depths to evaluate (1-based; default every one; all layers always last).
        seed, repeats: independent cascades (seeds ``seed``, ``seed + 1``, ...), correlations pooled.
    """
    if repeats < 1:
        raise NnfeatError(f"randomization repeats must be at least 1; got {repeats}")
    real = mask.bool() if keep is None else mask.bool() & ~keep.bool()
    before = attribute_fn(model, ids, mask) if attributions is None else attributions
    layers = token_parameter_layers(model, ids, mask, decoder_ids)
    n = len(layers)
    wanted = sorted({int(k) for k in (ks or range(1, n + 1))} | {n})
    if wanted[0] < 1:
        raise NnfeatError(f"cascade depths must be 1..{n}; got {wanted[0]}")
    wanted = [k for k in wanted if k <= n]
    per_repeat = []
    for r in range(repeats):  # independent cascades
        randomized = copy.deepcopy(model)
        modules = dict(layer_root(randomized).named_modules())
        rows, done = [], 0
        for k in wanted:  # one more layer each time, top down
            for j in range(done, k):
                reinitialize(modules[layers[j]], (seed + r) * 1000 + j)
            done = k
            after = attribute_fn(randomized, ids, mask)
            rows.append(masked_spearman(before.abs().float(), after.abs().float(), real).float().cpu())
        per_repeat.append(torch.stack(rows))
        del randomized
    corr = torch.cat(per_repeat, 1)
    medians = corr.nanmedian(1).values
    final = float(medians[-1])
    passes = bool(final == final and final < threshold)
    return TokenRandomization(layers, wanted, corr, medians, final, threshold, passes,
                              [int(c) for c in corr.isnan().sum(1)], repeats)


# -- verdicts ---------------------------------------------------------------------------------------------
@dataclass
class Verdict:
    """One named check: ``check`` (``deletion``, ``insertion``, ``randomization``), ``passed``, ``text`` (one
    line that says passed or FAILED and why, with the numbers)."""

    check: str
    passed: bool
    text: str


def verdicts(causal: dict | None = None, randomization: TokenRandomization | None = None) -> list[Verdict]:
    """Each check of ``causal`` (:func:`compare_with_random`'s output: mean AUCs of the method vs the random
    ranking) and ``randomization`` named as passed or FAILED, in words that cannot be read as "fine"."""
    out: list[Verdict] = []
    if causal is not None:
        m, r = causal["method"], causal["random"]
        for check, better in (("deletion", "lower"), ("insertion", "higher")):
            mine, chance = float(m[check].nanmean()), float(r[check].nanmean())
            ok = mine < chance if better == "lower" else mine > chance
            numbers = f"AUC {mine:.3f} vs random {chance:.3f}, {better} is better"
            text = (f"{check}: passed ({numbers})" if ok else
                    f"{check}: FAILED, {'worse than' if mine != chance else 'no better than'} random on {check} "
                    f"({numbers})")
            out.append(Verdict(check, ok, text))
    if randomization is not None:
        rho, thr = randomization.final_median, randomization.threshold
        if rho != rho:
            text = ("randomization: FAILED, fails randomization (every attribution of the fully randomized model "
                    "was constant: no correlation to measure)")
        elif randomization.passes:
            text = f"randomization: passed (median ρ {rho:.3f} < {thr:g} after full randomization)"
        else:
            text = (f"randomization: FAILED, fails randomization (median ρ {rho:.3f} ≥ {thr:g} after full "
                    "randomization)")
        out.append(Verdict("randomization", randomization.passes, text))
    return out


__all__ = ["RANK_BY", "THRESHOLD", "TokenRandomization", "Verdict", "cascading_randomization", "classifier_scores",
           "compare_with_random",
           "kendall_tau", "masked_spearman", "random_ranking", "special_mask", "token_deletion_insertion",
           "token_parameter_layers", "token_ranks", "verdicts"]
