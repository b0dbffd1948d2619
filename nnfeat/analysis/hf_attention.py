"""Attention weights of a Hugging Face token model, by layer module name.

:func:`hf_attentions` reads every attention layer's (B, heads, T_query, T_key) weights in one forward pass, named by
the attention module that produced them (the innermost one: ``encoder.layer.0.attention.self`` for BERT,
``h.0.attn`` for GPT-2), so that they read like the attention nnfeat captures from its own models. Two routes:

* **from the SDPA calls** (models loaded with transformers' default ``sdpa`` attention, as
  :func:`nnfeat.models.hf.load_hf` loads them where the architecture supports it): :class:`SDPAWeights`, a
  ``TorchFunctionMode``, sees every ``torch.nn.functional.scaled_dot_product_attention`` call, computes its weights
  from the call's own arguments and returns weights @ values in its place (the kernel's output to float rounding;
  computing both would pay the attention twice), ``softmax(q k^T * scale + mask)``: boolean or additive float masks, ``is_causal`` (upper
  left aligned, as SDPA's), grouped keys (``enable_gqa``; keys repeated by the caller need nothing). A forward
  pre-hook on each attention module names the calls it makes;
* **eager** (a model loaded with ``attn_implementation="eager"``, or one whose attention modules make no SDPA
  call -- another kernel, a custom attention): one pass with ``output_attentions=True``, each returned tensor
  named by the module whose output holds it. A model that was loaded with SDPA but made no SDPA call in some
  attention module is switched to eager for that one pass (and back), and a warning says so once per model.

Both give transformers' own eager ``output_attentions=True`` weights (to float rounding, about 1e-7). Padded keys
(``batch.mask`` False) get weight exactly 0; padded query rows are whatever the model computes there. A network in
training mode with attention dropout is refused: the weights would not be the ones its output used.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from nnfeat.errors import NnfeatError
from nnfeat.models.text import TokenBatch, TokenModel

#: the parameters of ``F.scaled_dot_product_attention``, in order (its positional arguments are read by these names)
_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
#: PyTorch's own kernel (a later replacement of the attribute by another kernel is not it)
_SDPA = F.scaled_dot_product_attention


def hf_attentions(model: TokenModel, batch: TokenBatch) -> dict[str, torch.Tensor]:
    """One forward pass of a Hugging Face model, its attention weights named by layer (module docstring).

    Args:
        model: a TokenModel with ``call="hf"`` (:func:`nnfeat.models.hf.load_hf`).
        batch: its :meth:`TokenModel.encode` output, (B, T) ids and mask.

    Returns:
        ``{layer module name: (B, heads, T, T) float32 attention weights (rows: queries, columns: keys)}``, in
        layer order.

    Raises:
        NnfeatError: one line for a model that is not a Hugging Face one, that returns no attention weights, or
            that is in training mode with attention dropout.
    """
    _check(model)
    if attention_route(model) == "sdpa":
        captured, silent = _sdpa_pass(model, batch)
        if not silent and captured:
            return captured
        warnings.warn(f"{model.name}: attention module {silent[0] if silent else '?'} made no scaled-dot-product "
                      "attention call; its weights are read from one eager pass with output_attentions=True",
                      stacklevel=2)
        return _eager_switched(model, batch)
    return _eager_pass(model, batch)


def hf_attention_layer_names(model: TokenModel) -> list[str]:
    """The names :func:`hf_attentions` gives, in layer order (from one forward pass over a one-word text)."""
    return list(hf_attentions(model, model.encode(["hello"])).keys())


def attention_route(model: TokenModel) -> str:
    """``"sdpa"`` when the Hugging Face network computes attention with SDPA (its config's attention
    implementation), else ``"eager"``: how :func:`hf_attentions` reads its weights."""
    config = getattr(model.net, "config", None)
    return "sdpa" if getattr(config, "_attn_implementation", None) == "sdpa" else "eager"


# -- beside SDPA ------------------------------------------------------------------------------------------------
def sdpa_weights(query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None = None,
                 is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """The softmax weights an ``F.scaled_dot_product_attention`` call with these arguments applies to its values.

    Args:
        query: (B, H, Tq, D) (any leading batch dims SDPA broadcasts).
        key: (B, Hk, Tk, D); Hk divides H when ``enable_gqa`` (each key head serves H/Hk query heads), else Hk = H.
        attn_mask: None, a bool mask broadcastable to (B, H, Tq, Tk) (True: may attend) or an additive float one.
        is_causal: query i sees keys 0..i (SDPA's upper-left alignment).
        scale: the logits' factor; None is 1/sqrt(D).
        enable_gqa: as SDPA's.

    Returns:
        (B, H, Tq, Tk) float32 weights, each row summing to 1; masked keys exactly 0 (a row with every key masked
        is uniform, as transformers' eager attention gives with its finite mask value).
    """
    q, k = query.float(), key.float()
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    # (B, H, Tq, Tk) new memory, then in place; scaled after the product, as transformers' eager attention does
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
    low = torch.finfo(scores.dtype).min
    if is_causal:
        tq, tk = scores.shape[-2:]
        scores.masked_fill_(torch.ones(tq, tk, dtype=torch.bool, device=scores.device).triu(1), low)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores.masked_fill_(attn_mask.logical_not(), low)
        else:
            scores.add_(attn_mask.float())
    if scores.device.type == "cpu":
        # in place: a fresh (B, H, Tq, Tk) buffer per layer costs the CPU as much as the softmax itself (page
        # faults); the CPU kernel reads each row before it writes it
        return torch.ops.aten._softmax.out(scores, -1, False, out=scores)
    return scores.softmax(-1)


def attend(weights: torch.Tensor, value: torch.Tensor, enable_gqa: bool = False) -> torch.Tensor:
    """What the SDPA call returns, from its weights: (B, H, Tq, Tk) weights @ (B, Hv, Tk, Dv) values -> (B, H, Tq, Dv)
    in the values' dtype (Hv divides H when ``enable_gqa``). Equal to the fused kernel's output to float rounding
    (``tests/test_hf_sdpa_capture.py``), without doing the kernel's work a second time."""
    v = value.float()
    if enable_gqa and v.shape[-3] != weights.shape[-3]:
        v = v.repeat_interleave(weights.shape[-3] // v.shape[-3], dim=-3)
    return torch.matmul(weights, v).to(value.dtype)


class SDPAWeights(TorchFunctionMode):
    """A context in which every ``F.scaled_dot_product_attention`` call's weights (:func:`sdpa_weights`) are
    computed from its own arguments and kept under the name of the innermost attention module running it; the call
    returns :func:`attend` of them (the kernel's output to float rounding; the fused kernel is not run as well).

    Attributes:
        weights: ``{name: (B, H, Tq, Tk) float32}`` in call order (a module's later calls: ``name#1``, ...).
        stack: ``[name, SDPA calls seen]`` of the attention modules now running, innermost last (kept by the
            hooks of :func:`_sdpa_pass`).
        silent: attention modules that finished without an SDPA call inside them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weights: dict[str, torch.Tensor] = {}
        self.stack: list[list[Any]] = []
        self.silent: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not _SDPA:
            return func(*args, **kwargs)
        call = {**dict(zip(_SDPA_PARAMS, args)), **kwargs}
        if call.get("dropout_p", 0.0):
            raise NnfeatError(f"attention dropout is on (p={call['dropout_p']}, the network is in training mode): "
                              "its attention weights would not be the ones its output used; call .eval() first")
        with torch.no_grad():
            weights = sdpa_weights(call["query"], call["key"], call.get("attn_mask"), bool(call.get("is_causal")),
                                   call.get("scale"), bool(call.get("enable_gqa")))
            out = attend(weights, call["value"], bool(call.get("enable_gqa")))
        for entry in self.stack:
            entry[1] += 1
        name = self.stack[-1][0] if self.stack else f"layer.{len(self.weights)}"
        key, n = name, 0
        while key in self.weights:
            n += 1
            key = f"{name}#{n}"
        self.weights[key] = weights
        return out


def _sdpa_pass(model: TokenModel, batch: TokenBatch) -> tuple[dict[str, torch.Tensor], list[str]]:
    """One pass under :class:`SDPAWeights`: (``{layer: (B, H, T, T)}``, attention modules that made no SDPA call)."""
    mode = SDPAWeights()

    def enter(name: str):
        def hook(_module, _args) -> None:
            mode.stack.append([name, 0])
        return hook

    def leave(_module, _args, _output) -> None:
        name, calls = mode.stack.pop()
        if not calls and name not in mode.silent:
            mode.silent.append(name)

    handles = []
    try:
        for name, module in model.net.named_modules():
            if name and _is_attention(module):
                handles.append(module.register_forward_pre_hook(enter(name)))
                handles.append(module.register_forward_hook(leave, always_call=True))
        with torch.no_grad(), mode:
            model.net(input_ids=batch.ids, attention_mask=batch.mask.long())
    finally:
        for handle in handles:
            handle.remove()
    t = batch.ids.shape[1]
    out = {}
    for name, w in mode.weights.items():
        if t == 1 and w.shape[-2] != 1:  # one query, grouped heads packed as (B, Hk, groups, Tk) by transformers
            w = w.reshape(w.shape[0], -1, 1, w.shape[-1])
        out[name] = w
    return out, mode.silent


# -- eager ------------------------------------------------------------------------------------------------------
def _eager_switched(model: TokenModel, batch: TokenBatch) -> dict[str, torch.Tensor]:
    """:func:`_eager_pass` on a network loaded with SDPA: eager attention for this one pass, SDPA again after."""
    net = model.net
    before = net.config._attn_implementation
    net.set_attn_implementation("eager")
    try:
        return _eager_pass(model, batch)
    finally:
        net.set_attn_implementation(before)


def _eager_pass(model: TokenModel, batch: TokenBatch) -> dict[str, torch.Tensor]:
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
                          "or \"sdpa\" (nnfeat.models.hf.load_hf does)")
    names = [seen[id(w)][1] if id(w) in seen and seen[id(w)][0] is w else f"layer.{i}" for i, w in enumerate(weights)]
    if len(set(names)) != len(names):
        names = [f"layer.{i}" for i in range(len(weights))]
    return {name: w.float() for name, w in zip(names, weights)}


def _check(model: Any) -> None:
    if not isinstance(model, TokenModel) or model.call != "hf":
        name = getattr(model, "name", type(model).__name__)
        raise NnfeatError(f"{name} is not a Hugging Face model: hf_attentions takes one loaded by "
                          "nnfeat.models.hf.load_hf (hf:PATH or minilm)")


def _is_attention(module: nn.Module) -> bool:
    kind = type(module).__name__.lower()
    return "attention" in kind or "attn" in kind


__all__ = ["SDPAWeights", "attention_route", "hf_attention_layer_names", "hf_attentions", "sdpa_weights"]
