"""Attention of token models (tensors in, tensors out): capture from attention probes, layer kinds, rollout over
tokens, cross attention over decoding steps.

nnfeat's own text models pass every attention's softmax weights through a probe submodule (class
``AttentionProbs``, an ``nn.Identity``, named ``...probs``) before dropout and the value product, so a forward
hook on a probe sees the (B, heads, T_query, T_key) weights. Probes are found by a predicate (``is_probe``;
default: the module's class is named ``AttentionProbs``), so this module needs no import of the models that
define them.

* :func:`probe_layers` -- the probes' module names, in module order;
* :func:`capture_probes` -- one run of a callable with a forward hook on every probe: ``{name: (B, H, Tq, Tk)}``;
  a probe called more than once in the run (greedy decoding step by step) records one entry per call, ``name``
  for the first and ``name#k`` for the k-th (0-based), the layer-reference convention of :mod:`nnfeat.hooks`;
* :func:`attention_kind` -- ``("self" | "cross", "encoder" | "decoder" | "decoder-only")`` from a layer name;
* :func:`token_rollout` -- attention rollout (:func:`nnfeat.analysis.rollout.attention_rollout`) over the
  self-attention layers of one side, padded tokens taken out;
* :func:`probe_calls` and :func:`cross_attention_steps` -- a probe's calls in order, and per-step cross
  attention stacked into one (B, H, steps, T_source) matrix (the evolution of attention over decoding).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from nnfeat.analysis.rollout import attention_rollout
from nnfeat.errors import NnfeatError
from nnfeat.hooks import layer_root
from nnfeat.layouts import parse_layer_ref

#: the class name of nnfeat's attention probes (``nnfeat.models.text_blocks.AttentionProbs``)
PROBE_CLASS = "AttentionProbs"

#: name segments (lower case) that mark a cross-attention module: nnfeat's ``cross_attn`` and the spellings of
#: common Hugging Face encoder-decoders (BART/Marian ``encoder_attn``, BERT-as-decoder ``crossattention``, T5
#: ``EncDecAttention``)
CROSS_SEGMENTS = ("cross_attn", "cross_attention", "crossattention", "encoder_attn", "encdecattention")


def is_attention_probe(module: nn.Module) -> bool:
    """True for nnfeat's attention probes: modules whose class is named ``AttentionProbs``."""
    return type(module).__name__ == PROBE_CLASS


def probe_layers(net: nn.Module, is_probe: Callable[[nn.Module], bool] = is_attention_probe) -> list[str]:
    """The dotted names of ``net``'s probe modules, in module order. For an nnfeat model wrapper (an object with
    a ``.net`` module) the names are those of its ``.net``, as everywhere in nnfeat."""
    return [name for name, module in layer_root(net).named_modules() if name and is_probe(module)]


def capture_probes(net: nn.Module, run: Callable[[], Any],
                   is_probe: Callable[[nn.Module], bool] = is_attention_probe) -> dict[str, torch.Tensor]:
    """Run ``run()`` once with a forward hook on every probe of ``net``; ``{layer: (B, H, Tq, Tk) float}``.

    Each entry is the probe's output, detached and as float (no copy for float32 weights: it shares storage
    with the tensor the model goes on with, which nnfeat's models never change in place), in module order (a
    probe's calls in call order); a probe called k > 0 times before in the run is recorded as ``name#k``, the
    first call as ``name``. A probe the run never reaches has no entry. Every hook is removed in ``finally``,
    also when ``run`` raises. ``run``'s return value is dropped (run the model inside it, e.g.
    ``lambda: net(ids, mask)``)."""
    names = probe_layers(net, is_probe)
    if not names:
        raise NnfeatError(f"no attention probes in {type(layer_root(net)).__name__}: its attention modules must "
                          f"pass their weights through an AttentionProbs submodule (or give is_probe)")
    modules = dict(layer_root(net).named_modules())
    calls: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if not torch.is_tensor(output) or output.dim() != 4:
                shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
                raise NnfeatError(f"attention probe '{name}' gave {shape}; expected (B, heads, T_query, T_key) "
                                  f"weights")
            calls[name].append(output.detach().float())
        return hook

    handles = []
    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        run()
    finally:
        for handle in handles:
            handle.remove()
    return {(name if k == 0 else f"{name}#{k}"): w for name in names for k, w in enumerate(calls[name])}


def probe_calls(captured: Mapping[str, torch.Tensor], name: str) -> list[torch.Tensor]:
    """Every recorded call of probe ``name`` in ``captured`` (``name``, ``name#1``, ``name#2``, ...) in call
    order: a list of (B, H, Tq, Tk)."""
    found = [(parse_layer_ref(key).call, w) for key, w in captured.items() if parse_layer_ref(key).base == name]
    if not found:
        raise NnfeatError(f"no captured attention for layer '{name}'; captured: {', '.join(captured) or 'none'}")
    return [w for _, w in sorted(found, key=lambda item: item[0])]


def attention_kind(name: str) -> tuple[str, str]:
    """``(kind, side)`` of an attention layer from its dotted name (``#call`` / ``[element]`` ignored).

    kind: ``"cross"`` if a name segment is one of :data:`CROSS_SEGMENTS` (``cross_attn``, ...), else
    ``"self"``. side: the first segment that is ``encoder`` or ``decoder`` (so ``model.decoder.layers.0...``
    is the decoder); with neither, ``"decoder-only"``: the convention of nnfeat's language models
    (``blocks.0.attn.probs``), whose self-attention is causal. A cross-attention layer is on the decoder side."""
    parts = [p.lower() for p in parse_layer_ref(name).base.split(".")]
    kind = "cross" if any(p in CROSS_SEGMENTS for p in parts) else "self"
    side = next((p for p in parts if p in ("encoder", "decoder")), "decoder-only")
    if kind == "cross":
        side = "decoder"
    return kind, side


def layer_kinds(captured: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """``{layer: (kind, side)}`` (:func:`attention_kind`) for every captured layer, in the same order."""
    return {name: attention_kind(name) for name in captured}


def token_rollout(weights_by_layer: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                  mask: torch.Tensor | None = None, fusion: str = "mean", residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020, via :func:`nnfeat.analysis.rollout.attention_rollout`) over the
    self-attention layers of one side, first layer first: per-layer (B, H, T, T) and a (B, T) bool mask or None
    -> (B, T, T), row i how much token i at the top draws on each input token.

    Padding: each layer's weights on padded keys are set to 0 and its rows renormalized over the real keys
    before rollout; rows and columns of padded positions are 0 in the result."""
    layers = list(weights_by_layer.values()) if isinstance(weights_by_layer, Mapping) else list(weights_by_layer)
    if not layers:
        raise NnfeatError("token rollout needs at least one self-attention layer")
    for w in layers:
        if not torch.is_tensor(w) or w.dim() != 4 or w.shape[-1] != w.shape[-2]:
            shape = tuple(w.shape) if torch.is_tensor(w) else type(w).__name__
            raise NnfeatError(f"token rollout needs (B, heads, T, T) self-attention per layer; got {shape} "
                              f"(cross attention cannot be rolled out this way)")
    b, t = layers[0].shape[0], layers[0].shape[-1]
    if any(w.shape[0] != b for w in layers):
        sizes = sorted({w.shape[0] for w in layers})
        raise NnfeatError(f"token rollout needs one batch size in every layer; got {sizes}")
    if mask is None:
        return attention_rollout([w.float() for w in layers], fusion=fusion, residual=residual)
    if tuple(mask.shape) != (b, t):
        raise NnfeatError(f"the token mask must be (B, T) = ({b}, {t}); got {tuple(mask.shape)}")
    keys = mask.to(device=layers[0].device, dtype=torch.float32)        # (B, T)
    cleaned = []
    for w in layers:
        w = w.float() * keys[:, None, None, :]
        cleaned.append(w / w.sum(-1, keepdim=True).clamp_min(1e-12))
    rollout = attention_rollout(cleaned, fusion=fusion, residual=residual)
    return rollout * keys[:, :, None] * keys[:, None, :]


def cross_attention_steps(steps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cross attention of a step-by-step decoding, one (B, H, q, Tk) tensor per step -> (B, H, steps, Tk): row s
    is where step s's new token looked in the source.

    With a key/value cache each step has q = 1; without one each step re-runs the whole prefix (q = s + 1 or
    so) and its last query row is the new token's, so the last row of every step is taken either way."""
    if len(steps) == 0:
        raise NnfeatError("cross attention over decoding steps needs at least one step")
    shapes = [tuple(s.shape) if torch.is_tensor(s) else None for s in steps]
    if any(s is None or len(s) != 4 for s in shapes):
        bad = next(s for s in shapes if s is None or len(s) != 4)
        raise NnfeatError(f"each decoding step's cross attention must be (B, heads, T_query, T_source); got {bad}")
    if len({(s[0], s[1], s[3]) for s in shapes}) != 1:
        raise NnfeatError(f"decoding steps disagree in batch, heads or source length: "
                          f"{sorted({(s[0], s[1], s[3]) for s in shapes})}")
    return torch.stack([s[:, :, -1].float() for s in steps], 2)


__all__ = ["PROBE_CLASS", "CROSS_SEGMENTS", "is_attention_probe", "probe_layers", "capture_probes", "probe_calls",
           "attention_kind", "layer_kinds", "token_rollout", "cross_attention_steps"]
