"""Attention weights of any token model, one way: :func:`capture_token_attention` (tensors in, tensors out).

Three kinds of attention, found from the model:

* nnfeat's own text models: every attention passes its softmax weights through an ``AttentionProbs`` probe
  (:func:`nnfeat.analysis.token_attention.capture_probes`);
* Hugging Face models (``call="hf"``): the weights computed from each SDPA call's queries, keys and mask, and
  the call's output from them (weights @ values, the kernel's to float rounding), or ``output_attentions=True`` for a model with eager attention
  (:func:`nnfeat.analysis.hf_attention.hf_attentions`);
* ``nn.MultiheadAttention`` (``nn.TransformerEncoder`` and any model built on it): a forward pre-hook asks each
  call for per-head weights (``need_weights=True, average_attn_weights=False``; the output is unchanged) and
  PyTorch's fused inference fast path, which never forms the weights, is switched off for the call. A network
  that takes no mask runs once per text length (:meth:`~nnfeat.models.text.TokenModel.forward`); its weights
  are put back into one zero-padded (B, H, T, T) tensor per layer.

Every result is ``{layer: (B, H, T_query, T_key) float}`` in module order; padded keys carry weight 0.
"""

from __future__ import annotations

import torch
from torch import nn

from nnfeat.analysis.attention import weights_requested
from nnfeat.analysis.graph_trace import fused_attention_off
from nnfeat.analysis.hf_attention import hf_attentions
from nnfeat.analysis.token_attention import capture_probes, probe_layers
from nnfeat.errors import NnfeatError
from nnfeat.models.text import TokenBatch, TokenModel


def attention_source(model: TokenModel) -> str:
    """``"hf"``, ``"probes"`` or ``"mha"``: how :func:`capture_token_attention` reads this model's attention;
    a one-line error for a model with none of them."""
    if model.call == "hf":
        return "hf"
    if probe_layers(model.net):
        return "probes"
    if any(isinstance(m, nn.MultiheadAttention) for m in model.net.modules()):
        return "mha"
    raise NnfeatError(f"{model.name} has no attention nnfeat can read: it needs nn.MultiheadAttention layers, "
                      "AttentionProbs probes after its softmax (nnfeat.models.text_blocks), or to be a Hugging "
                      "Face model (hf:PATH)")


@torch.no_grad()
def capture_token_attention(model: TokenModel, batch: TokenBatch, decoder_ids: torch.Tensor | None = None
                            ) -> dict[str, torch.Tensor]:
    """Every attention layer's weights for ``batch`` (and, seq2seq, the (B, T') ``decoder_ids`` fed to the decoder).

    Returns:
        ``{layer: (B, heads, T_query, T_key) float32}`` in module order (self attention of a side is (T, T);
        cross attention (T', T)).

    Raises:
        NnfeatError: one line for a model without readable attention.
    """
    source = attention_source(model)
    if source == "hf":
        return hf_attentions(model, batch)
    if source == "probes":
        return capture_probes(model.net, lambda: model(batch.ids, batch.mask, decoder_ids))
    return _mha_attention(model, batch)


def _mha_attention(model: TokenModel, batch: TokenBatch) -> dict[str, torch.Tensor]:
    layers = [(n, m) for n, m in model.net.named_modules() if isinstance(m, nn.MultiheadAttention)]
    calls: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}

    def keep(name: str):
        def hook(_module, _args, output):
            if isinstance(output, tuple) and len(output) > 1 and torch.is_tensor(output[1]):
                calls[name].append(output[1].detach().float())
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in layers]
    try:
        with fused_attention_off(), weights_requested([m for _, m in layers]):
            model(batch.ids, batch.mask)
    finally:
        for handle in handles:
            handle.remove()
    lengths = batch.mask.sum(1)
    groups = [(lengths == n).nonzero()[:, 0] for n in sorted(set(lengths.tolist()))]
    b, t = batch.ids.shape
    out = {}
    for name, parts in calls.items():
        if not parts:
            continue
        if len(parts) == 1 and parts[0].shape[0] == b:  # one call over the whole batch
            out[name] = parts[0]
            continue
        if len(parts) != len(groups):
            raise NnfeatError(f"attention layer '{name}' ran {len(parts)} times for {len(groups)} text lengths; "
                              "nnfeat reads one call per forward pass")
        full = parts[0].new_zeros((b, parts[0].shape[1], t, t))
        for rows, part in zip(groups, parts):  # one group per distinct text length
            n = part.shape[-1]
            full[rows, :, :n, :n] = part
        out[name] = full
    return out


__all__ = ["attention_source", "capture_token_attention"]
