"""Saliency over tokens: how much each input token moves a token model's score (tensors in, tensors out).

Every method works on the output of the model's input embedding (``model.embedding`` names the module): a
forward hook records that output (made to require grad, as the parameters are frozen) or replaces it (a path
point, a noisy copy, an occluded copy); a seq2seq model that names its decoder embedding
(``model.target_embedding``) is explained over its source and its decoder's earlier tokens at once (joint rows,
:mod:`nnfeat.analysis.token_embedding`). Methods, registered in :data:`TOKEN_SALIENCY` in page order:

* ``gradient`` -- the L2 norm over the embedding dimension of d score / d embedding (Simonyan et al. 2014;
  Li et al. 2016 for text);
* ``gradient-x-input`` -- the sum over the embedding dimension of gradient * embedding (signed; Shrikumar et al.
  2016);
* ``integrated-gradients`` -- the sum over the embedding dimension of (e - e') * the gradient averaged along the
  straight path from the baseline embedding e' to e, midpoint rule over ``steps`` points (Sundararajan et al.
  2017; captum's ``riemann_middle``); signed, and complete: the row's attributions sum to f(e) - f(e');
* ``smoothgrad`` -- the gradient's L2 norm averaged over ``samples`` copies with Gaussian noise of standard
  deviation ``noise`` * (max - min of the text's embedding values) added to the embeddings (Smilkov et al. 2017);
* ``occlusion`` -- f(e) minus f with one token's embedding replaced by the baseline's (signed; Zeiler & Fergus
  2014 over tokens);
* ``occlusion-span`` -- the same for windows of ``window`` tokens, each token getting the mean drop of the
  windows that cover it.

Baselines (:data:`TOKEN_BASELINES`): ``pad`` (the pad token's embedding), ``mask`` (the [MASK] token's) or
``zero`` (a zero embedding). Special tokens ([CLS], <bos>, ...) keep their own embedding in every baseline,
path and occlusion. Path points, noisy copies and occluded copies of all rows run batched, ``batch_size`` rows
per forward and backward pass (by default :data:`TOKENS_PER_PASS` tokens' worth: :func:`rows_per_pass`); no Python
loop runs over texts, steps or path points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from nnfeat.analysis.registry import Registry
from nnfeat.analysis.token_embedding import (TOKEN_BASELINES, baseline_id, embed, embedding_hook, make_baseline,
                                             special_mask)
from nnfeat.analysis.token_targets import TokenTarget, make_target
from nnfeat.errors import NnfeatError
from nnfeat.models.text import TokenBatch, TokenModel

#: rows per forward / backward pass of the batched methods at most (``batch_size=None``: see :func:`rows_per_pass`)
BATCH_SIZE = 256
#: tokens per forward / backward pass by default. Measured on minilm, one thread (fwd + bwd to the embedding, rows
#: of 128 tokens, SDPA attention): 1,024 to 16,384 tokens a pass cost the same per token within 9 %; 32,768 (256
#: rows) cost 1.37x with eager attention (``experiments/bench_token_ig.py``): a pass's activations outgrow the caches.
TOKENS_PER_PASS = 8192
#: rows of a masked model run at their length rounded up to a multiple of this (:func:`row_groups`)
WIDTH_STEP = 16


def rows_per_pass(width: int, batch_size: int | None = None) -> int:
    """Rows of ``width`` tokens per forward / backward pass: ``batch_size`` when given, else as many as fit in
    :data:`TOKENS_PER_PASS` tokens (64 rows of 128 tokens), at least 1 and at most :data:`BATCH_SIZE`.

    >>> rows_per_pass(128), rows_per_pass(8), rows_per_pass(512), rows_per_pass(128, 16)
    (64, 256, 16, 16)
    """
    if batch_size is not None:
        return int(batch_size)
    return max(1, min(BATCH_SIZE, TOKENS_PER_PASS // max(1, int(width))))


@dataclass(frozen=True)
class TokenMethod:
    """One registered method: ``compute(model, target, rows, base, **options)`` -> (M, T) attributions of the
    target rows ``rows``; ``signed``: its values carry a sign (positive: evidence for the score)."""

    name: str
    compute: Callable
    signed: bool


#: every token saliency method, in page order
TOKEN_SALIENCY = Registry("token saliency method")


def _register(name: str, signed: bool):
    return lambda fn: TOKEN_SALIENCY.register(name, TokenMethod(name, fn, signed))


def _grad(model: TokenModel, target: TokenTarget, rows: torch.Tensor, ids, mask, emb: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (M,) and d score / d embedding (M, T, D) at embedding ``emb`` (one forward, one backward)."""
    emb = emb.detach().requires_grad_(True)
    with torch.enable_grad(), embedding_hook(model, emb, target.source_width):
        score = target.score(model, ids, mask, rows)
        (grad,) = torch.autograd.grad(score.sum(), emb)
    return score.detach(), grad


def _chunked(fn, n: int, batch_size: int) -> list:
    """fn(slice) over ``n`` rows in chunks of ``batch_size``."""
    return [fn(slice(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


# -- methods --------------------------------------------------------------------------------------------
@_register("gradient", signed=False)
def _gradient(model, target, rows, ids, mask, base, *, batch_size=BATCH_SIZE, **_):
    emb = embed(model, ids, target.source_width)
    return torch.cat(_chunked(lambda s: _grad(model, target, rows[s], ids[s], mask[s], emb[s])[1].norm(dim=-1),
                              len(rows), batch_size))


@_register("gradient-x-input", signed=True)
def _gradient_x_input(model, target, rows, ids, mask, base, *, batch_size=BATCH_SIZE, **_):
    emb = embed(model, ids, target.source_width)
    return torch.cat(_chunked(lambda s: (_grad(model, target, rows[s], ids[s], mask[s], emb[s])[1] * emb[s]).sum(-1),
                              len(rows), batch_size))


def ig_alphas(steps: int, device=None) -> torch.Tensor:
    """(steps,) midpoints of ``steps`` equal parts of [0, 1] (captum's ``riemann_middle``)."""
    return (torch.arange(steps, device=device, dtype=torch.float32) + 0.5) / steps


@_register("integrated-gradients", signed=True)
def _integrated_gradients(model, target, rows, ids, mask, base, *, steps=32, batch_size=BATCH_SIZE, **_):
    emb = embed(model, ids, target.source_width)
    alphas = ig_alphas(steps, emb.device).to(emb.dtype)
    m = len(rows)
    # path rows, alpha-major: point a of row r is flat index a * m + r
    flat = torch.arange(steps * m, device=emb.device)
    which, a = flat % m, flat // m

    total = torch.zeros_like(emb)  # (M, T, D): the gradients summed over the path, chunk by chunk

    def part(s):
        w, al = which[s], alphas[a[s]][:, None, None]
        point = base.emb[w] + al * (emb[w] - base.emb[w])
        total.index_add_(0, w, _grad(model, target, rows[w], ids[w], mask[w], point)[1])

    _chunked(part, steps * m, max(batch_size, 1))  # no (steps * M, T, D) buffer: each chunk is added, then freed
    return ((emb - base.emb) * (total / steps)).sum(-1)


@_register("smoothgrad", signed=False)
def _smoothgrad(model, target, rows, ids, mask, base, *, samples=16, noise=0.1, seed=0,
                batch_size=BATCH_SIZE, **_):
    emb = embed(model, ids, target.source_width)
    real = mask[..., None].expand_as(emb)
    span = torch.where(real, emb, emb.new_tensor(float("-inf"))).amax((1, 2)) - \
        torch.where(real, emb, emb.new_tensor(float("inf"))).amin((1, 2))
    sigma = (noise * span)[:, None, None]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    eps = torch.randn((samples, *emb.shape), generator=gen, dtype=torch.float32).to(emb)
    m = len(rows)
    flat = torch.arange(samples * m, device=emb.device)
    which, k = flat % m, flat // m

    def part(s):
        w = which[s]
        noisy = emb[w] + sigma[w] * eps[k[s], w]
        return _grad(model, target, rows[w], ids[w], mask[w], noisy)[1].norm(dim=-1)

    norms = torch.cat(_chunked(part, samples * m, batch_size))
    return norms.view(samples, m, -1).mean(0)


def _scores_at(model, target, rows, ids, mask, emb, batch_size) -> torch.Tensor:
    def part(s):
        with torch.no_grad(), embedding_hook(model, emb[s], target.source_width):
            return target.score(model, ids[s], mask[s], rows[s])
    return torch.cat(_chunked(part, len(rows), batch_size))


def _occlude(model, target, rows, ids, mask, base, window: int, batch_size: int) -> torch.Tensor:
    """Each window of ``window`` tokens (starting at every position) set to the baseline: (M, T) mean drop of the
    score over the windows covering each token (0 at kept positions)."""
    emb = embed(model, ids, target.source_width)
    m, t = ids.shape
    full = _scores_at(model, target, rows, ids, mask, emb, batch_size)
    pos = torch.arange(t, device=ids.device)
    cover = (pos[None, :] >= pos[:, None]) & (pos[None, :] < pos[:, None] + window)  # (start, T)
    cover = cover & (pos[:, None] < t)
    flat = torch.arange(t * m, device=ids.device)
    which, start = flat % m, flat // m

    def part(s):
        w, c = which[s], cover[start[s]] & ~base.keep[which[s]]
        occluded = torch.where(c[..., None], base.emb[w], emb[w])
        with torch.no_grad(), embedding_hook(model, occluded, target.source_width):
            return target.score(model, ids[w], mask[w], rows[w])

    drops = full[which] - torch.cat(_chunked(part, t * m, batch_size))  # (t * m,)
    drops = drops.view(t, m)  # [start, row]
    hit = cover[:, None, :] & ~base.keep[None]  # (start, m, T)
    total = (drops[..., None] * hit).sum(0)
    count = hit.sum(0).clamp_min(1)
    return torch.where(base.keep, torch.zeros_like(total), total / count)


@_register("occlusion", signed=True)
def _occlusion(model, target, rows, ids, mask, base, *, batch_size=BATCH_SIZE, **_):
    return _occlude(model, target, rows, ids, mask, base, 1, batch_size)


@_register("occlusion-span", signed=True)
def _occlusion_span(model, target, rows, ids, mask, base, *, window=3, batch_size=BATCH_SIZE, **_):
    return _occlude(model, target, rows, ids, mask, base, int(window), batch_size)


# -- the entry point ------------------------------------------------------------------------------------
def parse_token_methods(text: str | Sequence[str]) -> list[str]:
    """``"gradient,occlusion"`` or a list -> checked method names (``all``: every method)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if names == ["all"]:
        return TOKEN_SALIENCY.names()
    if not names:
        raise NnfeatError(f"no method given: choose from {', '.join(TOKEN_SALIENCY.names())}")
    return [TOKEN_SALIENCY.check(n) for n in names]


def row_groups(model: TokenModel, target: TokenTarget) -> list[tuple[torch.Tensor, int]]:
    """(row numbers, width) groups of the target's rows, each run at its first ``width`` columns:

    * a network called without a mask (``call="ids"``): one group per distinct length, as padding would change
      what it computes;
    * a masked network whose rows are right-padded and whose target reads no padded position (a class logit, a
      pair similarity; not joint seq2seq rows): rows grouped by their length rounded up to :data:`WIDTH_STEP`,
      the padding beyond cut. Masked positions change nothing the target reads, so the values are the same
      within float rounding, and a batch of mixed lengths no longer pays for its longest text in every pass;
    * otherwise one group at the full width.

    >>> class M: call = "ids_mask"
    >>> from types import SimpleNamespace as T
    >>> mask = torch.arange(40)[None] < torch.tensor([[5], [40], [12], [17]])
    >>> target = T(rows=4, ids=mask.long(), mask=mask, kind="pair", source_width=None)
    >>> [(r.tolist(), w) for r, w in row_groups(M, target)]
    [([0, 2], 16), ([3], 32), ([1], 40)]
    """
    n, full = target.rows, target.ids.shape[1]
    everything = [(torch.arange(n, device=target.ids.device), full)]
    if bool(target.mask.all()):
        return everything
    lengths = target.mask.sum(1)
    if model.call == "ids":
        return [((lengths == k).nonzero()[:, 0], int(k)) for k in sorted(set(lengths.tolist()))]
    right_padded = bool((target.mask.long().cumprod(1).sum(1) == lengths).all())
    if not right_padded or target.source_width is not None or target.kind not in ("class", "pair"):
        return everything
    widths = ((lengths + WIDTH_STEP - 1) // WIDTH_STEP * WIDTH_STEP).clamp(max=full)
    return [((widths == w).nonzero()[:, 0], int(w)) for w in sorted(set(widths.tolist()))]


def row_attributions(model: TokenModel, target: TokenTarget, method: str, *, baseline: str = "pad",
                     batch_size: int | None = None, **options) -> torch.Tensor:
    """(N, T) attributions of every target row (padded positions 0), the rows run in the groups of
    :func:`row_groups` (a network called without a mask gets rows of one length per pass, so padding never changes
    what it computes; a masked one runs without most of the padding). ``batch_size``: rows per forward / backward
    pass (None: :func:`rows_per_pass` of the rows' width)."""
    entry = TOKEN_SALIENCY[method]
    baseline_id(model, baseline)
    out = torch.zeros(target.ids.shape, dtype=torch.float32, device=target.ids.device)
    for rows, width in row_groups(model, target):  # groups by length, not per text
        ids, mask = target.ids[rows, :width], target.mask[rows, :width]
        base = make_baseline(model, ids, mask, embed(model, ids, target.source_width), baseline,
                             target.source_width)
        values = entry.compute(model, target, rows, ids, mask, base, batch_size=rows_per_pass(width, batch_size),
                               **options)
        out[rows, :width] = values.float() * mask
    return out


def token_attributions(model: TokenModel, batch: TokenBatch, method: str, target: TokenTarget | str | None = "pred",
                       *, baseline: str = "pad", steps: int = 32, samples: int = 16, noise: float = 0.1,
                       seed: int = 0, window: int = 3, batch_size: int | None = None, pair: str | None = None,
                       target_texts: Sequence[str] | None = None) -> torch.Tensor:
    """Attributions of ``method`` for ``target`` over the tokens of ``batch``.

    Returns:
        (B, T) float, padded positions 0, for one-step targets (classifier, encoder); for lm and seq2seq
        targets (B, K, T'): per text and explained output step its attributions over the input tokens (seq2seq:
        the source; lm: the text and its continuation, causal), steps beyond a text's own 0.
    """
    target = target if isinstance(target, TokenTarget) else make_target(model, batch, target, pair=pair,
                                                                        target_texts=target_texts)
    rows = row_attributions(model, target, method, baseline=baseline, steps=steps, samples=samples, noise=noise,
                            seed=seed, window=window, batch_size=batch_size)
    return as_matrix(rows, target)


def as_matrix(rows: torch.Tensor, target: TokenTarget) -> torch.Tensor:
    """(N, T) row attributions -> (B, T) one-step, else (B, K, T) (see :func:`token_attributions`)."""
    if not target.multi_step:
        return rows
    b, k = len(target.steps), max(target.steps)
    out = rows.new_zeros((b, k, rows.shape[1]))
    out[target.text, target.step] = rows
    return out


__all__ = ["BATCH_SIZE", "TOKENS_PER_PASS", "WIDTH_STEP", "rows_per_pass", "row_groups", "TOKEN_BASELINES",
           "TOKEN_SALIENCY", "TokenMethod", "as_matrix", "baseline_id", "embed",
           "embedding_hook", "ig_alphas", "make_baseline", "parse_token_methods", "row_attributions",
           "special_mask", "token_attributions"]
