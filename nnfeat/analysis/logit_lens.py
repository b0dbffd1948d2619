"""The logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens"): decode the residual stream after each
block of a decoder language model through the model's own final norm and unembedding, as if the model stopped
there, and read what it would predict at every layer and position.

Tensors in, tensors out:

* :func:`find_blocks` -- the default layers: the children of the first ``nn.ModuleList`` whose outputs are
  (B, T, D) (``blocks.0``, ``blocks.1`` for ``tiny-lm``; ``transformer.h.0``... for GPT-2);
* :func:`capture_lens` -- one forward pass with hooks (removed in ``finally``): each layer's output (L, B, T, D),
  the unembedding's input and output, and the final norm found (the normalisation layer whose output the
  unembedding reads) or named;
* :func:`decode_lens` -- norm + unembedding applied to every layer at once: (L, B, T, V) logits, chunked over
  layers only when large;
* :func:`lens_readout` -- top-k tokens with probabilities and the rank (1 = top) and probability of a target
  token at each (layer, text, position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nnfeat.errors import NnfeatError, shorten
from nnfeat.models.text import TokenModel

#: logits of more elements than this are decoded a few layers at a time
CHUNK_ELEMENTS = 1 << 26


@dataclass
class LensCapture:
    """What one forward pass saw.

    Attributes:
        layers: the L layer names, in order.
        residual: (L, B, T, D) float, each layer's output (the residual stream after it).
        logits: (B, T, V) the unembedding's own output (the model's logits).
        final_norm: the final norm's module name, or None; ``norm_source``: ``found`` or ``named``.
    """

    layers: list[str]
    residual: torch.Tensor
    logits: torch.Tensor
    final_norm: str | None
    norm_source: str | None


def _first_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) and out else out


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


@torch.no_grad()
def find_blocks(model: TokenModel, ids: torch.Tensor, mask: torch.Tensor | None = None) -> list[str]:
    """The children of the first ``nn.ModuleList`` (in registration order) whose every output is (B, T, D) on
    ``ids`` (B, T), as dotted names; a one-line error when there is none."""
    lists = [(name, mod) for name, mod in model.net.named_modules() if isinstance(mod, nn.ModuleList) and len(mod)]
    seen: dict[str, torch.Size | None] = {}
    handles = []

    def hook(name):
        def record(_m, _i, out):
            out = _first_tensor(out)
            seen[name] = out.shape if torch.is_tensor(out) else None
        return record

    try:
        for name, mod in lists:
            for i, child in enumerate(mod):
                handles.append(child.register_forward_hook(hook(f"{name}.{i}" if name else str(i))))
        model(ids, mask)
    finally:
        for handle in handles:
            handle.remove()
    b, t = ids.shape
    for name, mod in lists:
        names = [f"{name}.{i}" if name else str(i) for i in range(len(mod))]
        shapes = [seen.get(n) for n in names]
        if all(s is not None and len(s) == 3 and tuple(s[:2]) == (b, t) for s in shapes):
            return names
    raise NnfeatError(f"{model.name} has no list of blocks whose outputs are (batch, tokens, width): name the "
                      "residual stream's modules with --layers NAME,NAME (nnfeat layers MODEL lists them)")


@torch.no_grad()
def capture_lens(model: TokenModel, ids: torch.Tensor, layers: list[str], unembed: str,
                 final_norm: str | None = None, *, find_norm: bool = True) -> LensCapture:
    """One forward pass over unpadded ``ids`` (B, T): the outputs of ``layers`` stacked (L, B, T, D), the
    unembedding's output (B, T, V), and the final norm: ``final_norm`` if named, else (``find_norm``) the module
    outside ``layers`` whose output is exactly the unembedding's input and whose class name says it is a norm.

    Raises:
        NnfeatError: one line for an unknown module, a module the forward never calls, a layer whose output is
            not (B, T, D) with D the unembedding's input width, or an unembedding whose output is not (B, T, V).
    """
    modules = {name: model.module(name) for name in [*layers, unembed, *([final_norm] if final_norm else [])]}
    outputs: dict[str, torch.Tensor] = {}
    unembed_in: list[torch.Tensor] = []
    outside = [] if final_norm or not find_norm else [
        (n, m) for n, m in model.net.named_modules()
        if n and _is_norm(m) and n != unembed and not any(n == l or n.startswith(l + ".") for l in layers)]
    handles = []

    def keep(name):
        def record(_m, _i, out):
            outputs.setdefault(name, _first_tensor(out))
        return record

    try:
        for name, mod in [*modules.items(), *outside]:
            handles.append(mod.register_forward_hook(keep(name)))
        handles.append(modules[unembed].register_forward_pre_hook(lambda _m, inp: unembed_in.append(inp[0])))
        model(ids, torch.ones_like(ids, dtype=torch.bool))
    finally:
        for handle in handles:
            handle.remove()
    b, t = ids.shape
    missing = [n for n in modules if not torch.is_tensor(outputs.get(n))]
    if missing or not unembed_in:
        raise NnfeatError(f"module '{shorten(missing[0] if missing else unembed)}' of {model.name} is never called "
                          "with a tensor output in its forward pass: name a module the forward runs")
    logits = outputs[unembed]
    vocab = model.tokenizer.vocab_size or 0
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (b, t) or logits.shape[2] < vocab:
        raise NnfeatError(f"the unembedding '{shorten(unembed)}' outputs {tuple(logits.shape)}, not vocabulary "
                          f"logits (batch, tokens, vocab) = ({b}, {t}, {vocab or 'V'}): name the module that maps "
                          "the residual stream to the vocabulary with --unembed")
    width = unembed_in[0].shape[-1]
    for name in [*layers, *([final_norm] if final_norm else [])]:
        shape = tuple(outputs[name].shape)
        if len(shape) != 3 or shape[:2] != (b, t) or shape[2] != width:
            raise NnfeatError(f"'{shorten(name)}' outputs {shape}, not the residual stream (batch, tokens, width) = "
                              f"({b}, {t}, {width}): name modules whose output is (batch, tokens, {width}), e.g. "
                              "the model's blocks")
    found, source = (final_norm, "named") if final_norm else (None, None)
    if found is None:
        for name, _ in outside:
            out = outputs.get(name)
            if torch.is_tensor(out) and out.shape == unembed_in[0].shape and torch.equal(out, unembed_in[0]):
                found, source = name, "found"
    residual = torch.stack([outputs[name].float() for name in layers])
    return LensCapture(list(layers), residual, logits.float(), found, source)


@torch.no_grad()
def decode_lens(model: TokenModel, residual: torch.Tensor, unembed: str, final_norm: str | None,
                vocab: int | None = None) -> torch.Tensor:
    """(L, B, T, D) residual -> (L, B, T, V) float logits: ``final_norm`` (if any) then ``unembed``, the L layers
    as one batch (a few layers at a time when ``vocab`` is given and the logits would be over
    :data:`CHUNK_ELEMENTS` elements)."""
    head = model.module(unembed)
    norm = model.module(final_norm) if final_norm else None
    dtype = next((p.dtype for p in head.parameters()), residual.dtype)
    n_layers, b, t, d = residual.shape
    per = n_layers if vocab is None else max(1, min(n_layers, CHUNK_ELEMENTS // max(1, b * t * vocab)))
    outs = []
    for start in range(0, n_layers, per):  # chunks of layers (usually one: every layer at once)
        part = residual[start:start + per].reshape(-1, t, d).to(dtype)
        out = _first_tensor(head(norm(part) if norm is not None else part))
        outs.append(out.float().reshape(-1, b, t, out.shape[-1]))
    return torch.cat(outs)


@torch.no_grad()
def lens_readout(logits: torch.Tensor, targets: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """(L, B, T, V) lens logits and (B, T) target ids -> ``top_ids`` (L, B, T, k) long, ``top_probs`` (L, B, T, k),
    ``rank`` (L, B, T) long (1 + how many tokens have a higher logit than the target), ``target_prob`` (L, B, T)."""
    probs = logits.softmax(-1)
    top_probs, top_ids = probs.topk(min(k, logits.shape[-1]), -1)
    index = targets[None, :, :, None].expand(logits.shape[0], -1, -1, 1)
    target_logit = logits.gather(-1, index)
    rank = (logits > target_logit).sum(-1) + 1
    return {"top_ids": top_ids, "top_probs": top_probs, "rank": rank, "target_prob": probs.gather(-1, index)[..., 0]}


__all__ = ["CHUNK_ELEMENTS", "LensCapture", "capture_lens", "decode_lens", "find_blocks", "lens_readout"]
