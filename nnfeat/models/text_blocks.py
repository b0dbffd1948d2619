"""The transformer pieces of nnfeat's own text models (``dates-seq2seq``, ``tiny-lm``), small and readable.

Every attention module passes its softmax weights through a submodule named ``probs``
(:class:`AttentionProbs`, an ``nn.Identity``) *before* dropout and the value product, so a forward hook on
``....probs`` sees the (B, heads, T_query, T_key) attention weights. Keys hidden by a key mask and, in causal
attention, future keys get weights of exactly 0 (a query that sees no key at all gets an all-zero row).

Pre-norm layers (Xiong et al. 2020, "On layer normalization in the transformer architecture"): each sublayer reads
``LayerNorm(x)`` and adds its output to ``x``. Positions are sinusoidal (Vaswani et al. 2017, "Attention is all you
need", section 3.5), a buffer rather than a weight, so they extend to any length the same way.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class AttentionProbs(nn.Identity):
    """Identity over attention weights (B, heads, T_query, T_key): the place a hook captures them."""


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with ``heads`` heads of ``dim // heads`` channels.

    ``forward(q_in (B, Tq, D), kv_in (B, Tk, D), key_mask (B, Tk) bool | None, causal) -> (B, Tq, D)``;
    ``key_mask`` True marks real keys; ``causal`` lets query i see keys 0..i only (Tq == Tk).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.probs = AttentionProbs()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, heads, T, head_dim)."""
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, q_in: torch.Tensor, kv_in: torch.Tensor, key_mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        q = self._split(self.q_proj(q_in) / math.sqrt(self.head_dim))
        k, v = self._split(self.k_proj(kv_in)), self._split(self.v_proj(kv_in))
        scores = q @ k.transpose(-1, -2)  # (B, H, Tq, Tk)
        allowed = attention_allowed(q_in.shape[1], kv_in.shape[1], key_mask, causal, q_in.device)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1)
        if allowed is not None:
            weights = weights.masked_fill(~allowed, 0.0)  # exact zeros, also for a query that sees no key
        weights = self.dropout(self.probs(weights))
        return self.out_proj((weights @ v).transpose(1, 2).flatten(2))


def attention_allowed(tq: int, tk: int, key_mask: torch.Tensor | None, causal: bool,
                      device: torch.device) -> torch.Tensor | None:
    """Which keys each query may see, broadcastable to (B, H, Tq, Tk) bool; None when all may."""
    allowed = None
    if causal:
        allowed = torch.ones(tq, tk, dtype=torch.bool, device=device).tril()
    if key_mask is not None:
        keys = key_mask.bool()[:, None, None, :]  # (B, 1, 1, Tk)
        allowed = keys if allowed is None else allowed & keys
    return allowed


def mlp(dim: int, hidden: int) -> nn.Sequential:
    """(…, D) -> (…, D) through a GELU hidden layer of ``hidden`` channels."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + MLP: (B, S, D), key mask (B, S) -> (B, S, D)."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp(dim, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, mask)
        return x + self.mlp(self.norm2(x))


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention to the encoder's memory, MLP:
    (B, T, D), memory (B, S, D), memory mask (B, S), target mask (B, T) -> (B, T, D)."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, heads, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = mlp(dim, hidden)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, mask, causal=True)
        x = x + self.cross_attn(self.norm2(x), memory, memory_mask)
        return x + self.mlp(self.norm3(x))


class Encoder(nn.Module):
    """``layers`` then a final LayerNorm: (B, S, D), mask (B, S) -> (B, S, D)."""

    def __init__(self, dim: int, heads: int, hidden: int, depth: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, hidden, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class Decoder(nn.Module):
    """``layers`` then a final LayerNorm: (B, T, D), memory (B, S, D) -> (B, T, D)."""

    def __init__(self, dim: int, heads: int, hidden: int, depth: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, hidden, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, memory, memory_mask, mask)
        return self.norm(x)


class SinusoidalPositions(nn.Module):
    """Adds sinusoidal position codes: (B, T, D) -> (B, T, D), for T up to ``max_len``."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float64)[:, None]
        freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
        table = torch.zeros(max_len, dim, dtype=torch.float64)
        table[:, 0::2] = torch.sin(position * freq)
        table[:, 1::2] = torch.cos(position * freq)
        self.register_buffer("table", table.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.table.shape[0]:
            raise ValueError(f"sequence of {x.shape[1]} positions; at most {self.table.shape[0]}")
        return x + self.table[: x.shape[1]]


@torch.no_grad()
def init_weights(net: nn.Module, generator: torch.Generator) -> nn.Module:
    """Initialise every weight of ``net`` from ``generator`` (not the global RNG): linear weights N(0, 1/fan_in),
    embeddings N(0, 1), zero biases, unit LayerNorms. Returns ``net``."""
    for module in net.modules():
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, 1.0 / math.sqrt(module.in_features), generator=generator)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, 1.0, generator=generator)
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
    return net


__all__ = ["AttentionProbs", "Decoder", "DecoderLayer", "Encoder", "EncoderLayer", "MultiHeadAttention",
           "SinusoidalPositions", "attention_allowed", "init_weights", "mlp"]
