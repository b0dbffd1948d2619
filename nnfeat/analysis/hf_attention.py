"""Attention weights of a Hugging Face token model, by layer module name.

A Hugging Face model returns its attention weights as an unnamed tuple (``output_attentions=True``), one
(B, heads, T, T) tensor per layer. :func:`hf_attentions` names each by the module that produced it (the
innermost module whose output holds that very tensor: ``encoder.layer.0.attention.self`` for BERT, ``h.0.attn``
for GPT-2), so that they read like the attention nnfeat captures from its own models. The model must compute
attention eagerly (:func:`nnfeat.models.hf.load_hf` loads it so): a fused kernel never forms the weights.

Padded keys (``batch.mask`` False) get weight exactly 0; padded query rows are whatever the model computes there.
"""

from __future__ import annotations

from typing import Any

import torch

from nnfeat.errors import NnfeatError
from nnfeat.models.text import TokenBatch, TokenModel


def hf_attentions(model: TokenModel, batch: TokenBatch) -> dict[str, torch.Tensor]:
    """One forward pass with ``output_attentions=True``.

    Args:
        model: a TokenModel with ``call="hf"`` (:func:`nnfeat.models.hf.load_hf`).
        batch: its :meth:`TokenModel.encode` output, (B, T) ids and mask.

    Returns:
        ``{layer module name: (B, heads, T, T) float32 attention weights (rows: queries, columns: keys)}``, in
        layer order.

    Raises:
        NnfeatError: one line for a model that is not a Hugging Face one, or that returns no attention weights.
    """
    _check(model)
    net = model.net
    seen: dict[int, tuple[torch.Tensor, str]] = {}  # id -> (the tensor, kept alive so ids stay unique; name)

    def remember(name: str):
        def hook(_module, _args, output) -> None:
            for item in output if isinstance(output, (tuple, list)) else ():
                if isinstance(item, torch.Tensor) and item.dim() == 4:
                    seen.setdefault(id(item), (item, name))  # an inner module finishes first: its name is kept
        return hook

    handles = [m.register_forward_hook(remember(n)) for n, m in net.named_modules() if n and _is_attention(m)]
    try:
        with torch.no_grad():
            out = net(input_ids=batch.ids, attention_mask=batch.mask.long(), output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    weights = getattr(out, "attentions", None)
    if not weights or any(w is None for w in weights):
        raise NnfeatError(f"{model.name} returned no attention weights: load it with attn_implementation=\"eager\" "
                          "(nnfeat.models.hf.load_hf does)")
    names = [seen[id(w)][1] if id(w) in seen and seen[id(w)][0] is w else f"layer.{i}" for i, w in enumerate(weights)]
    if len(set(names)) != len(names):
        names = [f"layer.{i}" for i in range(len(weights))]
    return {name: w.float() for name, w in zip(names, weights)}


def hf_attention_layer_names(model: TokenModel) -> list[str]:
    """The names :func:`hf_attentions` gives, in layer order (from one forward pass over a one-word text)."""
    return list(hf_attentions(model, model.encode(["hello"])).keys())


def _check(model: Any) -> None:
    if not isinstance(model, TokenModel) or model.call != "hf":
        name = getattr(model, "name", type(model).__name__)
        raise NnfeatError(f"{name} is not a Hugging Face model: hf_attentions takes one loaded by "
                          "nnfeat.models.hf.load_hf (hf:PATH or minilm)")


def _is_attention(module: torch.nn.Module) -> bool:
    kind = type(module).__name__.lower()
    return "attention" in kind or "attn" in kind


__all__ = ["hf_attention_layer_names", "hf_attentions"]
