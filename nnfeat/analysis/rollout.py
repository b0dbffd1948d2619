"""Attention rollouts over a ViT's layers (tensors in, tensors out): per-layer (B, heads, N, N) attention
weights, first layer first, in; a (B, N, N) matrix of how much each output token draws on each input token out.

* :func:`attention_rollout` -- Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers": heads
  fused (mean / max / min), ``Ã = 0.5 A + 0.5 I`` with rows normalized, multiplied from the first layer to the
  last;
* :func:`gradient_rollout` -- Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers": ``R = I``; per layer
  ``R <- R + mean_heads(ReLU(dy_c/dA ⊙ A)) R``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from nnfeat.errors import NnfeatError

#: how rollout fuses the heads of one layer
FUSIONS = ("mean", "max", "min")


def fuse_heads(weights: torch.Tensor, fusion: str = "mean") -> torch.Tensor:
    """(B, heads, N, N) -> (B, N, N) by the heads' ``mean``, ``max`` or ``min``."""
    if fusion not in FUSIONS:
        raise NnfeatError(f"unknown head fusion '{fusion}': use {', '.join(FUSIONS)}")
    if fusion == "mean":
        return weights.mean(1)
    return weights.amax(1) if fusion == "max" else weights.amin(1)


def _same_tokens(weights: Sequence[torch.Tensor]) -> int:
    if not weights:
        raise NnfeatError("rollout needs at least one attention layer")
    sizes = {tuple(w.shape[-2:]) for w in weights}
    if len(sizes) != 1:
        raise NnfeatError(f"rollout needs every layer to attend over the same tokens; got token counts "
                          f"{sorted(s[0] for s in sizes)}")
    return weights[0].shape[-1]


def attention_rollout(weights: Sequence[torch.Tensor], fusion: str = "mean", residual: float = 0.5
                      ) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of per-layer (B, heads, N, N) weights, first layer first:
    (B, N, N) with row i how much token i at the output draws on each input token.

    Per layer the heads are fused (``fusion``), the residual path is added as ``Ã = (1-r) A + r I``
    (r = ``residual``, 0.5 in the paper), rows are renormalized to sum to 1, and the layers are multiplied:
    ``R = Ã_L ... Ã_2 Ã_1``."""
    n = _same_tokens(weights)
    eye = torch.eye(n, device=weights[0].device)
    rollout = None
    for w in weights:
        mixed = (1 - residual) * fuse_heads(w.float(), fusion) + residual * eye
        mixed = mixed / mixed.sum(-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout


def gradient_rollout(weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Gradient-weighted rollout (Chefer et al. 2021) of per-layer (B, heads, N, N) weights and the gradients of
    the target logit with respect to them, first layer first: (B, N, N) relevance.

    ``R = I``; per layer ``Ā = mean_heads(ReLU(∇A ⊙ A))`` and ``R <- R + Ā R``."""
    n = _same_tokens(weights)
    if len(grads) != len(weights):
        raise NnfeatError(f"gradient rollout needs one gradient per layer; got {len(grads)} for {len(weights)}")
    relevance = torch.eye(n, device=weights[0].device).expand(weights[0].shape[0], n, n)
    for w, g in zip(weights, grads):
        cam = (g.float() * w.float()).clamp_min(0).mean(1)
        relevance = relevance + cam @ relevance
    return relevance


__all__ = ["FUSIONS", "fuse_heads", "attention_rollout", "gradient_rollout"]
