"""Attention of vision transformers: per-layer, per-head weights, query maps, rollout (tensors in, tensors out).

* :func:`attention_layers` / :func:`select_layers` -- the attention modules of a model, found from its modules:
  ``nn.MultiheadAttention`` (torchvision's ViT, ``digits-vit``, any model built on it), timm's ``Attention``
  and other timm attention modules with a ``fused_attn`` switch and an ``attn_drop`` dropout;
* :func:`capture_attention` -- one batched forward pass that records every selected layer's weights
  (B, heads, N, N) with nnfeat's hooks (:class:`~nnfeat.hooks.ActivationCapture`; every hook is removed in
  ``finally``, also on error), and optionally their gradients for a target class:

  - ``nn.MultiheadAttention``: torchvision's ``EncoderBlock`` calls ``self_attention(x, x, x,
    need_weights=False)``, so no weights come back. A forward pre-hook (``with_kwargs=True``) sets
    ``need_weights=True, average_attn_weights=False`` for the call; the output is unchanged;
  - timm ``Attention`` with fused attention (``F.scaled_dot_product_attention``) never forms the weights:
    they are recomputed as ``softmax(q k^T * scale)`` from the outputs of its ``q_norm`` / ``k_norm``
    modules (its q and k after QK normalization; ``nn.Identity`` without it), the model left as it is;
  - for gradients (and other timm attention modules) the modules run unfused for the call (``fused_attn``
    set False, then restored) and the weights are the input of their ``attn_drop``, inside the graph;

* :func:`token_layout` -- extra (class, register) tokens and the patch grid (non-square grids too), from the
  model (:func:`nnfeat.analysis.tokens.token_grid`);
* :func:`head_maps` -- the class token's (or a chosen query token's) attention over the patch tokens, per
  head or fused over heads, folded onto the grid (B, K, gh, gw);
* :func:`attention_rollout` -- Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers": heads
  fused (mean / max / min), ``Ã = 0.5 A + 0.5 I`` with rows normalized, multiplied from the first layer to the
  last (B, N, N);
* :func:`gradient_rollout` -- Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers": ``R = I``; per layer
  ``R <- R + mean_heads(ReLU(dy_c/dA ⊙ A)) R`` (B, N, N);
* :func:`relevance_map` -- a (B, N, N) relevance matrix's query row over the patches, on the grid.

The two rollouts are :mod:`nnfeat.analysis.rollout` (re-exported here).

No Python loop runs over images; loops run over layers only.
"""

from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from nnfeat.analysis.rollout import FUSIONS, attention_rollout, fuse_heads, gradient_rollout
from nnfeat.analysis.tokens import token_grid
from nnfeat.errors import NnfeatError, nearest
from nnfeat.hooks import ActivationCapture, layer_root
from nnfeat.layouts import OUTPUT, size2

#: ``head`` choices besides a head number: every head, or the heads fused by their mean or max.
HEAD_CHOICES = ("all", "mean", "max")

MHA = "mha"          # nn.MultiheadAttention: weights via need_weights=True
TIMM = "timm"        # timm Attention: recomputed from q_norm / k_norm
UNFUSED = "unfused"  # a module with fused_attn and attn_drop: run unfused, weights = attn_drop's input


@dataclass(frozen=True)
class AttentionLayer:
    """One attention module: its dotted ``name`` (in the model's layer names), how its weights are read
    (``kind``: ``mha``, ``timm`` or ``unfused``) and its number of ``heads``."""

    name: str
    kind: str
    heads: int


@dataclass(frozen=True)
class TokenLayout:
    """How a layer's N tokens lie: the first ``extra`` are class/register tokens, the rest a ``grid``
    (gh, gw) of patches in row-major order; ``cls`` is the class token's index (None: the model has none)."""

    n_tokens: int
    extra: int
    grid: tuple[int, int]
    cls: int | None

    @property
    def patches(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass
class CapturedAttention:
    """What :func:`capture_attention` returns. ``weights[l]`` (B, heads, N, N) for ``layers[l]`` (rows: queries,
    columns: keys; each row sums to 1); ``grads[l]`` the gradient of the target logits with respect to it (or
    None); ``output`` the network's output (B, ...) or None; ``targets`` (B,) the target classes or None."""

    layers: list[AttentionLayer]
    weights: list[torch.Tensor]
    grads: list[torch.Tensor] | None
    output: torch.Tensor | None
    targets: torch.Tensor | None


# -- finding the layers ---------------------------------------------------------------------------------
def _timm_attention_class():
    """timm's standard ``Attention`` class when timm is imported (a timm model is loaded), else None."""
    if "timm" not in sys.modules:
        return None
    try:
        from timm.layers import Attention
    except ImportError:  # pragma: no cover - a timm without it
        return None
    return Attention


def _kind(module: nn.Module, timm_attention) -> str | None:
    if isinstance(module, nn.MultiheadAttention):
        return MHA
    if timm_attention is not None and type(module) is timm_attention:
        return TIMM
    if hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module) \
            and isinstance(getattr(module, "num_heads", None), int) \
            and (hasattr(module, "qkv") or hasattr(module, "q_proj")):  # self-attention, not a pooling head
        return UNFUSED
    return None


def model_name(model: nn.Module) -> str:
    return str(getattr(model, "name", None) or type(model).__name__)


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Every attention module of ``model`` (an nnfeat ``Model`` or an ``nn.Module``), in module order."""
    timm_attention = _timm_attention_class()
    found = []
    for name, module in layer_root(model).named_modules():
        kind = _kind(module, timm_attention)
        if kind is not None and name:
            found.append(AttentionLayer(name, kind, int(module.num_heads)))
    return found


def no_attention_layers(model: nn.Module) -> NnfeatError:
    return NnfeatError(f"model '{model_name(model)}' has no attention layers (nn.MultiheadAttention or a timm "
                       "Attention module): attention maps need a vision transformer, e.g. digits-vit, "
                       "timm:vit_tiny_patch16_224 or torchvision:vit_b_16")


def select_layers(model: nn.Module, layers: str | Sequence[str | int] | None = None) -> list[AttentionLayer]:
    """The attention layers ``layers`` names, in model order: None (all), or names / indices (a comma list as
    text or a sequence). A name is an attention module's name or that of a module holding exactly one (a block:
    ``blocks.3``, ``encoder.layers.encoder_layer_3``); an index counts the attention layers from 0 (negative:
    from the end). One-line errors name the nearest valid names."""
    every = attention_layers(model)
    if not every:
        raise no_attention_layers(model)
    if layers is None:
        return every
    refs = [r.strip() for r in layers.split(",")] if isinstance(layers, str) else list(layers)
    refs = [r for r in refs if not (isinstance(r, str) and r == "")]
    if not refs:
        raise NnfeatError("no attention layer given: name one (e.g. " + every[0].name + ") or leave --layer out")
    by_name = {layer.name: layer for layer in every}
    chosen = []
    for ref in refs:
        if isinstance(ref, int) or re.fullmatch(r"-?\d+", str(ref)):
            index = int(ref)
            if not -len(every) <= index < len(every):
                raise NnfeatError(f"attention layer {index} is out of range: {model_name(model)} has {len(every)} "
                                  f"attention layers (0..{len(every) - 1})")
            chosen.append(every[index])
        elif ref in by_name:
            chosen.append(by_name[ref])
        else:
            inside = [layer for layer in every if layer.name.startswith(ref + ".")]
            if len(inside) == 1:
                chosen.append(inside[0])
                continue
            names = list(by_name)
            close = nearest(ref, names)
            hint = f"; nearest: {', '.join(close)}" if close else ""
            span = f"{names[0]} .. {names[-1]}" if len(names) > 1 else names[0]
            raise NnfeatError(f"'{ref}' is not an attention layer of {model_name(model)}{hint} (attention layers: "
                              f"{span}, or 0..{len(names) - 1})")
    order = {layer.name: i for i, layer in enumerate(every)}
    return sorted(dict.fromkeys(chosen), key=lambda layer: order[layer.name])


# -- capturing ------------------------------------------------------------------------------------------
def _force_weights(_module, args, kwargs):
    """Forward pre-hook of ``nn.MultiheadAttention``: ask for per-head weights, positional or keyword."""
    args, kwargs = list(args), dict(kwargs)
    for position, key, value in ((4, "need_weights", True), (6, "average_attn_weights", False)):
        if len(args) > position:
            args[position] = value
        else:
            kwargs[key] = value
    return tuple(args), kwargs


@contextlib.contextmanager
def weights_requested(modules: Sequence[nn.Module]) -> Iterator[None]:
    handles = []
    try:
        for module in modules:
            handles.append(module.register_forward_pre_hook(_force_weights, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _unfused(modules: Sequence[nn.Module]) -> Iterator[None]:
    saved = [(module, module.fused_attn) for module in modules]
    try:
        for module in modules:
            module.fused_attn = False
        yield
    finally:
        for module, value in saved:
            module.fused_attn = value


def _refs(layer: AttentionLayer, unfused: bool) -> list[str]:
    if layer.kind == MHA:
        return [f"{layer.name}[1]"]
    if layer.kind == TIMM and not unfused:
        return [f"{layer.name}.q_norm", f"{layer.name}.k_norm"]
    return [f"{layer.name}.attn_drop"]


def _check_square(layer: AttentionLayer, weights: torch.Tensor) -> torch.Tensor:
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2]:
        raise NnfeatError(f"attention layer '{layer.name}' gives weights of shape {tuple(weights.shape)}; expected "
                          "(B, heads, N, N) self-attention over one token sequence")
    return weights


def resolve_targets(target: int | str | None, output: torch.Tensor, classes: Sequence[str] | None = None,
                    name: str = "model") -> torch.Tensor:
    """(B,) target classes: ``"pred"`` / None (each image's top logit), a class number, or a class name."""
    if output.dim() != 2:
        raise NnfeatError(f"gradient rollout needs class logits (B, classes), but {name} outputs shape "
                          f"{tuple(output.shape)}")
    n = output.shape[1]
    if target is None or target == "pred":
        return output.argmax(1)
    if isinstance(target, str) and not re.fullmatch(r"-?\d+", target):
        if classes and target in classes:
            return torch.full((len(output),), list(classes).index(target), dtype=torch.long, device=output.device)
        close = nearest(target, classes or [])
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise NnfeatError(f"unknown target class '{target}'{hint}; expected pred, a class number 0..{n - 1}"
                          + (" or a class name" if classes else ""))
    index = int(target)
    if not 0 <= index < n:
        raise NnfeatError(f"target class {index} is out of range: {name} has {n} classes (0..{n - 1})")
    return torch.full((len(output),), index, dtype=torch.long, device=output.device)


def capture_attention(model: nn.Module, images: torch.Tensor, layers: str | Sequence[str | int] | None = None, *,
                      target: int | str | None = None, gradients: bool = False, output: bool = True
                      ) -> CapturedAttention:
    """One forward pass over ``images`` (B, 3, H, W) in [0, 1] recording the attention weights of ``layers``
    (see :func:`select_layers`), each (B, heads, N, N) float32.

    ``gradients``: also the gradients of the target logit (``target``: see :func:`resolve_targets`; summed over
    the batch, so each image gets its own) with respect to every weight tensor, for :func:`gradient_rollout`.
    ``output``: also return the network's output (the pass then runs to the end; without it, and without
    gradients, it stops after the deepest selected layer). Hooks are removed on return and on error.
    """
    selected = select_layers(model, layers)
    root = layer_root(model)
    modules = {layer.name: root.get_submodule(layer.name) for layer in selected}
    run_unfused = [modules[l.name] for l in selected if l.kind == UNFUSED or (l.kind == TIMM and gradients)]
    refs = {layer.name: _refs(layer, gradients) for layer in selected}
    wanted = [ref for layer in selected for ref in refs[layer.name]]
    if output or gradients:
        wanted.append(OUTPUT)
    grad_mode = torch.enable_grad() if gradients else torch.no_grad()
    with contextlib.ExitStack() as stack:
        stack.enter_context(weights_requested([modules[l.name] for l in selected if l.kind == MHA]))
        stack.enter_context(_unfused(run_unfused))
        capture = stack.enter_context(ActivationCapture(model, wanted))
        stack.enter_context(grad_mode)
        x = images.detach().clone().requires_grad_(gradients)
        acts = capture(x)
        in_graph, weights = [], []
        for layer in selected:
            if layer.kind == TIMM and not gradients:
                module = modules[layer.name]
                q, k = acts[refs[layer.name][0]].float(), acts[refs[layer.name][1]].float()
                w = ((q * float(module.scale)) @ k.transpose(-2, -1)).softmax(-1)
                in_graph.append(w)
            else:
                w = acts[refs[layer.name][0]]
                # nn.MultiheadAttention returns a reshaped view of the weights its output was computed from:
                # the gradient is taken with respect to that base tensor (the view itself is not in the graph)
                base = w._base if layer.kind == MHA and w._base is not None else w
                in_graph.append(base)
            weights.append(_check_square(layer, w.float()))
        out = acts.get(OUTPUT)
        targets, grads = None, None
        if gradients:
            targets = resolve_targets(target, out, getattr(model, "classes", None), model_name(model))
            score = out.gather(1, targets[:, None]).sum()
            raw = torch.autograd.grad(score, in_graph, allow_unused=True)
            grads = [torch.zeros_like(w) if g is None else g.reshape(w.shape).float() for g, w in zip(raw, weights)]
            weights = [w.detach() for w in weights]
            out = out.detach()
    return CapturedAttention(selected, weights, grads, out, targets)


# -- maps -----------------------------------------------------------------------------------------------
def _class_token(model: nn.Module, extra: int) -> int | None:
    if extra == 0:
        return None
    root = layer_root(model)
    if hasattr(root, "cls_token") and getattr(root, "num_prefix_tokens", None) is not None:  # timm
        return 0 if root.cls_token is not None else None
    return 0  # torchvision, digits-vit and the convention of nnfeat.analysis.tokens: extra tokens come first


def token_layout(model: nn.Module, n_tokens: int, input_size: Sequence[int]) -> TokenLayout:
    """The extra tokens, patch grid and class token of ``n_tokens`` tokens at ``input_size`` (H, W)."""
    extra, gh, gw = token_grid(model, n_tokens, size2(tuple(input_size)))
    return TokenLayout(n_tokens, extra, (gh, gw), _class_token(model, extra))


def check_query(query: int | None, layout: TokenLayout) -> int | None:
    """The query token index to read: ``query``, else the class token (None: no class token, so the mean over
    the patch queries is read). A one-line error for a token out of range."""
    if query is None:
        return layout.cls
    if not -layout.n_tokens <= int(query) < layout.n_tokens:
        raise NnfeatError(f"query token {query} is out of range: the layer has {layout.n_tokens} tokens "
                          f"(0..{layout.n_tokens - 1}; {layout.extra} extra then a {layout.grid[0]}x"
                          f"{layout.grid[1]} patch grid)")
    return int(query) % layout.n_tokens


def query_rows(matrix: torch.Tensor, layout: TokenLayout, query: int | None) -> torch.Tensor:
    """(..., N, N) -> (..., P): the ``query`` row over the P patch keys; ``query`` None: the class token's row, or
    the mean of the patch rows when the model has no class token."""
    query = layout.cls if query is None else query
    rows = matrix[..., layout.extra:, :].mean(-2) if query is None else matrix[..., query, :]
    return rows[..., layout.extra:]


def check_head(head: int | str, heads: int, layer: str = "the layer") -> int | str:
    """``head`` as an int in 0..heads-1 or one of :data:`HEAD_CHOICES`; a one-line error otherwise."""
    if isinstance(head, str) and not re.fullmatch(r"-?\d+", head):
        if head not in HEAD_CHOICES:
            raise NnfeatError(f"unknown head '{head}': use a head number, {', '.join(HEAD_CHOICES)}")
        return head
    index = int(head)
    if not 0 <= index < heads:
        raise NnfeatError(f"head {index} is out of range: {layer} has {heads} heads (0..{heads - 1}); or use "
                          f"{', '.join(HEAD_CHOICES)}")
    return index


def select_heads(rows: torch.Tensor, head: int | str) -> torch.Tensor:
    """(B, heads, ...) -> (B, K, ...): every head (``all``), their ``mean`` or ``max`` (K = 1), or one head."""
    if head == "all":
        return rows
    if head == "mean":
        return rows.mean(1, keepdim=True)
    if head == "max":
        return rows.amax(1, keepdim=True)
    return rows[:, int(head):int(head) + 1]


def head_maps(weights: torch.Tensor, layout: TokenLayout, head: int | str = "all", query: int | None = None
              ) -> torch.Tensor:
    """(B, heads, N, N) weights -> (B, K, gh, gw): the ``query`` token's attention over the patches per head
    (``head="all"``, K = heads), fused (``mean`` / ``max``) or of one head (K = 1)."""
    rows = select_heads(query_rows(weights, layout, query), head)
    return rows.reshape(*rows.shape[:2], *layout.grid)


def relevance_map(relevance: torch.Tensor, layout: TokenLayout, query: int | None = None) -> torch.Tensor:
    """(B, N, N) rollout or relevance -> (B, gh, gw): the ``query`` row (see :func:`query_rows`) over the patches."""
    rows = query_rows(relevance, layout, query)
    return rows.reshape(rows.shape[0], *layout.grid)


__all__ = ["HEAD_CHOICES", "FUSIONS", "AttentionLayer", "TokenLayout", "CapturedAttention", "attention_layers",
           "select_layers", "no_attention_layers", "capture_attention", "resolve_targets", "token_layout",
           "check_query", "query_rows", "check_head", "select_heads", "head_maps", "fuse_heads",
           "attention_rollout", "gradient_rollout", "relevance_map", "model_name"]
