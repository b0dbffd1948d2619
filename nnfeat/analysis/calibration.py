"""How far to trust a classifier's confidence (tensors in, tensors out): entropy, rank statistics, calibration.

* :func:`entropy` -- Shannon entropy in nats;
* :func:`calibration` -- reliability over equal-width confidence bins and the expected calibration error (Guo et
  al. 2017, "On calibration of modern neural networks");
* :func:`auroc` -- the AUROC of a score for telling misclassified from correct images (rank-based with tied ranks
  averaged, :func:`rankdata`; Hendrycks & Gimpel 2017);
* :func:`set_metrics` -- all of them over a labelled set, as a JSON-able dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nnfeat.errors import NnfeatError

ECE_BINS = 15


def entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats along ``dim`` (0 log 0 = 0): (..., K) -> (...)."""
    p = probs.double()
    return -torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum(dim).to(probs.dtype)




# -- set-level quantities -----------------------------------------------------------------------------
def rankdata(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n along the last dim of (..., n), ties given their average rank (as scipy's ``rankdata``)."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1]).double()
    rows, n = flat.shape
    values, order = flat.sort(dim=-1, stable=True)
    new_group = torch.ones_like(values, dtype=torch.bool)
    new_group[:, 1:] = values[:, 1:] != values[:, :-1]
    group = new_group.long().cumsum(-1) - 1 + (torch.arange(rows, device=x.device) * n)[:, None]  # unique ids
    position = torch.arange(1, n + 1, device=x.device, dtype=torch.float64).expand(rows, n)
    zeros = torch.zeros(rows * n, dtype=torch.float64, device=x.device)
    total = zeros.index_add(0, group.flatten(), position.flatten())
    count = zeros.index_add(0, group.flatten(), torch.ones_like(position).flatten())
    sorted_ranks = (total / count.clamp_min(1))[group]
    ranks = torch.empty_like(sorted_ranks).scatter_(-1, order, sorted_ranks)
    return ranks.reshape(shape)


def auroc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` (N,) for ``positives`` (N,) bool: the probability that a random
    positive scores above a random negative, ties counting 1/2 (Mann-Whitney U / (n+ n-)). NaN when either class
    is empty."""
    positives = positives.bool().flatten()
    n_pos, n = int(positives.sum()), positives.numel()
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores.flatten())
    u = float(ranks[positives].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


@dataclass(frozen=True)
class Calibration:
    """Reliability of confidences over equal-width bins (lower edge open, upper closed; bin 0 also takes 0).

    ``edges`` (bins+1,); ``counts`` (bins,) int; ``accuracy`` and ``confidence`` (bins,) means per bin (NaN for an
    empty bin); ``ece`` = Σ_b (n_b / N) |acc_b - conf_b|; ``mce`` the largest gap of a non-empty bin."""

    edges: torch.Tensor
    counts: torch.Tensor
    accuracy: torch.Tensor
    confidence: torch.Tensor
    ece: float
    mce: float


def calibration(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> Calibration:
    """Reliability bins and expected calibration error of ``confidence`` (N,) in [0, 1] against ``correct`` (N,)."""
    if confidence.numel() == 0:
        raise NnfeatError("calibration needs at least one labelled image")
    conf = confidence.double().flatten().clamp(0, 1)
    hit = correct.double().flatten()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64, device=conf.device)
    index = torch.searchsorted(edges[1:-1].contiguous(), conf, right=False)  # (lo, hi]: inner edges below conf
    counts = torch.bincount(index, minlength=bins)
    conf_sum = torch.bincount(index, weights=conf, minlength=bins)
    hit_sum = torch.bincount(index, weights=hit, minlength=bins)
    safe = counts.clamp_min(1).double()
    nan = torch.full((bins,), float("nan"), dtype=torch.float64, device=conf.device)
    acc_b = torch.where(counts > 0, hit_sum / safe, nan)
    conf_b = torch.where(counts > 0, conf_sum / safe, nan)
    gaps = (hit_sum - conf_sum).abs() / safe
    ece = float(((counts.double() / conf.numel()) * gaps).sum())
    mce = float(gaps[counts > 0].max())
    return Calibration(edges.cpu(), counts.cpu(), acc_b.cpu(), conf_b.cpu(), ece, mce)


def set_metrics(probs: torch.Tensor, labels: torch.Tensor, score: torch.Tensor | None = None,
                bins: int = ECE_BINS) -> dict:
    """Accuracy, ECE and MCE (and the reliability bins), NLL, mean entropy and the error-detection AUROC of
    ``score`` (default: the entropy of ``probs``) for probabilities (N, K) and labels (N,). A JSON-able dict."""
    labels = labels.long().flatten()
    confidence, prediction = probs.max(1)
    correct = prediction == labels
    score = entropy(probs) if score is None else score
    cal = calibration(confidence, correct, bins)
    nll = float(-probs.double().gather(1, labels[:, None]).clamp_min(1e-12).log().mean())
    area = auroc(score, ~correct)
    return {"n": int(labels.numel()), "accuracy": float(correct.double().mean()), "ece": cal.ece, "mce": cal.mce,
            "nll": nll, "mean_entropy": float(entropy(probs).mean()),
            "error_auroc": None if math.isnan(area) else area, "errors": int((~correct).sum()),
            "bins": {"edges": cal.edges.tolist(), "counts": cal.counts.tolist(),
                     "accuracy": [None if math.isnan(v) else v for v in cal.accuracy.tolist()],
                     "confidence": [None if math.isnan(v) else v for v in cal.confidence.tolist()]}}


__all__ = ["ECE_BINS", "entropy", "rankdata", "auroc", "Calibration", "calibration", "set_metrics"]
