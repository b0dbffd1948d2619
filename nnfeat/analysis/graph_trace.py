"""Tracing a network into graph nodes (see :mod:`nnfeat.analysis.graph`): with ``torch.fx`` where it traces
(:func:`fx_graph`: one node per leaf-module call and per tensor function, the real data flow), else with forward
hooks on the leaf modules (:func:`hook_graph`: edges by tensor provenance). Every node carries its output shape,
its parameters and its FLOPs (:mod:`torch.utils.flop_counter`).

The input is one tensor (an image batch, (1, 3, H, W)) or :class:`TraceInputs`: the positional and keyword
arguments of a call, e.g. a token model's (1, T) int64 ids with its (1, T) mask (:func:`token_inputs`); the
first tensor is the graph's input node, and every tensor argument counts as input."""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from nnfeat.analysis.graph_types import INPUT_ID, GraphNode
from nnfeat.layouts import OUTPUT
from nnfeat.models.text import TokenModel

__all__ = ["fx_graph", "hook_graph", "group_shapes", "shape_of", "parent_name", "own_params", "TraceInputs",
           "token_inputs", "fused_attention_off"]


@dataclass(frozen=True)
class TraceInputs:
    """The arguments of one call of a network: ``args`` positional, ``kwargs`` keyword (tensors or None).
    ``first`` is the tensor drawn as the graph's input (a token model's (1, T) ids)."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    @property
    def first(self) -> torch.Tensor:
        return next(t for t in (*self.args, *self.kwargs.values()) if torch.is_tensor(t))

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (*self.args, *self.kwargs.values()) if torch.is_tensor(t)]

    def call(self, net: nn.Module) -> Any:
        return net(*self.args, **self.kwargs)


def token_inputs(model: TokenModel, ids: torch.Tensor, mask: torch.Tensor | None = None,
                 decoder_ids: torch.Tensor | None = None) -> TraceInputs:
    """How ``model`` (a :class:`~nnfeat.models.text.TokenModel`) calls its network on (B, T) int64 ``ids``
    (and (B, T) bool ``mask``; seq2seq: (B, T') ``decoder_ids``), as :class:`TraceInputs`: ``net(ids)``,
    ``net(ids, mask)``, ``net(input_ids=ids, attention_mask=mask)`` (int64) or ``net(src, tgt, src_mask)``."""
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
    if model.kind == "seq2seq":
        return TraceInputs((ids, decoder_ids, mask))
    if model.call == "ids_mask":
        return TraceInputs((ids, mask))
    if model.call == "hf":
        return TraceInputs((), {"input_ids": ids, "attention_mask": mask.long()})
    return TraceInputs((ids,))


def _call(net: nn.Module, x: Any) -> Any:
    return x.call(net) if isinstance(x, TraceInputs) else net(x)


#: torch.nn modules with children that token graphs still draw as one node (their children are parameters'
#: holders that the module's own function reads, never calls)
_TOKEN_LEAVES = (nn.MultiheadAttention,)


def _token_leaf(m: nn.Module) -> bool:
    return isinstance(m, _TOKEN_LEAVES) or next(iter(m.children()), None) is None


@contextlib.contextmanager
def fused_attention_off() -> Iterator[None]:
    """PyTorch's fused transformer inference path off for the duration: with it, ``nn.TransformerEncoderLayer``
    calls none of its submodules, so neither hooks nor a graph would see them."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if torch.is_tensor(value):
        return value
    if isinstance(value, (tuple, list)):
        return next((t for t in map(_first_tensor, value) if t is not None), None)
    return None


def shape_of(value: Any) -> list[int] | None:
    """The shape of the first tensor in ``value`` (a tensor, or a tuple / list holding one), or None."""
    t = _first_tensor(value)
    return None if t is None else [int(s) for s in t.shape]


def parent_name(name: str) -> str:
    """``layer1.0.conv1`` -> ``layer1.0``; a top-level name -> ``""``."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def own_params(module: nn.Module) -> int:
    """Parameters of ``module`` and its children."""
    return sum(p.numel() for p in module.parameters())


class _LeafTracer(torch.fx.Tracer):
    """fx tracer whose leaves are torch.nn's leaves plus every module without children."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return super().is_leaf_module(m, qualname) or next(iter(m.children()), None) is None


class _TokenTracer(torch.fx.Tracer):
    """fx tracer for token networks: traces into torch.nn's containers (``nn.TransformerEncoder``), so their
    layers are nodes; leaves are modules without children and ``nn.MultiheadAttention``."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _token_leaf(m)


def _flops(fn, *args, **kwargs) -> tuple[Any, int]:
    from torch.utils.flop_counter import FlopCounterMode  # lazy: importing it loads triton (~0.3 s)

    counter = FlopCounterMode(display=False)
    with counter:
        out = fn(*args, **kwargs)
    return out, int(counter.get_total_flops())


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    if node.op == "call_method":
        return str(target)
    name = getattr(target, "__name__", None) or str(target)
    return name


def fx_graph(net: nn.Module, x: torch.Tensor | TraceInputs
             ) -> tuple[list[GraphNode], list[tuple[str, str]], list[str]]:
    """Trace ``net`` with fx and run it node by node on ``x`` (a tensor, or positional :class:`TraceInputs`):
    (nodes, raw edges, the parameters and buffers that functions read directly)."""
    if isinstance(x, TraceInputs) and x.kwargs:
        raise ValueError("keyword inputs are traced with hooks")
    graph = (_TokenTracer() if isinstance(x, TraceInputs) else _LeafTracer()).trace(net)
    gm = torch.fx.GraphModule(net, graph)
    modules = dict(net.named_modules())
    counts: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            counts[n.target] = counts.get(n.target, 0) + 1
    seen: dict[str, int] = {}
    results: dict[str, tuple[Any, int]] = {}

    class Probe(torch.fx.Interpreter):
        def run_node(self, n):
            out, flops = _flops(super().run_node, n)
            results[n.name] = (out, flops)
            return out

    if isinstance(x, TraceInputs):
        Probe(gm).run(*x.args)
    else:
        Probe(gm).run(x)
    drawn: dict[str, list[str]] = {}  # fx node name -> the drawn ids it stands for
    extra_params: dict[str, int] = {}
    nodes: list[GraphNode] = []
    edges: list[tuple[str, str]] = []
    for n in graph.nodes:
        out, flops = results.get(n.name, (None, 0))
        sources = [s for a in n.all_input_nodes for s in drawn.get(a.name, [])]
        if n.op == "placeholder":
            nodes.append(GraphNode(INPUT_ID, None, "input", "input", "", shape_of(out)))
            drawn[n.name] = [INPUT_ID]
            continue
        if n.op == "output":
            nodes.append(GraphNode(OUTPUT, OUTPUT, "output", "output", "", shape_of(out)))
            edges += [(s, OUTPUT) for s in dict.fromkeys(sources)]
            continue
        if n.op == "get_attr":  # a parameter or buffer used by a function: counted on its consumers
            attr = _fx_attr(net, str(n.target))
            drawn[n.name] = []
            extra_params[n.name] = attr.numel() if isinstance(attr, nn.Parameter) else 0
            continue
        if (n.op == "call_function" and n.target is operator.getitem) or _first_tensor(out) is None:
            drawn[n.name] = sources if _first_tensor(out) is not None else []
            extra_params[n.name] = sum(extra_params.get(a.name, 0) for a in n.all_input_nodes)  # passed on
            continue
        params = sum(extra_params.get(a.name, 0) for a in n.all_input_nodes)
        if n.op == "call_module":
            target = str(n.target)
            k = seen.get(target, 0)
            seen[target] = k + 1
            layer = target if counts[target] == 1 else f"{target}#{k}"
            node = GraphNode(layer, layer, "module", type(modules[target]).__name__, parent_name(target), shape_of(out),
                             params + (own_params(modules[target]) if k == 0 else 0), flops)
        else:
            stack = n.meta.get("nn_module_stack") or {}
            group = ""
            if stack:
                key, value = list(stack.items())[-1]
                group = value[0] if isinstance(value, tuple) else str(key)
                group = group if group in modules else ""
            node = GraphNode(f"op:{n.name}", None, "op", _op_name(n), group, shape_of(out), params, flops)
        nodes.append(node)
        drawn[n.name] = [node.id]
        edges += [(s, node.id) for s in dict.fromkeys(sources)]
    return nodes, edges, [str(n.target) for n in graph.nodes if n.op == "get_attr"]


def _fx_attr(net: nn.Module, target: str) -> Any:
    obj: Any = net
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def hook_graph(net: nn.Module, x: torch.Tensor | TraceInputs) -> tuple[list[GraphNode], list[tuple[str, str]]]:
    """Run ``net`` once on ``x`` (a tensor or :class:`TraceInputs`) with hooks on its leaf modules: (nodes, raw
    edges) by tensor provenance."""
    from torch.utils.flop_counter import FlopCounterMode  # lazy: importing it loads triton (~0.3 s)

    if isinstance(x, TraceInputs):  # token networks: nn.MultiheadAttention is one node, its out_proj inside it
        inside = [n for n, m in net.named_modules() if n and isinstance(m, _TOKEN_LEAVES)]
        leaves = [(name, m) for name, m in net.named_modules() if name and _token_leaf(m)
                  and not any(name.startswith(o + ".") for o in inside)]
    else:
        leaves = [(name, m) for name, m in net.named_modules() if name and next(iter(m.children()), None) is None]
    records: list[tuple[str, str, list[int], list[int] | None, int]] = []  # (name, type, input ids, shape, flops)
    given = x.tensors() if isinstance(x, TraceInputs) else [x]
    producer: dict[int, int] = {id(t): -1 for t in given}
    keep: list[Any] = list(given)
    active: list[FlopCounterMode] = []
    handles = []

    def pre(name):
        def hook(_m, inputs):
            if not active:
                counter = FlopCounterMode(display=False)
                counter.__enter__()
                active.append(counter)
            else:
                active.append(None)  # a leaf inside a leaf: counted by the outer one
        return hook

    def post(name, module):
        def hook(_m, inputs, out):
            counter = active.pop()
            flops = 0
            if counter is not None:
                counter.__exit__(None, None, None)
                flops = int(counter.get_total_flops())
            ids = [id(t) for t in inputs if torch.is_tensor(t)]
            records.append((name, type(module).__name__, ids, shape_of(out), flops))
            t = _first_tensor(out)
            if t is not None:
                producer[id(t)] = len(records) - 1
                keep.append(t)
        return hook

    try:
        for name, m in leaves:
            handles.append(m.register_forward_pre_hook(pre(name)))
            handles.append(m.register_forward_hook(post(name, m)))
        out = _call(net, x)
    finally:
        for h in handles:
            h.remove()
    counts: dict[str, int] = {}
    for name, *_ in records:
        counts[name] = counts.get(name, 0) + 1
    modules = dict(net.named_modules())
    seen: dict[str, int] = {}
    ids: list[str] = []
    nodes = [GraphNode(INPUT_ID, None, "input", "input", "", shape_of(given[0]))]
    edges: list[tuple[str, str]] = []
    for i, (name, kind, inputs, shape, flops) in enumerate(records):
        k = seen.get(name, 0)
        seen[name] = k + 1
        layer = name if counts[name] == 1 else f"{name}#{k}"
        ids.append(layer)
        nodes.append(GraphNode(layer, layer, "module", kind, parent_name(name), shape,
                               own_params(modules[name]) if k == 0 else 0, flops))
        sources = [producer[t] for t in inputs if t in producer and producer[t] < i]
        if not sources:  # made by plain functions after some module: the module called just before
            sources = [i - 1]
        edges += [(INPUT_ID if s < 0 else ids[s], layer) for s in dict.fromkeys(sources)]
    nodes.append(GraphNode(OUTPUT, OUTPUT, "output", "output", "", shape_of(out)))
    last = producer.get(id(_first_tensor(out)), len(records) - 1)
    edges.append((INPUT_ID if last < 0 else ids[last], OUTPUT))
    return nodes, edges


def group_shapes(net: nn.Module, x: torch.Tensor | TraceInputs, names: Sequence[str]) -> dict[str, list[int] | None]:
    """First-call output shape of each named module (one hooked forward pass)."""
    shapes: dict[str, list[int] | None] = {}
    modules = dict(net.named_modules())
    handles = []
    for name in names:
        def hook(_m, _i, out, name=name):
            shapes.setdefault(name, shape_of(out))
        handles.append(modules[name].register_forward_hook(hook))
    try:
        _call(net, x)
    finally:
        for h in handles:
            h.remove()
    return shapes
